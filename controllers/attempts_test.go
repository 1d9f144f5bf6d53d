package controllers

import (
	"context"
	"sync"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/workqueue"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
)

// After an attempt, the delivery is reconciled again only when something is left to do: its
// next retry, a failed status write, or a reconcile that was turned away while the attempt was
// in flight (a retry annotation). A delivery that finished is not: that reconcile would only
// read it again from the API server, an extra request per delivery.
func TestAttemptRunnerReconcilesAgainOnlyWhenNeeded(t *testing.T) {
	q := workqueue.NewTypedRateLimitingQueue(workqueue.NewTypedItemExponentialFailureRateLimiter[reconcile.Request](time.Millisecond, time.Millisecond))
	defer q.ShutDown()
	a := newAttemptRunner(1, nil)
	if err := a.source().Start(context.Background(), q); err != nil {
		t.Fatal(err)
	}
	key := func(name string) types.NamespacedName { return types.NamespacedName{Namespace: "ns", Name: name} }
	run := func(name string, after time.Duration, failed bool, during func()) {
		release := make(chan struct{})
		a.run(key(name), func(context.Context) (time.Duration, bool) {
			<-release
			return after, failed
		})
		if during != nil {
			during()
		}
		close(release)
		if !a.waitIdle(5 * time.Second) {
			t.Fatal("the attempt did not end")
		}
	}

	run("finished", 0, false, nil)
	run("turned-away", 0, false, func() {
		if !a.busy(key("turned-away")) {
			t.Fatal("busy = false while the attempt is in flight")
		}
	})
	run("status-write-failed", 0, true, nil)
	run("retrying", 20*time.Millisecond, false, nil)

	got := map[string]bool{}
	deadline := time.After(2 * time.Second)
	for len(got) < 3 {
		select {
		case <-deadline:
			t.Fatalf("reconciled again: %v; want turned-away, status-write-failed and retrying", got)
		default:
		}
		if q.Len() == 0 {
			time.Sleep(5 * time.Millisecond)
			continue
		}
		item, _ := q.Get()
		got[item.Name] = true
		q.Done(item)
	}
	time.Sleep(50 * time.Millisecond)
	if got["finished"] || q.Len() != 0 {
		t.Fatalf("a finished delivery was reconciled again: %v, %d left in the queue", got, q.Len())
	}
	if a.busy(key("finished")) {
		t.Fatal("busy after the attempt ended")
	}
}

// However many attempts end at once (slow receivers answer in waves), at most writers of them
// write their status at the same time.
func TestAttemptRunnerBoundsConcurrentStatusWrites(t *testing.T) {
	a := newAttemptRunner(3, nil)
	var mu sync.Mutex
	now, peak := 0, 0
	var wg sync.WaitGroup
	for range 12 {
		wg.Go(func() {
			err := a.write(context.Background(), func(context.Context) error {
				mu.Lock()
				now++
				peak = max(peak, now)
				mu.Unlock()
				time.Sleep(20 * time.Millisecond)
				mu.Lock()
				now--
				mu.Unlock()
				return nil
			})
			if err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if peak != 3 {
		t.Fatalf("%d status writes at once, want at most (and here exactly) 3", peak)
	}
	// A write that cannot get a slot before its context ends gives up.
	ctx, cancel := context.WithCancel(context.Background())
	block := make(chan struct{})
	for range 3 {
		go func() { _ = a.write(context.Background(), func(context.Context) error { <-block; return nil }) }()
	}
	time.Sleep(20 * time.Millisecond)
	cancel()
	if err := a.write(ctx, func(context.Context) error { return nil }); err == nil {
		t.Fatal("a write without a slot and with its context done ran anyway")
	}
	close(block)
}

// Once the manager stops, no attempt starts (the delivery is left to the next leader), and
// Start waits for the attempts already under way. Before, an attempt could start while Start
// waited: it was not waited for, and its WaitGroup.Add raced the Wait (the race detector
// caught it in the intake's tests).
func TestAttemptRunnerStartsNoAttemptOnceStopping(t *testing.T) {
	a := newAttemptRunner(1, nil)
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	go func() { _ = a.Start(ctx); close(stopped) }()
	release := make(chan struct{})
	under := types.NamespacedName{Namespace: "ns", Name: "under-way"}
	if !a.run(under, func(context.Context) (time.Duration, bool) { <-release; return 0, false }) {
		t.Fatal("run refused an attempt before the manager stopped")
	}
	cancel()
	late := types.NamespacedName{Namespace: "ns", Name: "late"}
	deadline := time.Now().Add(5 * time.Second)
	for a.run(late, func(context.Context) (time.Duration, bool) { return 0, false }) {
		if time.Now().After(deadline) {
			t.Fatal("run still starts attempts 5 s after the manager stopped")
		}
		time.Sleep(time.Millisecond)
	}
	select {
	case <-stopped:
		t.Fatal("Start returned while an attempt was under way")
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		t.Fatal("Start did not return once the attempt under way ended")
	}
}
