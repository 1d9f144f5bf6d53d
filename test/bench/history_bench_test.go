//go:build bench

package bench

// The rows of the history store (issue 12), numbered after bench_test.go's so that BENCH_ROWS
// selects them too: (10) throughput with and without a store, (11) API writes and store
// transactions per first-try delivery, (12) bytes per record of each engine, (13) the soak on a
// control plane of its own (flat etcd and kube-apiserver, no NOSPACE, every record in the store,
// the archive lag, etcd bytes per delivery). docs/benchmarks.md describes the method.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	dto "github.com/prometheus/client_model/go"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
	"github.com/docrouter/webhook-operator/controllers"
	"github.com/docrouter/webhook-operator/dispatcher"
	"github.com/docrouter/webhook-operator/internal/history"
	"github.com/docrouter/webhook-operator/internal/history/historytest"
	"github.com/docrouter/webhook-operator/internal/metrics"
	"github.com/docrouter/webhook-operator/internal/testenv"
	"github.com/docrouter/webhook-operator/internal/testenv/testreceiver"
)

// Sizes of the history rows, overridable like BENCH_EVENTS, and BENCH_ROWS selects them:
//
//	BENCH_SOAK_EVENTS=5000 BENCH_HISTORY_WRITES=200 BENCH_SIZING_RECORDS=2000 make bench
//	BENCH_ROWS=10,13 make bench # the limit, then the throughput rows and the soak only
var (
	soakEvents     = envInt("BENCH_SOAK_EVENTS", 100000)
	soakPublishers = envInt("BENCH_SOAK_PUBLISHERS", 32)
	// soakCompaction is the kube-apiserver --etcd-compaction-interval of the soak's control
	// plane; "default" leaves kube-apiserver's own (5m).
	soakCompaction      = envString("BENCH_SOAK_COMPACTION", "30s")
	historyWritesEvents = envInt("BENCH_HISTORY_WRITES", 500)
	sizingRecords       = envInt("BENCH_SIZING_RECORDS", 20000)
	// soakProfile, when set, is a file for a CPU profile of the benchmark's process (the
	// operator, the intake, the store, the publishers and the receiver) during the soak.
	soakProfile = os.Getenv("BENCH_SOAK_CPUPROFILE")
	// soakHeapProfiles, when set, is a directory for a heap profile of the soak's kube-apiserver
	// (/debug/pprof/heap, after a collection) at each checkpoint by deliveries archived, named
	// archived-<n>.pb.gz: `go tool pprof -base archived-10000.pb.gz archived-25000.pb.gz` says
	// what grew.
	soakHeapProfiles = os.Getenv("BENCH_SOAK_HEAPPROFILES")
	// pipelineProfiles, when set, is a directory for a CPU profile of each run of the
	// throughput rows (none-1, sqlite, none-2, postgres, none-3).
	pipelineProfiles = os.Getenv("BENCH_PIPELINE_CPUPROFILES")
)

// soakQuota is the soak's etcd --quota-backend-bytes.
const soakQuota = 256 << 20

func envString(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// operatorSettings are what startOperator runs: the control plane (runPipeline works on the
// benchmark's env only), the operator's options and its history store.
type operatorSettings struct {
	env     *testenv.Env
	options controllers.Options
	store   history.Store // nil: no history, as --history-database=""
}

type operatorOption func(*operatorSettings)

func withStore(s history.Store) operatorOption {
	return func(o *operatorSettings) { o.store = s }
}

func withEnv(e *testenv.Env) operatorOption {
	return func(o *operatorSettings) { o.env = e }
}

func withOptions(f func(*controllers.Options)) operatorOption {
	return func(o *operatorSettings) { f(&o.options) }
}

// TestBenchHistory runs the history rows alone (TestBench runs them too):
//
//	KUBEBUILDER_ASSETS="$(hack/controlplane.sh)" go test -tags bench -count=1 -timeout 40m -run '^TestBenchHistory$' -v ./test/bench/
func TestBenchHistory(t *testing.T) {
	start := time.Now()
	tab := &table{}
	tab.add("machine", fmt.Sprintf("%d CPUs", runtime.NumCPU()), loadAverage())
	historyRows(t, tab)
	tab.add("total run time", time.Since(start).Round(time.Second).String(), "")
	tab.print(os.Stdout)
}

// historyRows adds the history store's rows that BENCH_ROWS selects (10 to 13) to tab and
// returns the time they took.
func historyRows(t *testing.T, tab *table) time.Duration {
	t.Helper()
	began := time.Now()
	if !want(10) && !want(11) && !want(12) && !want(13) {
		return 0
	}
	pg, err := historytest.NewServer()
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := pg.Close(); err != nil {
			t.Logf("stopping PostgreSQL: %v", err)
		}
	}()
	tab.add("(10-13) load average at the start", loadAverage(), "1, 5 and 15 minutes (/proc/loadavg); 2 cores shared with other work")

	for _, r := range []struct {
		row int
		run func()
	}{
		{10, func() { throughputRows(t, tab, pg) }},
		{11, func() { writesRows(t, tab) }},
		{12, func() { sizingRows(t, tab, pg) }},
		{13, func() { soakRows(t, tab) }},
	} {
		if want(r.row) {
			r.run()
		}
	}
	tab.add("(10-13) load average at the end", loadAverage(), "")
	return time.Since(began)
}

func loadAverage() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

// openStore opens a store on dsn, closed by the caller.
func openStore(t *testing.T, dsn string) history.Store {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := history.Open(ctx, dsn, history.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func pgDatabase(t *testing.T, pg *historytest.Server) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	name, err := pg.CreateDatabase(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return pg.DSN(name)
}

// --- (10) throughput with and without a store -----------------------------------------------

func throughputRows(t *testing.T, tab *table, pg *historytest.Server) {
	t.Helper()
	// The working set's limits are off in all five runs: at full rate the intake creates
	// deliveries faster than they are delivered, and past 1,000 unfinished ones an operator
	// without a store refuses (429) while one with a store queues them in its backlog, which
	// the promoter drains (the soak measures that regime). With the limits off, the runs
	// differ by what the store costs each delivery: the intake's Known, the archiver's batches,
	// the sweeper's checks.
	run := func(name string, with ...operatorOption) pipelineResult {
		with = append(with, withOptions(func(o *controllers.Options) { o.MaxLiveDeliveriesPerEndpoint, o.MaxLiveDeliveries = 0, 0 }))
		if pipelineProfiles != "" {
			f, err := os.Create(filepath.Join(pipelineProfiles, name+".pprof"))
			if err != nil {
				t.Fatal(err)
			}
			if err := pprof.StartCPUProfile(f); err != nil {
				t.Fatal(err)
			}
			defer func() { pprof.StopCPUProfile(); _ = f.Close() }()
		}
		return runPipeline(t, pipelineRun{endpoints: 1, events: pipelineEvents, publishers: 32, operator: with})
	}
	// The runs without a store come before, between and after the two with one, and each store
	// run is compared with the runs on either side of it: on a shared machine the rate drifts
	// within minutes (a third between the first and last run of one measurement), so a baseline
	// away from the run it divides would measure the drift.
	none1 := run("none-1")
	sqlite := openStore(t, "sqlite://"+filepath.Join(t.TempDir(), "history.db"))
	withSQLite := run("sqlite", withStore(sqlite))
	_ = sqlite.Close()
	none2 := run("none-2")
	postgres := openStore(t, pgDatabase(t, pg))
	withPostgres := run("postgres", withStore(postgres))
	_ = postgres.Close()
	none3 := run("none-3")
	tab.add("(10) pipeline fan-out 1, no store (baseline)", fmt.Sprintf("%.0f/s", (none1.rate+none2.rate+none3.rate)/3),
		fmt.Sprintf("average of %.0f/s (first run), %.0f/s (between the store runs) and %.0f/s (last run), %d deliveries each; in all five runs --max-live-deliveries(-per-endpoint) 0, else the run without a store is refused (429) past 1,000 unfinished",
			none1.rate, none2.rate, none3.rate, pipelineEvents))
	for _, r := range []struct {
		name          string
		res           pipelineResult
		before, after pipelineResult
	}{{"SQLite", withSQLite, none1, none2}, {"PostgreSQL", withPostgres, none2, none3}} {
		base := (r.before.rate + r.after.rate) / 2
		ratio := r.res.rate / base
		tab.add("(10) pipeline fan-out 1, "+r.name+" store", fmt.Sprintf("%.0f/s (%.2fx)", r.res.rate, ratio),
			fmt.Sprintf("%d deliveries, all Succeeded; over the runs without a store on either side (%.0f/s, %.0f/s); publish->receiver p99 %s; goal >= 0.9x: %s",
				r.res.deliveries, r.before.rate, r.after.rate, ms(r.res.toReceiver.p(99)), met(ratio >= 0.9)))
	}
}

// --- (11) API writes and store transactions per delivery ------------------------------------

// countingStore counts the store calls of the operator and passes them on.
type countingStore struct {
	history.Store
	write, records, markRemoved, enqueue, deleteBacklog, prune atomic.Int64
	reads                                                      atomic.Int64
}

func (c *countingStore) Write(ctx context.Context, records []history.Record) error {
	c.write.Add(1)
	c.records.Add(int64(len(records)))
	return c.Store.Write(ctx, records)
}

func (c *countingStore) MarkRemoved(ctx context.Context, keys []history.Key, at time.Time) error {
	c.markRemoved.Add(1)
	return c.Store.MarkRemoved(ctx, keys, at)
}

func (c *countingStore) Enqueue(ctx context.Context, items []history.BacklogItem) ([]bool, error) {
	c.enqueue.Add(1)
	return c.Store.Enqueue(ctx, items)
}

func (c *countingStore) DeleteBacklog(ctx context.Context, ids []int64) error {
	c.deleteBacklog.Add(1)
	return c.Store.DeleteBacklog(ctx, ids)
}

func (c *countingStore) Prune(ctx context.Context, before time.Time, batch int) (int, error) {
	c.prune.Add(1)
	return c.Store.Prune(ctx, before, batch)
}

func (c *countingStore) Archived(ctx context.Context, checks []history.ArchiveCheck) (map[types.UID]bool, error) {
	c.reads.Add(1)
	return c.Store.Archived(ctx, checks)
}

func (c *countingStore) Known(ctx context.Context, namespace string, names []string) (map[string]bool, error) {
	c.reads.Add(1)
	return c.Store.Known(ctx, namespace, names)
}

func (c *countingStore) NextBacklog(ctx context.Context, endpoint history.EndpointKey, limit int) ([]history.BacklogItem, error) {
	c.reads.Add(1)
	return c.Store.NextBacklog(ctx, endpoint, limit)
}

func (c *countingStore) BacklogCounts(ctx context.Context) (map[history.EndpointKey]int64, error) {
	c.reads.Add(1)
	return c.Store.BacklogCounts(ctx)
}

type storeCounts struct{ write, records, markRemoved, enqueue, deleteBacklog, prune, reads int64 }

func (c *countingStore) counts() storeCounts {
	return storeCounts{c.write.Load(), c.records.Load(), c.markRemoved.Load(), c.enqueue.Load(), c.deleteBacklog.Load(), c.prune.Load(), c.reads.Load()}
}

func (s storeCounts) minus(o storeCounts) storeCounts {
	return storeCounts{s.write - o.write, s.records - o.records, s.markRemoved - o.markRemoved, s.enqueue - o.enqueue,
		s.deleteBacklog - o.deleteBacklog, s.prune - o.prune, s.reads - o.reads}
}

func (s storeCounts) transactions() int64 {
	return s.write + s.markRemoved + s.enqueue + s.deleteBacklog + s.prune
}

func (s storeCounts) String() string {
	return fmt.Sprintf("Write %d (%d records), MarkRemoved %d, Enqueue %d, DeleteBacklog %d, Prune %d; reads %d (Archived, Known, NextBacklog, BacklogCounts)",
		s.write, s.records, s.markRemoved, s.enqueue, s.deleteBacklog, s.prune, s.reads)
}

// deliveryWrites sums the webhookdeliveries writes of a delta of apiWrites: POST, status PATCH
// and DELETE, and lists every non-zero delta (the GETs apart, not counted).
func deliveryWrites(before, after map[string]float64) (post, patch, del, endpoint float64, detail string) {
	var parts, reads []string
	for _, k := range sortedKeys(after) {
		d := after[k] - before[k]
		if d == 0 {
			continue
		}
		if strings.HasSuffix(k, " GET") {
			reads = append(reads, fmt.Sprintf("%s %.0f", k, d))
			continue
		}
		switch {
		case k == "webhookdeliveries POST":
			post += d
		case k == "webhookdeliveries/status PATCH":
			patch += d
		case k == "webhookdeliveries DELETE":
			del += d
		case strings.HasPrefix(k, "webhookendpoints"):
			endpoint += d
		}
		parts = append(parts, fmt.Sprintf("%s %.0f", k, d))
	}
	detail = strings.Join(parts, ", ")
	if len(reads) > 0 {
		detail += " (reads, not counted: " + strings.Join(reads, ", ") + ")"
	}
	return post, patch, del, endpoint, detail
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// writesRows is (11): first-try deliveries with a SQLite store and --succeeded-retention 1s, so
// that each delivery's deletion falls within the measurement: every API write to
// webhookdeliveries and every store transaction from before the first publish until every
// delivery has left etcd and its record says so.
func writesRows(t *testing.T, tab *table) {
	t.Helper()
	n := historyWritesEvents
	ctx := context.Background()
	ns, endpoints, _ := setupNamespace(t, "hwrites", pipelineRun{endpoints: 1})
	store := openStore(t, "sqlite://"+filepath.Join(t.TempDir(), "history.db"))
	defer store.Close()
	cs := &countingStore{Store: store}
	stopOperator, intakeClient := startOperator(t, ns, withStore(cs), withOptions(func(o *controllers.Options) {
		o.SucceededRetention = time.Second
	}))
	defer stopOperator()
	time.Sleep(time.Second)
	before, countsBefore := apiWrites(t), cs.counts()
	var next atomic.Int64
	var wg sync.WaitGroup
	var failed atomic.Int64
	for range 16 {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				if err := publishEvent(ctx, intakeClient, ns, endpoints, benchEvent(fmt.Sprintf("hw-%s-%d", ns, i))); err != nil {
					failed.Add(1)
				}
			}
		})
	}
	wg.Wait()
	if f := failed.Load(); f > 0 {
		t.Fatalf("%d of %d publishes failed", f, n)
	}
	deadline := time.Now().Add(3 * time.Minute)
	for {
		removed, inStore := removedRecords(t, store, ns)
		left := countDeliveriesIn(t, env, ns)
		if removed == n && left == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 3 minutes %d of %d records say their delivery left etcd (%d records), %d deliveries are still in etcd", removed, n, inStore, left)
		}
		time.Sleep(250 * time.Millisecond)
	}
	time.Sleep(2 * time.Second) // late writes (an endpoint's health) count too
	after, countsAfter := apiWrites(t), cs.counts()
	post, patch, del, ep, detail := deliveryWrites(before, after)
	per := (post + patch + del) / float64(n)
	tab.add("(11) API writes per first-try delivery, with its deletion", fmt.Sprintf("%.2f (+%.2f endpoint)", per, ep/float64(n)),
		fmt.Sprintf("%d events, SQLite store, --succeeded-retention 1s: %s; goal <= 3: %s", n, detail, met(per <= 3+1e-9)))
	c := countsAfter.minus(countsBefore)
	tab.add("(11) store transactions per 1,000 deliveries", fmt.Sprintf("%.1f", float64(c.transactions())*1000/float64(n)),
		fmt.Sprintf("%d events at full rate: %s", n, c))
}

// removedRecords counts the records of ns in the store, and those whose delivery left etcd.
func removedRecords(t *testing.T, store history.Store, ns string) (removed, total int) {
	t.Helper()
	err := eachRecord(store, ns, func(r *history.Record) {
		total++
		if r.RemovedTime != nil {
			removed++
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	return removed, total
}

// eachRecord pages through the records of ns.
func eachRecord(store history.Store, ns string, f func(*history.Record)) error {
	cont := ""
	for {
		page, err := store.List(context.Background(), history.ListOptions{Namespace: ns, Limit: history.MaxPageSize, Continue: cont})
		if err != nil {
			return err
		}
		for i := range page.Records {
			f(&page.Records[i])
		}
		if cont = page.Continue; cont == "" {
			return nil
		}
	}
}

func countDeliveriesIn(t *testing.T, e *testenv.Env, ns string) int {
	t.Helper()
	var list metav1.PartialObjectMetadataList
	list.SetGroupVersionKind(webhooksv1alpha1.GroupVersion.WithKind("WebhookDeliveryList"))
	n := 0
	for cont := ""; ; {
		if err := e.Client.List(context.Background(), &list, client.InNamespace(ns), client.Limit(5000), client.Continue(cont)); err != nil {
			t.Fatal(err)
		}
		n += len(list.Items)
		if cont = list.Continue; cont == "" {
			return n
		}
	}
}

// --- bytes per record of each engine ----------------------------------------------------------

// sizingRows writes sizingRecords copies of a record the operator wrote (a first-try success of
// the benchmark's event, with its attempt) into a fresh database of each engine and divides
// its size by the records.
func sizingRows(t *testing.T, tab *table, pg *historytest.Server) {
	t.Helper()
	template := templateRecord(t, pg)
	n := sizingRecords
	// Records with 5 attempts (4 failures before the success), a quarter as many, in another
	// database: the difference is the cost of an attempt beyond the first.
	m := max(n/4, 1)
	const retried = 5
	perAttempt := func(one, five int64) float64 {
		return (float64(five)/float64(m) - float64(one)/float64(n)) / (retried - 1)
	}

	// SQLite: the database file after Close (which checkpoints the WAL into it).
	sqliteSize := func(records, attempts int) (int64, time.Duration) {
		path := filepath.Join(t.TempDir(), "sizing.db")
		sqlite := openStore(t, "sqlite://"+path)
		took := writeCopies(t, sqlite, template, records, attempts)
		if err := sqlite.Close(); err != nil {
			t.Fatal(err)
		}
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		return fi.Size(), took
	}
	size, took := sqliteSize(n, 1)
	size5, _ := sqliteSize(m, retried)
	tab.add("(12) SQLite bytes per delivery record", fmt.Sprintf("%.0f B", float64(size)/float64(n)),
		fmt.Sprintf("%d records of a first-try success with its attempt (~1.3 KB event): file %s after Close; written in batches of 500 at %.0f records/s; each further attempt %.0f B (%d records of %d attempts)",
			n, mib(size), float64(n)/took.Seconds(), perAttempt(size, size5), m, retried))

	pgSize := func(records, attempts int) (int64, string, time.Duration) {
		dsn := pgDatabase(t, pg)
		postgres := openStore(t, dsn)
		took := writeCopies(t, postgres, template, records, attempts)
		_ = postgres.Close()
		total, tables := pgSizes(t, dsn)
		return total, tables, took
	}
	total, tables, took := pgSize(n, 1)
	total5, _, _ := pgSize(m, retried)
	tab.add("(12) PostgreSQL bytes per delivery record", fmt.Sprintf("%.0f B", float64(total)/float64(n)),
		fmt.Sprintf("%d records: pg_total_relation_size of the tables (indexes and TOAST included) %s (%s); written at %.0f records/s; each further attempt %.0f B",
			n, mib(total), tables, float64(n)/took.Seconds(), perAttempt(total, total5)))
}

// templateRecord is a record as the operator writes it: one first-try delivery through a
// store of its own.
func templateRecord(t *testing.T, pg *historytest.Server) history.Record {
	t.Helper()
	ctx := context.Background()
	ns, endpoints, _ := setupNamespace(t, "template", pipelineRun{endpoints: 1})
	store := openStore(t, pgDatabase(t, pg))
	defer store.Close()
	stopOperator, intakeClient := startOperator(t, ns, withStore(store))
	defer stopOperator()
	id := "template-" + ns
	if err := publishEvent(ctx, intakeClient, ns, endpoints, benchEvent(id)); err != nil {
		t.Fatal(err)
	}
	key := history.Key{Namespace: ns, Name: webhooksv1alpha1.DeliveryName(endpoints[0], id)}
	deadline := time.Now().Add(time.Minute)
	for {
		r, err := store.Get(ctx, key)
		if err == nil && r.Phase == webhooksv1alpha1.PhaseSucceeded {
			return *r
		}
		if time.Now().After(deadline) {
			t.Fatalf("the template delivery is not in the store as Succeeded after a minute: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// writeCopies writes n copies of r, each its own delivery (name, UID, event id) with attempts
// attempts (copies of r's first, numbered), in batches of 500 as the archiver does, and returns
// the time taken.
func writeCopies(t *testing.T, store history.Store, r history.Record, n, attempts int) time.Duration {
	t.Helper()
	began := time.Now()
	batch := make([]history.Record, 0, 500)
	flush := func() {
		if err := store.Write(context.Background(), batch); err != nil {
			t.Fatal(err)
		}
		batch = batch[:0]
	}
	for i := range n {
		c := r
		c.Event.ID = fmt.Sprintf("%s-%d", r.Event.ID, i)
		c.Event.Document.DocumentID = "doc-" + c.Event.ID
		c.Event.Document.DocumentName = "invoice-" + c.Event.ID + ".pdf"
		c.Name = webhooksv1alpha1.DeliveryName(r.Endpoint, c.Event.ID)
		c.UID = types.UID(fmt.Sprintf("%08x-0000-4000-8000-%012x", i, i))
		c.Attempts = make([]webhooksv1alpha1.Attempt, attempts)
		for a := range attempts {
			c.Attempts[a] = r.Attempts[0]
			c.Attempts[a].Number = int32(a + 1)
		}
		c.AttemptCount = int32(attempts)
		batch = append(batch, c)
		if len(batch) == cap(batch) {
			flush()
		}
	}
	if len(batch) > 0 {
		flush()
	}
	return time.Since(began)
}

// pgSizes returns pg_total_relation_size of every table of the database's public schema, in
// all and by table.
func pgSizes(t *testing.T, dsn string) (int64, string) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, `SELECT c.relname, pg_total_relation_size(c.oid) FROM pg_class c
		JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')
		ORDER BY 2 DESC`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var total int64
	var parts []string
	for rows.Next() {
		var name string
		var size int64
		if err := rows.Scan(&name, &size); err != nil {
			t.Fatal(err)
		}
		total += size
		if size >= 64<<10 {
			parts = append(parts, fmt.Sprintf("%s %s", name, mib(size)))
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return total, strings.Join(parts, ", ")
}

// --- (13) the soak ----------------------------------------------------------------------------

// etcdStats are figures of etcd's /metrics.
type etcdStats struct {
	at              time.Time
	published       int64
	keys            float64 // etcd_debugging_mvcc_keys_total
	inUse, dbSize   float64 // etcd_mvcc_db_total_size_in_use_in_bytes, etcd_mvcc_db_total_size_in_bytes
	rev, compactRev float64 // etcd_debugging_mvcc_current_revision, etcd_debugging_mvcc_compact_revision
	apiserverRSS    int64
	archived        int
	// kube-apiserver's Go heap in use and its watch cache's capacity for WebhookDeliveries
	// (events it keeps for watchers), read at checkpoints only (its /metrics is large).
	apiserverHeap, watchCache float64
}

// etcdClient talks to the soak's etcd on its client URL: /metrics, and its JSON gateway for
// alarms, compaction and defragmentation.
type etcdClient struct {
	url string
	hc  *http.Client
}

func (c *etcdClient) metrics() (map[string]float64, error) {
	resp, err := c.hc.Get(c.url + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	out := map[string]float64{}
	for _, line := range strings.Split(string(b), "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		name, value, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		if f, err := strconv.ParseFloat(strings.TrimSpace(value), 64); err == nil {
			out[name] = f
		}
	}
	return out, nil
}

func (c *etcdClient) call(path string, body any, out any) error {
	b, _ := json.Marshal(body)
	resp, err := c.hc.Post(c.url+path, "application/json", bytes.NewReader(b))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("etcd %s: %s: %s", path, resp.Status, raw)
	}
	if out != nil {
		return json.Unmarshal(raw, out)
	}
	return nil
}

// alarms lists etcd's active alarms (NOSPACE when it refused a write for its quota).
func (c *etcdClient) alarms() ([]string, error) {
	var resp struct {
		Alarms []struct {
			Alarm string `json:"alarm"`
		} `json:"alarms"`
	}
	if err := c.call("/v3/maintenance/alarm", map[string]any{"action": "GET"}, &resp); err != nil {
		return nil, err
	}
	var out []string
	for _, a := range resp.Alarms {
		out = append(out, a.Alarm)
	}
	return out, nil
}

type etcdStatus struct {
	Header struct {
		Revision json.Number `json:"revision"`
	} `json:"header"`
	DBSizeInUse json.Number `json:"dbSizeInUse"`
}

func (c *etcdClient) status() (rev, inUse int64, err error) {
	var s etcdStatus
	if err := c.call("/v3/maintenance/status", map[string]any{}, &s); err != nil {
		return 0, 0, err
	}
	rev, _ = strconv.ParseInt(strings.Trim(string(s.Header.Revision), `"`), 10, 64)
	inUse, _ = strconv.ParseInt(strings.Trim(string(s.DBSizeInUse), `"`), 10, 64)
	return rev, inUse, nil
}

// compactAndDefrag compacts etcd to its current revision and defragments it, so that its in-use
// bytes are the latest version of each key only; it returns them.
func (c *etcdClient) compactAndDefrag() (int64, error) {
	rev, _, err := c.status()
	if err != nil {
		return 0, err
	}
	if err := c.call("/v3/kv/compaction", map[string]any{"revision": strconv.FormatInt(rev, 10), "physical": true}, nil); err != nil &&
		!strings.Contains(err.Error(), "compacted") {
		return 0, err
	}
	if err := c.call("/v3/maintenance/defragment", map[string]any{}, nil); err != nil {
		return 0, err
	}
	_, inUse, err := c.status()
	return inUse, err
}

// processRSS finds the process whose command line runs binary with arg, and returns a function
// that reads its VmRSS.
func findProcess(t *testing.T, binary, arg string) int {
	t.Helper()
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join(d, "cmdline"))
		if err != nil || len(b) == 0 {
			continue
		}
		args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		if filepath.Base(args[0]) != binary {
			continue
		}
		for _, a := range args[1:] {
			if a == arg {
				pid, _ := strconv.Atoi(filepath.Base(d))
				return pid
			}
		}
	}
	t.Fatalf("no %s process with %s", binary, arg)
	return 0
}

func readRSS(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// soakReceiver is a fast receiver that verifies every signature (testreceiver.VerifyDocRouter)
// and keeps only when each event first arrived, so that 100,000 requests cost little memory.
type soakReceiver struct {
	*httptest.Server
	mu       sync.Mutex
	first    map[string]time.Time
	requests atomic.Int64
	bad      atomic.Int64
}

func newSoakReceiver(t *testing.T) *soakReceiver {
	t.Helper()
	r := &soakReceiver{first: map[string]time.Time{}}
	r.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		now := time.Now()
		body, err := io.ReadAll(req.Body)
		if err == nil {
			err = testreceiver.VerifyDocRouter(signingKey, req.Header, body)
		}
		r.requests.Add(1)
		if err != nil {
			r.bad.Add(1)
			http.Error(w, err.Error(), http.StatusUnauthorized)
			return
		}
		id := req.Header.Get(dispatcher.HeaderEventID)
		r.mu.Lock()
		if _, ok := r.first[id]; !ok {
			r.first[id] = now
		}
		r.mu.Unlock()
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(r.Close)
	return r
}

func (r *soakReceiver) arrived(id string) (time.Time, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	at, ok := r.first[id]
	return at, ok
}

// storeTail follows the store's Changes of a namespace and keeps when each record was first
// seen finished: the soak's completion, and the archive lag measured from outside.
type storeTail struct {
	mu   sync.Mutex
	seen map[string]time.Time
	n    atomic.Int64
}

func tailStore(ctx context.Context, store history.Store, ns string) *storeTail {
	tail := &storeTail{seen: map[string]time.Time{}}
	go func() {
		rev := int64(0)
		for ctx.Err() == nil {
			recs, err := store.Changes(ctx, ns, rev, history.MaxPageSize)
			now := time.Now()
			if err == nil {
				tail.mu.Lock()
				for _, r := range recs {
					rev = max(rev, r.Revision)
					if _, ok := tail.seen[r.Name]; !ok && r.Phase.Finished() {
						tail.seen[r.Name] = now
					}
				}
				tail.n.Store(int64(len(tail.seen)))
				tail.mu.Unlock()
			}
			if err != nil || len(recs) < history.MaxPageSize {
				sleep(ctx, 100*time.Millisecond)
			}
		}
	}()
	return tail
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// gathered reads a series of controller-runtime's registry (the operator's metrics).
func gathered(t *testing.T, name string) *dto.Metric {
	t.Helper()
	families, err := ctrlmetrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() == name && len(f.GetMetric()) > 0 {
			return f.GetMetric()[0]
		}
	}
	return &dto.Metric{}
}

// gaugeWith reads the gauge of controller-runtime's registry whose label has value.
func gaugeWith(t *testing.T, name, label, value string) float64 {
	t.Helper()
	families, err := ctrlmetrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					return m.GetGauge().GetValue()
				}
			}
		}
	}
	return 0
}

// histogramDelta is the observations of a histogram between two reads: bucket upper bounds and
// their cumulative counts, and the count.
type histogramDelta struct {
	bounds []float64
	cum    []float64
	count  float64
}

func deltaOf(before, after *dto.Metric) histogramDelta {
	var d histogramDelta
	b := map[float64]float64{}
	for _, bk := range before.GetHistogram().GetBucket() {
		b[bk.GetUpperBound()] = float64(bk.GetCumulativeCount())
	}
	for _, bk := range after.GetHistogram().GetBucket() {
		d.bounds = append(d.bounds, bk.GetUpperBound())
		d.cum = append(d.cum, float64(bk.GetCumulativeCount())-b[bk.GetUpperBound()])
	}
	d.count = float64(after.GetHistogram().GetSampleCount()) - float64(before.GetHistogram().GetSampleCount())
	return d
}

// quantile interpolates linearly within the bucket that holds it, as Prometheus'
// histogram_quantile does; +Inf when it is beyond the last bound.
func (d histogramDelta) quantile(q float64) float64 {
	if d.count == 0 {
		return 0
	}
	rank := q * d.count
	lower, below := 0.0, 0.0
	for i, bound := range d.bounds {
		if d.cum[i] >= rank {
			in := d.cum[i] - below
			if in == 0 {
				return bound
			}
			return lower + (bound-lower)*(rank-below)/in
		}
		lower, below = bound, d.cum[i]
	}
	return math.Inf(1)
}

// within is the share of observations at most bound (a bucket's upper bound).
func (d histogramDelta) within(bound float64) float64 {
	for i, b := range d.bounds {
		if b == bound && d.count > 0 {
			return d.cum[i] / d.count
		}
	}
	return math.NaN()
}

func soakRows(t *testing.T, tab *table) {
	t.Helper()
	n := soakEvents
	ctx := context.Background()
	args := map[string]string{}
	compaction := "kube-apiserver's default (5m)"
	if soakCompaction != "default" {
		args["etcd-compaction-interval"] = soakCompaction
		compaction = "--etcd-compaction-interval=" + soakCompaction
	}
	progress("soak: starting a control plane of its own (etcd quota %s, %s)", mib(soakQuota), compaction)
	e, err := testenv.StartWith(testenv.Settings{EtcdQuotaBytes: soakQuota, APIServerArgs: args})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := e.Stop(); err != nil {
			t.Logf("stopping the soak's control plane: %v", err)
		}
	}()
	etcd := &etcdClient{url: strings.TrimSuffix(e.Environment().ControlPlane.Etcd.URL.String(), "/"), hc: &http.Client{Timeout: 5 * time.Minute}}
	host, err := url.Parse(e.Config.Host)
	if err != nil {
		t.Fatal(err)
	}
	apiPID := findProcess(t, "kube-apiserver", "--secure-port="+host.Port())

	// The namespace, the signing Secret and one endpoint with a fast receiver.
	rcv := newSoakReceiver(t)
	nsObj := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "soak-"}}
	if err := e.Client.Create(ctx, nsObj); err != nil {
		t.Fatal(err)
	}
	ns := nsObj.Name
	if err := e.Client.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "signing"},
		Data: map[string][]byte{"key": signingKey}}); err != nil {
		t.Fatal(err)
	}
	if err := e.Client.Create(ctx, endpoint(ns, "fast", rcv.URL, 10, 3)); err != nil {
		t.Fatal(err)
	}
	endpoints := []string{"fast"}

	dbPath := filepath.Join(t.TempDir(), "history.db")
	store := openStore(t, "sqlite://"+dbPath)
	defer store.Close()
	cs := &countingStore{Store: store}
	stopOperator, intakeClient := startOperator(t, ns, withEnv(e), withStore(cs))
	operatorStopped := false
	defer func() {
		if !operatorStopped {
			stopOperator()
		}
	}()
	time.Sleep(time.Second)

	sampleCtx, stopSampling := context.WithCancel(ctx)
	defer stopSampling()
	tail := tailStore(sampleCtx, store, ns)
	var published atomic.Int64
	sample := func(full bool) etcdStats {
		s := etcdStats{at: time.Now(), published: published.Load(), apiserverRSS: readRSS(apiPID), archived: int(tail.n.Load())}
		if full {
			s.apiserverHeap, s.watchCache = apiserverFigures(t, e)
		}
		m, err := etcd.metrics()
		if err != nil {
			progress("soak: etcd metrics: %v", err)
			return s
		}
		s.keys, s.inUse, s.dbSize = m["etcd_debugging_mvcc_keys_total"], m["etcd_mvcc_db_total_size_in_use_in_bytes"], m["etcd_mvcc_db_total_size_in_bytes"]
		s.rev, s.compactRev = m["etcd_debugging_mvcc_current_revision"], m["etcd_debugging_mvcc_compact_revision"]
		return s
	}
	// A sample a second, for the peaks and the bytes per revision, and the checkpoints by
	// deliveries archived: the intake takes events faster than they are delivered (the rest
	// waits in the backlog), so the checkpoints by events published are early in the deliveries.
	marks := []int{n / 10, n / 4, n / 2, n * 3 / 4, n}
	byArchived := make([]etcdStats, len(marks))
	var samplesMu sync.Mutex
	var samples []etcdStats
	samplerDone := make(chan struct{})
	go func() {
		defer close(samplerDone)
		next := 0
		for sampleCtx.Err() == nil {
			s := sample(false)
			if next < len(marks) && s.archived >= marks[next] {
				s = sample(true)
				for next < len(marks) && s.archived >= marks[next] {
					byArchived[next] = s
					if soakHeapProfiles != "" {
						apiserverHeapProfile(t, e, filepath.Join(soakHeapProfiles, fmt.Sprintf("archived-%d.pb.gz", marks[next])))
					}
					next++
				}
			}
			samplesMu.Lock()
			samples = append(samples, s)
			samplesMu.Unlock()
			sleep(sampleCtx, time.Second)
		}
	}()

	start := sample(true)
	writesBefore, countsBefore := apiWritesOf(t, e), cs.counts()
	lagBefore := gathered(t, metrics.ArchiveLagName)
	queuedBefore := gathered(t, metrics.EventsQueuedName).GetCounter().GetValue()

	// A line every 15 s while the soak runs: where the deliveries are.
	go func() {
		for sampleCtx.Err() == nil {
			sleep(sampleCtx, 15*time.Second)
			s := sample(false)
			progress("soak: %d published, %d archived; working set %.0f unfinished, %.0f finished; backlog %.0f; etcd keys %.0f, in use %s (db %s); kube-apiserver RSS %s",
				s.published, s.archived, gaugeWith(t, metrics.WorkingSetName, "state", "unfinished"), gaugeWith(t, metrics.WorkingSetName, "state", "finished"),
				gaugeWith(t, metrics.BacklogName, "namespace", ns), s.keys, mib(int64(s.inUse)), mib(int64(s.dbSize)), mib(s.apiserverRSS))
		}
	}()
	if soakProfile != "" {
		f, err := os.Create(soakProfile)
		if err != nil {
			t.Fatal(err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			t.Fatal(err)
		}
		defer func() { pprof.StopCPUProfile(); _ = f.Close() }()
	}

	checkpoints := make([]etcdStats, len(marks))
	ids := func(i int) string { return fmt.Sprintf("soak-%s-%d", ns, i) }
	publishedAt := make([]time.Time, n)
	var next atomic.Int64
	var failed, nospace atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	progress("soak: publishing %d events with %d publishers", n, soakPublishers)
	began := time.Now()
	for range soakPublishers {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				publishedAt[i] = time.Now()
				err := publishEvent(ctx, intakeClient, ns, endpoints, benchEvent(ids(i)))
				if err != nil {
					failed.Add(1)
					if strings.Contains(err.Error(), "database space exceeded") || strings.Contains(err.Error(), "out of space") {
						nospace.Add(1)
					}
					firstErr.CompareAndSwap(nil, err.Error())
					continue
				}
				p := int(published.Add(1))
				for k, m := range marks {
					if p == m {
						checkpoints[k] = sample(true)
						progress("soak: %d published, %d archived: etcd keys %.0f, in use %s (db %s), kube-apiserver RSS %s",
							p, checkpoints[k].archived, checkpoints[k].keys, mib(int64(checkpoints[k].inUse)), mib(int64(checkpoints[k].dbSize)), mib(checkpoints[k].apiserverRSS))
					}
				}
			}
		})
	}
	wg.Wait()
	publishTook := time.Since(began)
	progress("soak: published in %s (%.0f events/s), %d failed", publishTook.Round(time.Second), float64(n)/publishTook.Seconds(), failed.Load())

	// Wait until every delivery is in the store as finished.
	want := int64(n - int(failed.Load()))
	lastProgress, lastN := time.Now(), int64(-1)
	for tail.n.Load() < want {
		if cur := tail.n.Load(); cur != lastN {
			lastProgress, lastN = time.Now(), cur
		}
		if time.Since(lastProgress) > 3*time.Minute {
			t.Errorf("soak: only %d of %d deliveries reached the store as finished; none more for 3 minutes", lastN, want)
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	drainedAt := time.Now()
	drained := sample(true)
	progress("soak: %d in the store after %s", tail.n.Load(), drainedAt.Sub(began).Round(time.Second))

	// etcd still takes a write, and never raised NOSPACE.
	alarms, alarmErr := etcd.alarms()
	writeErr := e.Client.Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, GenerateName: "after-soak-"},
		Data: map[string]string{"a": "b"}})
	time.Sleep(2 * time.Second) // late writes (an endpoint's health, the last deletes) count too
	writesAfter, countsAfter := apiWritesOf(t, e), cs.counts()
	lagAfter := gathered(t, metrics.ArchiveLagName)
	queued := gathered(t, metrics.EventsQueuedName).GetCounter().GetValue() - queuedBefore
	stopOperator()
	operatorStopped = true
	stopSampling()
	<-samplerDone

	// Every delivery in the store, with its attempt.
	records, succeeded, oneAttempt, removed := 0, 0, 0, 0
	var keys []history.Key
	if err := eachRecord(store, ns, func(r *history.Record) {
		records++
		if r.Phase == webhooksv1alpha1.PhaseSucceeded {
			succeeded++
		}
		if r.AttemptCount == 1 {
			oneAttempt++
		}
		if r.RemovedTime != nil {
			removed++
		}
		if records%max(1, n/200) == 0 {
			keys = append(keys, history.Key{Namespace: r.Namespace, Name: r.Name})
		}
	}); err != nil {
		t.Fatal(err)
	}
	attemptsOK := 0
	for _, k := range keys {
		r, err := store.Get(ctx, k)
		if err == nil && len(r.Attempts) == int(r.AttemptCount) && r.AttemptCount >= 1 && r.Attempts[0].StatusCode == http.StatusOK {
			attemptsOK++
		}
	}

	// The figures.
	rate := float64(tail.n.Load()) / drainedAt.Sub(began).Seconds()
	tab.add("(13) soak: events published through the intake", fmt.Sprintf("%d", n),
		fmt.Sprintf("%d publishers, as fast as it goes: %s (%.0f events/s); every delivery archived after %s (%.0f deliveries/s); %d publishes failed%s",
			soakPublishers, publishTook.Round(time.Second), float64(n)/publishTook.Seconds(), drainedAt.Sub(began).Round(time.Second), rate, failed.Load(), firstErrNote(&firstErr)))
	tab.add("    control plane", fmt.Sprintf("etcd quota %s", mib(soakQuota)),
		fmt.Sprintf("its own kube-apiserver and etcd, %s; the operator in-process with controllers.DefaultOptions() (10m in etcd after success, --max-finished-deliveries 5000, --max-live-deliveries-per-endpoint 1000) and a SQLite store; %.0f deliveries went through the backlog", compaction, queued))
	tab.add("    before the first event", fmt.Sprintf("keys %.0f, in use %s", start.keys, mib(int64(start.inUse))),
		fmt.Sprintf("db %s, kube-apiserver RSS %s", mib(int64(start.dbSize)), mib(start.apiserverRSS)))
	worstPublished := checkpointRows(tab, "published", marks, checkpoints)
	worstArchived := checkpointRows(tab, "archived", marks, byArchived)
	tab.add("    every delivery archived", fmt.Sprintf("keys %.0f, in use %s", drained.keys, mib(int64(drained.inUse))),
		fmt.Sprintf("db %s, kube-apiserver RSS %s (Go heap in use %s, watch cache capacity %.0f)", mib(int64(drained.dbSize)), mib(drained.apiserverRSS),
			mib(int64(drained.apiserverHeap)), drained.watchCache))
	samplesMu.Lock()
	peak := peaks(samples)
	samplesMu.Unlock()
	tab.add("    peaks over the soak (a sample a second)", fmt.Sprintf("keys %.0f, in use %s", peak.keys, mib(int64(peak.inUse))),
		fmt.Sprintf("db %s (%.0f%% of the quota), kube-apiserver RSS %s", mib(int64(peak.dbSize)), 100*peak.dbSize/soakQuota, mib(peak.apiserverRSS)))
	for _, w := range []struct {
		by    string
		worst [3]float64
	}{{"published", worstPublished}, {"archived", worstArchived}} {
		flat := w.worst[0] <= 1.3 && w.worst[1] <= 1.3 && w.worst[2] <= 1.3
		tab.add("(13) soak: flat, by events "+w.by, fmt.Sprintf("keys %.2fx, in use %.2fx, RSS %.2fx", w.worst[0], w.worst[1], w.worst[2]),
			fmt.Sprintf("the largest of the later checkpoints over the first (%d %s); goal each <= 1.3x: %s", marks[0], w.by, met(flat)))
	}
	// etcd's in-use bytes grow by every revision written until the next compaction, so one sample
	// says as much about where it fell between two compactions as about what etcd holds: the
	// lowest sample of the compaction interval before each checkpoint is what it holds compacted.
	interval := 5 * time.Minute
	if d, err := time.ParseDuration(soakCompaction); err == nil {
		interval = d
	}
	samplesMu.Lock()
	compacted := compactedInUse(samples, byArchived, interval)
	samplesMu.Unlock()
	if len(compacted) > 0 && compacted[0] > 0 {
		worst, list := 0.0, make([]string, 0, len(compacted))
		for k, v := range compacted {
			worst = max(worst, v/compacted[0])
			list = append(list, fmt.Sprintf("%d: %s", marks[k], mib(int64(v))))
		}
		tab.add("(13) soak: etcd in use once compacted, by events archived", fmt.Sprintf("%.2fx", worst),
			fmt.Sprintf("the lowest in-use bytes of the %s (the compaction interval) before each checkpoint, over the first: %s; goal <= 1.3x on this measure: %s",
				interval, strings.Join(list, ", "), met(worst <= 1.3)))
	}
	// kube-apiserver's memory follows the rate of deliveries, not their number: its watch cache
	// keeps at least the last 75 s of events (a ring of 100 x 2^k, doubled while they do not
	// fit), one copy of a delivery per create, status write and delete.
	half := byArchived[2:]
	lo, hi := int64(0), int64(0)
	for _, c := range half {
		if c.at.IsZero() {
			continue
		}
		if lo == 0 || c.apiserverRSS < lo {
			lo = c.apiserverRSS
		}
		hi = max(hi, c.apiserverRSS)
	}
	if rate > 0 && lo > 0 {
		tab.add("(13) soak: kube-apiserver RSS by rate", fmt.Sprintf("%.1f MiB per delivery/s", float64(drained.apiserverRSS-start.apiserverRSS)/(1<<20)/rate),
			fmt.Sprintf("(RSS once every delivery was archived - RSS before the first event) / %.0f deliveries/s; watch cache capacity %.0f for 3 x 75 s x %.0f/s = %.0f events; from the %dth archived on, RSS within %.2fx (%s to %s); over the %dth: %.2fx",
				rate, drained.watchCache, rate, 3*75*rate, marks[2], float64(hi)/float64(lo), mib(lo), mib(hi), marks[0], worstArchived[2]))
	}
	nospaceOK := len(alarms) == 0 && alarmErr == nil && writeErr == nil && nospace.Load() == 0
	tab.add("(13) soak: etcd never out of space", fmt.Sprintf("alarms %v", alarms),
		fmt.Sprintf("etcd's alarm list at the end%s; a ConfigMap create after the soak: %s; publishes refused for space: %d; goal no NOSPACE: %s",
			errNote(alarmErr), okOr(writeErr), nospace.Load(), met(nospaceOK)))
	all := records == n && succeeded == n && oneAttempt == n && attemptsOK == len(keys)
	tab.add("(13) soak: all in the store with their attempts", fmt.Sprintf("%d records", records),
		fmt.Sprintf("Store.List paged: %d Succeeded, %d with AttemptCount 1, %d marked removed from etcd; Get of %d of them: %d with their attempt (HTTP 200); receiver: %d requests, %d failed verification; goal all %d: %s",
			succeeded, oneAttempt, removed, len(keys), attemptsOK, rcv.requests.Load(), rcv.bad.Load(), n, met(all)))

	// (11) in the soak: its deliveries do not all leave etcd within it (the newest 5,000 wait
	// for their 10 minutes).
	post, patch, del, ep, detail := deliveryWrites(writesBefore, writesAfter)
	c := countsAfter.minus(countsBefore)
	tab.add("(13) soak: API writes per delivery", fmt.Sprintf("%.2f (+%.3f endpoint)", (post+patch+del)/float64(n), ep/float64(n)),
		fmt.Sprintf("%s (the last ~5,000 still in etcd: --max-finished-deliveries)", detail))
	tab.add("(13) soak: store transactions per 1,000 deliveries", fmt.Sprintf("%.1f", float64(c.transactions())*1000/float64(n)), c.String())

	// The archive lag.
	lag := deltaOf(lagBefore, lagAfter)
	p99 := lag.quantile(0.99)
	tab.add("(13) soak: archive lag p99 at full rate", fmt.Sprintf("%.2f s", p99),
		fmt.Sprintf("docrouter_webhook_archive_lag_seconds (controller-runtime's registry; from the status write to the end of the batch's transaction), %.0f finished records: p50 %.2f s, %.2f%% within 5 s; goal p99 <= 5 s: %s",
			lag.count, lag.quantile(0.5), 100*lag.within(5), met(p99 <= 5)))
	var direct latencies
	tail.mu.Lock()
	for i := range n {
		id := ids(i)
		if at, ok := tail.seen[webhooksv1alpha1.DeliveryName("fast", id)]; ok {
			if got, ok := rcv.arrived(id); ok {
				direct = append(direct, at.Sub(got))
			}
		}
	}
	tail.mu.Unlock()
	tab.add("    receiver got it -> seen in Store.Changes", fmt.Sprintf("p50 %s, p99 %s", secs(direct.p(50)), secs(direct.p(99))),
		fmt.Sprintf("measured from outside, %d deliveries: includes the attempt's answer, the status write, the batch and a 100 ms poll; max %s", len(direct), secs(direct.p(100))))

	// Bytes per revision, between compactions.
	bpr, compactions, revsPer := perRevision(samples)
	tab.add("(13) soak: etcd bytes per revision, between compactions", fmt.Sprintf("%.0f B", bpr),
		fmt.Sprintf("growth of etcd's in-use bytes over its revisions while no compaction ran (a sample a second); %d compactions seen, %.0f revisions apart on average; a first-try delivery makes 3 (create, status, delete)", compactions, revsPer))

	// The SQLite file of the soak.
	if fi, err := os.Stat(dbPath); err == nil {
		wal := int64(0)
		if w, err := os.Stat(dbPath + "-wal"); err == nil {
			wal = w.Size()
		}
		tab.add("(13) soak: SQLite file after it", mib(fi.Size()), fmt.Sprintf("%d records: %.0f B per record (+ WAL %s)", records, float64(fi.Size())/float64(max(records, 1)), mib(wal)))
	}

	// etcd bytes per delivery object: the soak's finished deliveries still in etcd, their latest
	// version only (compacted and defragmented), then none.
	left := countDeliveriesIn(t, e, ns)
	withObjects, err := etcd.compactAndDefrag()
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Client.DeleteAllOf(ctx, &webhooksv1alpha1.WebhookDelivery{}, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(time.Minute); countDeliveriesIn(t, e, ns) > 0 && time.Now().Before(deadline); {
		time.Sleep(time.Second)
	}
	without, err := etcd.compactAndDefrag()
	if err != nil {
		t.Fatal(err)
	}
	if left > 0 {
		tab.add("(13) soak: etcd bytes per delivery object", fmt.Sprintf("%.0f B", float64(withObjects-without)/float64(left)),
			fmt.Sprintf("the %d finished deliveries left in etcd after the soak, their latest version only: etcd in use %s with them, %s without (each compacted and defragmented)", left, mib(withObjects), mib(without)))
	}
}

// checkpointRows adds a row per checkpoint and returns the largest ratio of keys, in-use bytes
// and kube-apiserver RSS over the first checkpoint.
func checkpointRows(tab *table, by string, marks []int, checkpoints []etcdStats) [3]float64 {
	ref := checkpoints[0]
	worst := [3]float64{}
	for k, c := range checkpoints {
		if c.at.IsZero() {
			tab.add(fmt.Sprintf("    at %d %s", marks[k], by), "not reached", "")
			continue
		}
		r := [3]float64{c.keys / ref.keys, c.inUse / ref.inUse, float64(c.apiserverRSS) / float64(ref.apiserverRSS)}
		for j := range worst {
			worst[j] = max(worst[j], r[j])
		}
		tab.add(fmt.Sprintf("    at %d %s", marks[k], by), fmt.Sprintf("keys %.0f, in use %s", c.keys, mib(int64(c.inUse))),
			fmt.Sprintf("db %s, kube-apiserver RSS %s (Go heap in use %s, watch cache capacity %.0f); %d published, %d archived; over the first: keys %.2fx, in use %.2fx, RSS %.2fx",
				mib(int64(c.dbSize)), mib(c.apiserverRSS), mib(int64(c.apiserverHeap)), c.watchCache, c.published, c.archived, r[0], r[1], r[2]))
	}
	return worst
}

// apiserverFigures reads kube-apiserver's Go heap in use and the capacity of its watch cache of
// WebhookDeliveries from its /metrics.
func apiserverFigures(t *testing.T, e *testenv.Env) (heap, watchCache float64) {
	t.Helper()
	resp, err := apiserverGet(t, e, "/metrics")
	if err != nil {
		return 0, 0
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "go_memstats_heap_inuse_bytes "):
			heap, _ = strconv.ParseFloat(strings.TrimSpace(strings.TrimPrefix(line, "go_memstats_heap_inuse_bytes ")), 64)
		case strings.HasPrefix(line, "watch_cache_capacity{") && strings.Contains(line, "webhookdeliveries"):
			_, v, _ := strings.Cut(line, "} ")
			watchCache, _ = strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	return heap, watchCache
}

// compactedInUse is, for each checkpoint, the lowest in-use bytes among the samples of the
// window before it (0 for a checkpoint not reached).
func compactedInUse(samples, checkpoints []etcdStats, window time.Duration) []float64 {
	out := make([]float64, len(checkpoints))
	for k, c := range checkpoints {
		if c.at.IsZero() {
			continue
		}
		for _, s := range samples {
			if s.inUse > 0 && !s.at.After(c.at) && c.at.Sub(s.at) <= window && (out[k] == 0 || s.inUse < out[k]) {
				out[k] = s.inUse
			}
		}
	}
	return out
}

// apiserverHeapProfile writes kube-apiserver's heap profile, taken after a collection, to path.
func apiserverHeapProfile(t *testing.T, e *testenv.Env, path string) {
	t.Helper()
	resp, err := apiserverGet(t, e, "/debug/pprof/heap?gc=1")
	if err != nil {
		progress("soak: kube-apiserver heap profile: %v", err)
		return
	}
	defer resp.Body.Close()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := io.Copy(f, resp.Body); err != nil {
		progress("soak: kube-apiserver heap profile: %v", err)
	}
}

func firstErrNote(v *atomic.Value) string {
	if s, ok := v.Load().(string); ok {
		return " (first: " + s + ")"
	}
	return ""
}

func errNote(err error) string {
	if err != nil {
		return " (could not be read: " + err.Error() + ")"
	}
	return ""
}

func okOr(err error) string {
	if err != nil {
		return err.Error()
	}
	return "ok"
}

func secs(d time.Duration) string { return fmt.Sprintf("%.2f s", d.Seconds()) }

func peaks(samples []etcdStats) etcdStats {
	var p etcdStats
	for _, s := range samples {
		p.keys, p.inUse, p.dbSize = max(p.keys, s.keys), max(p.inUse, s.inUse), max(p.dbSize, s.dbSize)
		p.apiserverRSS = max(p.apiserverRSS, s.apiserverRSS)
	}
	return p
}

// perRevision is etcd's in-use growth per revision over consecutive samples with no compaction
// between them, the compactions seen, and the revisions between two compactions on average.
func perRevision(samples []etcdStats) (bytesPerRev float64, compactions int, revsBetween float64) {
	var bytes, revs float64
	var compactRevs []float64
	for i := 1; i < len(samples); i++ {
		a, b := samples[i-1], samples[i]
		if a.rev == 0 || b.rev == 0 {
			continue
		}
		if b.compactRev != a.compactRev {
			compactRevs = append(compactRevs, b.compactRev)
			continue
		}
		if b.rev > a.rev && b.inUse >= a.inUse {
			bytes += b.inUse - a.inUse
			revs += b.rev - a.rev
		}
	}
	if revs > 0 {
		bytesPerRev = bytes / revs
	}
	if len(compactRevs) > 1 {
		revsBetween = (compactRevs[len(compactRevs)-1] - compactRevs[0]) / float64(len(compactRevs)-1)
	}
	return bytesPerRev, len(compactRevs), revsBetween
}
