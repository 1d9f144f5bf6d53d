package controllers

import (
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/event"

	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
)

// endpointHealth aggregates attempt results per endpoint in memory. The delivery controller
// records each result; the endpoint controller copies the aggregate into the endpoint's status
// at a bounded rate. Writing the endpoint's status on every attempt would add an API write per
// delivery; this way a busy endpoint costs one write per interval.
type endpointHealth struct {
	wake chan event.TypedGenericEvent[*webhooksv1alpha1.WebhookEndpoint]

	mu      sync.Mutex
	entries map[types.NamespacedName]healthStats
	// woken holds the endpoints that have a reconcile coming, so that a busy endpoint costs one
	// endpoint reconcile per HealthUpdateInterval, not one per attempt.
	woken map[types.NamespacedName]bool
}

// healthStats is the part of an endpoint's status that attempts change.
type healthStats struct {
	LastSuccessTime     *metav1.Time
	LastFailureTime     *metav1.Time
	ConsecutiveFailures int32
	// FailingSince is the first failure of the current run of failures.
	FailingSince *metav1.Time
	// Gone: the last attempt was answered 410 Gone.
	Gone bool
}

// healthTransition names a change worth an Event.
type healthTransition string

const (
	transitionNone      healthTransition = ""
	transitionFailing   healthTransition = "Failing"
	transitionRecovered healthTransition = "Recovered"
)

func newEndpointHealth() *endpointHealth {
	return &endpointHealth{
		wake:    make(chan event.TypedGenericEvent[*webhooksv1alpha1.WebhookEndpoint], 1024),
		entries: map[types.NamespacedName]healthStats{},
		woken:   map[types.NamespacedName]bool{},
	}
}

// record adds one attempt's result. The first result of an endpoint since the operator started
// continues from its status.
func (h *endpointHealth) record(ep *webhooksv1alpha1.WebhookEndpoint, success, gone bool, at time.Time) healthTransition {
	key := types.NamespacedName{Namespace: ep.Namespace, Name: ep.Name}
	t := metav1.NewTime(at)
	h.mu.Lock()
	s, ok := h.entries[key]
	if !ok {
		s = healthStats{LastSuccessTime: ep.Status.LastSuccessTime, LastFailureTime: ep.Status.LastFailureTime,
			ConsecutiveFailures: ep.Status.ConsecutiveFailures, FailingSince: ep.Status.FailingSince}
	}
	transition := transitionNone
	if success {
		if s.ConsecutiveFailures > 0 {
			transition = transitionRecovered
		}
		s.ConsecutiveFailures, s.LastSuccessTime, s.FailingSince = 0, &t, nil
	} else {
		if s.ConsecutiveFailures == 0 {
			transition = transitionFailing
			s.FailingSince = &t
		}
		s.ConsecutiveFailures++
		s.LastFailureTime = &t
	}
	wake := transition != transitionNone || !h.woken[key] || (gone && !s.Gone)
	s.Gone = gone
	h.entries[key] = s
	h.woken[key] = true
	h.mu.Unlock()

	if wake {
		obj := &webhooksv1alpha1.WebhookEndpoint{}
		obj.Namespace, obj.Name = ep.Namespace, ep.Name
		select {
		case h.wake <- event.TypedGenericEvent[*webhooksv1alpha1.WebhookEndpoint]{Object: obj}:
		default: // full: let the next attempt try again
			h.mu.Lock()
			h.woken[key] = false
			h.mu.Unlock()
		}
	}
	return transition
}

// take returns the aggregate of an endpoint, if any attempt was recorded since the start. The
// next attempt wakes the endpoint again, unless hold says a reconcile is already scheduled.
func (h *endpointHealth) take(key types.NamespacedName) (healthStats, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.woken, key)
	s, ok := h.entries[key]
	return s, ok
}

// hold notes that the endpoint's reconcile is scheduled (a write held back by the rate bound).
func (h *endpointHealth) hold(key types.NamespacedName) {
	h.mu.Lock()
	h.woken[key] = true
	h.mu.Unlock()
}

// restart starts a new run of failures from at, for an endpoint that was re-enabled: it gets
// the whole auto-disable period again.
func (h *endpointHealth) restart(key types.NamespacedName, at time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if s, ok := h.entries[key]; ok {
		if s.FailingSince != nil {
			t := metav1.NewTime(at)
			s.FailingSince = &t
		}
		s.Gone = false
		h.entries[key] = s
	}
}

// forget drops a deleted endpoint.
func (h *endpointHealth) forget(key types.NamespacedName) {
	h.mu.Lock()
	delete(h.entries, key)
	delete(h.woken, key)
	h.mu.Unlock()
}

// touch asks for the endpoint's reconcile now, even when one is scheduled (a write held back
// until the end of the interval): something besides an attempt changed what its status shows,
// and the change is a transition that is written at once (it started to be throttled).
func (h *endpointHealth) touch(key types.NamespacedName) {
	h.mu.Lock()
	h.woken[key] = true
	h.mu.Unlock()
	obj := &webhooksv1alpha1.WebhookEndpoint{}
	obj.Namespace, obj.Name = key.Namespace, key.Name
	select {
	case h.wake <- event.TypedGenericEvent[*webhooksv1alpha1.WebhookEndpoint]{Object: obj}:
	default: // full: the endpoint's next reconcile publishes it
		h.mu.Lock()
		h.woken[key] = false
		h.mu.Unlock()
	}
}
