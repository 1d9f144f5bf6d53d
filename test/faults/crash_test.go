package faults

import (
	"strconv"
	"testing"
	"time"

	"github.com/docrouter/webhook-operator/dispatcher"
)

// TestSIGKILLMidAttempt is issue 6, case 2: the operator is SIGKILLed while attempts are in
// flight, and restarted, several times. A user sees every event arrive at least once, and a
// bounded number of duplicates, each carrying the same event id and body as the first request.
//
// The bound: a send and the status write that records it are not atomic, so a kill loses the
// record of every attempt that reached the receiver but whose status was not yet written. Each
// such attempt is held by one reconcile worker, so a kill costs at most --workers duplicates
// (and at most --max-in-flight-per-endpoint per endpoint while the request is open; here both
// are 8). The restarted operator sends those again: kills x workers duplicates at most.
func TestSIGKILLMidAttempt(t *testing.T) {
	const (
		deliveries = 200
		kills      = 3
		workers    = 8
		hold       = time.Second // the receiver holds each request, so kills land mid-attempt
	)
	ns := env.Namespace(t)
	key := []byte("faults-sigkill-signing-key")
	rcv := newHoldingReceiver(t, key, hold)
	endpointFor(t, ns, "slow", rcv.URL+"/hooks", key)
	args := []string{"--workers", strconv.Itoa(workers), "--max-in-flight-per-endpoint", strconv.Itoa(workers)}

	op := startOperator(t, "operator-0", args...)
	op.waitDelivering(t, 60*time.Second)
	start := time.Now()
	ids := createDeliveries(t, ns, "slow", "sigkill", deliveries)

	heldAtKill := make([]int64, 0, kills)
	for k := 1; k <= kills; k++ {
		eventually(t, 90*time.Second, "the receiver has "+strconv.Itoa(k*deliveries/(kills+1))+" requests", func() bool {
			return rcv.Count() >= k*deliveries/(kills+1) && rcv.held.Load() > 0
		})
		heldAtKill = append(heldAtKill, rcv.held.Load())
		op.kill()
		op = startOperator(t, "operator-"+strconv.Itoa(k), args...)
	}
	waitSucceeded(t, ns, deliveries, 120*time.Second)
	elapsed := time.Since(start)
	time.Sleep(hold + 500*time.Millisecond) // requests still held are recorded

	tl := tallyOf(rcv.Requests())
	if missing := tl.missing(ids); len(missing) > 0 {
		t.Errorf("%d of %d events never arrived with a valid signature: %v", len(missing), deliveries, missing)
	}
	if tl.unverified > 0 {
		t.Errorf("%d requests failed signature verification", tl.unverified)
	}
	if len(tl.mismatched) > 0 {
		t.Errorf("a repeated request carried a different body than the first for events %v", tl.mismatched)
	}
	bound := kills * workers
	t.Logf("%d deliveries, %d kills with %v requests held at each kill: %d requests, %d duplicates (bound %d), all Succeeded in %s",
		deliveries, kills, heldAtKill, tl.requests, tl.duplicates(), bound, elapsed.Round(100*time.Millisecond))
	if tl.duplicates() > bound {
		t.Errorf("%d duplicate requests, more than kills x workers = %d", tl.duplicates(), bound)
	}
	if tl.duplicates() == 0 {
		t.Errorf("no event was sent twice although %v requests were in flight at the kills: the kills did not land mid-attempt, so the test proved nothing", heldAtKill)
	}
	resent := 0
	for _, r := range rcv.Requests() {
		if r.Header.Get(dispatcher.HeaderAttempt) != "1" {
			resent++
		}
	}
	t.Logf("%d requests carried an attempt number above 1 (a duplicate after a kill repeats the lost attempt's number)", resent)
}
