package intake_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/dynamic"
	toolscache "k8s.io/client-go/tools/cache"
	watchtools "k8s.io/client-go/tools/watch"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
	"github.com/docrouter/webhook-operator/controllers"
	"github.com/docrouter/webhook-operator/dispatcher"
	"github.com/docrouter/webhook-operator/internal/history"
	"github.com/docrouter/webhook-operator/internal/history/historytest"
	"github.com/docrouter/webhook-operator/internal/intake"
	"github.com/docrouter/webhook-operator/internal/metrics"
	"github.com/docrouter/webhook-operator/internal/testenv"
	"github.com/docrouter/webhook-operator/internal/testenv/testreceiver"
)

// startStack runs the operator's controllers for ns, with store (nil: none), and serves the
// intake wired to them as main.go wires it: the working set admits its deliveries and the
// store's backlog takes those beyond it. It returns the intake's URL.
func startStack(tb testing.TB, e *testenv.Env, ns string, opts controllers.Options, store history.Store) string {
	tb.Helper()
	var h *intake.Handler
	opts.Namespaces, opts.SecretTTL = []string{ns}, 0
	mgrOpts := e.ManagerOptions(ns)
	mgrOpts.Cache = controllers.CacheOptions(mgrOpts.Cache)
	e.StartManager(tb, mgrOpts, func(ctx context.Context, mgr ctrl.Manager) error {
		op, err := controllers.Setup(ctx, mgr, opts, controllers.Deps{Sender: dispatcher.NewSender(dispatcher.SenderOptions{}), Store: store})
		if err != nil {
			return err
		}
		h = intake.NewHandler(mgr.GetClient(), mgr.GetCache(), intake.Options{AllowAnonymous: true, WorkingSet: op.WorkingSet, Store: store})
		return nil
	})
	srv := httptest.NewServer(h)
	tb.Cleanup(srv.Close)
	return srv.URL
}

func llmEvent(id string) []byte {
	return []byte(fmt.Sprintf(`{"event_id": %q, "event_type": "llm.completed", "organization_id": "org-1", "document": {"document_id": "doc-1"}}`, id))
}

// Without a history store, an event beyond the working set is refused with 429, a Retry-After
// and a sentence that says why, and nothing of it is created; an event within it is accepted.
func TestPublishBeyondTheWorkingSetWithoutAStoreIsRefusedWith429(t *testing.T) {
	g := NewWithT(t)
	ns := env.Namespace(t)
	signingSecret(t, ns)
	opts := controllers.DefaultOptions()
	opts.MaxLiveDeliveriesPerEndpoint = 2
	base := startStack(t, env, ns, opts, nil)
	// A paused endpoint: its deliveries stay unfinished, so the working set fills.
	endpoint(t, ns, "crm", "http://127.0.0.1:1/unused", "*")
	pause(t, ns, "crm")

	for i := range 2 {
		acc := post(t, base, ns, "", llmEvent(fmt.Sprintf("evt-%d", i))).accepted(t)
		g.Expect(acc.Deliveries).To(HaveLen(1))
		g.Expect(acc.Deliveries[0].Created).To(BeTrue())
		g.Expect(acc.Deliveries[0].Queued).To(BeFalse())
	}
	g.Eventually(func() int { return len(deliveries(t, ns)) }).WithTimeout(10 * time.Second).Should(Equal(2))

	a := post(t, base, ns, "", llmEvent("evt-2"))
	g.Expect(a.status).To(Equal(http.StatusTooManyRequests))
	g.Expect(a.header.Get("Retry-After")).To(Equal("5"))
	sentence := a.errorSentence(t)
	g.Expect(sentence).To(ContainSubstring(`WebhookEndpoint "crm" has 2 unfinished deliveries in etcd, the most allowed`))
	g.Expect(sentence).To(ContainSubstring("the operator keeps no history store to hold them"))
	g.Expect(sentence).To(ContainSubstring("Publish the same event_id again"))
	g.Consistently(func() int { return len(deliveries(t, ns)) }).WithTimeout(time.Second).Should(Equal(2), "nothing of the refused event is created")
}

// pause sets spec.paused on an endpoint.
func pause(tb testing.TB, ns, name string) {
	tb.Helper()
	setPaused(tb, ns, name, true)
}

func setPaused(tb testing.TB, ns, name string, paused bool) {
	tb.Helper()
	ep := &webhooksv1alpha1.WebhookEndpoint{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	data := fmt.Sprintf(`{"spec":{"paused":%t}}`, paused)
	if err := env.Client.Patch(context.Background(), ep, client.RawPatch(types.MergePatchType, []byte(data))); err != nil {
		tb.Fatal(err)
	}
}

// endpointIn is endpoint on the control plane e.
func endpointIn(tb testing.TB, e *testenv.Env, ns, name, url string, types ...string) {
	tb.Helper()
	ep := &webhooksv1alpha1.WebhookEndpoint{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       webhooksv1alpha1.WebhookEndpointSpec{URL: url, AllowInsecureHTTP: true, EventTypes: types, TimeoutSeconds: ptr.To[int32](2)},
	}
	if err := e.Client.Create(context.Background(), ep); err != nil {
		tb.Fatal(err)
	}
}

// fillEtcd writes ConfigMaps of about 1 MiB into ns until etcd refuses writes because it
// reached its quota.
func fillEtcd(ctx context.Context, e *testenv.Env, ns string) error {
	blob := strings.Repeat("x", 900<<10)
	for i := range 200 {
		cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("filler-%d", i)}, Data: map[string]string{"blob": blob}}
		err := e.Client.Create(ctx, cm)
		if err != nil && strings.Contains(err.Error(), "database space exceeded") {
			return nil
		}
		if err != nil {
			return err
		}
	}
	return fmt.Errorf("etcd took 200 ConfigMaps of 900 KiB without reaching its quota")
}

// etcdFullEnv starts a control plane of its own whose etcd has a small quota, and fills etcd
// until it refuses writes with "database space exceeded", as a cluster whose etcd something
// else filled does.
func etcdFullEnv(t *testing.T) *testenv.Env {
	t.Helper()
	e, err := testenv.StartWith(testenv.Settings{EtcdQuotaBytes: 16 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.Stop() })
	return e
}

// When etcd itself is out of space, the intake's answer says so in words, with a Retry-After,
// rather than a bare 503.
func TestPublishWhenEtcdIsFullSaysSo(t *testing.T) {
	g := NewWithT(t)
	e := etcdFullEnv(t)
	ns := e.Namespace(t)
	base := startStack(t, e, ns, controllers.DefaultOptions(), nil)
	endpointIn(t, e, ns, "crm", "http://127.0.0.1:1/unused", "*")
	g.Expect(fillEtcd(context.Background(), e, ns)).To(Succeed())

	a := post(t, base, ns, "", llmEvent("evt-full"))
	g.Expect(a.status).To(Equal(http.StatusServiceUnavailable))
	g.Expect(a.header.Get("Retry-After")).To(Equal("30"))
	sentence := a.errorSentence(t)
	g.Expect(sentence).To(ContainSubstring("the cluster's etcd is out of space (mvcc: database space exceeded)"))
	g.Expect(strings.Count(sentence, "etcd")).To(BeNumerically(">=", 1))
}

// 3,000 events for a paused endpoint: at most 1,000 become WebhookDeliveries, the other 2,000
// wait in the store's backlog (status.backlog says so); once the endpoint is unpaused all 3,000
// are delivered, and their deliveries are created in publish order, chunk by chunk. Events are
// published in waves of 20 at once, one wave after the other, so publish order is the order of
// the waves.
func TestBacklogHoldsEventsBeyondTheWorkingSetInPublishOrder(t *testing.T) {
	const events, wave = 3000, 20
	g := NewWithT(t)
	ctx := context.Background()
	store := historytest.SQLite(t)
	ns := env.Namespace(t)
	signingSecret(t, ns)
	rcv := testreceiver.New(t, signingKey)
	opts := controllers.DefaultOptions()
	opts.HealthUpdateInterval = 200 * time.Millisecond
	base := startStack(t, env, ns, opts, store)
	endpoint(t, ns, "crm", rcv.URL, "*")
	pause(t, ns, "crm")
	created := watchCreations(t, ns)

	var queued atomic.Int64
	for first := 0; first < events; first += wave {
		var wg sync.WaitGroup
		for i := first; i < first+wave; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				acc := post(t, base, ns, "", llmEvent(fmt.Sprintf("evt-%05d", i))).accepted(t)
				if len(acc.Deliveries) == 1 && acc.Deliveries[0].Created && acc.Deliveries[0].Queued {
					queued.Add(1)
				}
			}()
		}
		wg.Wait()
	}
	g.Expect(queued.Load()).To(Equal(int64(events - opts.MaxLiveDeliveriesPerEndpoint)))
	g.Expect(len(deliveries(t, ns))).To(Equal(opts.MaxLiveDeliveriesPerEndpoint), "at most the per-endpoint limit in etcd")
	g.Eventually(func(g Gomega) {
		ep := &webhooksv1alpha1.WebhookEndpoint{}
		g.Expect(env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: "crm"}, ep)).To(Succeed())
		g.Expect(ep.Status.Backlog).To(Equal(int64(events - opts.MaxLiveDeliveriesPerEndpoint)))
	}).WithTimeout(10 * time.Second).Should(Succeed())

	setPaused(t, ns, "crm", false)
	g.Eventually(func() int { return len(distinct(rcv.Requests())) }).WithTimeout(4*time.Minute).WithPolling(time.Second).
		Should(Equal(events), "every event is delivered")
	g.Eventually(func() int { return len(created()) }).WithTimeout(30 * time.Second).Should(Equal(events))
	// The promoter creates an endpoint's deliveries in chunks of 16 in flight at once, the next
	// chunk once the last is answered: no delivery is created before one published more than a
	// chunk earlier (and, published in waves, of an earlier wave).
	const chunk = 16
	waves := make([]int, 0, events)
	for _, id := range created() {
		n, err := strconv.Atoi(strings.TrimPrefix(id, "evt-"))
		g.Expect(err).NotTo(HaveOccurred())
		waves = append(waves, n/wave)
	}
	latest := -1 // the latest wave created at least a chunk before
	for i, w := range waves {
		if i >= chunk {
			latest = max(latest, waves[i-chunk])
		}
		g.Expect(w).To(BeNumerically(">=", latest), "delivery %d (wave %d) is created after one of wave %d published before it: not in publish order", i, w, latest)
	}
	g.Eventually(func(g Gomega) {
		ep := &webhooksv1alpha1.WebhookEndpoint{}
		g.Expect(env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: "crm"}, ep)).To(Succeed())
		g.Expect(ep.Status.Backlog).To(BeZero())
	}).WithTimeout(15 * time.Second).Should(Succeed())
}

// watchCreations records the event id of every delivery created in ns, in the order the API
// server created them. It resumes a broken watch from the last resourceVersion it saw, so it
// misses none.
func watchCreations(t *testing.T, ns string) func() []string {
	t.Helper()
	dyn := dynamic.NewForConfigOrDie(env.Config).Resource(webhooksv1alpha1.GroupVersion.WithResource("webhookdeliveries")).Namespace(ns)
	list, err := dyn.List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	rw, err := watchtools.NewRetryWatcherWithContext(ctx, list.GetResourceVersion(), &toolscache.ListWatch{
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) { return dyn.Watch(ctx, o) },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rw.Stop)
	var mu sync.Mutex
	var ids []string
	go func() {
		for ev := range rw.ResultChan() {
			if u, ok := ev.Object.(*unstructured.Unstructured); ok && ev.Type == watch.Added {
				id, _, _ := unstructured.NestedString(u.Object, "spec", "event", "id")
				mu.Lock()
				ids = append(ids, id)
				mu.Unlock()
			}
		}
	}()
	return func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), ids...)
	}
}

// distinct is the set of event ids among verified requests.
func distinct(reqs []testreceiver.Request) map[string]bool {
	out := map[string]bool{}
	for _, r := range reqs {
		if r.Verified {
			out[r.Header.Get(dispatcher.HeaderEventID)] = true
		}
	}
	return out
}

// When the working set is full and the store cannot take the event either (it does not
// answer), the intake answers 429 with Retry-After and a sentence that names both causes.
func TestPublishBeyondTheWorkingSetWhenTheStoreIsDownIsRefusedWith429(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	server := historytest.StartPostgres(t)
	store, err := history.Open(ctx, server.Database(t), history.Options{})
	g.Expect(err).NotTo(HaveOccurred())
	t.Cleanup(func() { _ = store.Close() })
	ns := env.Namespace(t)
	opts := controllers.DefaultOptions()
	opts.MaxLiveDeliveriesPerEndpoint = 1
	base := startStack(t, env, ns, opts, store)
	endpoint(t, ns, "crm", "http://127.0.0.1:1/unused", "*")
	pause(t, ns, "crm")
	post(t, base, ns, "", llmEvent("evt-in")).accepted(t)
	g.Eventually(func() int { return len(deliveries(t, ns)) }).WithTimeout(10 * time.Second).Should(Equal(1))

	g.Expect(server.Stop()).To(Succeed())
	a := post(t, base, ns, "", llmEvent("evt-refused"))
	g.Expect(a.status).To(Equal(http.StatusTooManyRequests))
	g.Expect(a.header.Get("Retry-After")).To(Equal("5"))
	sentence := a.errorSentence(t)
	g.Expect(sentence).To(ContainSubstring("unfinished deliveries in etcd, the most allowed"))
	g.Expect(sentence).To(ContainSubstring("the history store cannot take them either"))

	g.Expect(server.Start()).To(Succeed())
	g.Eventually(func() int { return post(t, base, ns, "", llmEvent("evt-refused")).status }).
		WithTimeout(20*time.Second).Should(Equal(http.StatusAccepted), "once the store answers, the same event is taken into the backlog")
}

// With a history store, an event that etcd cannot take because it is full waits in the
// backlog: accepted, not lost.
func TestPublishWhenEtcdIsFullQueuesInTheStore(t *testing.T) {
	g := NewWithT(t)
	e := etcdFullEnv(t)
	store := historytest.SQLite(t)
	ns := e.Namespace(t)
	base := startStack(t, e, ns, controllers.DefaultOptions(), store)
	endpointIn(t, e, ns, "crm", "http://127.0.0.1:1/unused", "*")
	g.Expect(fillEtcd(context.Background(), e, ns)).To(Succeed())

	acc := post(t, base, ns, "", llmEvent("evt-full-queued")).accepted(t)
	g.Expect(acc.Deliveries).To(HaveLen(1))
	g.Expect(acc.Deliveries[0].Queued).To(BeTrue())
	items, err := store.NextBacklog(context.Background(), history.EndpointKey{Namespace: ns, Name: "crm"}, 10)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(items).To(HaveLen(1))
	g.Expect(items[0].Event.ID).To(Equal("evt-full-queued"))
}

// An endpoint's backlog is bounded too (--max-backlog-per-endpoint): an event beyond it is
// refused with 429, a Retry-After and a sentence that names the endpoint and the flag, and it is
// neither created nor queued; the endpoint's earlier events are kept, and an endpoint with room
// still gets the same event.
func TestPublishBeyondTheBacklogBoundIsRefusedWith429(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	store := historytest.SQLite(t)
	ns := env.Namespace(t)
	opts := controllers.DefaultOptions()
	opts.MaxLiveDeliveriesPerEndpoint, opts.MaxBacklogPerEndpoint = 1, 2
	base := startStack(t, env, ns, opts, store)
	endpoint(t, ns, "billing", "http://127.0.0.1:1/unused", "llm.completed")
	pause(t, ns, "billing")
	post(t, base, ns, "", llmEvent("evt-1")).accepted(t)
	g.Eventually(func() int { return len(deliveries(t, ns)) }).WithTimeout(10 * time.Second).Should(Equal(1))
	for _, id := range []string{"evt-2", "evt-3"} {
		acc := post(t, base, ns, "", llmEvent(id)).accepted(t)
		g.Expect(acc.Deliveries[0].Queued).To(BeTrue(), id)
	}

	refusedBefore := testutil.ToFloat64(metrics.EventsRefused.WithLabelValues(metrics.RefusedBacklogFull))
	a := post(t, base, ns, "", llmEvent("evt-4"))
	g.Expect(a.status).To(Equal(http.StatusTooManyRequests))
	g.Expect(a.header.Get("Retry-After")).To(Equal("5"))
	sentence := a.errorSentence(t)
	g.Expect(sentence).To(ContainSubstring(`the backlog of WebhookEndpoint "billing" holds 2 events, the most allowed (--max-backlog-per-endpoint)`))
	g.Expect(testutil.ToFloat64(metrics.EventsRefused.WithLabelValues(metrics.RefusedBacklogFull)) - refusedBefore).To(Equal(1.0))
	counts, err := store.BacklogCounts(ctx)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(counts[history.EndpointKey{Namespace: ns, Name: "billing"}]).To(Equal(int64(2)), "the refused event is not queued; the earlier ones are kept")
	g.Expect(deliveries(t, ns)).To(HaveLen(1))

	// Another endpoint subscribing to the event has room: its delivery is made, and the answer
	// still refuses the event, so that a re-publish completes billing's once its backlog drains.
	endpoint(t, ns, "erp", "http://127.0.0.1:1/unused", "llm.completed")
	g.Eventually(func(g Gomega) {
		a := post(t, base, ns, "", llmEvent("evt-5")) // again until the intake sees erp
		g.Expect(a.status).To(Equal(http.StatusTooManyRequests))
		var names []string
		for _, d := range deliveries(t, ns) {
			if d.Spec.Event.ID == "evt-5" {
				names = append(names, d.Spec.EndpointRef.Name)
			}
		}
		g.Expect(names).To(Equal([]string{"erp"}))
	}).WithTimeout(10 * time.Second).Should(Succeed())
}
