package controllers

import (
	"context"
	"net/http"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"github.com/prometheus/client_golang/prometheus/testutil"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/event"

	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
	"github.com/docrouter/webhook-operator/dispatcher"
	"github.com/docrouter/webhook-operator/internal/history"
	"github.com/docrouter/webhook-operator/internal/history/historytest"
	"github.com/docrouter/webhook-operator/internal/metrics"
	"github.com/docrouter/webhook-operator/internal/testenv/testreceiver"
)

// startOperatorWithStore runs the controllers against namespace ns with a history store.
func startOperatorWithStore(t *testing.T, ns string, opts Options, store history.Store) {
	t.Helper()
	opts.Namespaces = []string{ns}
	mgrOpts := env.ManagerOptions(ns)
	mgrOpts.Cache = CacheOptions(mgrOpts.Cache)
	env.StartManager(t, mgrOpts, func(ctx context.Context, mgr ctrl.Manager) error {
		_, err := Setup(ctx, mgr, opts, Deps{Sender: dispatcher.NewSender(dispatcher.SenderOptions{}), Store: store})
		return err
	})
}

// onEachEngine runs f against SQLite in a temporary file and against a real PostgreSQL.
func onEachEngine(t *testing.T, f func(t *testing.T, store history.Store)) {
	t.Helper()
	t.Run("sqlite", func(t *testing.T) { f(t, historytest.SQLite(t)) })
	t.Run("postgres", func(t *testing.T) { f(t, historytest.OpenPostgres(t)) })
}

// historyOptions are testOptions with short times in etcd.
func historyOptions() Options {
	o := testOptions()
	o.SucceededRetention, o.FailedRetention = 3*time.Second, 4*time.Second
	o.RetentionSweepInterval = 200 * time.Millisecond
	return o
}

func record(g Gomega, store history.Store, ns, name string) *history.Record {
	r, err := store.Get(context.Background(), history.Key{Namespace: ns, Name: name})
	g.Expect(err).NotTo(HaveOccurred())
	return r
}

func inEtcd(ns, name string) bool {
	err := env.Client.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: name}, &webhooksv1alpha1.WebhookDelivery{})
	return !apierrors.IsNotFound(err)
}

// A finished delivery is archived with its event and every attempt, stays in etcd for its time
// there (kubectl get, wait and a retry annotation work on it), and then leaves etcd; its record
// says when it left.
func TestFinishedDeliveriesAreArchivedThenLeaveEtcd(t *testing.T) {
	onEachEngine(t, func(t *testing.T, store history.Store) {
		t.Helper()
		g := NewWithT(t)
		ns := env.Namespace(t)
		signingSecret(t, ns)
		ok, down := testreceiver.New(t, testKey, http.StatusOK), testreceiver.New(t, testKey, http.StatusInternalServerError)
		startOperatorWithStore(t, ns, historyOptions(), store)
		create(t, newEndpoint(ns, "ok", ok.URL), newEndpoint(ns, "down", down.URL, func(ep *webhooksv1alpha1.WebhookEndpoint) {
			ep.Spec.RetryPolicy = fastRetries(1)
		}))
		succeeded := webhooksv1alpha1.NewDelivery(ns, "ok", newEvent("evt-archived"))
		failed := webhooksv1alpha1.NewDelivery(ns, "down", newEvent("evt-archived-failed"))
		create(t, succeeded, failed)

		g.Eventually(func(g Gomega) {
			s := record(g, store, ns, succeeded.Name)
			g.Expect(s.Phase).To(Equal(webhooksv1alpha1.PhaseSucceeded))
			g.Expect(s.Attempts).To(HaveLen(1))
			f := record(g, store, ns, failed.Name)
			g.Expect(f.Phase).To(Equal(webhooksv1alpha1.PhaseFailed))
			g.Expect(f.Attempts).To(HaveLen(2), "both attempts of the failed delivery are recorded")
			g.Expect(f.Attempts[0].StatusCode).To(Equal(int32(500)))
		}).WithTimeout(15 * time.Second).Should(Succeed())
		g.Expect(inEtcd(ns, succeeded.Name)).To(BeTrue(), "archived, and still in etcd: kubectl get shows it")

		g.Eventually(func() bool { return inEtcd(ns, succeeded.Name) || inEtcd(ns, failed.Name) }).
			WithTimeout(15*time.Second).Should(BeFalse(), "both leave etcd after their time there")
		s := record(g, store, ns, succeeded.Name)
		g.Expect(s.RemovedTime).NotTo(BeNil())
		g.Expect(s.Event.ID).To(Equal("evt-archived"))
		g.Expect(s.Event.Data).NotTo(BeNil())
		g.Expect(string(s.Event.Data.Raw)).To(MatchJSON(`{"invoice_total":"1250.00","currency":"EUR"}`))
		g.Expect(s.Labels).To(HaveKeyWithValue(webhooksv1alpha1.EndpointLabel, "ok"))
		g.Expect(ok.Count()).To(Equal(1))
	})
}

// More finished deliveries than --max-finished-deliveries: the oldest leave etcd first, after
// they are archived, however long their time in etcd would be.
func TestFinishedDeliveriesBeyondTheLimitLeaveOldestFirst(t *testing.T) {
	g := NewWithT(t)
	store := historytest.SQLite(t)
	ns := env.Namespace(t)
	signingSecret(t, ns)
	rcv := testreceiver.New(t, testKey, http.StatusOK)
	opts := historyOptions()
	opts.SucceededRetention, opts.MaxFinishedDeliveries = time.Hour, 5
	startOperatorWithStore(t, ns, opts, store)
	create(t, newEndpoint(ns, "crm", rcv.URL))

	var names []string
	for i := range 12 {
		d := webhooksv1alpha1.NewDelivery(ns, "crm", newEvent("evt-cap-"+strconv.Itoa(i)))
		create(t, d)
		names = append(names, d.Name)
		g.Eventually(func(g Gomega) {
			g.Expect(getDelivery(g, ns, d.Name).Status.Phase).To(Equal(webhooksv1alpha1.PhaseSucceeded))
		}).WithTimeout(10 * time.Second).Should(Succeed())
		time.Sleep(1100 * time.Millisecond) // managedFields times have a resolution of a second
	}
	g.Eventually(func() []bool {
		var present []bool
		for _, n := range names {
			present = append(present, inEtcd(ns, n))
		}
		return present
	}).WithTimeout(15*time.Second).Should(Equal([]bool{false, false, false, false, false, false, false, true, true, true, true, true}),
		"the 7 oldest left, the 5 newest stay")
	for _, n := range names {
		g.Expect(record(g, store, ns, n).Phase).To(Equal(webhooksv1alpha1.PhaseSucceeded), "every one is in the store")
	}
}

// Status keeps the last 20 attempts; the store keeps every one.
func TestEveryAttemptIsRecordedBeyondTheTwentyOfStatus(t *testing.T) {
	g := NewWithT(t)
	store := historytest.SQLite(t)
	ns := env.Namespace(t)
	signingSecret(t, ns)
	rcv := testreceiver.New(t, testKey, http.StatusServiceUnavailable)
	opts := historyOptions()
	opts.FailedRetention = time.Hour
	startOperatorWithStore(t, ns, opts, store)
	create(t, newEndpoint(ns, "flaky", rcv.URL, func(ep *webhooksv1alpha1.WebhookEndpoint) { ep.Spec.RetryPolicy = fastRetries(0) }))
	d := webhooksv1alpha1.NewDelivery(ns, "flaky", newEvent("evt-many-attempts"))
	create(t, d)

	const attempts = 25
	for n := int32(1); n <= attempts; n++ {
		g.Eventually(func(g Gomega) {
			got := getDelivery(g, ns, d.Name)
			g.Expect(got.Status.Attempts).To(Equal(n))
			g.Expect(got.Status.Phase).To(Equal(webhooksv1alpha1.PhaseFailed))
		}).WithTimeout(10 * time.Second).Should(Succeed())
		if n < attempts {
			annotate(t, ns, d.Name, webhooksv1alpha1.RetryAnnotation, "retry-"+strconv.Itoa(int(n)))
		}
	}
	g.Expect(getDelivery(g, ns, d.Name).Status.History).To(HaveLen(webhooksv1alpha1.MaxAttemptHistory))
	g.Eventually(func(g Gomega) {
		r := record(g, store, ns, d.Name)
		g.Expect(r.AttemptCount).To(Equal(int32(attempts)))
		g.Expect(r.Attempts).To(HaveLen(attempts))
		for i, a := range r.Attempts {
			g.Expect(a.Number).To(Equal(int32(i + 1)))
		}
		g.Expect(r.Attempts[0].Trigger).To(Equal(webhooksv1alpha1.TriggerScheduled))
		g.Expect(r.Attempts[attempts-1].Trigger).To(Equal(webhooksv1alpha1.TriggerManual))
	}).WithTimeout(10 * time.Second).Should(Succeed())
}

// While the store does not answer, deliveries go on but none leaves etcd unarchived; once it
// answers again they are archived and leave, and no record is lost. The gauge says so.
func TestDeliveriesStayInEtcdWhileTheStoreIsDown(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	server := historytest.StartPostgres(t)
	store, err := history.Open(ctx, server.Database(t), history.Options{})
	g.Expect(err).NotTo(HaveOccurred())
	t.Cleanup(func() { _ = store.Close() })
	ns := env.Namespace(t)
	signingSecret(t, ns)
	rcv := testreceiver.New(t, testKey, http.StatusOK)
	opts := historyOptions()
	opts.SucceededRetention = time.Second
	startOperatorWithStore(t, ns, opts, store)
	create(t, newEndpoint(ns, "crm", rcv.URL))

	g.Expect(server.Stop()).To(Succeed())
	var names []string
	for i := range 20 {
		d := webhooksv1alpha1.NewDelivery(ns, "crm", newEvent("evt-outage-"+strconv.Itoa(i)))
		create(t, d)
		names = append(names, d.Name)
	}
	g.Eventually(rcv.Count).WithTimeout(20*time.Second).Should(Equal(20), "deliveries go on without the store")
	g.Eventually(func() float64 { return testutil.ToFloat64(metrics.HistoryStoreUp) }).WithTimeout(15 * time.Second).Should(Equal(0.0))
	g.Consistently(func() int {
		n := 0
		for _, name := range names {
			if inEtcd(ns, name) {
				n++
			}
		}
		return n
	}).WithTimeout(4*time.Second).Should(Equal(20), "none leaves etcd unarchived, past its time")

	g.Expect(server.Start()).To(Succeed())
	g.Eventually(func() int {
		n := 0
		for _, name := range names {
			if inEtcd(ns, name) {
				n++
			}
		}
		return n
	}).WithTimeout(60*time.Second).Should(BeZero(), "once the store answers they are archived and leave")
	for _, name := range names {
		r := record(g, store, ns, name)
		g.Expect(r.Phase).To(Equal(webhooksv1alpha1.PhaseSucceeded))
		g.Expect(r.Attempts).To(HaveLen(1))
	}
	g.Expect(testutil.ToFloat64(metrics.HistoryStoreUp)).To(Equal(1.0))
	if rcv.Count() != 20 {
		for _, r := range rcv.Requests() {
			t.Logf("%s %s attempt %s", r.At.Format("15:04:05.000"), r.Header.Get(dispatcher.HeaderEventID), r.Header.Get(dispatcher.HeaderAttempt))
		}
	}
	g.Expect(rcv.Count()).To(Equal(20), "nothing was sent twice")
}

// A delivery that left etcd is re-created from its record for a manual retry: the new attempt
// continues the numbering, the record keeps the earlier attempts, and a failure would leave it
// Failed rather than schedule retries.
func TestDeliveryRecreatedFromItsRecordContinuesIt(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	store := historytest.SQLite(t)
	ns := env.Namespace(t)
	signingSecret(t, ns)
	rcv := testreceiver.New(t, testKey, http.StatusBadGateway, http.StatusOK)
	opts := historyOptions()
	opts.FailedRetention = time.Second
	startOperatorWithStore(t, ns, opts, store)
	create(t, newEndpoint(ns, "crm", rcv.URL, func(ep *webhooksv1alpha1.WebhookEndpoint) { ep.Spec.RetryPolicy = fastRetries(0) }))
	d := webhooksv1alpha1.NewDelivery(ns, "crm", newEvent("evt-restore"))
	create(t, d)
	g.Eventually(func() bool { return inEtcd(ns, d.Name) }).WithTimeout(20 * time.Second).Should(BeFalse())
	old := record(g, store, ns, d.Name)
	g.Expect(old.Phase).To(Equal(webhooksv1alpha1.PhaseFailed))

	again := webhooksv1alpha1.NewDelivery(ns, old.Endpoint, old.Event)
	again.Annotations = map[string]string{
		webhooksv1alpha1.RetryAnnotation:            "console-1",
		webhooksv1alpha1.RestoredAttemptsAnnotation: strconv.Itoa(int(old.AttemptCount)),
	}
	g.Expect(env.Client.Create(ctx, again)).To(Succeed())
	g.Eventually(func(g Gomega) {
		r := record(g, store, ns, d.Name)
		g.Expect(r.Phase).To(Equal(webhooksv1alpha1.PhaseSucceeded))
		g.Expect(r.AttemptCount).To(Equal(int32(2)))
		g.Expect(r.Attempts).To(HaveLen(2))
		g.Expect(r.Attempts[0].StatusCode).To(Equal(int32(http.StatusBadGateway)))
		g.Expect(r.Attempts[1].Number).To(Equal(int32(2)))
		g.Expect(r.Attempts[1].Trigger).To(Equal(webhooksv1alpha1.TriggerManual))
		g.Expect(r.UID).NotTo(Equal(old.UID))
	}).WithTimeout(15 * time.Second).Should(Succeed())
	reqs := rcv.Requests()
	g.Expect(reqs).To(HaveLen(2))
	g.Expect(reqs[1].Header.Get(dispatcher.HeaderAttempt)).To(Equal("2"))
}

// A replica that is not the leader follows the backlog as the store counts it: once the
// endpoint's backlog drains (the leader promoted it), that replica's intake sends its events
// straight to etcd again rather than through the backlog; once elected it leaves the counting
// to the promoter.
func TestReplicaFollowsTheBacklogUntilElected(t *testing.T) {
	g := NewWithT(t)
	ctx := t.Context()
	store := historytest.SQLite(t)
	ep := types.NamespacedName{Namespace: "team-a", Name: "crm"}
	var items []history.BacklogItem
	for _, id := range []string{"evt-1", "evt-2", "evt-3"} {
		items = append(items, history.BacklogItem{Namespace: ep.Namespace, Endpoint: ep.Name, Name: webhooksv1alpha1.DeliveryName(ep.Name, id),
			Event: webhooksv1alpha1.Event{ID: id, Type: "llm.completed"}, EnqueuedAt: time.Now()})
	}
	_, err := store.Enqueue(ctx, items)
	g.Expect(err).NotTo(HaveOccurred())

	set := NewWorkingSet(WorkingSetLimits{PerEndpoint: 10})
	set.Queued(ep) // this replica's intake queued one of them
	elected := make(chan struct{})
	stopped := make(chan error, 1)
	go func() { stopped <- (&backlogCounter{store: store, set: set, elected: elected}).Start(ctx) }()

	g.Eventually(func() int64 { return set.Backlog(ep) }).WithTimeout(5 * time.Second).Should(Equal(int64(3)))
	queued, err := store.NextBacklog(ctx, history.EndpointKey{Namespace: ep.Namespace, Name: ep.Name}, 10)
	g.Expect(err).NotTo(HaveOccurred())
	ids := make([]int64, 0, len(queued))
	for _, it := range queued {
		ids = append(ids, it.ID)
	}
	g.Expect(store.DeleteBacklog(ctx, ids)).To(Succeed()) // the leader promoted them
	g.Eventually(func() bool { return set.HasBacklog(ep) }).WithTimeout(5*time.Second).Should(BeFalse(),
		"the drained backlog no longer sends the endpoint's events through it")

	close(elected)
	g.Eventually(stopped).WithTimeout(5 * time.Second).Should(Receive(BeNil()))
}

// countingCounts counts the store's BacklogCounts calls.
type countingCounts struct {
	history.Store
	n atomic.Int64
}

func (c *countingCounts) BacklogCounts(ctx context.Context) (map[history.EndpointKey]int64, error) {
	c.n.Add(1)
	return c.Store.BacklogCounts(ctx)
}

// Room that frees wakes the promoter only while there is a backlog: without one it counts the
// backlog on its ticker alone, not once per delivery that leaves the working set; with one,
// every freed room is looked at.
func TestPromoterWakesOnFreedRoomOnlyForABacklog(t *testing.T) {
	g := NewWithT(t)
	ctx, cancel := context.WithCancel(t.Context())
	store := &countingCounts{Store: historytest.SQLite(t)}
	ep := types.NamespacedName{Namespace: "team-a", Name: "crm"}
	set := NewWorkingSet(WorkingSetLimits{PerEndpoint: 1})
	// The endpoint's one place is taken, so a backlog stays where it is (nothing to create).
	ok, _ := set.Admit(ep, types.NamespacedName{Namespace: ep.Namespace, Name: "crm-evt-0"})
	g.Expect(ok).To(BeTrue())
	wake := make(chan event.TypedGenericEvent[*webhooksv1alpha1.WebhookEndpoint], 16)
	stopped := make(chan error, 1)
	go func() { stopped <- (&promoter{store: store, set: set, wake: wake}).Start(ctx) }()

	free := func() int64 {
		before := store.n.Load()
		for range 100 {
			set.signalFreed()
			time.Sleep(5 * time.Millisecond)
		}
		return store.n.Load() - before
	}
	g.Expect(free()).To(BeNumerically("<=", 2), "100 freed rooms in 0.5 s without a backlog: the ticker's counts only")

	_, err := store.Enqueue(ctx, []history.BacklogItem{{Namespace: ep.Namespace, Endpoint: ep.Name, Name: webhooksv1alpha1.DeliveryName(ep.Name, "evt-1"),
		Event: webhooksv1alpha1.Event{ID: "evt-1", Type: "llm.completed"}, EnqueuedAt: time.Now()}})
	g.Expect(err).NotTo(HaveOccurred())
	g.Eventually(func() int64 { return set.Backlog(ep) }).WithTimeout(3 * time.Second).Should(Equal(int64(1)))
	g.Expect(free()).To(BeNumerically(">=", 20), "with a backlog, freed room is looked at")

	cancel()
	g.Eventually(stopped).WithTimeout(5 * time.Second).Should(Receive(BeNil()))
}
