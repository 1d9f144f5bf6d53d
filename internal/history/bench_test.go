package history_test

import (
	"fmt"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"

	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
	"github.com/docrouter/webhook-operator/internal/history"
)

// The store's speed, measured by benchmarks (go test -bench), and printed as one table by
//
//	HISTORY_MEASURE=1 go test -run TestMeasure -v ./internal/history/
//
// Records are like the archiver's: events of about 1.5 KB, 1 to 3 attempts, 20 endpoints in 2
// namespaces, 90% Succeeded, 8% Failed, 2% Retrying, each event to 4 endpoints, created over
// the week before benchNow.

var benchNow = t0.Add(30 * 24 * time.Hour)

// benchRecords makes records first..first+n-1 of a store of total records.
func benchRecords(prefix string, first, n, total int) []history.Record {
	out := make([]history.Record, 0, n)
	week := 7 * 24 * time.Hour
	for i := first; i < first+n; i++ {
		ns := fmt.Sprint("team-", i%2)
		ep := fmt.Sprint("ep-", i%20)
		eventID := fmt.Sprintf("%s-evt-%d", prefix, i/4)
		created := benchNow.Add(-week + time.Duration(i)*week/time.Duration(max(total, 1)))
		phase := succeeded
		switch {
		case i%50 == 0:
			phase = retrying
		case i%12 == 0:
			phase = failed
		}
		nAtt := int32(1 + i%3)
		var atts []webhooksv1alpha1.Attempt
		for a := int32(1); a <= nAtt; a++ {
			at := created.Add(time.Duration(a) * time.Second)
			dur := time.Duration(5+(i*7+int(a)*13)%900) * time.Millisecond
			if a == nAtt && phase == succeeded {
				atts = append(atts, attempt(a, at, "Success", 200, dur))
			} else {
				atts = append(atts, attempt(a, at, "HTTPError", 503, dur))
			}
		}
		r := record(ns, ep, eventID, types.UID(fmt.Sprintf("%s-uid-%d", prefix, i)), phase, atts...)
		r.Event = event(eventID, "llm.completed", 1300)
		r.CreationTime = created
		out = append(out, r)
	}
	return out
}

func populate(tb testing.TB, s history.Store, n int) {
	tb.Helper()
	const batch = 500
	for lo := 0; lo < n; lo += batch {
		if err := s.Write(ctxT(tb), benchRecords("pop", lo, min(batch, n-lo), n)); err != nil {
			tb.Fatal(err)
		}
	}
}

// cpuTime is the CPU time this process has used, user and system.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// benchWrite writes batches of new records; it reports records per second, and the CPU time
// of this process per record (for SQLite the whole cost, whatever else loads the machine; for
// PostgreSQL the client's share only).
func benchWrite(s history.Store, batch int) func(b *testing.B) {
	var runs int
	return func(b *testing.B) {
		runs++
		prefix := fmt.Sprintf("w%d", runs)
		written := 0
		var cpu time.Duration
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			b.StopTimer()
			recs := benchRecords(prefix, i*batch, batch, 1_000_000)
			start := cpuTime()
			b.StartTimer()
			if err := s.Write(ctxT(b), recs); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			cpu += cpuTime() - start
			b.StartTimer()
			written += batch
		}
		b.ReportMetric(float64(written)/b.Elapsed().Seconds(), "records/s")
		b.ReportMetric(float64(cpu.Microseconds())/float64(written), "cpu-µs/record")
	}
}

var listFilters = []struct {
	name string
	opts history.ListOptions
}{
	{"all", history.ListOptions{}},
	{"namespace", history.ListOptions{Namespace: "team-1"}},
	{"endpoint", history.ListOptions{Namespace: "team-0", Endpoint: "ep-4"}},
	{"phase=Failed", history.ListOptions{Phase: failed}},
	{"endpoint+phase", history.ListOptions{Namespace: "team-0", Endpoint: "ep-0", Phase: failed}},
	{"event id", history.ListOptions{EventID: "pop-evt-777"}},
	{"event type", history.ListOptions{Namespace: "team-0", EventType: "llm.completed"}},
}

// benchList reads a first page of 500 with a filter.
func benchList(s history.Store, opts history.ListOptions) func(b *testing.B) {
	return func(b *testing.B) {
		opts.Limit = 500
		n := 0
		for i := 0; i < b.N; i++ {
			page, err := s.List(ctxT(b), opts)
			if err != nil {
				b.Fatal(err)
			}
			n = len(page.Records)
		}
		b.ReportMetric(float64(n), "records/page")
	}
}

func benchStats(s history.Store) func(b *testing.B) {
	return func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			if _, err := s.Stats(ctxT(b), history.EndpointKey{Namespace: "team-0", Name: "ep-4"}, benchNow); err != nil {
				b.Fatal(err)
			}
		}
	}
}

// populated keeps one populated store per engine and size for the read benchmarks.
var populated struct {
	sync.Mutex
	stores map[string]history.Store
}

func populatedStore(tb testing.TB, engine int, n int) history.Store {
	tb.Helper()
	populated.Lock()
	defer populated.Unlock()
	if populated.stores == nil {
		populated.stores = map[string]history.Store{}
	}
	key := fmt.Sprint(engines[engine].name, n)
	if s := populated.stores[key]; s != nil {
		return s
	}
	s := engines[engine].open(tb)
	start := time.Now()
	populate(tb, s, n)
	tb.Logf("%s: %d records written in %s", engines[engine].name, n, time.Since(start).Round(time.Millisecond))
	populated.stores[key] = s
	return s
}

var benchSizes = []int{5_000, 100_000}

func BenchmarkWrite(b *testing.B) {
	for _, e := range engines {
		for _, batch := range []int{200, 500} {
			s := e.open(b)
			b.Run(fmt.Sprintf("%s/batch=%d", e.name, batch), benchWrite(s, batch))
		}
	}
}

func BenchmarkList(b *testing.B) {
	for i, e := range engines {
		for _, n := range benchSizes {
			s := populatedStore(b, i, n)
			for _, f := range listFilters {
				b.Run(fmt.Sprintf("%s/records=%d/%s", e.name, n, f.name), benchList(s, f.opts))
			}
		}
	}
}

func BenchmarkStats(b *testing.B) {
	for i, e := range engines {
		s := populatedStore(b, i, 100_000)
		b.Run(fmt.Sprintf("%s/records=100000", e.name), benchStats(s))
	}
}

// TestMeasure prints the benchmarks as one table (about 3 minutes on 2 cores).
func TestMeasure(t *testing.T) {
	if os.Getenv("HISTORY_MEASURE") == "" {
		t.Skip("set HISTORY_MEASURE=1 to measure the store")
	}
	var rows []string
	row := func(engine, what string, r testing.BenchmarkResult, extra string) {
		rows = append(rows, fmt.Sprintf("| %s | %s | %s | %s |", engine, what, time.Duration(r.NsPerOp()).Round(time.Microsecond), extra))
	}
	for i, e := range engines {
		for _, batch := range []int{200, 500} {
			s := e.open(t)
			populate(t, s, 5_000)
			r := testing.Benchmark(benchWrite(s, batch))
			row(e.name, fmt.Sprintf("Write, batch of %d", batch), r, fmt.Sprintf("%.0f records/s, %.0f µs CPU/record", r.Extra["records/s"], r.Extra["cpu-µs/record"]))
		}
		for _, n := range benchSizes {
			s := populatedStore(t, i, n)
			for _, f := range listFilters {
				r := testing.Benchmark(benchList(s, f.opts))
				row(e.name, fmt.Sprintf("List first page, %d records, %s", n, f.name), r, fmt.Sprintf("%.0f records/page", r.Extra["records/page"]))
			}
			if n == 100_000 {
				r := testing.Benchmark(benchStats(s))
				row(e.name, fmt.Sprintf("Stats, %d records", n), r, "3 windows, 64 points")
			}
		}
	}
	t.Log("\n| engine | operation | time per op | |\n|---|---|---|---|\n" + strings.Join(rows, "\n"))
}
