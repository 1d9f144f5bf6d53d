package controllers

import (
	"fmt"
	"net/http"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
	"github.com/docrouter/webhook-operator/dispatcher"
)

// The pure decisions of the delivery controller: what an attempt changes in a delivery's status
// and what comes next. No client, no clock, no randomness: everything they need is an argument,
// so webhookdelivery_status_test.go tests every branch in milliseconds.

// recordAttempt adds attempt number n, started at started with result res, to the status: the
// counters, the last-attempt fields and the bounded history.
func recordAttempt(s *webhooksv1alpha1.WebhookDeliveryStatus, n int32, trigger webhooksv1alpha1.AttemptTrigger, started time.Time, res dispatcher.Result) {
	s.Attempts = n
	s.LastAttemptTime = &metav1.Time{Time: started}
	s.LastStatusCode = int32(res.StatusCode)
	s.LastDurationMilliseconds = res.Duration.Milliseconds()
	s.LastError = res.Error
	s.History = append(s.History, webhooksv1alpha1.Attempt{
		Number: n, Time: metav1.Time{Time: started}, StatusCode: int32(res.StatusCode),
		DurationMilliseconds: res.Duration.Milliseconds(), Result: webhooksv1alpha1.AttemptResult(res.Class),
		Error: res.Error, Trigger: trigger,
	})
	if over := len(s.History) - webhooksv1alpha1.MaxAttemptHistory; over > 0 {
		s.History = s.History[over:]
	}
}

// attemptOutcome is what a finished attempt means for its delivery.
type attemptOutcome struct {
	Phase   webhooksv1alpha1.DeliveryPhase
	Reason  string
	Message string
	// NextAttempt is when the next scheduled attempt is due (phase Retrying only).
	NextAttempt time.Time
	// Event, when set, is recorded on the delivery.
	Event *deliveryEvent
}

// deliveryEvent is a Kubernetes Event on a delivery, on a transition only.
type deliveryEvent struct {
	Type, Reason, Message string
}

// Finished reports whether no automatic attempt is left.
func (o attemptOutcome) Finished() bool { return o.Phase.Finished() }

// attemptDecision is everything decideOutcome needs about one attempt.
type attemptDecision struct {
	// Number of the attempt just made, from 1.
	Number int32
	Result dispatcher.Result
	// Manual: a retry annotation asked for it.
	Manual bool
	// PreviousPhase is the delivery's phase before the attempt.
	PreviousPhase webhooksv1alpha1.DeliveryPhase
	// ManualAttempts counts the manual attempts of the recent history, this one included: they
	// do not lengthen the automatic schedule's waits.
	ManualAttempts int32
	Policy         dispatcher.Policy
	Now            time.Time
	// Jitter is a number in [0, 1) that spreads the retries of many deliveries.
	Jitter float64
}

// decideOutcome decides what an attempt means: delivered, failed at once (410 Gone), given up
// (the policy is exhausted, or a manual attempt on a finished delivery failed: it gets no new
// automatic attempts), or retried at a time of the policy and the receiver's Retry-After.
func decideOutcome(in attemptDecision) attemptOutcome {
	res, n := in.Result, in.Number
	switch {
	case res.Succeeded():
		o := attemptOutcome{Phase: webhooksv1alpha1.PhaseSucceeded, Reason: webhooksv1alpha1.ReasonDelivered,
			Message: fmt.Sprintf("delivered at attempt %d (HTTP %d)", n, res.StatusCode)}
		if n > 1 {
			o.Event = &deliveryEvent{"Normal", webhooksv1alpha1.ReasonDelivered,
				fmt.Sprintf("delivered at attempt %d after earlier failures", n)}
		}
		return o

	case res.StatusCode == http.StatusGone:
		// 410 is the receiver saying the URL is gone for good: retrying cannot succeed. The
		// endpoint is disabled too (its reconciler, from the health record), so its other
		// deliveries are parked rather than failed one by one.
		return attemptOutcome{Phase: webhooksv1alpha1.PhaseFailed, Reason: webhooksv1alpha1.ReasonEndpointGone,
			Message: fmt.Sprintf("attempt %d: the receiver answered 410 Gone, so the delivery is not retried; once the endpoint is fixed, retry with the %s annotation",
				n, webhooksv1alpha1.RetryAnnotation)}

	case (in.Manual && in.PreviousPhase.Finished()) || in.Policy.Exhausted(n):
		o := attemptOutcome{Phase: webhooksv1alpha1.PhaseFailed, Reason: webhooksv1alpha1.ReasonRetriesExhausted,
			Message: fmt.Sprintf("attempt %d failed (%s); no automatic attempt is left: retry with the %s annotation",
				n, describe(res), webhooksv1alpha1.RetryAnnotation)}
		if in.PreviousPhase != webhooksv1alpha1.PhaseFailed {
			o.Event = &deliveryEvent{"Warning", webhooksv1alpha1.ReasonRetriesExhausted, o.Message}
		}
		return o

	default:
		next := in.Now.Add(in.Policy.Delay(n-in.ManualAttempts, res.RetryAfter, in.Jitter))
		o := attemptOutcome{Phase: webhooksv1alpha1.PhaseRetrying, Reason: webhooksv1alpha1.ReasonAttemptFailed, NextAttempt: next,
			Message: fmt.Sprintf("attempt %d of %d failed (%s); next attempt at %s",
				n, in.Policy.MaxRetries+1, describe(res), next.UTC().Format(time.RFC3339))}
		if n == 1 {
			o.Event = &deliveryEvent{"Warning", webhooksv1alpha1.ReasonAttemptFailed, o.Message}
		}
		return o
	}
}

// applyOutcome writes an outcome into the status. completed is the completion time of a
// finished outcome.
func applyOutcome(d *webhooksv1alpha1.WebhookDelivery, o attemptOutcome, completed time.Time) {
	d.Status.Phase = o.Phase
	ready := metav1.ConditionFalse
	switch o.Phase {
	case webhooksv1alpha1.PhaseRetrying:
		d.Status.NextAttemptTime = &metav1.Time{Time: o.NextAttempt}
	case webhooksv1alpha1.PhaseSucceeded:
		ready = metav1.ConditionTrue
		fallthrough
	default:
		d.Status.NextAttemptTime = nil
		d.Status.CompletionTime = &metav1.Time{Time: completed}
	}
	setConditions(d, ready, o.Reason, o.Message)
}

// setConditions sets Ready, and Reconciling and Stalled from the phase.
func setConditions(d *webhooksv1alpha1.WebhookDelivery, ready metav1.ConditionStatus, reason, message string) {
	g := d.Generation
	d.Status.ObservedGeneration = g
	set := func(t string, s metav1.ConditionStatus) {
		meta.SetStatusCondition(&d.Status.Conditions, metav1.Condition{Type: t, Status: s, Reason: reason, Message: message, ObservedGeneration: g})
	}
	set(webhooksv1alpha1.ConditionReady, ready)
	switch d.Status.Phase {
	case webhooksv1alpha1.PhaseSucceeded:
		meta.RemoveStatusCondition(&d.Status.Conditions, webhooksv1alpha1.ConditionReconciling)
		meta.RemoveStatusCondition(&d.Status.Conditions, webhooksv1alpha1.ConditionStalled)
	case webhooksv1alpha1.PhaseFailed:
		meta.RemoveStatusCondition(&d.Status.Conditions, webhooksv1alpha1.ConditionReconciling)
		set(webhooksv1alpha1.ConditionStalled, metav1.ConditionTrue)
	default:
		set(webhooksv1alpha1.ConditionReconciling, metav1.ConditionTrue)
		meta.RemoveStatusCondition(&d.Status.Conditions, webhooksv1alpha1.ConditionStalled)
	}
}

// setWaiting records why a delivery is not attempted now.
func setWaiting(d *webhooksv1alpha1.WebhookDelivery, w *waitError) {
	if d.Status.Attempts == 0 {
		d.Status.Phase = webhooksv1alpha1.PhasePending
	}
	setConditions(d, metav1.ConditionFalse, w.Reason, w.Message)
}

// countManual counts manual attempts among the recent history, so that they do not make the
// automatic schedule's waits longer.
func countManual(history []webhooksv1alpha1.Attempt) int32 {
	var n int32
	for _, a := range history {
		if a.Trigger == webhooksv1alpha1.TriggerManual {
			n++
		}
	}
	return n
}

// describe is an attempt's result in a few words, for condition messages and Events.
func describe(res dispatcher.Result) string {
	if res.Error != "" {
		return res.Error
	}
	return string(res.Class)
}

// policyFor is the endpoint's retry policy with defaults applied.
func policyFor(ep *webhooksv1alpha1.WebhookEndpoint) dispatcher.Policy {
	p := ep.Spec.RetryPolicy
	return dispatcher.Policy{
		MaxRetries:    p.GetMaxRetries(),
		InitialDelay:  p.GetInitialDelay(),
		Factor:        p.GetBackoffFactor(),
		MaxDelay:      p.GetMaxDelay(),
		JitterPercent: p.GetJitterPercent(),
	}
}

// payloadFor maps an event of the API onto the wire payload.
func payloadFor(e webhooksv1alpha1.Event) dispatcher.Payload {
	p := dispatcher.Payload{
		EventID:        e.ID,
		EventType:      e.Type,
		Timestamp:      e.Timestamp,
		OrganizationID: e.OrganizationID,
		Document: dispatcher.Document{
			DocumentID:   e.Document.DocumentID,
			DocumentName: e.Document.DocumentName,
			TagIDs:       e.Document.TagIDs,
		},
	}
	if e.Document.Metadata != nil {
		p.Document.Metadata = e.Document.Metadata.Raw
	}
	if e.Data != nil {
		p.Data = e.Data.Raw
	}
	return p
}

// requestFor builds attempt number n of a delivery to its endpoint, with the endpoint's
// credentials. Its error is an event that cannot be serialised.
func requestFor(d *webhooksv1alpha1.WebhookDelivery, ep *webhooksv1alpha1.WebhookEndpoint, creds credentials, n int32) (dispatcher.Request, error) {
	body, err := payloadFor(d.Spec.Event).Body()
	if err != nil {
		return dispatcher.Request{}, err
	}
	req := dispatcher.Request{
		URL:       ep.Spec.URL,
		Body:      body,
		EventID:   d.Spec.Event.ID,
		EventType: d.Spec.Event.Type,
		Attempt:   n,
		Signing:   creds.signing,
		Timeout:   ep.Spec.GetTimeout(),
		CABundle:  creds.caBundle,
	}
	if creds.authHeaderName != "" {
		req.Headers = http.Header{creds.authHeaderName: {creds.authHeaderValue}}
	}
	return req, nil
}
