package controllers

import (
	"testing"

	"k8s.io/apimachinery/pkg/types"

	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
)

// These tests need no API server: the expectations are memory only.

// A step is one call on the expectations of the delivery key, and what it must answer.
type expectationStep struct {
	op       string // expect, hold, forget, satisfied, unwritten
	uid      types.UID
	attempts int32 // written (expect, hold) or cached (satisfied, unwritten)
	want     bool  // satisfied: caught up; unwritten: a held status is returned
}

// After an attempt the cache may lag the controller's own write: until the cached object shows
// as many attempts as were written, the delivery is not acted on (and the event is not sent
// again); a status that could not be written is held until the object moves past it; a new
// object of the same name owes nothing to the old one.
func TestAttemptExpectations(t *testing.T) {
	const uid, otherUID = types.UID("uid-1"), types.UID("uid-2")
	tests := []struct {
		name  string
		steps []expectationStep
	}{
		{"nothing expected: acted on", []expectationStep{
			{op: "satisfied", uid: uid, attempts: 0, want: true},
			{op: "unwritten", uid: uid, attempts: 0, want: false},
		}},
		{"a cache behind the written attempts waits, then catches up", []expectationStep{
			{op: "expect", uid: uid, attempts: 2},
			{op: "satisfied", uid: uid, attempts: 1, want: false},
			{op: "satisfied", uid: uid, attempts: 1, want: false},
			{op: "satisfied", uid: uid, attempts: 2, want: true},
		}},
		{"a cache ahead of the written attempts is caught up", []expectationStep{
			{op: "expect", uid: uid, attempts: 2},
			{op: "satisfied", uid: uid, attempts: 3, want: true},
		}},
		{"once caught up the expectation is forgotten", []expectationStep{
			{op: "expect", uid: uid, attempts: 2},
			{op: "satisfied", uid: uid, attempts: 2, want: true},
			{op: "satisfied", uid: uid, attempts: 0, want: true},
		}},
		{"the latest expectation counts", []expectationStep{
			{op: "expect", uid: uid, attempts: 1},
			{op: "expect", uid: uid, attempts: 2},
			{op: "satisfied", uid: uid, attempts: 1, want: false},
		}},
		{"a new object under the same name is acted on, and the old expectation is gone", []expectationStep{
			{op: "expect", uid: uid, attempts: 3},
			{op: "satisfied", uid: otherUID, attempts: 0, want: true},
			{op: "satisfied", uid: uid, attempts: 0, want: true},
		}},
		{"an unwritten status is held until the object moves past it", []expectationStep{
			{op: "hold", uid: uid, attempts: 2},
			{op: "unwritten", uid: uid, attempts: 1, want: true},
			{op: "satisfied", uid: uid, attempts: 1, want: false},
			{op: "unwritten", uid: uid, attempts: 1, want: true},
			{op: "unwritten", uid: uid, attempts: 2, want: false},
		}},
		{"an unwritten status is not offered to a new object under the same name", []expectationStep{
			{op: "hold", uid: uid, attempts: 2},
			{op: "unwritten", uid: otherUID, attempts: 0, want: false},
			{op: "satisfied", uid: otherUID, attempts: 0, want: true},
			{op: "unwritten", uid: uid, attempts: 1, want: false},
		}},
		{"a written status replaces the held one", []expectationStep{
			{op: "hold", uid: uid, attempts: 2},
			{op: "expect", uid: uid, attempts: 2},
			{op: "unwritten", uid: uid, attempts: 1, want: false},
			{op: "satisfied", uid: uid, attempts: 1, want: false},
		}},
		{"a plain expectation holds no status", []expectationStep{
			{op: "expect", uid: uid, attempts: 2},
			{op: "unwritten", uid: uid, attempts: 1, want: false},
		}},
		{"a deleted delivery is forgotten, held status and all", []expectationStep{
			{op: "hold", uid: uid, attempts: 2},
			{op: "forget"},
			{op: "unwritten", uid: uid, attempts: 1, want: false},
			{op: "satisfied", uid: uid, attempts: 1, want: true},
		}},
	}
	key := types.NamespacedName{Namespace: "ns", Name: "d"}
	other := types.NamespacedName{Namespace: "ns", Name: "other"}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newAttemptExpectations()
			// Another delivery's expectation changes nothing for this one.
			e.expect(other, uid, 5)
			for i, s := range tc.steps {
				switch s.op {
				case "expect":
					e.expect(key, s.uid, s.attempts)
				case "hold":
					e.holdUnwritten(key, s.uid, &webhooksv1alpha1.WebhookDeliveryStatus{Attempts: s.attempts})
				case "forget":
					e.forget(key)
				case "satisfied":
					if got := e.satisfied(key, s.uid, s.attempts); got != s.want {
						t.Fatalf("step %d: satisfied(%s, %d cached) = %v, want %v", i+1, s.uid, s.attempts, got, s.want)
					}
				case "unwritten":
					got := e.unwritten(key, s.uid, s.attempts)
					if (got != nil) != s.want {
						t.Fatalf("step %d: unwritten(%s, %d cached) = %v, want a held status: %v", i+1, s.uid, s.attempts, got, s.want)
					}
				default:
					t.Fatalf("unknown step %q", s.op)
				}
			}
			if e.satisfied(other, uid, 4) {
				t.Error("the other delivery's expectation was lost")
			}
		})
	}
}

// The held status is the one that could not be written, not a copy of another.
func TestAttemptExpectationsReturnTheHeldStatus(t *testing.T) {
	e := newAttemptExpectations()
	key := types.NamespacedName{Namespace: "ns", Name: "d"}
	held := &webhooksv1alpha1.WebhookDeliveryStatus{Attempts: 3, Phase: webhooksv1alpha1.PhaseRetrying}
	e.holdUnwritten(key, "uid-1", held)
	if got := e.unwritten(key, "uid-1", 2); got != held {
		t.Fatalf("unwritten = %+v, want the held status %+v", got, held)
	}
}
