// Package faults runs the operator as a real process against a real kube-apiserver and etcd, and
// hurts it the way production does: SIGKILL mid-attempt, an API-server outage, a leader killed
// under load. It also captures everything the operator writes (logs, Events, status, metrics)
// and searches it for credentials. See docs/faults.md.
//
// The tests start processes and take minutes, so they run only with FAULT_TESTS=1, which
// `make test-faults` sets; `make test` compiles and vets them and skips them at once.
package faults

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
	"github.com/docrouter/webhook-operator/dispatcher"
	"github.com/docrouter/webhook-operator/internal/testenv"
	"github.com/docrouter/webhook-operator/internal/testenv/testreceiver"
)

var (
	env        *testenv.Env
	binary     string          // the operator, built once
	kubeconfig string          // an admin kubeconfig for the operator processes
	flags      map[string]bool // the flags `manager -h` lists
)

func TestMain(m *testing.M) {
	if os.Getenv("FAULT_TESTS") != "1" {
		fmt.Println("skipping the process-level fault tests: set FAULT_TESTS=1 or run `make test-faults`")
		os.Exit(0)
	}
	os.Exit(run(m))
}

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "webhook-operator-faults-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)

	// FAULT_OPERATOR_BINARY runs a binary built elsewhere (such as a patched checkout).
	if binary = os.Getenv("FAULT_OPERATOR_BINARY"); binary == "" {
		binary = filepath.Join(dir, "webhook-operator")
		build := exec.Command("go", "build", "-o", binary, ".")
		build.Dir = testenv.RepoRoot()
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "building the operator:", err)
			return 1
		}
	}
	if flags, err = managerFlags(binary); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}

	certDir := filepath.Join(dir, "apiserver")
	if err := os.Mkdir(certDir, 0o700); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if env, err = testenv.StartRestartable(certDir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer func() {
		if err := env.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "stopping envtest:", err)
		}
	}()
	user, err := env.Environment().ControlPlane.AddUser(envtest.User{Name: "webhook-operator", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, "adding the operator's user:", err)
		return 1
	}
	kc, err := user.KubeConfig()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	kubeconfig = filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(kubeconfig, kc, 0o600); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return m.Run()
}

var flagLine = regexp.MustCompile(`(?m)^\s+-{1,2}([a-z0-9-]+)`)

// managerFlags lists the flags of `webhook-operator manager -h`, so that the harness passes
// only flags the binary has.
func managerFlags(bin string) (map[string]bool, error) {
	out, _ := exec.Command(bin, "manager", "-h").CombinedOutput() // -h exits 0 or 2
	found := map[string]bool{}
	for _, m := range flagLine.FindAllStringSubmatch(string(out), -1) {
		found[m[1]] = true
	}
	if !found["workers"] {
		return nil, fmt.Errorf("`manager -h` lists no --workers flag:\n%s", out)
	}
	return found, nil
}

// freeAddr is a free loopback address for a server of the operator.
func freeAddr(tb testing.TB) string {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// logBuffer collects a process's output; safe for concurrent use.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// operator is one running webhook-operator process.
type operator struct {
	name string
	cmd  *exec.Cmd
	out  *logBuffer
	done chan struct{}
	err  error // the exit status, once done is closed
	at   time.Time
}

// baseArgs are the flags every operator of these tests gets: loopback receivers allowed,
// no intake, probes on a free loopback port, metrics off unless a test turns them on.
func baseArgs(tb testing.TB) []string {
	tb.Helper()
	args := []string{"manager",
		"--health-probe-bind-address", freeAddr(tb),
		"--metrics-bind-address", "0",
		"--zap-log-level", "debug",
	}
	if flags["intake-bind-address"] {
		args = append(args, "--intake-bind-address", "0")
	}
	if flags["outbound-allow-cidrs"] {
		args = append(args, "--outbound-allow-cidrs", "127.0.0.0/8")
	}
	if flags["history-database"] {
		// One SQLite file per test, shared by its operators as a volume would be.
		args = append(args, "--history-database", historyDSN(tb))
	}
	return args
}

var (
	historyMu   sync.Mutex
	historyDirs = map[string]string{}
)

// historyDSN is the SQLite history store of the test: the same file for every operator it starts.
func historyDSN(tb testing.TB) string {
	tb.Helper()
	historyMu.Lock()
	defer historyMu.Unlock()
	dir, ok := historyDirs[tb.Name()]
	if !ok {
		dir = tb.TempDir()
		historyDirs[tb.Name()] = dir
	}
	return "sqlite://" + filepath.Join(dir, "history.db")
}

// startOperator starts `webhook-operator manager` with the base flags and args; it is killed
// when the test ends.
func startOperator(tb testing.TB, name string, args ...string) *operator {
	tb.Helper()
	op, err := spawn(name, append(baseArgs(tb), args...))
	if err != nil {
		tb.Fatalf("starting %s: %v", name, err)
	}
	tb.Cleanup(func() {
		op.kill()
		if tb.Failed() {
			tb.Logf("--- output of %s (last 4 KiB) ---\n%s", op.name, tail(op.out.String(), 4096))
		}
	})
	return op
}

// spawn starts the operator binary with args.
func spawn(name string, args []string) (*operator, error) {
	op := &operator{name: name, out: &logBuffer{}, done: make(chan struct{}), at: time.Now()}
	op.cmd = exec.Command(binary, args...)
	op.cmd.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig)
	op.cmd.Stdout, op.cmd.Stderr = op.out, op.out
	if err := op.cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		op.err = op.cmd.Wait()
		close(op.done)
	}()
	return op, nil
}

// kill SIGKILLs the process and waits for it to be gone.
func (op *operator) kill() {
	if !op.exited() {
		_ = op.cmd.Process.Signal(syscall.SIGKILL)
	}
	<-op.done
}

func (op *operator) exited() bool {
	select {
	case <-op.done:
		return true
	default:
		return false
	}
}

// delivering reports whether the delivery controller's workers have started: after the cache
// synced and, with leader election, once this replica leads.
func (op *operator) delivering() bool {
	sc := bufio.NewScanner(strings.NewReader(op.out.String()))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		l := sc.Text()
		if strings.Contains(l, "Starting workers") && strings.Contains(l, `"webhookdelivery"`) {
			return true
		}
	}
	return false
}

// waitDelivering waits until op delivers, or fails the test.
func (op *operator) waitDelivering(tb testing.TB, timeout time.Duration) {
	tb.Helper()
	eventually(tb, timeout, op.name+" starts its delivery workers", func() bool {
		if op.exited() {
			tb.Fatalf("%s exited: %v\n%s", op.name, op.err, tail(op.out.String(), 4096))
		}
		return op.delivering()
	})
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// eventually polls cond every 100 ms until it holds, or fails the test after timeout.
func eventually(tb testing.TB, timeout time.Duration, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %s waiting until %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// holdingReceiver is a signature-verifying receiver that holds every request for hold before
// answering, and counts the requests it holds right now.
type holdingReceiver struct {
	*testreceiver.Receiver
	held atomic.Int64
}

func newHoldingReceiver(tb testing.TB, key []byte, hold time.Duration) *holdingReceiver {
	tb.Helper()
	r := &holdingReceiver{Receiver: testreceiver.New(tb, key)}
	r.OnRequest(func(*http.Request) {
		r.held.Add(1)
		time.Sleep(hold)
		r.held.Add(-1)
	})
	return r
}

// tally is what a receiver that dedupes by X-DocRouter-Event-Id saw.
type tally struct {
	requests   int
	perEvent   map[string]int // verified requests per event id
	unverified int
	bodies     map[string][]byte // the first body of each event id
	mismatched []string          // event ids whose repeated request carried another body
}

func (t tally) duplicates() int { return t.requests - len(t.perEvent) }

func tallyOf(reqs []testreceiver.Request) tally {
	tl := tally{requests: len(reqs), perEvent: map[string]int{}, bodies: map[string][]byte{}}
	for _, r := range reqs {
		if !r.Verified {
			tl.unverified++
			continue
		}
		id := r.Header.Get(dispatcher.HeaderEventID)
		tl.perEvent[id]++
		if first, ok := tl.bodies[id]; !ok {
			tl.bodies[id] = r.Body
		} else if !bytes.Equal(first, r.Body) {
			tl.mismatched = append(tl.mismatched, id)
		}
	}
	return tl
}

// missing lists the event ids of ids that the receiver never got with a valid signature.
func (t tally) missing(ids []string) []string {
	var out []string
	for _, id := range ids {
		if t.perEvent[id] == 0 {
			out = append(out, id)
		}
	}
	return out
}

// endpointFor creates a Secret holding key and a WebhookEndpoint to url signed with it.
func endpointFor(tb testing.TB, ns, name, url string, key []byte, mutate ...func(*webhooksv1alpha1.WebhookEndpoint)) *webhooksv1alpha1.WebhookEndpoint {
	tb.Helper()
	ctx := context.Background()
	secret := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name + "-signing"},
		Data:       map[string][]byte{"key": key},
	}
	if err := env.Client.Create(ctx, secret); err != nil {
		tb.Fatalf("creating the Secret: %v", err)
	}
	ep := &webhooksv1alpha1.WebhookEndpoint{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: webhooksv1alpha1.WebhookEndpointSpec{
			URL:               url,
			EventTypes:        []string{"*"},
			AllowInsecureHTTP: true,
			SigningSecretRef:  &webhooksv1alpha1.SecretKeyRef{Name: secret.Name, Key: "key"},
			TimeoutSeconds:    ptr.To[int32](10),
			RetryPolicy: &webhooksv1alpha1.RetryPolicy{
				InitialDelaySeconds: ptr.To[int32](1), MaxDelaySeconds: ptr.To[int32](5),
			},
		},
	}
	for _, f := range mutate {
		f(ep)
	}
	if err := env.Client.Create(ctx, ep); err != nil {
		tb.Fatalf("creating the WebhookEndpoint: %v", err)
	}
	return ep
}

// createDeliveries creates n deliveries of llm.completed events to endpoint and returns their
// event ids.
func createDeliveries(tb testing.TB, ns, endpoint, prefix string, n int) []string {
	tb.Helper()
	ids := make([]string, 0, n)
	for i := range n {
		id := prefix + "-" + strconv.Itoa(i)
		d := webhooksv1alpha1.NewDelivery(ns, endpoint, webhooksv1alpha1.Event{
			ID: id, Type: webhooksv1alpha1.EventLLMCompleted, Timestamp: time.Now().Unix(),
			OrganizationID: "org-faults",
			Document:       webhooksv1alpha1.Document{DocumentID: "doc-" + id, DocumentName: "invoice.pdf"},
		})
		if err := env.Client.Create(context.Background(), d); err != nil {
			tb.Fatalf("creating delivery %s: %v", id, err)
		}
		ids = append(ids, id)
	}
	return ids
}

// phases counts the deliveries of ns by phase, read from the API server.
func phases(tb testing.TB, ns string) (map[webhooksv1alpha1.DeliveryPhase]int, error) {
	tb.Helper()
	var list webhooksv1alpha1.WebhookDeliveryList
	if err := env.Client.List(context.Background(), &list, client.InNamespace(ns)); err != nil {
		return nil, err
	}
	out := map[webhooksv1alpha1.DeliveryPhase]int{}
	for _, d := range list.Items {
		out[d.Status.Phase]++
	}
	return out, nil
}

// waitSucceeded waits until n deliveries of ns are Succeeded.
func waitSucceeded(tb testing.TB, ns string, n int, timeout time.Duration) {
	tb.Helper()
	var last map[webhooksv1alpha1.DeliveryPhase]int
	deadline := time.Now().Add(timeout)
	for {
		p, err := phases(tb, ns)
		if err == nil {
			last = p
			if p[webhooksv1alpha1.PhaseSucceeded] >= n {
				return
			}
		}
		if time.Now().After(deadline) {
			tb.Fatalf("after %s, %d of %d deliveries Succeeded (phases: %v)", timeout, last[webhooksv1alpha1.PhaseSucceeded], n, last)
		}
		time.Sleep(250 * time.Millisecond)
	}
}
