package controllers

import (
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"

	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
)

// A busy endpoint wakes its reconciler once until the reconciler has taken the aggregate; a
// transition (first failure, recovery) always wakes it.
func TestHealthWakesTheEndpointOncePerTake(t *testing.T) {
	h := newEndpointHealth()
	ep := &webhooksv1alpha1.WebhookEndpoint{}
	ep.Namespace, ep.Name = "ns", "busy"
	key := types.NamespacedName{Namespace: "ns", Name: "busy"}
	now := time.Unix(1_700_000_000, 0)

	for i := range 100 {
		h.record(ep, true, false, now.Add(time.Duration(i)*time.Millisecond))
	}
	if n := len(h.wake); n != 1 {
		t.Fatalf("100 successes woke the endpoint %d times, want 1", n)
	}
	if tr := h.record(ep, false, false, now.Add(time.Second)); tr != transitionFailing {
		t.Fatalf("first failure: transition %q, want %q", tr, transitionFailing)
	}
	if n := len(h.wake); n != 2 {
		t.Fatalf("a transition must wake the endpoint: %d wakes, want 2", n)
	}
	s, ok := h.take(key)
	if !ok || s.ConsecutiveFailures != 1 || s.FailingSince == nil || !s.LastSuccessTime.Time.Equal(now.Add(99*time.Millisecond)) {
		t.Fatalf("aggregate = %+v", s)
	}
	h.record(ep, false, false, now.Add(2*time.Second))
	if n := len(h.wake); n != 3 {
		t.Fatalf("after take, the next attempt wakes the endpoint: %d wakes, want 3", n)
	}
	h.hold(key)
	h.record(ep, false, false, now.Add(3*time.Second))
	if n := len(h.wake); n != 3 {
		t.Fatalf("while a reconcile is held back, attempts do not wake: %d wakes, want 3", n)
	}
}
