//go:build bench

package bench

import (
	"bufio"
	"context"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
	"github.com/docrouter/webhook-operator/internal/metrics"
	"github.com/docrouter/webhook-operator/internal/testenv/testreceiver"
)

// holdReceiverEnv makes the test binary a receiver that checks each request's signature and
// then holds it until the sender hangs up ("http" or "https"): the other end of attempts in
// flight, in a process of its own so that its connections do not count in the operator's memory.
const holdReceiverEnv = "BENCH_HOLD_RECEIVER"

// runHoldReceiver serves until killed. It prints its URL, and for https its certificate as PEM,
// on stdout.
func runHoldReceiver(scheme string) int {
	held := func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		if err := testreceiver.VerifyDocRouter(signingKey, r.Header, body); err != nil {
			http.Error(w, err.Error(), http.StatusUnauthorized)
			return
		}
		<-r.Context().Done()
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(held))
	if scheme == "https" {
		srv.StartTLS()
		fmt.Printf("URL %s\n", srv.URL)
		os.Stdout.Write(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}))
	} else {
		srv.Start()
		fmt.Printf("URL %s\n", srv.URL)
	}
	fmt.Println("READY")
	select {}
}

// startHoldReceiver starts the hold receiver in a child process and returns its URL and, for
// https, its certificate.
func startHoldReceiver(t *testing.T, tls bool) (url string, caPEM []byte, kill func()) {
	t.Helper()
	scheme := "http"
	if tls {
		scheme = "https"
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), holdReceiverEnv+"="+scheme)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	kill = func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }
	sc := bufio.NewScanner(out)
	var pemLines strings.Builder
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "URL "):
			url = strings.TrimPrefix(line, "URL ")
		case line == "READY":
			return url, []byte(pemLines.String()), kill
		default:
			pemLines.WriteString(line + "\n")
		}
	}
	kill()
	t.Fatalf("the hold receiver did not start: %v", sc.Err())
	return "", nil, nil
}

type inFlightMemory struct {
	n           int
	perAttempt  float64 // bytes of heap and stacks per attempt in flight
	heap, stack int64
	goroutines  int
}

// memSample is the heap in use and the stacks of this process after two collections.
func memSample() (heap, stack int64, goroutines int) {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapInuse), int64(m.StackInuse), runtime.NumGoroutine()
}

// measureInFlightMemory is (9): the operator (in this process, default options) holds n
// attempts in flight to a receiver that never answers, and the memory of this process is read
// with the n deliveries waiting (their endpoint paused) and then with all n in flight. The
// difference is what an attempt in flight costs: its goroutine, the copies of the delivery and
// the endpoint it works on, the request, and the connection with its buffers (and TLS state).
func measureInFlightMemory(t *testing.T, n int, tls bool) inFlightMemory {
	t.Helper()
	ctx := context.Background()
	url, caPEM, kill := startHoldReceiver(t, tls)
	defer kill()
	ns := newNamespace(t, "inflight")
	if err := env.Client.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "signing"},
		Data: map[string][]byte{"key": signingKey}}); err != nil {
		t.Fatal(err)
	}
	ep := endpoint(ns, "hold", url, 60, 0)
	ep.Spec.Paused = true
	ep.Spec.MaxInFlight = ptr.To(int32(n))
	if tls {
		if err := env.Client.Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "ca"},
			Data: map[string]string{"ca.crt": string(caPEM)}}); err != nil {
			t.Fatal(err)
		}
		ep.Spec.CABundleRef = &webhooksv1alpha1.CABundleRef{Kind: "ConfigMap", Name: "ca", Key: "ca.crt"}
	}
	if err := env.Client.Create(ctx, ep); err != nil {
		t.Fatal(err)
	}
	stop, _ := startOperator(t, ns)
	defer stop()

	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	for i := range n {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			if err := env.Client.Create(ctx, webhooksv1alpha1.NewDelivery(ns, "hold", benchEvent(fmt.Sprintf("hold-%s-%d", ns, i)))); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	// Every delivery reconciled and waiting for the paused endpoint: the baseline.
	waitFor(t, 2*time.Minute, "every delivery waiting for the paused endpoint", func() bool {
		var list webhooksv1alpha1.WebhookDeliveryList
		if err := env.Client.List(ctx, &list, client.InNamespace(ns)); err != nil {
			return false
		}
		waiting := 0
		for _, d := range list.Items {
			if c := meta.FindStatusCondition(d.Status.Conditions, webhooksv1alpha1.ConditionReady); c != nil && c.Reason == webhooksv1alpha1.ReasonEndpointPaused {
				waiting++
			}
		}
		return waiting == n
	})
	time.Sleep(2 * time.Second)
	heap0, stack0, g0 := memSample()

	inFlight0 := testutil.ToFloat64(metrics.AttemptsInFlight)
	patch := client.MergeFrom(ep.DeepCopy())
	ep.Spec.Paused = false
	if err := env.Client.Patch(ctx, ep, patch); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 2*time.Minute, fmt.Sprintf("%d attempts in flight", n), func() bool {
		return testutil.ToFloat64(metrics.AttemptsInFlight)-inFlight0 >= float64(n)
	})
	time.Sleep(2 * time.Second)
	heap1, stack1, g1 := memSample()
	m := inFlightMemory{n: n, heap: heap1 - heap0, stack: stack1 - stack0, goroutines: g1 - g0}
	m.perAttempt = float64(m.heap+m.stack) / float64(n)
	progress("in flight (%s): %d attempts, heap %+d B, stacks %+d B, %+d goroutines: %.0f B per attempt",
		map[bool]string{false: "http", true: "https"}[tls], n, m.heap, m.stack, m.goroutines, m.perAttempt)

	// The receiver goes away: every attempt ends (NetworkError; maxRetries 0, so they fail).
	kill()
	waitFor(t, 2*time.Minute, "the attempts to end", func() bool {
		return testutil.ToFloat64(metrics.AttemptsInFlight) <= inFlight0
	})
	return m
}

func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestInFlightMemory is (9) alone: BENCH_IN_FLIGHT=500 go test -tags bench -run TestInFlightMemory ./test/bench/
func TestInFlightMemory(t *testing.T) {
	for _, tls := range []bool{false, true} {
		m := measureInFlightMemory(t, inFlightCount, tls)
		t.Logf("tls %v: %d attempts in flight cost %.1f KiB each (heap %+.1f MiB, stacks %+.1f MiB, %+d goroutines)",
			tls, m.n, m.perAttempt/1024, float64(m.heap)/(1<<20), float64(m.stack)/(1<<20), m.goroutines)
	}
}
