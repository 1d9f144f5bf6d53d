package faults

import (
	"strconv"
	"testing"
	"time"
)

// TestLeaderKilled is issue 6, case 5: two replicas with leader election (on in the deployed
// manifests); the leader is SIGKILLed under load. A user sees the standby take over within the
// lease duration plus a retry period, and every event arrive.
func TestLeaderKilled(t *testing.T) {
	const (
		deliveries = 120
		workers    = 8
		lease      = 4 * time.Second
		renew      = 3 * time.Second
		retry      = 500 * time.Millisecond
		hold       = 300 * time.Millisecond
	)
	ns := env.Namespace(t)
	key := []byte("faults-leader-signing-key")
	rcv := newHoldingReceiver(t, key, hold)
	endpointFor(t, ns, "ha", rcv.URL+"/hooks", key)
	args := []string{"--workers", strconv.Itoa(workers), "--max-in-flight-per-endpoint", strconv.Itoa(workers),
		"--leader-elect", "--leader-elect-namespace", ns,
		"--leader-elect-lease-duration", lease.String(), "--leader-elect-renew-deadline", renew.String(),
		"--leader-elect-retry-period", retry.String()}

	a := startOperator(t, "replica-a", args...)
	a.waitDelivering(t, 60*time.Second)
	b := startOperator(t, "replica-b", args...)
	time.Sleep(2 * retry) // b is up and trying to acquire the Lease
	if b.delivering() {
		t.Fatalf("replica-b delivers while replica-a holds the Lease: two leaders")
	}

	ids := createDeliveries(t, ns, "ha", "leader", deliveries)
	eventually(t, 60*time.Second, "a third of the events arrived", func() bool {
		return rcv.Count() >= deliveries/3 && rcv.held.Load() > 0
	})
	held := rcv.held.Load()
	before := rcv.Count()
	a.kill()
	killed := time.Now()
	b.waitDelivering(t, lease+renew+10*time.Second)
	takeover := time.Since(killed)
	// The standby acquires the Lease once the dead leader's expires: at most lease + retry after
	// its last renewal; scheduling on a shared machine gets a few seconds of slack.
	if max := lease + retry + 3*time.Second; takeover > max {
		t.Errorf("replica-b took over %s after the leader was killed, want at most %s", takeover.Round(100*time.Millisecond), max)
	}

	waitSucceeded(t, ns, deliveries, 90*time.Second)
	time.Sleep(hold + 500*time.Millisecond)
	tl := tallyOf(rcv.Requests())
	if missing := tl.missing(ids); len(missing) > 0 {
		t.Errorf("%d of %d events never arrived: %v", len(missing), deliveries, missing)
	}
	if tl.unverified > 0 {
		t.Errorf("%d requests failed signature verification", tl.unverified)
	}
	if tl.duplicates() > workers {
		t.Errorf("%d duplicates after one kill, more than --workers = %d", tl.duplicates(), workers)
	}
	t.Logf("leader killed with %d requests held (%d received before); replica-b delivered after %s; %d requests, %d duplicates (bound %d)",
		held, before, takeover.Round(100*time.Millisecond), tl.requests, tl.duplicates(), workers)
}
