package controllers

import (
	"sync"

	"k8s.io/apimachinery/pkg/types"

	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
)

// attemptExpectations remembers, per delivery, how many attempts the controller has written to
// status. The informer cache lags the controller's own writes: a reconcile right after an
// attempt can read the status from before it and would send the event again. While the cache
// shows fewer attempts than written, the delivery is not acted on. This costs no API call.
type attemptExpectations struct {
	mu       sync.Mutex
	attempts map[types.NamespacedName]expectation
}

type expectation struct {
	uid      types.UID
	attempts int32
	// unwritten is the status of an attempt whose status write failed (the API server was
	// unreachable, say). It is written before anything else is done with the delivery, so an
	// outage does not turn into a resend of every attempt made during it.
	unwritten *webhooksv1alpha1.WebhookDeliveryStatus
}

func newAttemptExpectations() *attemptExpectations {
	return &attemptExpectations{attempts: map[types.NamespacedName]expectation{}}
}

// expect records that the status of the delivery key (object uid) now holds n attempts.
func (e *attemptExpectations) expect(key types.NamespacedName, uid types.UID, n int32) {
	e.mu.Lock()
	e.attempts[key] = expectation{uid: uid, attempts: n}
	e.mu.Unlock()
}

// satisfied reports whether the cached object has caught up with what was written, and forgets
// the expectation once it has. An object with another uid is a new object of the same name.
func (e *attemptExpectations) satisfied(key types.NamespacedName, uid types.UID, cachedAttempts int32) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	want, ok := e.attempts[key]
	if !ok || want.uid != uid || cachedAttempts >= want.attempts {
		delete(e.attempts, key)
		return true
	}
	return false
}

// holdUnwritten keeps the status of an attempt that could not be written.
func (e *attemptExpectations) holdUnwritten(key types.NamespacedName, uid types.UID, status *webhooksv1alpha1.WebhookDeliveryStatus) {
	e.mu.Lock()
	e.attempts[key] = expectation{uid: uid, attempts: status.Attempts, unwritten: status}
	e.mu.Unlock()
}

// unwritten returns the status held for the delivery, if any, and if the object has not moved
// past it.
func (e *attemptExpectations) unwritten(key types.NamespacedName, uid types.UID, cachedAttempts int32) *webhooksv1alpha1.WebhookDeliveryStatus {
	e.mu.Lock()
	defer e.mu.Unlock()
	want, ok := e.attempts[key]
	if !ok || want.unwritten == nil || want.uid != uid || cachedAttempts >= want.attempts {
		return nil
	}
	return want.unwritten
}

// forget drops the expectation of a deleted delivery.
func (e *attemptExpectations) forget(key types.NamespacedName) {
	e.mu.Lock()
	delete(e.attempts, key)
	e.mu.Unlock()
}
