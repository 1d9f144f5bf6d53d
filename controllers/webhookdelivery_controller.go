package controllers

import (
	"context"
	"fmt"
	"net/http"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
	"github.com/docrouter/webhook-operator/dispatcher"
)

// endpointRefIndex indexes deliveries by the endpoint they are for.
const endpointRefIndex = ".spec.endpointRef.name"

// WebhookDeliveryReconciler makes one HTTP attempt per reconcile for a due delivery, and keeps
// the schedule of the next one in status.
type WebhookDeliveryReconciler struct {
	client.Client
	Sender   *dispatcher.Sender
	Recorder events.EventRecorder
	Clock    clock.PassiveClock
	// Jitter returns a number in [0, 1) that spreads retries; rand.Float64 in production.
	Jitter  func() float64
	Options Options

	secrets      *secretReader
	health       *endpointHealth
	limiter      *inflightLimiter
	expectations *attemptExpectations
	// apiReader reads finished deliveries, which the cache does not hold (cache.go).
	apiReader client.Reader
	// finishedRetries brings finished deliveries that carry a retry annotation (retrywatch.go).
	finishedRetries chan event.TypedGenericEvent[*webhooksv1alpha1.WebhookDelivery]
}

// +kubebuilder:rbac:groups=webhooks.docrouter.ai,resources=webhookdeliveries,verbs=get;list;watch;delete
// +kubebuilder:rbac:groups=webhooks.docrouter.ai,resources=webhookdeliveries/status,verbs=get;patch
// +kubebuilder:rbac:groups=webhooks.docrouter.ai,resources=webhookendpoints,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get
// +kubebuilder:rbac:groups="",resources=configmaps,verbs=get
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// Reconcile delivers one delivery, or waits for it to be due.
func (r *WebhookDeliveryReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	d, err := r.get(ctx, req.NamespacedName)
	if d == nil || err != nil {
		return ctrl.Result{}, err
	}
	if held := r.expectations.unwritten(req.NamespacedName, d.UID, d.Status.Attempts); held != nil {
		// An attempt was made but its status write failed: write it now, do not send again.
		base := d.DeepCopy()
		d.Status = *held
		if err := r.patchStatus(ctx, base, d); err != nil {
			return ctrl.Result{}, err
		}
		r.expectations.expect(req.NamespacedName, d.UID, held.Attempts)
		return ctrl.Result{RequeueAfter: time.Second}, nil
	}
	if !r.expectations.satisfied(req.NamespacedName, d.UID, d.Status.Attempts) {
		// The cache has not yet seen our last status write: acting now could send twice.
		return ctrl.Result{RequeueAfter: time.Second}, nil
	}
	if !d.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, nil
	}

	now := r.Clock.Now()
	token := d.Annotations[webhooksv1alpha1.RetryAnnotation]
	manual := token != "" && token != d.Status.LastRetryToken
	if d.Status.Phase.Finished() && !manual {
		return ctrl.Result{}, nil // retention is the sweeper's (retention.go)
	}
	if next := d.Status.NextAttemptTime; !manual && next != nil && now.Before(next.Time) {
		return ctrl.Result{RequeueAfter: next.Sub(now)}, nil
	}

	base := d.DeepCopy()
	ep, creds, wait, err := r.endpointFor(ctx, d)
	if err != nil {
		return ctrl.Result{}, err
	}
	if wait != nil {
		setWaiting(d, wait.reason, wait.message)
		return ctrl.Result{RequeueAfter: wait.requeueAfter}, r.patchStatus(ctx, base, d)
	}

	epKey := types.NamespacedName{Namespace: ep.Namespace, Name: ep.Name}
	if !r.limiter.tryAcquire(epKey, req.NamespacedName) {
		// The endpoint has as many attempts in flight as allowed; a freed slot wakes this one.
		return ctrl.Result{RequeueAfter: ep.Spec.GetTimeout() + time.Second}, nil
	}
	result, err := r.attempt(ctx, d, ep, creds, manual, token)
	r.limiter.release(epKey)
	if err != nil {
		return ctrl.Result{}, err
	}
	if err := r.patchStatus(ctx, base, d); err != nil {
		r.expectations.holdUnwritten(req.NamespacedName, d.UID, d.Status.DeepCopy())
		return ctrl.Result{}, err
	}
	r.expectations.expect(req.NamespacedName, d.UID, d.Status.Attempts)
	return result, nil
}

// get reads a delivery: from the cache, which holds the unfinished ones, or else through the
// API reader, for a finished one (a manual retry). nil means it is gone.
func (r *WebhookDeliveryReconciler) get(ctx context.Context, key types.NamespacedName) (*webhooksv1alpha1.WebhookDelivery, error) {
	d := &webhooksv1alpha1.WebhookDelivery{}
	err := r.Get(ctx, key, d)
	if apierrors.IsNotFound(err) && r.apiReader != nil {
		err = r.apiReader.Get(ctx, key, d)
	}
	if apierrors.IsNotFound(err) {
		r.expectations.forget(key)
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return d, nil
}

// waitReason says why a delivery cannot be attempted now.
type waitReason struct {
	reason, message string
	requeueAfter    time.Duration
}

// endpointFor finds the delivery's endpoint and its credentials, or the reason to wait.
func (r *WebhookDeliveryReconciler) endpointFor(ctx context.Context, d *webhooksv1alpha1.WebhookDelivery) (*webhooksv1alpha1.WebhookEndpoint, credentials, *waitReason, error) {
	ep := &webhooksv1alpha1.WebhookEndpoint{}
	key := types.NamespacedName{Namespace: d.Namespace, Name: d.Spec.EndpointRef.Name}
	if err := r.Get(ctx, key, ep); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, credentials{}, &waitReason{webhooksv1alpha1.ReasonEndpointNotFound,
				fmt.Sprintf("WebhookEndpoint %q not found in this namespace; the delivery waits for it", key.Name),
				r.Options.WaitRetryInterval}, nil
		}
		return nil, credentials{}, nil, err
	}
	if ep.Status.DisabledSince != nil {
		// Parked, not dropped: the endpoint watch wakes the delivery when it is re-enabled.
		return nil, credentials{}, &waitReason{webhooksv1alpha1.ReasonEndpointDisabled,
			fmt.Sprintf("WebhookEndpoint %q is disabled (%s); the delivery is parked until the endpoint is re-enabled with the %s annotation or a change of its spec",
				ep.Name, ep.Status.DisabledReason, webhooksv1alpha1.EnableAnnotation), 0}, nil
	}
	if ep.Spec.Paused {
		// The endpoint watch wakes the delivery when the endpoint is unpaused.
		return nil, credentials{}, &waitReason{webhooksv1alpha1.ReasonEndpointPaused,
			fmt.Sprintf("WebhookEndpoint %q is paused; the delivery waits until spec.paused is false", ep.Name), 0}, nil
	}
	creds, err := r.secrets.resolve(ctx, ep)
	if cerr, ok := err.(*credentialError); ok {
		return nil, credentials{}, &waitReason{cerr.reason, cerr.message + "; the delivery waits for it", r.Options.WaitRetryInterval}, nil
	}
	if err != nil {
		return nil, credentials{}, nil, err
	}
	return ep, creds, nil, nil
}

// attempt sends the event once and records the result in d's status.
func (r *WebhookDeliveryReconciler) attempt(ctx context.Context, d *webhooksv1alpha1.WebhookDelivery, ep *webhooksv1alpha1.WebhookEndpoint, creds credentials, manual bool, token string) (ctrl.Result, error) {
	log := ctrl.LoggerFrom(ctx).WithValues("endpoint", ep.Name, "eventID", d.Spec.Event.ID)
	wasFinished := d.Status.Phase.Finished()
	trigger := webhooksv1alpha1.TriggerScheduled
	if manual {
		trigger = webhooksv1alpha1.TriggerManual
		d.Status.LastRetryToken = token
	}
	number := d.Status.Attempts + 1

	body, err := payloadFor(d.Spec.Event).Body()
	if err != nil {
		// The CRD schema makes this unreachable through the API; fail terminally if it happens.
		r.finish(d, webhooksv1alpha1.PhaseFailed, webhooksv1alpha1.ReasonInvalidEvent, "the event cannot be serialised: "+err.Error())
		return ctrl.Result{}, nil
	}
	msg := dispatcher.Request{
		URL:       ep.Spec.URL,
		Body:      body,
		EventID:   d.Spec.Event.ID,
		EventType: d.Spec.Event.Type,
		Attempt:   number,
		Signing:   creds.signing,
		Timeout:   ep.Spec.GetTimeout(),
		CABundle:  creds.caBundle,
	}
	if creds.authHeaderName != "" {
		msg.Headers = map[string][]string{creds.authHeaderName: {creds.authHeaderValue}}
	}

	started := r.Clock.Now()
	observed := observeAttempt(d, manual, started)
	res := r.Sender.Send(ctx, msg)
	observed(res)
	now := r.Clock.Now()

	d.Status.Attempts = number
	d.Status.LastAttemptTime = &metav1.Time{Time: started}
	d.Status.LastStatusCode = int32(res.StatusCode)
	d.Status.LastDurationMilliseconds = res.Duration.Milliseconds()
	d.Status.LastError = res.Error
	d.Status.History = append(d.Status.History, webhooksv1alpha1.Attempt{
		Number: number, Time: metav1.Time{Time: started}, StatusCode: int32(res.StatusCode),
		DurationMilliseconds: res.Duration.Milliseconds(), Result: webhooksv1alpha1.AttemptResult(res.Class), Error: res.Error, Trigger: trigger,
	})
	if n := len(d.Status.History); n > webhooksv1alpha1.MaxAttemptHistory {
		d.Status.History = d.Status.History[n-webhooksv1alpha1.MaxAttemptHistory:]
	}
	log.V(1).Info("attempt made", "attempt", number, "trigger", trigger, "result", res.Class,
		"statusCode", res.StatusCode, "durationMs", res.Duration.Milliseconds())

	switch transition := r.health.record(ep, res.Succeeded(), res.StatusCode == http.StatusGone, started); transition {
	case transitionFailing:
		r.Recorder.Eventf(ep, nil, "Warning", webhooksv1alpha1.EventReasonEndpointFailing, "Deliver",
			"an attempt to this endpoint failed (%s); deliveries are retried per the retry policy", describe(res))
	case transitionRecovered:
		r.Recorder.Eventf(ep, nil, "Normal", webhooksv1alpha1.EventReasonEndpointRecovered, "Deliver", "the endpoint accepts deliveries again")
	}

	policy := policyFor(ep)
	switch {
	case res.Succeeded():
		r.finish(d, webhooksv1alpha1.PhaseSucceeded, webhooksv1alpha1.ReasonDelivered, fmt.Sprintf("delivered at attempt %d (HTTP %d)", number, res.StatusCode))
		if number > 1 {
			r.Recorder.Eventf(d, ep, "Normal", webhooksv1alpha1.ReasonDelivered, "Deliver", "delivered at attempt %d after earlier failures", number)
		}
		return ctrl.Result{}, nil

	case res.StatusCode == http.StatusGone:
		// 410 is the receiver saying the URL is gone for good: retrying cannot succeed.
		// The endpoint is disabled too (its reconciler, from the health record): its other
		// deliveries are parked, not failed one by one, until it is fixed and re-enabled.
		msg := fmt.Sprintf("attempt %d: the receiver answered 410 Gone, so the delivery is not retried; once the endpoint is fixed, retry with the %s annotation",
			number, webhooksv1alpha1.RetryAnnotation)
		r.finish(d, webhooksv1alpha1.PhaseFailed, webhooksv1alpha1.ReasonEndpointGone, msg)
		log.Info("delivery failed: the receiver answered 410 Gone", "attempt", number)
		return ctrl.Result{}, nil

	case (manual && wasFinished) || policy.Exhausted(number):
		msg := fmt.Sprintf("attempt %d failed (%s); no automatic attempt is left: retry with the %s annotation",
			number, describe(res), webhooksv1alpha1.RetryAnnotation)
		if d.Status.Phase != webhooksv1alpha1.PhaseFailed {
			r.Recorder.Eventf(d, ep, "Warning", webhooksv1alpha1.ReasonRetriesExhausted, "Deliver", "%s", msg)
		}
		r.finish(d, webhooksv1alpha1.PhaseFailed, webhooksv1alpha1.ReasonRetriesExhausted, msg)
		log.Info("delivery failed, retries exhausted", "attempt", number, "result", res.Class, "statusCode", res.StatusCode)
		return ctrl.Result{}, nil

	default:
		next := now.Add(policy.Delay(number-countManual(d.Status.History), res.RetryAfter, r.Jitter()))
		d.Status.Phase = webhooksv1alpha1.PhaseRetrying
		d.Status.NextAttemptTime = &metav1.Time{Time: next}
		msg := fmt.Sprintf("attempt %d of %d failed (%s); next attempt at %s",
			number, policy.MaxRetries+1, describe(res), next.UTC().Format(time.RFC3339))
		setConditions(d, metav1.ConditionFalse, webhooksv1alpha1.ReasonAttemptFailed, msg)
		if number == 1 {
			r.Recorder.Eventf(d, ep, "Warning", webhooksv1alpha1.ReasonAttemptFailed, "Deliver", "%s", msg)
		}
		log.V(1).Info("retry scheduled", "attempt", number, "nextAttemptTime", next)
		return ctrl.Result{RequeueAfter: next.Sub(now)}, nil
	}
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

func describe(res dispatcher.Result) string {
	if res.Error != "" {
		return res.Error
	}
	return string(res.Class)
}

// finish marks a delivery Succeeded or Failed.
func (r *WebhookDeliveryReconciler) finish(d *webhooksv1alpha1.WebhookDelivery, phase webhooksv1alpha1.DeliveryPhase, reason, message string) {
	observeFinished(d.Namespace, d.Status.Phase, phase)
	d.Status.Phase = phase
	d.Status.NextAttemptTime = nil
	d.Status.CompletionTime = &metav1.Time{Time: r.Clock.Now()}
	status := metav1.ConditionFalse
	if phase == webhooksv1alpha1.PhaseSucceeded {
		status = metav1.ConditionTrue
	}
	setConditions(d, status, reason, message)
}

// setConditions sets Ready, and Reconciling and Stalled from the phase.
func setConditions(d *webhooksv1alpha1.WebhookDelivery, ready metav1.ConditionStatus, reason, message string) {
	g := d.Generation
	d.Status.ObservedGeneration = g
	set := func(t string, s metav1.ConditionStatus, reason, message string) {
		meta.SetStatusCondition(&d.Status.Conditions, metav1.Condition{Type: t, Status: s, Reason: reason, Message: message, ObservedGeneration: g})
	}
	set(webhooksv1alpha1.ConditionReady, ready, reason, message)
	switch d.Status.Phase {
	case webhooksv1alpha1.PhaseSucceeded:
		meta.RemoveStatusCondition(&d.Status.Conditions, webhooksv1alpha1.ConditionReconciling)
		meta.RemoveStatusCondition(&d.Status.Conditions, webhooksv1alpha1.ConditionStalled)
	case webhooksv1alpha1.PhaseFailed:
		meta.RemoveStatusCondition(&d.Status.Conditions, webhooksv1alpha1.ConditionReconciling)
		set(webhooksv1alpha1.ConditionStalled, metav1.ConditionTrue, reason, message)
	default:
		set(webhooksv1alpha1.ConditionReconciling, metav1.ConditionTrue, reason, message)
		meta.RemoveStatusCondition(&d.Status.Conditions, webhooksv1alpha1.ConditionStalled)
	}
}

// setWaiting records why a delivery is not attempted now.
func setWaiting(d *webhooksv1alpha1.WebhookDelivery, reason, message string) {
	if d.Status.Attempts == 0 {
		d.Status.Phase = webhooksv1alpha1.PhasePending
	}
	setConditions(d, metav1.ConditionFalse, reason, message)
}

// patchStatus writes the status delta, and nothing when nothing changed.
func (r *WebhookDeliveryReconciler) patchStatus(ctx context.Context, base, d *webhooksv1alpha1.WebhookDelivery) error {
	patch := client.MergeFrom(base)
	data, err := patch.Data(d)
	if err != nil {
		return err
	}
	if string(data) == "{}" {
		return nil
	}
	return r.Status().Patch(ctx, d, client.RawPatch(patch.Type(), data))
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

// deliveriesOf maps an endpoint to its unfinished deliveries, so that unpausing or fixing an
// endpoint resumes them at once.
func (r *WebhookDeliveryReconciler) deliveriesOf(ctx context.Context, ep *webhooksv1alpha1.WebhookEndpoint) []reconcile.Request {
	var list webhooksv1alpha1.WebhookDeliveryList
	if err := r.List(ctx, &list, client.InNamespace(ep.Namespace), client.MatchingFields{endpointRefIndex: ep.Name}); err != nil {
		ctrl.LoggerFrom(ctx).Error(err, "listing the deliveries of an endpoint", "endpoint", ep.Name)
		return nil
	}
	var reqs []reconcile.Request
	for i := range list.Items {
		if !list.Items[i].Status.Phase.Finished() {
			reqs = append(reqs, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&list.Items[i])})
		}
	}
	return reqs
}

// leftCache drops the delete events of the cache, which a delivery also gets when it finishes
// (it leaves the field-selected cache): nothing is left to do then, but to forget what was
// expected of it.
func (r *WebhookDeliveryReconciler) leftCache() predicate.Funcs {
	return predicate.Funcs{DeleteFunc: func(e event.DeleteEvent) bool {
		r.expectations.forget(client.ObjectKeyFromObject(e.Object))
		return false
	}}
}

// enabledChanged passes endpoint updates that disable or re-enable the endpoint (a status
// change), so that parked deliveries resume at once.
var enabledChanged = predicate.Funcs{
	UpdateFunc: func(e event.UpdateEvent) bool {
		o, ok1 := e.ObjectOld.(*webhooksv1alpha1.WebhookEndpoint)
		n, ok2 := e.ObjectNew.(*webhooksv1alpha1.WebhookEndpoint)
		return ok1 && ok2 && (o.Status.DisabledSince == nil) != (n.Status.DisabledSince == nil)
	},
	CreateFunc:  func(event.CreateEvent) bool { return false },
	DeleteFunc:  func(event.DeleteEvent) bool { return false },
	GenericFunc: func(event.GenericEvent) bool { return false },
}

// SetupWithManager registers the controller. Status writes of the controller itself do not
// trigger a reconcile: only creation, spec changes (none: the spec is immutable) and annotation
// changes (the retry annotation) do, besides the schedule's RequeueAfter.
func (r *WebhookDeliveryReconciler) SetupWithManager(ctx context.Context, mgr ctrl.Manager) error {
	r.apiReader = mgr.GetAPIReader()
	if err := mgr.Add(pendingReporter{reader: mgr.GetCache()}); err != nil {
		return err
	}
	if err := mgr.GetFieldIndexer().IndexField(ctx, &webhooksv1alpha1.WebhookDelivery{}, endpointRefIndex,
		func(o client.Object) []string {
			return []string{o.(*webhooksv1alpha1.WebhookDelivery).Spec.EndpointRef.Name}
		}); err != nil {
		return err
	}
	return ctrl.NewControllerManagedBy(mgr).
		For(&webhooksv1alpha1.WebhookDelivery{}, builder.WithPredicates(
			predicate.Or(predicate.GenerationChangedPredicate{}, predicate.AnnotationChangedPredicate{}),
			r.leftCache())).
		Watches(&webhooksv1alpha1.WebhookEndpoint{},
			handler.EnqueueRequestsFromMapFunc(func(ctx context.Context, o client.Object) []reconcile.Request {
				return r.deliveriesOf(ctx, o.(*webhooksv1alpha1.WebhookEndpoint))
			}),
			builder.WithPredicates(predicate.Or[client.Object](predicate.GenerationChangedPredicate{}, enabledChanged))).
		WatchesRawSource(source.Channel(r.limiter.wake, &handler.TypedEnqueueRequestForObject[*webhooksv1alpha1.WebhookDelivery]{})).
		WatchesRawSource(source.Channel(r.finishedRetries, &handler.TypedEnqueueRequestForObject[*webhooksv1alpha1.WebhookDelivery]{})).
		WithOptions(controller.Options{MaxConcurrentReconciles: r.Options.Workers, RateLimiter: failureRateLimiter()}).
		Complete(r)
}
