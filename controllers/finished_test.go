package controllers

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"

	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
)

// The index's due deliveries are those of a walk of the whole index sorted oldest first: the
// over oldest, and those past their phase's time in etcd, in that order, whatever the number
// over the limit, the retentions and the ties of finish times (a second apart at best).
func TestSweeperDueIsTheOldestBeyondTheLimitAndThosePastTheirTime(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	now := time.Now()
	for round := range 300 {
		x := newFinishedIndex(nil, nil, clock.RealClock{}, nil)
		n := rng.IntN(60)
		for i := range n {
			phase := webhooksv1alpha1.PhaseSucceeded
			if rng.IntN(3) == 0 {
				phase = webhooksv1alpha1.PhaseFailed
			}
			key := types.NamespacedName{Namespace: fmt.Sprintf("ns-%d", rng.IntN(3)), Name: fmt.Sprintf("d-%d", i)}
			x.entries[key] = finishedEntry{uid: types.UID(key.String()), phase: phase,
				finishedAt: now.Add(-time.Duration(rng.IntN(20)) * time.Second)}
		}
		over := rng.IntN(n + 5)
		succeeded, failed := time.Duration(rng.IntN(25))*time.Second, time.Duration(rng.IntN(25))*time.Second
		retention := func(p webhooksv1alpha1.DeliveryPhase) time.Duration {
			if p == webhooksv1alpha1.PhaseFailed {
				return failed
			}
			return succeeded
		}

		var all []finishedDelivery
		for k, e := range x.entries {
			all = append(all, finishedDelivery{key: k, finishedEntry: e})
		}
		slices.SortFunc(all, compareFinished)
		var want []types.NamespacedName
		for i, d := range all {
			if r := retention(d.phase); i < over || (r > 0 && !now.Before(d.finishedAt.Add(r))) {
				want = append(want, d.key)
			}
		}
		var got []types.NamespacedName
		for _, d := range x.due(now, over, retention) {
			got = append(got, d.key)
		}
		if !slices.Equal(got, want) {
			t.Fatalf("round %d (%d entries, %d over, retention %s/%s): due %v, want %v", round, n, over, succeeded, failed, got, want)
		}
	}
}

// The sweeper waits for its ticker while the finished deliveries are within
// --max-finished-deliveries, however many finish meanwhile, and sweeps soon after one finishes
// above it.
func TestSweeperWaitsForItsTickerWithinTheLimit(t *testing.T) {
	x := newFinishedIndex(nil, nil, clock.RealClock{}, nil)
	s := &sweeper{index: x, opts: Options{MaxFinishedDeliveries: 2}}
	tick := make(chan time.Time)
	woke := make(chan bool, 1)
	go func() { woke <- s.wait(t.Context(), tick) }()

	x.entries[types.NamespacedName{Name: "d-1"}] = finishedEntry{}
	x.changed <- struct{}{}
	select {
	case <-woke:
		t.Fatal("a delivery that finished within the limit woke the sweeper before its ticker")
	case <-time.After(2 * overLimitGather):
	}
	tick <- time.Now()
	if !<-woke {
		t.Fatal("wait returned false at a tick")
	}

	go func() { woke <- s.wait(t.Context(), tick) }()
	for i := range 3 {
		x.entries[types.NamespacedName{Name: fmt.Sprintf("over-%d", i)}] = finishedEntry{}
	}
	started := time.Now()
	x.changed <- struct{}{}
	select {
	case ok := <-woke:
		if !ok || time.Since(started) < overLimitGather {
			t.Fatalf("above the limit the sweeper woke after %s (ok %v), want after gathering for %s", time.Since(started), ok, overLimitGather)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a delivery that finished above the limit did not wake the sweeper")
	}
}
