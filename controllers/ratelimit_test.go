package controllers

import (
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
)

func limitedEndpoint(requests, periodSeconds int32) *webhooksv1alpha1.WebhookEndpoint {
	ep := &webhooksv1alpha1.WebhookEndpoint{}
	ep.Namespace, ep.Name, ep.UID = "ns", "crm", "uid-1"
	ep.Spec.RateLimit = &webhooksv1alpha1.RateLimit{Requests: requests, PeriodSeconds: ptr.To(periodSeconds)}
	return ep
}

func delivery(i int) types.NamespacedName {
	return types.NamespacedName{Namespace: "ns", Name: "d-" + string(rune('a'+i))}
}

// Ten deliveries arriving together at 5 per second are spread evenly, one every 200 ms: each
// gets its own time once, and asking again (the requeued reconcile) gives the same time, never
// a later one.
func TestRateLimiterSpacesDeliveriesAndRemembersEachReservation(t *testing.T) {
	var woken []types.NamespacedName
	l := newRateLimiter(func(ep types.NamespacedName) { woken = append(woken, ep) })
	ep := limitedEndpoint(5, 1)
	now := t0
	for i := range 10 {
		want := time.Duration(i) * 200 * time.Millisecond
		if got := l.wait(ep, delivery(i), now); got != want {
			t.Fatalf("delivery %d waits %s, want %s", i, got, want)
		}
	}
	// A second reconcile of each, 50 ms later, reserves nothing new.
	for i := range 10 {
		want := max(time.Duration(i)*200*time.Millisecond-50*time.Millisecond, 0)
		if got := l.wait(ep, delivery(i), now.Add(50*time.Millisecond)); got != want {
			t.Fatalf("delivery %d asked again waits %s, want %s", i, got, want)
		}
	}
	if n, until := l.throttled(types.NamespacedName{Namespace: "ns", Name: "crm"}, now); n != 9 || !until.Equal(now.Add(1800*time.Millisecond)) {
		t.Fatalf("throttled = %d until %s, want 9 until +1.8s", n, until.Sub(now))
	}
	if len(woken) != 1 {
		t.Fatalf("the endpoint was woken %d times, want once, when throttling started", len(woken))
	}
	// The first one starts; its token is used. Asking for it again reserves a new turn, after
	// the ten (it is a new attempt, such as a retry).
	if turn := l.started(delivery(0)); !turn.Equal(now) {
		t.Fatalf("turn of the first delivery = %s, want now", turn)
	}
	if got := l.wait(ep, delivery(0), now.Add(100*time.Millisecond)); got != 1900*time.Millisecond {
		t.Fatalf("a new attempt of the first delivery waits %s, want 1.9s (after the other nine)", got)
	}
}

// A delivery that has its turn but finds the endpoint's in-flight slots taken keeps its token:
// when a slot wakes it, it goes at once rather than queueing again behind later deliveries.
func TestRateLimiterKeepsTheTokenOfADeliveryWaitingForAnInFlightSlot(t *testing.T) {
	l := newRateLimiter(nil)
	ep := limitedEndpoint(1, 10)
	if got := l.wait(ep, delivery(0), t0); got != 0 {
		t.Fatalf("first delivery waits %s", got)
	}
	if got := l.wait(ep, delivery(1), t0); got != 10*time.Second {
		t.Fatalf("second delivery waits %s, want 10s", got)
	}
	// delivery 0 was turned away by the in-flight limiter, and is woken 3 s later.
	if got := l.wait(ep, delivery(0), t0.Add(3*time.Second)); got != 0 {
		t.Fatalf("woken from the in-flight line, the delivery waits %s, want 0", got)
	}
}

// Forgetting a delivery, a changed rate or a deleted endpoint drops reservations; the maps hold
// nothing for deliveries that went away.
func TestRateLimiterForgets(t *testing.T) {
	l := newRateLimiter(nil)
	ep := limitedEndpoint(1, 1)
	for i := range 3 {
		l.wait(ep, delivery(i), t0)
	}
	l.forget(delivery(1))
	if len(l.holders) != 2 || len(l.buckets[types.NamespacedName{Namespace: "ns", Name: "crm"}].tokens) != 2 {
		t.Fatalf("after forget: %d holders", len(l.holders))
	}
	// A new rate is a new bucket: the remembered turns of the old rate are dropped.
	faster := limitedEndpoint(10, 1)
	if got := l.wait(faster, delivery(2), t0); got != 0 {
		t.Fatalf("with a new rate, the delivery reserves anew: waits %s, want 0", got)
	}
	if len(l.holders) != 1 {
		t.Fatalf("the old bucket's reservations are kept: %d holders", len(l.holders))
	}
	// Without a rate limit nothing waits and the bucket goes.
	none := limitedEndpoint(1, 1)
	none.Spec.RateLimit = nil
	if got := l.wait(none, delivery(0), t0); got != 0 || len(l.buckets) != 0 || len(l.holders) != 0 {
		t.Fatalf("rate limit removed: waits %s, %d buckets, %d holders", got, len(l.buckets), len(l.holders))
	}
	l.wait(ep, delivery(0), t0)
	l.wait(ep, delivery(1), t0)
	l.forgetEndpoint(types.NamespacedName{Namespace: "ns", Name: "crm"})
	if len(l.buckets) != 0 || len(l.holders) != 0 {
		t.Fatalf("endpoint deleted: %d buckets, %d holders", len(l.buckets), len(l.holders))
	}
	// An endpoint deleted and created again with the same name (a new UID) starts afresh.
	l.wait(ep, delivery(0), t0)
	again := limitedEndpoint(1, 1)
	again.UID = "uid-2"
	if got := l.wait(again, delivery(1), t0); got != 0 {
		t.Fatalf("a new endpoint of the same name inherits the old bucket: waits %s", got)
	}
}

func TestRateLimiterCountsWaitingDeliveriesByNamespace(t *testing.T) {
	l := newRateLimiter(nil)
	ep := limitedEndpoint(2, 1)
	for i := range 5 {
		l.wait(ep, delivery(i), t0)
	}
	if got := l.waitingByNamespace(t0)["ns"]; got != 4 {
		t.Fatalf("waiting at t0 = %d, want 4", got)
	}
	if got := l.waitingByNamespace(t0.Add(time.Second))["ns"]; got != 2 {
		t.Fatalf("waiting 1 s later = %d, want 2", got)
	}
	if got, ok := l.waitingByNamespace(t0.Add(time.Hour))["ns"]; got != 0 || !ok {
		t.Fatalf("a namespace with a bucket and none waiting reports 0, got %d (%v)", got, ok)
	}
}
