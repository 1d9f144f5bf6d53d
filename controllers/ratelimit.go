package controllers

import (
	"context"
	"sync"
	"time"

	"golang.org/x/time/rate"
	"k8s.io/apimachinery/pkg/types"

	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
	"github.com/docrouter/webhook-operator/internal/metrics"
)

// rateLimiter holds a token bucket for each endpoint with spec.rateLimit, in the leader's
// memory (a new leader starts with fresh buckets). A delivery over the rate is given the time
// its token is due and requeued for exactly then: it makes no attempt, writes nothing and uses
// no retry while it waits.
//
// Each delivery's reservation is remembered until its attempt starts, so that the requeued
// reconcile (or any other reconcile of it, or one woken from an in-flight line) uses the token
// it has rather than reserving another: a reservation per reconcile would push every waiting
// delivery further back each time, and deliveries woken together would all reserve at once.
// The remembered reservations are bounded by the unfinished deliveries of rate-limited
// endpoints (the cache holds those); a delivery that goes away is forgotten, and so is an
// endpoint.
type rateLimiter struct {
	// wake asks for the endpoint's reconcile, which publishes the throttling in its status.
	wake func(endpoint types.NamespacedName)

	mu      sync.Mutex
	buckets map[types.NamespacedName]*tokenBucket
	// holders maps a delivery to the endpoint whose bucket holds its reservation.
	holders map[types.NamespacedName]types.NamespacedName
}

// tokenBucket is one endpoint's rate: a burst of one, so that requests are evenly spaced.
type tokenBucket struct {
	uid     types.UID
	limit   webhooksv1alpha1.RateLimit // the spec it was made for
	limiter *rate.Limiter
	// tokens are the reservations not yet used: delivery -> when its token is due.
	tokens map[types.NamespacedName]time.Time
	// last is when the latest token reserved is due (tokens are reserved in time order).
	last time.Time
}

func newRateLimiter(wake func(types.NamespacedName)) *rateLimiter {
	return &rateLimiter{wake: wake, buckets: map[types.NamespacedName]*tokenBucket{},
		holders: map[types.NamespacedName]types.NamespacedName{}}
}

// wait reports how long delivery must wait, at now, for its turn under ep's spec.rateLimit: 0
// when it may go (its token is kept for it until started or forget). An endpoint without a
// rate limit never waits.
func (l *rateLimiter) wait(ep *webhooksv1alpha1.WebhookEndpoint, delivery types.NamespacedName, now time.Time) time.Duration {
	key := types.NamespacedName{Namespace: ep.Namespace, Name: ep.Name}
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.buckets[key]
	spec := ep.Spec.RateLimit
	if spec == nil {
		if b != nil {
			l.drop(key, b)
		}
		return 0
	}
	if b == nil || b.uid != ep.UID || !sameRate(b.limit, *spec) {
		// A new endpoint or a new rate: a new bucket. Reservations in the old one are dropped;
		// the endpoint watch reconciles their deliveries on the spec change, and they reserve
		// in the new bucket.
		if b != nil {
			l.drop(key, b)
		}
		b = &tokenBucket{uid: ep.UID, limit: *spec.DeepCopy(), limiter: rate.NewLimiter(rate.Every(spec.Interval()), 1),
			tokens: map[types.NamespacedName]time.Time{}}
		l.buckets[key] = b
	}
	if at, ok := b.tokens[delivery]; ok {
		return max(at.Sub(now), 0)
	}
	at := now.Add(b.limiter.ReserveN(now, 1).DelayFrom(now))
	b.tokens[delivery] = at
	l.holders[delivery] = key
	if at.After(now) {
		metrics.AttemptsThrottled.WithLabelValues(ep.Namespace).Inc()
		if !b.last.After(now) && l.wake != nil {
			// The endpoint starts to be throttled: its status says so at once (the endpoint
			// reconciler then looks again while it lasts).
			l.wake(key)
		}
	}
	b.last = later(b.last, at)
	return at.Sub(now)
}

// started uses up the delivery's token, its attempt starting, and returns when the token was
// due (zero: the endpoint has no rate limit).
func (l *rateLimiter) started(delivery types.NamespacedName) (turn time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	key, ok := l.holders[delivery]
	if !ok {
		return time.Time{}
	}
	delete(l.holders, delivery)
	if b := l.buckets[key]; b != nil {
		turn = b.tokens[delivery]
		delete(b.tokens, delivery)
	}
	return turn
}

// forget drops the delivery's reservation, if any (the delivery is gone, or its attempt started).
func (l *rateLimiter) forget(delivery types.NamespacedName) {
	l.mu.Lock()
	defer l.mu.Unlock()
	key, ok := l.holders[delivery]
	if !ok {
		return
	}
	delete(l.holders, delivery)
	if b := l.buckets[key]; b != nil {
		delete(b.tokens, delivery)
	}
}

// forgetEndpoint drops a deleted endpoint's bucket.
func (l *rateLimiter) forgetEndpoint(endpoint types.NamespacedName) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if b := l.buckets[endpoint]; b != nil {
		l.drop(endpoint, b)
	}
}

func (l *rateLimiter) drop(key types.NamespacedName, b *tokenBucket) {
	for d := range b.tokens {
		delete(l.holders, d)
	}
	delete(l.buckets, key)
}

// throttled reports, at now, how many deliveries of the endpoint wait for their token and when
// the last token is due.
func (l *rateLimiter) throttled(endpoint types.NamespacedName, now time.Time) (waiting int32, until time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.buckets[endpoint]
	if b == nil {
		return 0, time.Time{}
	}
	for _, at := range b.tokens {
		if at.After(now) {
			waiting++
			until = later(until, at)
		}
	}
	return waiting, until
}

// waitingByNamespace counts, at now, the deliveries waiting for a token, per namespace (the
// docrouter_webhook_deliveries_throttled gauge).
func (l *rateLimiter) waitingByNamespace(now time.Time) map[string]int {
	l.mu.Lock()
	defer l.mu.Unlock()
	counts := map[string]int{}
	for key, b := range l.buckets {
		counts[key.Namespace] += 0
		for _, at := range b.tokens {
			if at.After(now) {
				counts[key.Namespace]++
			}
		}
	}
	return counts
}

func sameRate(a, b webhooksv1alpha1.RateLimit) bool {
	return a.Requests == b.Requests && a.GetPeriod() == b.GetPeriod()
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// throttledReporter feeds the throttled gauge while this replica leads (it holds the buckets).
type throttledReporter struct {
	rates *rateLimiter
	now   func() time.Time
}

// NeedLeaderElection is true: only the leader holds buckets.
func (throttledReporter) NeedLeaderElection() bool { return true }

// Start registers the counter until ctx ends.
func (t throttledReporter) Start(ctx context.Context) error {
	unregister := metrics.RegisterThrottledCounter(func() (map[string]int, error) { return t.rates.waitingByNamespace(t.now()), nil })
	<-ctx.Done()
	unregister()
	return nil
}
