package faults

import (
	"context"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// supervisor restarts the operator when it exits, as the kubelet restarts a container (after a
// fixed short delay here, where the kubelet backs off), and records every exit.
type supervisor struct {
	t    testing.TB
	name string
	args []string

	mu      sync.Mutex
	current *operator
	exits   []exit
	stop    chan struct{}
	stopped chan struct{}
}

type exit struct {
	at     time.Time
	err    error
	output string // the last lines the process wrote
}

func supervise(tb testing.TB, name string, args ...string) *supervisor {
	tb.Helper()
	s := &supervisor{t: tb, name: name, args: append(baseArgs(tb), args...), stop: make(chan struct{}), stopped: make(chan struct{})}
	op, err := spawn(name+"-0", s.args)
	if err != nil {
		tb.Fatalf("starting %s: %v", name, err)
	}
	s.current = op
	go s.loop()
	tb.Cleanup(func() {
		close(s.stop)
		<-s.stopped
		if tb.Failed() {
			op := s.operator()
			tb.Logf("--- output of %s (last 4 KiB) ---\n%s", op.name, tail(op.out.String(), 4096))
		}
	})
	return s
}

func (s *supervisor) loop() {
	defer close(s.stopped)
	for n := 1; ; n++ {
		op := s.operator()
		select {
		case <-s.stop:
			op.kill()
			return
		case <-op.done:
		}
		s.mu.Lock()
		s.exits = append(s.exits, exit{at: time.Now(), err: op.err, output: tail(op.out.String(), 2048)})
		s.mu.Unlock()
		select {
		case <-s.stop:
			return
		case <-time.After(time.Second):
		}
		next, err := spawn(s.name+"-"+strconv.Itoa(n), s.args)
		if err != nil {
			s.t.Errorf("restarting %s: %v", s.name, err)
			return
		}
		s.mu.Lock()
		s.current = next
		s.mu.Unlock()
	}
}

func (s *supervisor) operator() *operator {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.current
}

func (s *supervisor) exitsSince(t time.Time) []exit {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []exit
	for _, e := range s.exits {
		if !e.at.Before(t) {
			out = append(out, e)
		}
	}
	return out
}

// outage is how long the API server is down: 30 s unless FAULT_APISERVER_OUTAGE says otherwise.
func outage(tb testing.TB) time.Duration {
	tb.Helper()
	if v := os.Getenv("FAULT_APISERVER_OUTAGE"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			tb.Fatalf("FAULT_APISERVER_OUTAGE: %v", err)
		}
		return d
	}
	return 30 * time.Second
}

// TestAPIServerOutage is issue 6, case 3: kube-apiserver is stopped for 30 s while deliveries are
// in flight, then started again, and more events are published. A user sees no crash loop,
// every event delivered, and the backlog drained soon after the API server returns.
//
// Two ways to run the operator: one replica without leader election (as `make run`), and with
// leader election at the deployed defaults (15 s lease, 10 s renew deadline), where an outage
// longer than the renew deadline makes the leader give up its lease and exit by design, so that
// it never delivers without holding the lease; restarted, it waits for the API server and leads
// again. Either way, once the API server is back the process must stay up.
func TestAPIServerOutage(t *testing.T) {
	for _, tc := range []struct {
		name     string
		args     []string
		maxExits int // during the outage
	}{
		{name: "single replica", maxExits: 0},
		{name: "leader election at the deployed defaults", args: []string{"--leader-elect"}, maxExits: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const (
				before, after = 150, 50 // deliveries created before the outage and after it
				workers       = 16
				hold          = 100 * time.Millisecond
			)
			ns := env.Namespace(t)
			key := []byte("faults-outage-signing-key")
			rcv := newHoldingReceiver(t, key, hold)
			endpointFor(t, ns, "steady", rcv.URL+"/hooks", key)
			args := append([]string{"--workers", strconv.Itoa(workers)}, tc.args...)
			if len(tc.args) > 0 {
				args = append(args, "--leader-elect-namespace", ns)
			}
			sup := supervise(t, "operator", args...)
			sup.operator().waitDelivering(t, 60*time.Second)

			ids := createDeliveries(t, ns, "steady", "before", before)
			eventually(t, 60*time.Second, "a quarter of the events arrived", func() bool { return rcv.Count() >= before/4 })

			apiserver := env.Environment().ControlPlane.GetAPIServer()
			down := time.Now()
			atStop := rcv.Count()
			// envtest stops kube-apiserver with SIGTERM: it closes its listener at once (clients
			// get "connection refused"), drains, and is SIGKILLed if still there after 20 s.
			if err := apiserver.Stop(); err != nil && !strings.Contains(err.Error(), "timeout waiting for process") {
				t.Fatalf("stopping kube-apiserver: %v", err)
			}
			restarted := false
			t.Cleanup(func() {
				if !restarted { // the test failed during the outage: the next tests need the API server
					_ = apiserver.Start()
				}
			})
			time.Sleep(time.Until(down.Add(outage(t))))
			duringOutage := rcv.Count() - atStop
			if err := apiserver.Start(); err != nil {
				t.Fatalf("starting kube-apiserver again: %v", err)
			}
			restarted = true
			up := time.Now()
			t.Logf("kube-apiserver down for %s; the operator made %d requests while it was down", up.Sub(down).Round(100*time.Millisecond), duringOutage)

			// Publishing resumes as soon as the API server answers.
			eventually(t, 30*time.Second, "the API server answers the test's client", func() bool {
				return env.Client.List(context.Background(), &metav1.PartialObjectMetadataList{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "NamespaceList"}}, client.Limit(1)) == nil
			})
			ids = append(ids, createDeliveries(t, ns, "steady", "after", after)...)
			waitSucceeded(t, ns, before+after, 120*time.Second)
			drained := time.Since(up)

			// No crash loop: at most the expected exits during the outage, none once it is over,
			// and a process running at the end.
			time.Sleep(3 * time.Second)
			all := sup.exitsSince(down)
			late := sup.exitsSince(up.Add(2 * time.Second))
			for _, e := range all {
				t.Logf("the operator exited %s after the API server stopped (%v); its last output:\n%s", e.at.Sub(down).Round(100*time.Millisecond), e.err, tail(e.output, 600))
			}
			if len(all) > tc.maxExits {
				t.Errorf("the operator exited %d times, want at most %d", len(all), tc.maxExits)
			}
			if len(late) > 0 {
				t.Errorf("the operator exited %d times after the API server was back: a crash loop", len(late))
			}
			if sup.operator().exited() {
				t.Errorf("no operator process is running at the end")
			}

			time.Sleep(hold + 500*time.Millisecond)
			tl := tallyOf(rcv.Requests())
			if missing := tl.missing(ids); len(missing) > 0 {
				t.Errorf("%d of %d events never arrived: %v", len(missing), len(ids), missing)
			}
			if tl.unverified > 0 {
				t.Errorf("%d requests failed signature verification", tl.unverified)
			}
			t.Logf("%d deliveries: all Succeeded %s after the API server returned; %d requests, %d duplicates; %d exits",
				len(ids), drained.Round(100*time.Millisecond), tl.requests, tl.duplicates(), len(all))
		})
	}
}
