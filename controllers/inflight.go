package controllers

import (
	"sync"

	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/event"

	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
)

// inflightLimiter bounds the attempts in flight to one endpoint, so that a slow or silent
// receiver holds at most `limit` workers and cannot starve the others (no head-of-line
// blocking). A delivery turned away waits in its endpoint's line and is woken, through the
// controller's channel source, when a slot frees; it costs no polling.
type inflightLimiter struct {
	limit int
	wake  chan event.TypedGenericEvent[*webhooksv1alpha1.WebhookDelivery]

	mu      sync.Mutex
	running map[types.NamespacedName]int
	waiting map[types.NamespacedName][]types.NamespacedName
}

func newInflightLimiter(limit int) *inflightLimiter {
	return &inflightLimiter{
		limit:   limit,
		wake:    make(chan event.TypedGenericEvent[*webhooksv1alpha1.WebhookDelivery], 4096),
		running: map[types.NamespacedName]int{},
		waiting: map[types.NamespacedName][]types.NamespacedName{},
	}
}

// tryAcquire takes a slot of endpoint for delivery, or puts delivery in the endpoint's line.
func (l *inflightLimiter) tryAcquire(endpoint, delivery types.NamespacedName) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.limit <= 0 || l.running[endpoint] < l.limit {
		l.running[endpoint]++
		return true
	}
	l.waiting[endpoint] = append(l.waiting[endpoint], delivery)
	return false
}

// release frees a slot of endpoint and wakes the next delivery in its line.
func (l *inflightLimiter) release(endpoint types.NamespacedName) {
	l.mu.Lock()
	if l.running[endpoint]--; l.running[endpoint] <= 0 {
		delete(l.running, endpoint)
	}
	var next *types.NamespacedName
	if line := l.waiting[endpoint]; len(line) > 0 {
		next = &line[0]
		if len(line) == 1 {
			delete(l.waiting, endpoint)
		} else {
			l.waiting[endpoint] = line[1:]
		}
	}
	l.mu.Unlock()
	if next == nil {
		return
	}
	d := &webhooksv1alpha1.WebhookDelivery{}
	d.Namespace, d.Name = next.Namespace, next.Name
	select {
	case l.wake <- event.TypedGenericEvent[*webhooksv1alpha1.WebhookDelivery]{Object: d}:
	default: // the line's fallback requeue picks it up
	}
}
