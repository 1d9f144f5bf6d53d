//go:build bench

package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
	"github.com/docrouter/webhook-operator/controllers"
	"github.com/docrouter/webhook-operator/dispatcher"
	"github.com/docrouter/webhook-operator/internal/intake"
	"github.com/docrouter/webhook-operator/internal/testenv"
	"github.com/docrouter/webhook-operator/internal/testenv/testreceiver"
	"github.com/docrouter/webhook-operator/publish"
)

var env *testenv.Env

func TestMain(m *testing.M) {
	if scheme := os.Getenv(holdReceiverEnv); scheme != "" {
		os.Exit(runHoldReceiver(scheme)) // the child process of (9)
	}
	os.Exit(testenv.Run(m, &env))
}

// Sizes, overridable for a quick run: BENCH_EVENTS=500 BENCH_MEMORY=2000,10000 make bench.
// BENCH_ROWS=7,9 measures only those rows (and the limit); 10 to 13 are the history store's
// (history_bench_test.go).
var (
	pipelineEvents = envInt("BENCH_EVENTS", 2000)
	inFlightCount  = envInt("BENCH_IN_FLIGHT", 500)
	memoryCounts   = envInts("BENCH_MEMORY", []int{10000, 50000})
	budget         = 9 * time.Minute // the whole run must end within 10 minutes
)

var signingKey = []byte("whsec-bench-signing-key")

// slowEndpoints is the number of endpoints of the slow-receiver rows.
const slowEndpoints = 40

// benchFilter selects every benchEvent, reading a top-level field, a tag and a key of data.
const benchFilter = `event.organization_id == "org-bench" && "invoices" in event.document.tag_ids && event.data.?currency.orValue("") == "EUR"`

// table collects the rows printed at the end.
type table struct {
	rows [][3]string
}

func (t *table) add(what, value, note string) { t.rows = append(t.rows, [3]string{what, value, note}) }

func (t *table) print(w io.Writer) {
	width := [2]int{}
	for _, r := range t.rows {
		width[0], width[1] = max(width[0], len(r[0])), max(width[1], len(r[1]))
	}
	fmt.Fprintf(w, "\n| %-*s | %-*s | %s\n", width[0], "measure", width[1], "value", "note")
	fmt.Fprintf(w, "|-%s-|-%s-|-----\n", strings.Repeat("-", width[0]), strings.Repeat("-", width[1]))
	for _, r := range t.rows {
		fmt.Fprintf(w, "| %-*s | %-*s | %s\n", width[0], r[0], width[1], r[1], r[2])
	}
}

func TestBench(t *testing.T) {
	start := time.Now()
	tab := &table{}
	out, _ := exec.Command("go", "version").Output()
	tab.add("machine", fmt.Sprintf("%d CPUs", runtime.NumCPU()), strings.TrimSpace(string(out)))

	// (5, first half) the operator's memory before any delivery exists.
	var bin, kubeconfig string
	var rss0 rss
	if want(5) {
		bin = buildOperator(t)
		kubeconfig = writeKubeconfig(t)
		rss0 = operatorRSS(t, bin, kubeconfig)
		progress("operator RSS with 0 finished deliveries: %s", mib(rss0.settled))
	}

	// (1) the limit, which every ratio refers to: measured in every run.
	limit, limitConc := measureLimit(t)
	tab.add("(1) limit: create + 1 status patch, unthrottled", fmt.Sprintf("%.0f objects/s", limit),
		fmt.Sprintf("best of concurrency 8/16/32/64 (best: %d)", limitConc))

	// (2) the pipeline at fan-out 1 and 5.
	var tput1, tput5 pipelineResult
	if want(2) || want(3) {
		tput1 = runPipeline(t, pipelineRun{endpoints: 1, events: pipelineEvents, publishers: 32})
	}
	if want(2) {
		tput5 = runPipeline(t, pipelineRun{endpoints: 5, events: pipelineEvents / 5, publishers: 32})
	}
	if want(2) {
		for _, r := range []struct {
			name string
			res  pipelineResult
		}{{"fan-out 1", tput1}, {"fan-out 5", tput5}} {
			ratio := r.res.rate / limit
			tab.add("(2) pipeline "+r.name+", deliveries/s", fmt.Sprintf("%.0f/s (%.2f of limit)", r.res.rate, ratio),
				fmt.Sprintf("%d deliveries, all Succeeded; goal >= 0.70: %s", r.res.deliveries, met(ratio >= 0.7)))
		}
		tab.add("    how events were published", "the intake", "POST /v1/namespaces/NS/events (internal/intake, anonymous) in the operator's process; it fans out to every subscribed endpoint")
	}

	// (7) slow receivers: 40 endpoints whose receivers take 500 ms and 2 s to answer, with the
	// operator's default flags, and the same 40 answering at once for comparison. The rate is
	// deliveries over the time from the first publish to the last Succeeded, less one receiver
	// delay: the pipeline's fill (nothing completes before the first answers), which a run of a
	// few seconds would otherwise count against the operator.
	if want(7) {
		var atOnce float64
		for _, delay := range []time.Duration{0, 500 * time.Millisecond, 2 * time.Second} {
			// 4 publishers: each event makes 40 deliveries (16 created at once), so 64 creates are
			// under way at a time, as many as 32 publishers of fan-out 2 would make.
			res := runPipeline(t, pipelineRun{endpoints: slowEndpoints, events: max(pipelineEvents/slowEndpoints, 10), publishers: 4, delay: delay})
			rate := float64(res.deliveries) / (res.took - delay).Seconds()
			ratio := rate / limit
			note := fmt.Sprintf("%d deliveries, all Succeeded, in %s; default flags (--workers %d, --max-in-flight-per-endpoint %d, --max-in-flight %d)",
				res.deliveries, res.took.Round(100*time.Millisecond), controllers.DefaultOptions().Workers,
				controllers.DefaultOptions().MaxInFlightPerEndpoint, controllers.DefaultOptions().MaxInFlight)
			switch delay {
			case 0:
				atOnce = rate
			case 2 * time.Second:
				note += fmt.Sprintf("; %.2f of answering at once; goal >= 0.70 of the limit: %s", rate/atOnce, met(ratio >= 0.7))
			default:
				note += fmt.Sprintf("; %.2f of answering at once", rate/atOnce)
			}
			tab.add(fmt.Sprintf("(7) receivers answering in %s, %d endpoints", delay, slowEndpoints),
				fmt.Sprintf("%.0f/s (%.2f of limit)", rate, ratio), note)
		}
	}

	// (8) the cost of spec.filter: the fan-out 5 pipeline without filters, then at once with a
	// filter on every endpoint that selects every event (so the same deliveries are made). The
	// two runs are next to each other: a run late in the benchmark meets a fuller etcd and
	// watch cache than (2) did, which would count against the filter.
	if want(8) {
		none := runPipeline(t, pipelineRun{endpoints: 5, events: pipelineEvents / 5, publishers: 32})
		filtered := runPipeline(t, pipelineRun{endpoints: 5, events: pipelineEvents / 5, publishers: 32, filter: benchFilter})
		tab.add("(8) fan-out 5, spec.filter on every endpoint", fmt.Sprintf("%.0f/s (%.2f of no filter)", filtered.rate, filtered.rate/none.rate),
			fmt.Sprintf("%d deliveries; the same without filters just before: %.0f/s; filter %s", filtered.deliveries, none.rate, benchFilter))
	}

	// (9) memory per attempt in flight.
	if want(9) {
		for _, tls := range []bool{false, true} {
			m := measureInFlightMemory(t, inFlightCount, tls)
			scheme := "http"
			if tls {
				scheme = "https"
			}
			tab.add(fmt.Sprintf("(9) memory per attempt in flight, %s", scheme), fmt.Sprintf("%.1f KiB", m.perAttempt/1024),
				fmt.Sprintf("%d attempts held by a receiver in another process: heap %+.1f MiB, stacks %+.1f MiB, %+d goroutines (%.1f per attempt)",
					m.n, float64(m.heap)/(1<<20), float64(m.stack)/(1<<20), m.goroutines, float64(m.goroutines)/float64(m.n)))
		}
	}

	// (3) latency at half the maximum rate.
	if want(3) {
		half := tput1.rate / 2
		lat := runPipeline(t, pipelineRun{endpoints: 1, events: int(half * 10), publishers: 16, rate: half})
		tab.add("(3) latency at half max rate, publish->receiver", fmt.Sprintf("p50 %s, p99 %s", ms(lat.toReceiver.p(50)), ms(lat.toReceiver.p(99))),
			fmt.Sprintf("%.0f events/s for 10 s; goal p99 < 100 ms: %s", half, met(lat.toReceiver.p(99) < 100*time.Millisecond)))
		tab.add("    publish->status Succeeded (seen by a watch)", fmt.Sprintf("p50 %s, p99 %s", ms(lat.toSucceeded.p(50)), ms(lat.toSucceeded.p(99))), "")
	}

	// (4) API writes per delivered event.
	if want(4) {
		w1 := measureWrites(t, false)
		w2 := measureWrites(t, true)
		tab.add("(4) API writes per event, first-attempt success", fmt.Sprintf("%.2f (+%.2f endpoint)", w1.perEvent, w1.endpoint),
			fmt.Sprintf("%s; goal <= 2: %s", w1.detail, met(w1.perEvent <= 2.0+1e-9)))
		tab.add("    with one retry", fmt.Sprintf("%.2f (+%.2f endpoint)", w2.perEvent, w2.endpoint),
			fmt.Sprintf("%s; %.2f attempts/event; goal <= 3: %s", w2.detail, w2.attempts, met(w2.perEvent <= 3.0+1e-9)))
	}

	// (6) isolation from a never-answering endpoint.
	// The baseline has a fifth endpoint too, answering at once, so that both runs put the same
	// load on the API server (every event fanned out to five endpoints): the difference is what
	// a silent receiver does to the others' workers, not its share of API writes.
	if want(6) {
		healthy := runPipeline(t, pipelineRun{endpoints: 4, fastFifth: true, events: pipelineEvents / 4, publishers: 32})
		mixed := runPipeline(t, pipelineRun{endpoints: 4, silent: true, events: pipelineEvents / 4, publishers: 32})
		drop := 1 - mixed.rate/healthy.rate
		tab.add("(6) healthy throughput, 4 endpoints + 1 fast", fmt.Sprintf("%.0f/s, p99 %s", healthy.rate, ms(healthy.toReceiver.p(99))), "publish->receiver p99 at full rate (queueing included)")
		tab.add("    same, next to a never-answering endpoint", fmt.Sprintf("%.0f/s, p99 %s", mixed.rate, ms(mixed.toReceiver.p(99))),
			fmt.Sprintf("the fifth endpoint never answers (timeoutSeconds 2); every event fans out to all five in both runs; throughput change %+.1f%%; goal drop < 10%%: %s", -drop*100, met(drop < 0.10)))
	}

	// (10) to (13), the history store's rows (history_bench_test.go), before the memory rows
	// fill etcd; the memory rows' time budget starts after them.
	budget += historyRows(t, tab)

	// (5, second half) memory with finished deliveries present.
	if want(5) {
		tab.add("(5) operator RSS, 0 finished deliveries", mib(rss0.settled), fmt.Sprintf("separate process built from this checkout; peak %s", mib(rss0.peak)))
		for _, n := range memoryCounts {
			existing := countDeliveries(t)
			need := n - existing
			perObject := time.Duration(float64(time.Second) / limit * 1.3)
			if left := budget - time.Since(start); need > 0 && time.Duration(need)*perObject+30*time.Second > left {
				fit := existing + int(float64(left-30*time.Second)/float64(perObject))
				tab.add(fmt.Sprintf("(5) operator RSS, %d finished deliveries", n), "not measured",
					fmt.Sprintf("creating them would not fit in 10 minutes (about %d would)", fit))
				continue
			}
			if need > 0 {
				createFinished(t, need, limitConc)
			}
			rss := operatorRSS(t, bin, kubeconfig)
			ratio := float64(rss.settled) / float64(rss0.settled)
			note := fmt.Sprintf("peak %s; %.2fx of none", mib(rss.peak), ratio)
			if n == memoryCounts[len(memoryCounts)-1] {
				note += fmt.Sprintf("; goal <= 2x: %s", met(ratio <= 2))
			}
			tab.add(fmt.Sprintf("(5) operator RSS, %d finished deliveries", countDeliveries(t)), mib(rss.settled), note)
		}
	}
	tab.add("total run time", time.Since(start).Round(time.Second).String(), "")
	tab.print(os.Stdout)
}

// want reports whether row n is to be measured: BENCH_ROWS=7,8 measures the limit (1) and those
// rows only (and what they compare against); unset, every row.
func want(n int) bool {
	rows := envInts("BENCH_ROWS", nil)
	return len(rows) == 0 || slices.Contains(rows, n)
}

func met(ok bool) string {
	if ok {
		return "met"
	}
	return "NOT met"
}

func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond)) }
func mib(b int64) string        { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

func envInt(name string, def int) int {
	if n, err := strconv.Atoi(os.Getenv(name)); err == nil && n > 0 {
		return n
	}
	return def
}

func envInts(name string, def []int) []int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	var out []int
	for _, f := range strings.Split(v, ",") {
		if n, err := strconv.Atoi(strings.TrimSpace(f)); err == nil && n > 0 {
			out = append(out, n)
		}
	}
	return out
}

// benchEvent is an llm.completed event of a realistic size: about 1.3 KB of JSON, most of it
// extraction results in data.
func benchEvent(id string) webhooksv1alpha1.Event {
	var data strings.Builder
	data.WriteString(`{"invoice_number":"INV-2026-00042","currency":"EUR","invoice_total":"1250.00","line_items":[`)
	for i := range 8 {
		if i > 0 {
			data.WriteString(",")
		}
		fmt.Fprintf(&data, `{"description":"Consulting services, block %d","quantity":%d,"unit_price":"125.00","vat_rate":"0.20"}`, i, i+1)
	}
	data.WriteString(`],"vendor":{"name":"ACME Consulting GmbH","vat_id":"DE123456789","iban":"DE89370400440532013000"}}`)
	return webhooksv1alpha1.Event{
		ID: id, Type: webhooksv1alpha1.EventLLMCompleted, Timestamp: time.Now().Unix(), OrganizationID: "org-bench",
		Document: webhooksv1alpha1.Document{
			DocumentID: "doc-" + id, DocumentName: "invoice-" + id + ".pdf", TagIDs: []string{"invoices", "2026", "acme"},
			Metadata: &apiextensionsv1.JSON{Raw: []byte(`{"source":"email","mailbox":"ap@example.com","pages":3,"uploaded_by":"user-17"}`)},
		},
		Data: &apiextensionsv1.JSON{Raw: []byte(data.String())},
	}
}

// succeededStatus is the status of a delivery that succeeded at its first attempt, as the
// controller writes it.
func succeededStatus(d *webhooksv1alpha1.WebhookDelivery) {
	now := metav1.Now()
	d.Status = webhooksv1alpha1.WebhookDeliveryStatus{
		ObservedGeneration: d.Generation, Phase: webhooksv1alpha1.PhaseSucceeded, Attempts: 1,
		LastAttemptTime: &now, LastStatusCode: 200, LastDurationMilliseconds: 3, CompletionTime: &now,
		History: []webhooksv1alpha1.Attempt{{Number: 1, Time: now, StatusCode: 200, DurationMilliseconds: 3,
			Result: webhooksv1alpha1.AttemptSuccess, Trigger: webhooksv1alpha1.TriggerScheduled}},
		Conditions: []metav1.Condition{{Type: webhooksv1alpha1.ConditionReady, Status: metav1.ConditionTrue,
			Reason: webhooksv1alpha1.ReasonDelivered, Message: "delivered at attempt 1 (HTTP 200)", LastTransitionTime: now,
			ObservedGeneration: d.Generation}},
	}
}

func newNamespace(t *testing.T, prefix string) string {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: prefix + "-"}}
	if err := env.Client.Create(context.Background(), ns); err != nil {
		t.Fatal(err)
	}
	return ns.Name
}

// createFinishedIn creates n deliveries in ns, each created and then patched to Succeeded:
// exactly the two writes of a delivery, with conc goroutines. It returns the time taken.
func createFinishedIn(t *testing.T, ns string, n, conc int) time.Duration {
	t.Helper()
	var next atomic.Int64
	var failed atomic.Int64
	var wg sync.WaitGroup
	began := time.Now()
	for range conc {
		wg.Go(func() {
			ctx := context.Background()
			for {
				i := next.Add(1)
				if i > int64(n) {
					return
				}
				d := webhooksv1alpha1.NewDelivery(ns, "limit", benchEvent(fmt.Sprintf("%s-%d", ns, i)))
				if err := env.Client.Create(ctx, d); err != nil {
					failed.Add(1)
					continue
				}
				base := d.DeepCopy()
				succeededStatus(d)
				if err := env.Client.Status().Patch(ctx, d, client.MergeFrom(base)); err != nil {
					failed.Add(1)
				}
			}
		})
	}
	wg.Wait()
	if f := failed.Load(); f > 0 {
		t.Fatalf("%d of %d writes failed", f, n)
	}
	return time.Since(began)
}

// measureLimit is (1): the best rate of create + one status patch over a few concurrencies.
func measureLimit(t *testing.T) (best float64, bestConc int) {
	t.Helper()
	for _, conc := range []int{8, 16, 32, 64} {
		n := 1500
		took := createFinishedIn(t, newNamespace(t, fmt.Sprintf("limit-%d", conc)), n, conc)
		rate := float64(n) / took.Seconds()
		progress("limit at concurrency %d: %.0f objects/s", conc, rate)
		if rate > best {
			best, bestConc = rate, conc
		}
	}
	return best, bestConc
}

func createFinished(t *testing.T, n, conc int) {
	t.Helper()
	progress("creating %d finished deliveries", n)
	for n > 0 {
		batch := min(n, 10000)
		took := createFinishedIn(t, newNamespace(t, "finished"), batch, conc)
		progress("  %d in %s", batch, took.Round(time.Second))
		n -= batch
	}
}

func countDeliveries(t *testing.T) int {
	t.Helper()
	var list metav1.PartialObjectMetadataList
	list.SetGroupVersionKind(webhooksv1alpha1.GroupVersion.WithKind("WebhookDeliveryList"))
	n := 0
	cont := ""
	for {
		if err := env.Client.List(context.Background(), &list, client.Limit(5000), client.Continue(cont)); err != nil {
			t.Fatal(err)
		}
		n += len(list.Items)
		if cont = list.Continue; cont == "" {
			return n
		}
	}
}

// latencies are durations in any order; p sorts them once.
type latencies []time.Duration

func (l latencies) p(pct float64) time.Duration {
	if len(l) == 0 {
		return 0
	}
	slices.Sort(l)
	return l[min(len(l)-1, int(float64(len(l))*pct/100))]
}

type pipelineRun struct {
	endpoints  int           // healthy endpoints; every event fans out to each
	silent     bool          // one more endpoint whose receiver never answers
	fastFifth  bool          // one more endpoint, like the silent one but answering at once (the isolation baseline)
	events     int           // events published
	publishers int           // goroutines publishing
	rate       float64       // events per second; 0: as fast as possible
	delay      time.Duration // how long each healthy receiver takes to answer (a slow receiver)
	filter     string        // spec.filter of every healthy endpoint (it selects every bench event)

	// operator is how the operator differs from main.go's defaults (a history store).
	operator []operatorOption
}

type pipelineResult struct {
	deliveries  int
	rate        float64       // healthy deliveries Succeeded per second, from first publish to last
	took        time.Duration // from the first publish to the last Succeeded
	toReceiver  latencies
	toSucceeded latencies
}

// startOperator runs the controllers and the event intake in this process as main.go wires
// them: default options, the operator's cache options, the client limits of the manager's
// flags. The intake serves on loopback, without authentication (a TokenReview per token is
// cached, so it would change little). It returns a client of the intake.
func startOperator(t *testing.T, ns string, with ...operatorOption) (stop func(), intakeClient *publish.Client) {
	t.Helper()
	o := operatorSettings{env: env, options: controllers.DefaultOptions()}
	for _, f := range with {
		f(&o)
	}
	cfg := rest.CopyConfig(o.env.Config)
	cfg.QPS, cfg.Burst = 2000, 4000
	opts := o.env.ManagerOptions(ns)
	opts.Cache = controllers.CacheOptions(opts.Cache)
	mgr, err := ctrl.NewManager(cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	copts := o.options
	copts.Namespaces = []string{ns} // as the manager's cache
	op, err := controllers.Setup(ctx, mgr, copts, controllers.Deps{Sender: dispatcher.NewSender(dispatcher.SenderOptions{}), Store: o.store})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(intake.NewHandler(mgr.GetClient(), mgr.GetCache(), intake.Options{AllowAnonymous: true, WorkingSet: op.WorkingSet, Store: o.store}))
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 256
	intakeClient = &publish.Client{URL: srv.URL, HTTPClient: &http.Client{Transport: tr, Timeout: time.Minute}}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := mgr.Start(ctx); err != nil {
			t.Errorf("manager: %v", err)
		}
	}()
	if !mgr.GetCache().WaitForCacheSync(ctx) {
		t.Fatal("cache did not sync")
	}
	return func() { srv.Close(); cancel(); <-done }, intakeClient
}

func endpoint(ns, name, url string, timeoutSeconds, maxRetries int32) *webhooksv1alpha1.WebhookEndpoint {
	return &webhooksv1alpha1.WebhookEndpoint{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: webhooksv1alpha1.WebhookEndpointSpec{
			URL: url, AllowInsecureHTTP: true, EventTypes: []string{"*"},
			SigningSecretRef: &webhooksv1alpha1.SecretKeyRef{Name: "signing", Key: "key"},
			TimeoutSeconds:   ptr.To(timeoutSeconds),
			RetryPolicy: &webhooksv1alpha1.RetryPolicy{MaxRetries: ptr.To(maxRetries), InitialDelaySeconds: ptr.To[int32](2),
				JitterPercent: ptr.To[int32](0)},
		},
	}
}

// setupNamespace creates a namespace with the signing Secret, run.endpoints healthy endpoints
// (with their receivers, answering after run.delay, with run.filter) and, if asked, a silent
// one or a fast fifth.
func setupNamespace(t *testing.T, prefix string, run pipelineRun, statuses ...int) (string, []string, []*testreceiver.Receiver) {
	t.Helper()
	ctx := context.Background()
	ns := newNamespace(t, prefix)
	if err := env.Client.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "signing"},
		Data: map[string][]byte{"key": signingKey}}); err != nil {
		t.Fatal(err)
	}
	var names []string
	var rcvs []*testreceiver.Receiver
	for i := range run.endpoints {
		r := testreceiver.New(t, signingKey, statuses...)
		if d := run.delay; d > 0 {
			r.OnRequest(func(*http.Request) { time.Sleep(d) })
		}
		name := fmt.Sprintf("healthy-%d", i)
		ep := endpoint(ns, name, r.URL, 10, 3)
		ep.Spec.Filter = run.filter
		if err := env.Client.Create(ctx, ep); err != nil {
			t.Fatal(err)
		}
		names, rcvs = append(names, name), append(rcvs, r)
	}
	if run.silent || run.fastFifth {
		r := testreceiver.New(t, signingKey)
		if run.silent {
			r.OnRequest(func(req *http.Request) { <-req.Context().Done() })
		}
		if err := env.Client.Create(ctx, endpoint(ns, "silent", r.URL, 2, 0)); err != nil {
			t.Fatal(err)
		}
		names = append(names, "silent")
	}
	return ns, names, rcvs
}

// watchSucceeded records when each delivery of ns is first seen Succeeded. A watch that the API
// server closes (it may, under load) is opened again; its initial events then report what was
// missed, a little late.
func watchSucceeded(t *testing.T, ns string) (seen func() map[string]time.Time, stop func()) {
	t.Helper()
	wc, err := client.NewWithWatch(env.Config, client.Options{Scheme: env.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var mu sync.Mutex
	at := map[string]time.Time{}
	ready := make(chan struct{})
	go func() {
		first := true
		for ctx.Err() == nil {
			w, err := wc.Watch(ctx, &webhooksv1alpha1.WebhookDeliveryList{}, client.InNamespace(ns))
			if first {
				first = false
				close(ready)
			}
			if err != nil {
				time.Sleep(100 * time.Millisecond)
				continue
			}
			for ev := range w.ResultChan() {
				if ev.Type != watch.Added && ev.Type != watch.Modified {
					continue
				}
				d, ok := ev.Object.(*webhooksv1alpha1.WebhookDelivery)
				if !ok || d.Status.Phase != webhooksv1alpha1.PhaseSucceeded {
					continue
				}
				now := time.Now()
				mu.Lock()
				if _, ok := at[d.Name]; !ok {
					at[d.Name] = now
				}
				mu.Unlock()
			}
			w.Stop()
		}
	}()
	<-ready
	return func() map[string]time.Time {
		mu.Lock()
		defer mu.Unlock()
		return maps(at)
	}, cancel
}

func maps(m map[string]time.Time) map[string]time.Time {
	out := make(map[string]time.Time, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// publishEvent publishes ev through the intake and checks that it fanned out to every endpoint.
func publishEvent(ctx context.Context, c *publish.Client, ns string, endpoints []string, ev webhooksv1alpha1.Event) error {
	ts := ev.Timestamp
	acc, err := c.Publish(ctx, ns, publish.Event{
		EventID: ev.ID, EventType: ev.Type, Timestamp: &ts, OrganizationID: ev.OrganizationID,
		Document: dispatcher.Document{DocumentID: ev.Document.DocumentID, DocumentName: ev.Document.DocumentName,
			TagIDs: ev.Document.TagIDs, Metadata: ev.Document.Metadata.Raw},
		Data: ev.Data.Raw,
	})
	if err != nil {
		return err
	}
	if len(acc.Deliveries) != len(endpoints) {
		return fmt.Errorf("event %s fanned out to %d endpoints, want %d", ev.ID, len(acc.Deliveries), len(endpoints))
	}
	return nil
}

// runPipeline is (2), (3) and (6): publish events, wait until every healthy delivery is
// Succeeded, and time it.
func runPipeline(t *testing.T, run pipelineRun) pipelineResult {
	t.Helper()
	ns, endpoints, rcvs := setupNamespace(t, "pipeline", run)
	healthy := endpoints[:run.endpoints]
	stopOperator, intakeClient := startOperator(t, ns, run.operator...)
	defer func() {
		stopOperator()
		if run.silent || run.fastFifth {
			// The fifth endpoint's unfinished deliveries would keep the next operator busy.
			if err := env.Client.DeleteAllOf(context.Background(), &webhooksv1alpha1.WebhookDelivery{}, client.InNamespace(ns),
				client.MatchingLabels{webhooksv1alpha1.EndpointLabel: "silent"}); err != nil {
				t.Error(err)
			}
		}
	}()
	seen, stopWatch := watchSucceeded(t, ns)
	defer stopWatch()
	time.Sleep(500 * time.Millisecond) // endpoints Ready, watch established

	published := make([]time.Time, run.events)
	ids := make([]string, run.events)
	var next atomic.Int64
	var wg sync.WaitGroup
	var failed atomic.Int64
	began := time.Now()
	for range run.publishers {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= run.events {
					return
				}
				if run.rate > 0 {
					if d := time.Until(began.Add(time.Duration(float64(i) / run.rate * float64(time.Second)))); d > 0 {
						time.Sleep(d)
					}
				}
				ids[i] = fmt.Sprintf("evt-%s-%d", ns, i)
				published[i] = time.Now()
				if err := publishEvent(context.Background(), intakeClient, ns, endpoints, benchEvent(ids[i])); err != nil {
					if failed.Add(1) == 1 {
						progress("publish: %v", err)
					}
				}
			}
		})
	}
	wg.Wait()
	if f := failed.Load(); f > 0 {
		t.Fatalf("%d publishes failed", f)
	}
	want := run.events * len(healthy)
	deadline := time.Now().Add(3 * time.Minute)
	var done map[string]time.Time
	for {
		done = seen()
		n := 0
		for _, ep := range healthy {
			for _, id := range ids {
				if _, ok := done[webhooksv1alpha1.DeliveryName(ep, id)]; ok {
					n++
				}
			}
		}
		if n == want {
			break
		}
		if time.Now().After(deadline) {
			var list webhooksv1alpha1.WebhookDeliveryList
			phases := map[webhooksv1alpha1.DeliveryPhase]int{}
			if err := env.Client.List(context.Background(), &list, client.InNamespace(ns)); err == nil {
				for _, d := range list.Items {
					phases[d.Status.Phase]++
				}
			}
			t.Fatalf("only %d of %d deliveries seen Succeeded within 3 minutes; phases in the API server: %v", n, want, phases)
		}
		time.Sleep(50 * time.Millisecond)
	}
	res := pipelineResult{deliveries: want}
	var last time.Time
	for i, id := range ids {
		for _, ep := range healthy {
			at := done[webhooksv1alpha1.DeliveryName(ep, id)]
			last = later(last, at)
			res.toSucceeded = append(res.toSucceeded, at.Sub(published[i]))
		}
	}
	res.took = last.Sub(began)
	res.rate = float64(want) / res.took.Seconds()
	index := make(map[string]int, len(ids))
	for i, id := range ids {
		index[id] = i
	}
	unverified := 0
	for _, r := range rcvs {
		for _, req := range r.Requests() {
			if !req.Verified {
				unverified++
			}
			if i, ok := index[req.Header.Get(dispatcher.HeaderEventID)]; ok {
				res.toReceiver = append(res.toReceiver, req.At.Sub(published[i]))
			}
		}
	}
	if unverified > 0 {
		t.Errorf("%d requests failed signature verification", unverified)
	}
	progress("pipeline %+v: %d deliveries in %s, %.0f/s, publish->receiver p99 %s", run, want, res.took.Round(100*time.Millisecond), res.rate, ms(res.toReceiver.p(99)))
	return res
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// apiWrites reads the API server's apiserver_request_total and sums the writes (every verb but
// GET, LIST and WATCH) and the GETs by resource, for the operator's resources and Events.
func apiWrites(t *testing.T) map[string]float64 {
	t.Helper()
	return apiWritesOf(t, env)
}

// apiserverGet GETs path of the control plane e's kube-apiserver with its admin credentials.
func apiserverGet(t *testing.T, e *testenv.Env, path string) (*http.Response, error) {
	t.Helper()
	hc, err := rest.HTTPClientFor(e.Config)
	if err != nil {
		t.Fatal(err)
	}
	return hc.Get(strings.TrimSuffix(e.Config.Host, "/") + path)
}

// apiWritesOf is apiWrites of the control plane e.
func apiWritesOf(t *testing.T, e *testenv.Env) map[string]float64 {
	t.Helper()
	resp, err := apiserverGet(t, e, "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "apiserver_request_total{") {
			continue
		}
		labels, value, _ := strings.Cut(line[len("apiserver_request_total{"):], "} ")
		l := map[string]string{}
		for _, kv := range strings.Split(labels, ",") {
			k, v, _ := strings.Cut(kv, "=")
			l[k] = strings.Trim(v, `"`)
		}
		switch l["verb"] {
		case "LIST", "WATCH":
			continue
		}
		switch l["resource"] {
		case "webhookdeliveries", "webhookendpoints", "events":
		default:
			continue
		}
		key := l["resource"]
		if l["subresource"] != "" {
			key += "/" + l["subresource"]
		}
		key += " " + l["verb"]
		f, _ := strconv.ParseFloat(strings.TrimSpace(value), 64)
		out[key] += f
	}
	return out
}

type writes struct {
	perEvent float64 // writes to webhookdeliveries (and status) per event: the goal's figure
	endpoint float64 // writes to webhookendpoints (and status) per event: rate-limited health
	attempts float64
	detail   string
}

// measureWrites is (4): the API writes of n events to one endpoint, first-attempt success, or
// with the first attempt of each answered 500.
func measureWrites(t *testing.T, retry bool) writes {
	t.Helper()
	const n = 100
	var statuses []int
	if retry {
		for range n {
			statuses = append(statuses, http.StatusInternalServerError)
		}
		statuses = append(statuses, http.StatusOK)
	}
	ns, endpoints, _ := setupNamespace(t, "writes", pipelineRun{endpoints: 1}, statuses...)
	stopOperator, intakeClient := startOperator(t, ns)
	seen, stopWatch := watchSucceeded(t, ns)
	time.Sleep(time.Second)
	before := apiWrites(t)
	for i := range n {
		if err := publishEvent(context.Background(), intakeClient, ns, endpoints, benchEvent(fmt.Sprintf("w-%s-%d", ns, i))); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(time.Minute)
	for len(seen()) < n {
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d Succeeded", len(seen()), n)
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(2 * time.Second) // late writes, such as an endpoint's health, are counted too
	after := apiWrites(t)
	stopWatch()
	stopOperator()

	var list webhooksv1alpha1.WebhookDeliveryList
	if err := env.Client.List(context.Background(), &list, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	attempts := 0
	for _, d := range list.Items {
		attempts += int(d.Status.Attempts)
	}
	var total, endpoint, events float64
	var reads []string
	var parts []string
	keys := make([]string, 0, len(after))
	for k := range after {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		d := after[k] - before[k]
		if d == 0 {
			continue
		}
		if strings.HasPrefix(k, "events ") {
			events += d
			continue
		}
		if strings.HasSuffix(k, " GET") {
			reads = append(reads, fmt.Sprintf("%s %.0f", k, d))
			continue
		}
		if strings.HasPrefix(k, "webhookendpoints") {
			endpoint += d
		} else {
			total += d
		}
		parts = append(parts, fmt.Sprintf("%s %.0f", k, d))
	}
	detail := fmt.Sprintf("%d events: %s", n, strings.Join(parts, ", "))
	if len(reads) > 0 {
		detail += " (reads, not counted: " + strings.Join(reads, ", ") + ")"
	}
	if events > 0 {
		detail += fmt.Sprintf(" (+%.0f Kubernetes Event writes, not counted)", events)
	}
	return writes{perEvent: total / n, endpoint: endpoint / n, attempts: float64(attempts) / n, detail: detail}
}

// buildOperator builds the operator binary from this checkout.
func buildOperator(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "webhook-operator")
	cmd := exec.Command("go", "build", "-o", bin, ".")
	cmd.Dir = testenv.RepoRoot()
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building the operator: %v\n%s", err, out)
	}
	return bin
}

// writeKubeconfig writes a kubeconfig for the test control plane's admin user.
func writeKubeconfig(t *testing.T) string {
	t.Helper()
	c := env.Config
	kc := clientcmdapi.NewConfig()
	kc.Clusters["envtest"] = &clientcmdapi.Cluster{Server: c.Host, CertificateAuthorityData: c.CAData}
	kc.AuthInfos["admin"] = &clientcmdapi.AuthInfo{ClientCertificateData: c.CertData, ClientKeyData: c.KeyData, Token: c.BearerToken}
	kc.Contexts["envtest"] = &clientcmdapi.Context{Cluster: "envtest", AuthInfo: "admin"}
	kc.CurrentContext = "envtest"
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		t.Fatal(err)
	}
	return path
}

type rss struct{ settled, peak int64 }

// operatorRSS runs the operator binary against the control plane until its delivery controller
// has started its workers (its cache is synced) and its resident memory has settled, and
// returns that RSS and the peak.
func operatorRSS(t *testing.T, bin, kubeconfig string) rss {
	t.Helper()
	args := []string{"manager", "--health-probe-bind-address=0", "--metrics-bind-address=0"}
	if help, _ := exec.Command(bin, "manager", "-h").CombinedOutput(); strings.Contains(string(help), "intake-bind-address") {
		args = append(args, "--intake-bind-address=0")
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	started := make(chan struct{})
	var tail strings.Builder
	go func() {
		sc := bufio.NewScanner(stderr)
		once := sync.Once{}
		for sc.Scan() {
			line := sc.Text()
			if tail.Len() < 8000 {
				tail.WriteString(line + "\n")
			}
			if strings.Contains(line, "Starting workers") && strings.Contains(strings.ToLower(line), "webhookdelivery") {
				once.Do(func() { close(started) })
			}
		}
	}()
	select {
	case <-started:
	case <-time.After(2 * time.Minute):
		t.Fatalf("the operator did not start its workers within 2 minutes; its log:\n%s", tail.String())
	}
	// Settled: two samples 2 s apart within 2% of each other (at most 30 s).
	var last int64
	for range 15 {
		time.Sleep(2 * time.Second)
		cur := procStatus(t, cmd.Process.Pid, "VmRSS")
		if last > 0 && abs(cur-last) <= last/50 {
			last = cur
			break
		}
		last = cur
	}
	return rss{settled: last, peak: procStatus(t, cmd.Process.Pid, "VmHWM")}
}

func abs(x int64) int64 {
	if x < 0 {
		return -x
	}
	return x
}

// procStatus reads a size field (in kB) of /proc/PID/status, in bytes.
func procStatus(t *testing.T, pid int, field string) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}
