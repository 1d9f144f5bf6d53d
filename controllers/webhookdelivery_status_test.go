package controllers

import (
	"net/http"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
	"github.com/docrouter/webhook-operator/dispatcher"
)

// These tests need no API server: the decisions are pure functions of their inputs.

var t0 = time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)

func failedHTTP(code int) dispatcher.Result {
	return dispatcher.Result{Class: dispatcher.ClassHTTPError, StatusCode: code, Error: "HTTP " + http.StatusText(code), Duration: 40 * time.Millisecond}
}

// policy3 is 3 retries from 10 s, doubling, no jitter.
var policy3 = dispatcher.Policy{MaxRetries: 3, InitialDelay: 10 * time.Second, Factor: 2, MaxDelay: time.Hour}

func TestDecideOutcome(t *testing.T) {
	ok := dispatcher.Result{Class: dispatcher.ClassSuccess, StatusCode: 204}
	tests := []struct {
		name string
		in   attemptDecision
		// want
		phase     webhooksv1alpha1.DeliveryPhase
		reason    string
		next      time.Duration // after Now, for Retrying
		event     string        // reason of the Event, "" for none
		inMessage string
	}{
		{name: "first attempt succeeds: delivered, no Event",
			in:    attemptDecision{Number: 1, Result: ok, Policy: policy3, Now: t0},
			phase: webhooksv1alpha1.PhaseSucceeded, reason: webhooksv1alpha1.ReasonDelivered, inMessage: "delivered at attempt 1 (HTTP 204)"},
		{name: "success after failures: delivered, with a Normal Event",
			in:    attemptDecision{Number: 3, Result: ok, PreviousPhase: webhooksv1alpha1.PhaseRetrying, Policy: policy3, Now: t0},
			phase: webhooksv1alpha1.PhaseSucceeded, reason: webhooksv1alpha1.ReasonDelivered, event: webhooksv1alpha1.ReasonDelivered},
		{name: "first failure: retried after the initial delay, with a Warning Event",
			in:    attemptDecision{Number: 1, Result: failedHTTP(500), Policy: policy3, Now: t0},
			phase: webhooksv1alpha1.PhaseRetrying, reason: webhooksv1alpha1.ReasonAttemptFailed, next: 10 * time.Second,
			event: webhooksv1alpha1.ReasonAttemptFailed, inMessage: "attempt 1 of 4 failed (HTTP Internal Server Error); next attempt at 2026-11-30T12:00:10Z"},
		{name: "second failure: the wait doubles, no new Event",
			in:    attemptDecision{Number: 2, Result: failedHTTP(503), PreviousPhase: webhooksv1alpha1.PhaseRetrying, Policy: policy3, Now: t0},
			phase: webhooksv1alpha1.PhaseRetrying, reason: webhooksv1alpha1.ReasonAttemptFailed, next: 20 * time.Second},
		{name: "jitter lengthens the wait by up to jitterPercent",
			in: attemptDecision{Number: 1, Result: failedHTTP(500), Now: t0, Jitter: 0.5,
				Policy: dispatcher.Policy{MaxRetries: 3, InitialDelay: 10 * time.Second, Factor: 2, MaxDelay: time.Hour, JitterPercent: 10}},
			phase: webhooksv1alpha1.PhaseRetrying, reason: webhooksv1alpha1.ReasonAttemptFailed, next: 10500 * time.Millisecond,
			event: webhooksv1alpha1.ReasonAttemptFailed},
		{name: "a longer Retry-After is honoured",
			in: attemptDecision{Number: 1, Now: t0, Policy: policy3,
				Result: dispatcher.Result{Class: dispatcher.ClassHTTPError, StatusCode: 429, RetryAfter: 45 * time.Second}},
			phase: webhooksv1alpha1.PhaseRetrying, reason: webhooksv1alpha1.ReasonAttemptFailed, next: 45 * time.Second,
			event: webhooksv1alpha1.ReasonAttemptFailed},
		{name: "a manual attempt on a Retrying delivery does not lengthen the schedule",
			in: attemptDecision{Number: 3, Result: failedHTTP(500), Manual: true, ManualAttempts: 1,
				PreviousPhase: webhooksv1alpha1.PhaseRetrying, Policy: policy3, Now: t0},
			phase: webhooksv1alpha1.PhaseRetrying, reason: webhooksv1alpha1.ReasonAttemptFailed, next: 20 * time.Second},
		{name: "the last retry fails: Failed, with a Warning Event",
			in:    attemptDecision{Number: 4, Result: failedHTTP(500), PreviousPhase: webhooksv1alpha1.PhaseRetrying, Policy: policy3, Now: t0},
			phase: webhooksv1alpha1.PhaseFailed, reason: webhooksv1alpha1.ReasonRetriesExhausted, event: webhooksv1alpha1.ReasonRetriesExhausted,
			inMessage: "no automatic attempt is left: retry with the webhooks.docrouter.ai/retry annotation"},
		{name: "maxRetries 0: the first failure is final",
			in:    attemptDecision{Number: 1, Result: failedHTTP(500), Policy: dispatcher.Policy{MaxRetries: 0, InitialDelay: time.Second, Factor: 2, MaxDelay: time.Hour}, Now: t0},
			phase: webhooksv1alpha1.PhaseFailed, reason: webhooksv1alpha1.ReasonRetriesExhausted, event: webhooksv1alpha1.ReasonRetriesExhausted},
		{name: "a manual attempt on a Failed delivery that fails again: Failed, no second Event",
			in: attemptDecision{Number: 5, Result: failedHTTP(500), Manual: true, ManualAttempts: 1,
				PreviousPhase: webhooksv1alpha1.PhaseFailed, Policy: policy3, Now: t0},
			phase: webhooksv1alpha1.PhaseFailed, reason: webhooksv1alpha1.ReasonRetriesExhausted},
		{name: "a manual attempt on a Succeeded delivery that fails: Failed, no automatic retries",
			in: attemptDecision{Number: 2, Result: failedHTTP(500), Manual: true, ManualAttempts: 1,
				PreviousPhase: webhooksv1alpha1.PhaseSucceeded, Policy: policy3, Now: t0},
			phase: webhooksv1alpha1.PhaseFailed, reason: webhooksv1alpha1.ReasonRetriesExhausted, event: webhooksv1alpha1.ReasonRetriesExhausted},
		{name: "a manual attempt on a Failed delivery that succeeds: Succeeded",
			in: attemptDecision{Number: 5, Result: ok, Manual: true, ManualAttempts: 1,
				PreviousPhase: webhooksv1alpha1.PhaseFailed, Policy: policy3, Now: t0},
			phase: webhooksv1alpha1.PhaseSucceeded, reason: webhooksv1alpha1.ReasonDelivered, event: webhooksv1alpha1.ReasonDelivered},
		{name: "410 Gone: Failed at once with retries left, no Event on the delivery",
			in:    attemptDecision{Number: 1, Result: failedHTTP(http.StatusGone), Policy: policy3, Now: t0},
			phase: webhooksv1alpha1.PhaseFailed, reason: webhooksv1alpha1.ReasonEndpointGone, inMessage: "410 Gone"},
		{name: "a timeout is retried and described",
			in: attemptDecision{Number: 1, Policy: policy3, Now: t0,
				Result: dispatcher.Result{Class: dispatcher.ClassTimeout, Error: "no answer within 10s"}},
			phase: webhooksv1alpha1.PhaseRetrying, reason: webhooksv1alpha1.ReasonAttemptFailed, next: 10 * time.Second,
			event: webhooksv1alpha1.ReasonAttemptFailed, inMessage: "(no answer within 10s)"},
		{name: "a blocked address without an error text is described by its class",
			in: attemptDecision{Number: 1, Policy: policy3, Now: t0,
				Result: dispatcher.Result{Class: dispatcher.ClassBlocked}},
			phase: webhooksv1alpha1.PhaseRetrying, reason: webhooksv1alpha1.ReasonAttemptFailed, next: 10 * time.Second,
			event: webhooksv1alpha1.ReasonAttemptFailed, inMessage: "(Blocked)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := decideOutcome(tt.in)
			if o.Phase != tt.phase || o.Reason != tt.reason {
				t.Fatalf("phase %s reason %s, want %s %s (message %q)", o.Phase, o.Reason, tt.phase, tt.reason, o.Message)
			}
			if tt.phase == webhooksv1alpha1.PhaseRetrying {
				if got := o.NextAttempt.Sub(tt.in.Now); got != tt.next {
					t.Errorf("next attempt after %s, want %s", got, tt.next)
				}
			} else if !o.NextAttempt.IsZero() {
				t.Errorf("a finished outcome has a next attempt: %s", o.NextAttempt)
			}
			switch {
			case tt.event == "" && o.Event != nil:
				t.Errorf("unexpected Event %+v", *o.Event)
			case tt.event != "" && (o.Event == nil || o.Event.Reason != tt.event):
				t.Errorf("Event %+v, want reason %s", o.Event, tt.event)
			case o.Event != nil && o.Event.Type != "Normal" && o.Event.Type != "Warning":
				t.Errorf("Event type %q", o.Event.Type)
			}
			if !strings.Contains(o.Message, tt.inMessage) {
				t.Errorf("message %q does not contain %q", o.Message, tt.inMessage)
			}
		})
	}
}

func TestRecordAttemptKeepsTheLastAttemptsInHistory(t *testing.T) {
	var s webhooksv1alpha1.WebhookDeliveryStatus
	for n := int32(1); n <= webhooksv1alpha1.MaxAttemptHistory+5; n++ {
		trigger := webhooksv1alpha1.TriggerScheduled
		if n%7 == 0 {
			trigger = webhooksv1alpha1.TriggerManual
		}
		recordAttempt(&s, n, trigger, t0.Add(time.Duration(n)*time.Minute), failedHTTP(502))
	}
	if s.Attempts != webhooksv1alpha1.MaxAttemptHistory+5 || len(s.History) != webhooksv1alpha1.MaxAttemptHistory {
		t.Fatalf("attempts %d, history %d", s.Attempts, len(s.History))
	}
	first, last := s.History[0], s.History[len(s.History)-1]
	if first.Number != 6 || last.Number != 25 {
		t.Errorf("history holds attempts %d..%d, want 6..25", first.Number, last.Number)
	}
	if last.StatusCode != 502 || last.Result != webhooksv1alpha1.AttemptHTTPError || last.DurationMilliseconds != 40 ||
		!last.Time.Time.Equal(t0.Add(25*time.Minute)) {
		t.Errorf("last attempt %+v", last)
	}
	if !s.LastAttemptTime.Time.Equal(t0.Add(25*time.Minute)) || s.LastStatusCode != 502 || s.LastError == "" {
		t.Errorf("last-attempt fields %+v", s)
	}
	if got := countManual(s.History); got != 3 { // 7, 14, 21 are in the history
		t.Errorf("countManual = %d, want 3", got)
	}
	recordAttempt(&s, 26, webhooksv1alpha1.TriggerScheduled, t0, dispatcher.Result{Class: dispatcher.ClassSuccess, StatusCode: 200})
	if s.LastError != "" {
		t.Errorf("a success clears lastError: %q", s.LastError)
	}
}

func TestApplyOutcomeSetsPhaseTimesAndConditions(t *testing.T) {
	next := t0.Add(time.Minute)
	tests := []struct {
		name                       string
		outcome                    attemptOutcome
		ready, reconciling, stalls metav1.ConditionStatus // "" for absent
		completed, scheduled       bool
	}{
		{"retrying", attemptOutcome{Phase: webhooksv1alpha1.PhaseRetrying, Reason: webhooksv1alpha1.ReasonAttemptFailed, NextAttempt: next},
			metav1.ConditionFalse, metav1.ConditionTrue, "", false, true},
		{"succeeded", attemptOutcome{Phase: webhooksv1alpha1.PhaseSucceeded, Reason: webhooksv1alpha1.ReasonDelivered},
			metav1.ConditionTrue, "", "", true, false},
		{"failed", attemptOutcome{Phase: webhooksv1alpha1.PhaseFailed, Reason: webhooksv1alpha1.ReasonRetriesExhausted},
			metav1.ConditionFalse, "", metav1.ConditionTrue, true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := &webhooksv1alpha1.WebhookDelivery{}
			d.Generation = 1
			// From Retrying with a schedule, as a delivery is before its last attempt.
			applyOutcome(d, attemptOutcome{Phase: webhooksv1alpha1.PhaseRetrying, Reason: "AttemptFailed", NextAttempt: t0}, t0)
			applyOutcome(d, tt.outcome, t0)
			if d.Status.Phase != tt.outcome.Phase || d.Status.ObservedGeneration != 1 {
				t.Fatalf("status %+v", d.Status)
			}
			for ct, want := range map[string]metav1.ConditionStatus{
				webhooksv1alpha1.ConditionReady: tt.ready, webhooksv1alpha1.ConditionReconciling: tt.reconciling, webhooksv1alpha1.ConditionStalled: tt.stalls,
			} {
				c := condition(d.Status.Conditions, ct)
				if c.Status != want || (want != "" && c.Reason != tt.outcome.Reason) {
					t.Errorf("%s = %q (%s), want %q", ct, c.Status, c.Reason, want)
				}
			}
			if (d.Status.CompletionTime != nil) != tt.completed {
				t.Errorf("completionTime %v", d.Status.CompletionTime)
			}
			if (d.Status.NextAttemptTime != nil) != tt.scheduled {
				t.Errorf("nextAttemptTime %v", d.Status.NextAttemptTime)
			}
		})
	}
}

func TestSetWaitingKeepsAttemptedDeliveriesInTheirPhase(t *testing.T) {
	w := &waitError{Reason: webhooksv1alpha1.ReasonEndpointPaused, Message: "paused"}
	fresh := &webhooksv1alpha1.WebhookDelivery{}
	setWaiting(fresh, w)
	if fresh.Status.Phase != webhooksv1alpha1.PhasePending || condition(fresh.Status.Conditions, "Ready").Reason != webhooksv1alpha1.ReasonEndpointPaused {
		t.Errorf("a delivery never attempted waits as Pending: %+v", fresh.Status)
	}
	retrying := &webhooksv1alpha1.WebhookDelivery{Status: webhooksv1alpha1.WebhookDeliveryStatus{Phase: webhooksv1alpha1.PhaseRetrying, Attempts: 2}}
	setWaiting(retrying, w)
	if retrying.Status.Phase != webhooksv1alpha1.PhaseRetrying {
		t.Errorf("a delivery with attempts keeps its phase while it waits: %s", retrying.Status.Phase)
	}
}
