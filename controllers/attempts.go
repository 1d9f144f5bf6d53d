package controllers

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/workqueue"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"
)

// attemptRunner runs attempts outside the reconcile workers. A reconcile decides that a
// delivery is due, takes an in-flight slot and hands the attempt over: the HTTP request, the
// status write that records it and the scheduling of what comes next happen in a goroutine of
// their own. So the number of attempts in flight follows the receivers (bounded by the
// in-flight limits, not by the number of workers): a receiver that takes 2 s to answer holds a
// goroutine for 2 s, not one of the workers that every other delivery needs.
//
// While an attempt is in flight, reconciles of its delivery do nothing: the attempt schedules
// the delivery's next reconcile itself, through the controller's queue, when it is done: at its
// next retry, with the queue's backoff after a failed status write, or at once when a
// reconcile was turned away meanwhile (a retry annotation). A finished delivery needs none: its
// reconcile would only find it gone from the cache and read it again from the API server.
type attemptRunner struct {
	// queue is the delivery controller's work queue, handed over by source().
	queue atomic.Pointer[workqueue.TypedRateLimitingInterface[reconcile.Request]]

	mu sync.Mutex
	// inFlight holds the deliveries with an attempt under way; true: a reconcile was turned
	// away meanwhile.
	inFlight map[types.NamespacedName]bool
	wg       sync.WaitGroup
	// stopping is set once the manager stops: no attempt starts after it, so that no wg.Add
	// races the wg.Wait of Start (an attempt started then would not be waited for).
	stopping bool
	// writes bounds the attempts that write their status at once. Attempts to slow receivers
	// start in waves and end in waves: hundreds of status writes at once would put the API
	// server far past the concurrency it serves best (make bench, row 1: its rate falls as
	// the writers grow), and, in a cluster with API Priority and Fairness, into queues and 429s.
	// A write waits here for a slot, keeping its in-flight slot meanwhile.
	writes chan struct{}
	// base is the context of attempts: not cancelled when the manager stops, so that an attempt
	// under way is finished and recorded rather than cut off (Start waits for them).
	base context.Context

	finished *finishedIndex
}

// drainTimeout bounds how long a stopping manager waits for attempts under way.
const drainTimeout = 25 * time.Second

// newAttemptRunner makes a runner whose attempts write their status at most writers at once;
// finished, when set, hands it the finished deliveries that carry a retry annotation once the
// controller runs.
func newAttemptRunner(writers int, finished *finishedIndex) *attemptRunner {
	return &attemptRunner{inFlight: map[types.NamespacedName]bool{}, base: context.Background(), finished: finished,
		writes: make(chan struct{}, max(writers, 1))}
}

// write runs an attempt's status write when a write slot is free.
func (a *attemptRunner) write(ctx context.Context, f func(context.Context) error) error {
	select {
	case a.writes <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-a.writes }()
	return f(ctx)
}

// source hands the controller's queue to the runner, and subscribes it to the manual retries
// of finished deliveries, which the cache does not bring (cache.go).
func (a *attemptRunner) source() source.Source {
	return source.Func(func(_ context.Context, q workqueue.TypedRateLimitingInterface[reconcile.Request]) error {
		a.queue.Store(&q)
		if a.finished != nil {
			a.finished.subscribeRetries(a.wake)
		}
		return nil
	})
}

// NeedLeaderElection: attempts run on the leader.
func (a *attemptRunner) NeedLeaderElection() bool { return true }

// Start waits until the manager stops, then for the attempts under way, at most drainTimeout.
func (a *attemptRunner) Start(ctx context.Context) error {
	a.mu.Lock()
	a.base = context.WithoutCancel(ctx)
	a.mu.Unlock()
	<-ctx.Done()
	a.mu.Lock()
	a.stopping = true
	a.mu.Unlock()
	if !a.waitIdle(drainTimeout) {
		ctrl.LoggerFrom(ctx).Info("stopping with attempts still under way; their deliveries are attempted again by the next leader")
	}
	return nil
}

// waitIdle waits until no attempt is under way, at most timeout, and reports whether none is.
func (a *attemptRunner) waitIdle(timeout time.Duration) bool {
	done := make(chan struct{})
	go func() { a.wg.Wait(); close(done) }()
	select {
	case <-done:
		return true
	case <-time.After(timeout):
		return false
	}
}

// busy reports whether an attempt of the delivery is under way; the attempt then reconciles
// the delivery again when it is done, for what the caller was turned away with.
func (a *attemptRunner) busy(key types.NamespacedName) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, ok := a.inFlight[key]; ok {
		a.inFlight[key] = true
		return true
	}
	return false
}

// run makes attempt in a goroutine of its own, with a context that outlives the reconcile.
// attempt returns when to reconcile the delivery next: after (>= 0), or with the queue's
// failure backoff when failed is true. It reports false, and runs nothing, once the manager
// stops: the delivery is left as it is for the next leader.
func (a *attemptRunner) run(key types.NamespacedName, attempt func(ctx context.Context) (after time.Duration, failed bool)) bool {
	a.mu.Lock()
	if a.stopping {
		a.mu.Unlock()
		return false
	}
	a.inFlight[key] = false
	base := a.base
	a.wg.Add(1)
	a.mu.Unlock()
	go func() {
		defer a.wg.Done()
		after, failed := attempt(base)
		a.mu.Lock()
		missed := a.inFlight[key]
		delete(a.inFlight, key)
		a.mu.Unlock()
		// Only now: a reconcile that ran while the attempt was in flight did nothing.
		if failed || after > 0 || missed {
			a.enqueue(key, after, failed)
		}
	}()
	return true
}

// wake reconciles a delivery as soon as a worker is free.
func (a *attemptRunner) wake(key types.NamespacedName) { a.enqueue(key, 0, false) }

func (a *attemptRunner) enqueue(key types.NamespacedName, after time.Duration, failed bool) {
	q := a.queue.Load()
	if q == nil {
		return // the controller has not started: its initial list brings every delivery
	}
	req := reconcile.Request{NamespacedName: key}
	switch {
	case failed:
		(*q).AddRateLimited(req)
	case after > 0:
		(*q).AddAfter(req, after)
	default:
		(*q).Add(req)
	}
}
