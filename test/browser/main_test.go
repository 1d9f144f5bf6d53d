// Package browser drives the web console (kubectl webhooks console) in a real browser,
// Debian's Chromium under chromedp, against the whole operator on a test control plane: the
// controllers, a SQLite history store, the history API through the API server, and real
// receivers on loopback that verify signatures. It does the product's three steps as a user
// does (create an endpoint, test it, see its deliveries and retry one), checks what each page
// shows, and saves a screenshot of each page (CONSOLE_SCREENSHOTS=dir keeps them; make
// screenshots writes docs/console/).
package browser

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/client"

	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
	"github.com/docrouter/webhook-operator/internal/actions"
	"github.com/docrouter/webhook-operator/internal/console"
	"github.com/docrouter/webhook-operator/internal/history"
	"github.com/docrouter/webhook-operator/internal/receiver"
	"github.com/docrouter/webhook-operator/internal/testenv/stack"
)

var st *stack.Stack

// Failed deliveries leave etcd 3 s after they are archived, so that the Retry the test clicks
// re-creates one from its history record through the operator itself.
func TestMain(m *testing.M) {
	klog.SetOutput(io.Discard)
	klog.LogToStderr(false)
	opts := stack.TestOptions()
	opts.FailedRetention = 3 * time.Second
	opts.RetentionSweepInterval = 500 * time.Millisecond
	s, err := stack.Start(stack.Options{Operator: &opts})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	st = s
	code := m.Run()
	if err := s.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, "stopping the stack:", err)
	}
	os.Exit(code)
}

// chromium finds Debian's Chromium, or fails the test with how to install it: a missing
// browser is never a silent skip.
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Fatal("Chromium is not installed, and the console's browser test needs it: apt-get update && apt-get install -y chromium (.ci/run does this)")
	return ""
}

// browser starts a headless Chromium with a fresh profile, bounded by timeout. The flags keep
// it off the network (this machine's network refuses its background connections).
func browser(t *testing.T, timeout time.Duration) context.Context {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium(t)),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("hide-scrollbars", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 900),
	)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(allocCtx)
	// Start the browser on a context without a deadline (a deadline would stop it), then bound
	// every step by the test's.
	if err := chromedp.Do(ctx); err != nil {
		cancel()
		cancelAlloc()
		t.Fatalf("starting Chromium: %v", err)
	}
	bounded, cancelBounded := context.WithTimeout(ctx, timeout)
	t.Cleanup(func() { cancelBounded(); cancel(); cancelAlloc() })
	return bounded
}

// consoleFor runs a console acting with cfg on a free loopback port, as
// `kubectl webhooks console` does, and returns it with its address.
func consoleFor(t *testing.T, user *stack.User, namespace string) *console.Server {
	t.Helper()
	c, err := actions.New(user.Config)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	who, err := c.WhoAmI(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	srv, err := console.New(console.Options{Actions: c, Namespace: namespace, Context: "envtest", User: who, Log: testWriter{t}}, ln.Addr())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("the console stopped with: %v", err)
		}
	})
	return srv
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// lineReceiver is the sample receiver (`webhook-operator receiver`) on a loopback port: it
// verifies X-DocRouter-Signature with its key in constant time and prints one line per
// request, which the test reads as a person reads the receiver's output. Its key can be set
// after it started (the console generates the endpoint's secret and shows it once).
type lineReceiver struct {
	*httptest.Server
	mu      sync.Mutex
	h       http.Handler
	linesMu sync.Mutex
	lines   bytes.Buffer
	// apiKey is the X-Api-Key value it also accepts (for endpoints with a header instead).
	apiKey string
}

func newLineReceiver(t *testing.T, key []byte, apiKey string) *lineReceiver {
	t.Helper()
	r := &lineReceiver{apiKey: apiKey}
	if key != nil {
		r.setKey(key)
	}
	r.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.mu.Lock()
		h := r.h
		r.mu.Unlock()
		if h == nil {
			http.Error(w, "the receiver has no key yet", http.StatusServiceUnavailable)
			return
		}
		h.ServeHTTP(w, req)
	}))
	t.Cleanup(r.Close)
	return r
}

func (r *lineReceiver) setKey(key []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	opts := receiver.Options{Secret: key, Out: lockedWriter{&r.linesMu, &r.lines}}
	if r.apiKey != "" {
		opts.AuthHeaderName, opts.AuthHeaderValue = "X-Api-Key", r.apiKey
	}
	r.h = receiver.New(opts)
}

// linesOf returns the receiver's lines about an event.
func (r *lineReceiver) linesOf(eventID string) []string {
	r.linesMu.Lock()
	defer r.linesMu.Unlock()
	var out []string
	for _, l := range strings.Split(r.lines.String(), "\n") {
		if strings.Contains(l, " event="+eventID+" ") {
			out = append(out, l)
		}
	}
	return out
}

// lockedWriter keeps the receiver's lines apart from the test's reads of them.
type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// seedHistory writes a week of finished deliveries into the history store, as the archiver
// wrote them when they finished (and marks them gone from etcd, as the sweeper did): the charts
// then have a week to draw. signed is healthy with a slower afternoon; header-auth had an outage
// eight hours ago. Returns how many deliveries of each endpoint finished in the last 24 hours,
// and how many of those failed.
func seedHistory(t *testing.T, ns string, now time.Time) map[string][2]int {
	t.Helper()
	var records []history.Record
	var keys []history.Key
	counts := map[string][2]int{}
	add := func(endpoint string, i int, at time.Time, ok bool, latency time.Duration) {
		id := fmt.Sprintf("evt-%s-%05d", endpoint, i)
		r := history.Record{
			Namespace: ns, Name: webhooksv1alpha1.DeliveryName(endpoint, id), UID: types.UID("seed-" + id), Endpoint: endpoint,
			Event: webhooksv1alpha1.Event{ID: id, Type: []string{"llm.completed", "document.uploaded", "llm.error"}[i%3], Timestamp: at.Unix(), OrganizationID: "org-1",
				Document: webhooksv1alpha1.Document{DocumentID: fmt.Sprintf("doc-%d", i), DocumentName: "invoice.pdf"}},
			Labels:       map[string]string{webhooksv1alpha1.EndpointLabel: endpoint},
			CreationTime: at,
		}
		r.Labels[webhooksv1alpha1.EventTypeLabel] = r.Event.Type
		codes := []int32{200}
		if !ok {
			codes = []int32{503, 503, 503}
		}
		for n, code := range codes {
			a := webhooksv1alpha1.Attempt{Number: int32(n + 1), Time: metav1.NewTime(at.Add(time.Duration(n) * 30 * time.Second)), StatusCode: code,
				DurationMilliseconds: latency.Milliseconds(), Trigger: webhooksv1alpha1.TriggerScheduled, Result: "Success"}
			if code != 200 {
				a.Result, a.Error = "HTTPError", "HTTP 503: upstream unavailable"
			}
			r.Attempts = append(r.Attempts, a)
		}
		last := r.Attempts[len(r.Attempts)-1]
		done := last.Time.Add(latency)
		r.AttemptCount, r.LastStatusCode, r.LastError, r.LastAttemptTime, r.CompletionTime = int32(len(codes)), last.StatusCode, last.Error, &last.Time.Time, &done
		r.Phase, r.Reason = webhooksv1alpha1.PhaseSucceeded, "Delivered"
		if !ok {
			r.Phase, r.Reason = webhooksv1alpha1.PhaseFailed, "RetriesExhausted"
		}
		records = append(records, r)
		keys = append(keys, history.Key{Namespace: ns, Name: r.Name})
		if now.Sub(done) < 24*time.Hour {
			c := counts[endpoint]
			c[0]++
			if !ok {
				c[1]++
			}
			counts[endpoint] = c
		}
	}
	i := 0
	for h := 7*24 - 1; h >= 1; h-- {
		start := now.Add(-time.Duration(h) * time.Hour)
		hour := float64(start.Hour())
		// A day's shape: busier in working hours, slower answers in the afternoon.
		perHour := 4 + int(6*math.Max(0, math.Sin((hour-6)/12*math.Pi)))
		for k := range perHour {
			at := start.Add(time.Duration(k) * time.Hour / time.Duration(perHour))
			if d := now.Sub(at); (d-24*time.Hour).Abs() < 10*time.Minute || (d-7*24*time.Hour).Abs() < 10*time.Minute {
				continue // near a window's edge, where a minute's rounding decides
			}
			latency := time.Duration(35+int(40*math.Max(0, math.Sin((hour-9)/10*math.Pi)))+(k*7)%25) * time.Millisecond
			add("signed", i, at, (i+h)%97 != 0, latency)
			i++
			if k%2 == 0 {
				outage := h >= 8 && h <= 10
				add("header-auth", i, at, !outage, latency+20*time.Millisecond)
				i++
			}
		}
	}
	ctx := context.Background()
	for len(records) > 0 {
		n := min(len(records), 500)
		if err := st.Store.Write(ctx, records[:n]); err != nil {
			t.Fatal(err)
		}
		records = records[n:]
	}
	if err := st.Store.MarkRemoved(ctx, keys, now.Add(-time.Minute)); err != nil {
		t.Fatal(err)
	}
	return counts
}

func create(t *testing.T, objs ...client.Object) {
	t.Helper()
	for _, o := range objs {
		if err := st.Client.Create(context.Background(), o); err != nil {
			t.Fatalf("creating %T %s: %v", o, o.GetName(), err)
		}
	}
}

func endpoint(ns, name, url string, mutate ...func(*webhooksv1alpha1.WebhookEndpoint)) *webhooksv1alpha1.WebhookEndpoint {
	ep := &webhooksv1alpha1.WebhookEndpoint{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: webhooksv1alpha1.WebhookEndpointSpec{
			URL: url, EventTypes: []string{"*"}, AllowInsecureHTTP: true,
			SigningSecretRef: &webhooksv1alpha1.SecretKeyRef{Name: "webhook-secrets", Key: "signing-secret"},
		},
	}
	for _, m := range mutate {
		m(ep)
	}
	return ep
}

func eventually(t *testing.T, timeout time.Duration, what string, cond func(context.Context) (bool, error)) {
	t.Helper()
	var last error
	err := wait.PollUntilContextTimeout(context.Background(), 100*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		ok, err := cond(ctx)
		last = err
		return ok, nil
	})
	if err != nil {
		t.Fatalf("waiting %s for %s: %v (last error: %v)", timeout, what, err, last)
	}
}

// screenshots is where the pages' screenshots go: $CONSOLE_SCREENSHOTS, or the test's
// temporary directory.
func screenshots(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("CONSOLE_SCREENSHOTS")
	if dir == "" {
		return t.TempDir()
	}
	if !filepath.IsAbs(dir) {
		// Relative to the checkout, as make screenshots passes it.
		wd, _ := os.Getwd()
		dir = filepath.Join(wd, "..", "..", dir)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

func secret(ns string, key []byte) *corev1.Secret {
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "webhook-secrets"},
		Data:       map[string][]byte{"signing-secret": key, "api-key": []byte("sample-api-key")},
	}
}

// attacker is another site on this machine (another loopback port: the same site as the
// console to the browser, which then sends SameSite=Strict cookies along) whose page posts a
// form to the console, as a malicious page would, and reports that it did.
type attacker struct {
	*httptest.Server
	mu   sync.Mutex
	sent int
}

func newAttacker(t *testing.T, target string) *attacker {
	t.Helper()
	a := &attacker{}
	a.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/sent" {
			a.mu.Lock()
			a.sent++
			a.mu.Unlock()
			return
		}
		w.Header().Set("Content-Type", "text/html")
		fmt.Fprintf(w, `<!doctype html><html><body><p>Cute cats.</p><script>
fetch(%q, {method: "POST", mode: "no-cors", credentials: "include", body: new URLSearchParams({csrf: "guessed"})})
  .finally(() => fetch("/sent").then(() => document.body.className = "done"));
</script></body></html>`, target)
	}))
	t.Cleanup(a.Close)
	return a
}

func (a *attacker) answers() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.sent
}

// postHost posts a form to target with the session cookie, naming host in the Host header.
func postHost(t *testing.T, target, host string, form url.Values, header http.Header, cookie *network.Cookie) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, target, strings.NewReader(form.Encode()))
	req.Header = header
	req.Host = host
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.AddCookie(&http.Cookie{Name: cookie.Name, Value: cookie.Value})
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}
