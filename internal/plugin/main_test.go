package plugin_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/klog/v2"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	historyv1alpha1 "github.com/docrouter/webhook-operator/api/history/v1alpha1"
	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
	"github.com/docrouter/webhook-operator/dispatcher"
	"github.com/docrouter/webhook-operator/internal/plugin"
	"github.com/docrouter/webhook-operator/internal/receiver"
	"github.com/docrouter/webhook-operator/internal/testenv/stack"
)

var st *stack.Stack

// The plugin runs against the whole operator on a test control plane (internal/testenv/stack):
// the controllers deliver to real receivers that verify signatures, the history store is a
// real SQLite file, and the history API is reached through the API server, as kubectl reaches
// it. Failed deliveries leave etcd 2 s after they are archived, so that retrying one that left
// is tested against the operator itself.
func TestMain(m *testing.M) {
	klog.SetOutput(io.Discard) // the history API's server logs through klog
	klog.LogToStderr(false)
	opts := stack.TestOptions()
	opts.FailedRetention = 2 * time.Second
	opts.SucceededRetention = time.Hour
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

// admin is a kubeconfig of a cluster administrator (system:masters), written once.
var admin = sync.OnceValue(func() string {
	dir, err := os.MkdirTemp("", "plugin-admin-")
	if err != nil {
		panic(err)
	}
	u, err := st.Env.Environment().AddUser(envtestAdmin(), nil)
	if err != nil {
		panic(err)
	}
	kc, err := u.KubeConfig()
	if err != nil {
		panic(err)
	}
	path := dir + "/admin.kubeconfig"
	if err := os.WriteFile(path, kc, 0o600); err != nil {
		panic(err)
	}
	return path
})

func envtestAdmin() envtest.User {
	return envtest.User{Name: "admin", Groups: []string{"system:masters"}}
}

// result is what one run of the plugin printed, and its exit code.
type result struct {
	out, err string
	code     int
}

// run runs `kubectl webhooks ARGS` with a kubeconfig in namespace ns, as a user would.
func run(t *testing.T, kubeconfig, ns string, args ...string) result {
	t.Helper()
	var out, errOut bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	full := append([]string{"--kubeconfig", kubeconfig, "-n", ns}, args...)
	code := plugin.Run(ctx, full, genericiooptions.IOStreams{In: strings.NewReader(""), Out: &out, ErrOut: &errOut})
	t.Logf("$ kubectl webhooks %s\n%s%s(exit %d)", strings.Join(args, " "), out.String(), errOut.String(), code)
	return result{out: out.String(), err: errOut.String(), code: code}
}

// ok runs the plugin and fails the test unless it exits 0.
func ok(t *testing.T, kubeconfig, ns string, args ...string) result {
	t.Helper()
	r := run(t, kubeconfig, ns, args...)
	if r.code != 0 {
		t.Fatalf("kubectl webhooks %s exited %d: %s", strings.Join(args, " "), r.code, r.err)
	}
	return r
}

// row finds the table row whose first column is name, as a map from header to value.
func row(t *testing.T, table, name string) map[string]string {
	t.Helper()
	lines := strings.Split(strings.TrimRight(table, "\n"), "\n")
	header := lines[0]
	// Columns start where the header's titles start: values are aligned under them.
	var starts []int
	var titles []string
	for i := 0; i < len(header); {
		if header[i] == ' ' {
			i++
			continue
		}
		j := strings.Index(header[i:], "   ")
		if j < 0 {
			j = len(header) - i
		}
		starts, titles = append(starts, i), append(titles, strings.TrimSpace(header[i:i+j]))
		i += j
	}
	for _, line := range lines[1:] {
		if !strings.HasPrefix(line, name+" ") {
			continue
		}
		m := map[string]string{}
		for k, s := range starts {
			end := len(line)
			if k+1 < len(starts) && starts[k+1] < len(line) {
				end = starts[k+1]
			}
			if s < len(line) {
				m[titles[k]] = strings.TrimSpace(line[s:end])
			}
		}
		return m
	}
	t.Fatalf("no row %q in:\n%s", name, table)
	return nil
}

// fixture is a namespace with endpoints delivering to real verifying receivers.
type fixture struct {
	ns       string
	key      []byte
	receiver *countingReceiver
}

// countingReceiver is the sample receiver (it verifies X-DocRouter-Signature in constant time)
// on a loopback port, counting what it answered per event id. Paths under /fail answer 500.
type countingReceiver struct {
	*httptest.Server
	mu       sync.Mutex
	byEvent  map[string][]int
	verified map[string]int
}

func newReceiver(t *testing.T, key []byte) *countingReceiver {
	t.Helper()
	rc := &countingReceiver{byEvent: map[string][]int{}, verified: map[string]int{}}
	h := receiver.New(receiver.Options{Secret: key})
	rc.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, r)
		id := r.Header.Get(dispatcher.HeaderEventID)
		rc.mu.Lock()
		rc.byEvent[id] = append(rc.byEvent[id], rec.Code)
		if rec.Code != http.StatusUnauthorized {
			rc.verified[id]++
		}
		rc.mu.Unlock()
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.Code)
		_, _ = w.Write(rec.Body.Bytes())
	}))
	t.Cleanup(rc.Close)
	return rc
}

// requests returns the status codes answered to an event's requests, in order.
func (rc *countingReceiver) requests(eventID string) []int {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]int(nil), rc.byEvent[eventID]...)
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{ns: st.Env.Namespace(t), key: []byte("plugin-test-signing-key")}
	f.receiver = newReceiver(t, f.key)
	create(t, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: f.ns, Name: "signing"}, Data: map[string][]byte{"key": f.key}})
	return f
}

// endpoint creates an endpoint to the fixture's receiver at path, signed with its key.
func (f *fixture) endpoint(t *testing.T, name, path string, mutate ...func(*webhooksv1alpha1.WebhookEndpoint)) *webhooksv1alpha1.WebhookEndpoint {
	t.Helper()
	ep := &webhooksv1alpha1.WebhookEndpoint{
		ObjectMeta: metav1.ObjectMeta{Namespace: f.ns, Name: name},
		Spec: webhooksv1alpha1.WebhookEndpointSpec{
			URL: f.receiver.URL + path, EventTypes: []string{"*"}, AllowInsecureHTTP: true,
			SigningSecretRef: &webhooksv1alpha1.SecretKeyRef{Name: "signing", Key: "key"},
			RetryPolicy:      &webhooksv1alpha1.RetryPolicy{MaxRetries: ptr.To[int32](0)},
		},
	}
	for _, m := range mutate {
		m(ep)
	}
	create(t, ep)
	eventually(t, 30*time.Second, "endpoint "+name+" to be Ready", func(ctx context.Context) (bool, error) {
		got := &webhooksv1alpha1.WebhookEndpoint{}
		if err := st.Env.Client.Get(ctx, client.ObjectKeyFromObject(ep), got); err != nil {
			return false, err
		}
		for _, c := range got.Status.Conditions {
			if c.Type == webhooksv1alpha1.ConditionReady && c.ObservedGeneration == got.Generation {
				return c.Status == metav1.ConditionTrue || got.Spec.Paused, nil
			}
		}
		return false, nil
	})
	return ep
}

// deliver creates the delivery of a new event to an endpoint, as the intake does, and waits
// until its record in the history shows it finished.
func (f *fixture) deliver(t *testing.T, endpoint, eventID, eventType string) string {
	t.Helper()
	d := webhooksv1alpha1.NewDelivery(f.ns, endpoint, webhooksv1alpha1.Event{
		ID: eventID, Type: eventType, Timestamp: time.Now().Unix(), OrganizationID: "org-1",
		Document: webhooksv1alpha1.Document{DocumentID: "doc-" + eventID, DocumentName: "invoice.pdf", TagIDs: []string{"t1"}},
	})
	create(t, d)
	f.waitRecord(t, d.Name, func(r *historyv1alpha1.WebhookDeliveryRecord) bool {
		return r.Status.Phase == string(webhooksv1alpha1.PhaseSucceeded) || r.Status.Phase == string(webhooksv1alpha1.PhaseFailed)
	})
	return d.Name
}

// waitRecord waits until the delivery's record in the history satisfies done.
func (f *fixture) waitRecord(t *testing.T, name string, done func(*historyv1alpha1.WebhookDeliveryRecord) bool) *historyv1alpha1.WebhookDeliveryRecord {
	t.Helper()
	rec := &historyv1alpha1.WebhookDeliveryRecord{}
	eventually(t, 45*time.Second, "the record of "+name, func(ctx context.Context) (bool, error) {
		if err := st.Client.Get(ctx, client.ObjectKey{Namespace: f.ns, Name: name}, rec); err != nil {
			return false, err
		}
		return done(rec), nil
	})
	return rec
}

// goneFromEtcd waits until a delivery has left etcd and its record says so.
func (f *fixture) goneFromEtcd(t *testing.T, name string) {
	t.Helper()
	f.waitRecord(t, name, func(r *historyv1alpha1.WebhookDeliveryRecord) bool { return r.Status.RemovedTime != nil })
	d := &webhooksv1alpha1.WebhookDelivery{}
	if err := st.Env.Client.Get(context.Background(), client.ObjectKey{Namespace: f.ns, Name: name}, d); err == nil {
		t.Fatalf("the record of %s says it left etcd, but it is there", name)
	}
}

func create(t *testing.T, objs ...client.Object) {
	t.Helper()
	for _, o := range objs {
		if err := st.Env.Client.Create(context.Background(), o); err != nil {
			t.Fatalf("creating %T %s: %v", o, o.GetName(), err)
		}
	}
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
