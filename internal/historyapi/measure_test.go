package historyapi_test

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	historyv1alpha1 "github.com/docrouter/webhook-operator/api/history/v1alpha1"
	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
	"github.com/docrouter/webhook-operator/internal/history"
)

// TestMeasureListLatency measures what kubectl waits for, through the API server, over 5,000
// and 100,000 records in one namespace on each engine, and prints a table:
//
//	HISTORY_API_MEASURE=1 go test -run TestMeasureListLatency -v -timeout 60m ./internal/historyapi/
//
// HISTORY_API_MEASURE_SIZES=5000,100000 chooses the sizes, HISTORY_API_MEASURE_ENGINES=postgres
// the engines. A fifth of the records are Failed (all of them on endpoints ep-0 and ep-5), spread
// over 10 endpoints; each has 3 attempts.
func TestMeasureListLatency(t *testing.T) {
	if os.Getenv("HISTORY_API_MEASURE") == "" {
		t.Skip("set HISTORY_API_MEASURE=1 to measure list latency")
	}
	sizes := []int{5000, 100000}
	if s := os.Getenv("HISTORY_API_MEASURE_SIZES"); s != "" {
		sizes = nil
		for _, f := range strings.Split(s, ",") {
			n, err := strconv.Atoi(f)
			if err != nil {
				t.Fatal(err)
			}
			sizes = append(sizes, n)
		}
	}
	type row struct {
		engine    string
		records   int
		query     string
		p50, p95  time.Duration
		items     int
		runs      int
		writeTime time.Duration
	}
	var rows []row
	for _, e := range engines {
		if only := os.Getenv("HISTORY_API_MEASURE_ENGINES"); only != "" && !slices.Contains(strings.Split(only, ","), e.name) {
			continue
		}
		t.Run(e.name, func(t *testing.T) {
			a := startAPI(t, e.open(t))
			rc := recordsClient(t, env.Config)
			ctx := context.Background()
			for _, n := range sizes {
				ns := env.Namespace(t)
				start := time.Now()
				base := time.Now().Add(-time.Duration(n) * time.Second)
				batch := make([]history.Record, 0, 500)
				for i := range n {
					d := delivery{ns: ns, endpoint: fmt.Sprintf("ep-%d", i%10), eventID: fmt.Sprintf("m-%07d", i), codes: []int32{500, 500, 200}, created: base.Add(time.Duration(i) * time.Second)}
					if i%5 == 0 {
						d.phase, d.codes = webhooksv1alpha1.PhaseFailed, []int32{500, 500, 500}
					}
					batch = append(batch, d.record())
					if len(batch) == cap(batch) || i == n-1 {
						writeAll(t, a.store, batch)
						batch = batch[:0]
					}
				}
				wrote := time.Since(start)
				name := delivery{endpoint: "ep-3", eventID: fmt.Sprintf("m-%07d", n/2+3)}.record().Name
				queries := []struct {
					name string
					run  func() (int, error)
				}{
					{"first page (limit 500)", func() (int, error) {
						l, err := listRecords(ctx, rc, ns, metav1.ListOptions{Limit: 500})
						return len(l.Items), err
					}},
					{"status.phase=Failed (limit 500)", func() (int, error) {
						l, err := listRecords(ctx, rc, ns, metav1.ListOptions{Limit: 500, FieldSelector: "status.phase=Failed"})
						return len(l.Items), err
					}},
					{"endpoint label + Failed (limit 500)", func() (int, error) {
						l, err := listRecords(ctx, rc, ns, metav1.ListOptions{Limit: 500, LabelSelector: webhooksv1alpha1.EndpointLabel + "=ep-5", FieldSelector: "status.phase=Failed"})
						return len(l.Items), err
					}},
					{"spec.event.id=ID", func() (int, error) {
						l, err := listRecords(ctx, rc, ns, metav1.ListOptions{FieldSelector: "spec.event.id=" + fmt.Sprintf("m-%07d", n/3)})
						return len(l.Items), err
					}},
					{"label checked per record (team=x, limit 500)", func() (int, error) {
						l, err := listRecords(ctx, rc, ns, metav1.ListOptions{Limit: 500, LabelSelector: "team=x"})
						return len(l.Items), err
					}},
					{"no limit (a page of 5000)", func() (int, error) {
						l, err := listRecords(ctx, rc, ns, metav1.ListOptions{})
						return len(l.Items), err
					}},
					{"get one (3 attempts)", func() (int, error) {
						var r historyv1alpha1.WebhookDeliveryRecord
						err := rc.Get().Namespace(ns).Resource("webhookdeliveryrecords").Name(name).Do(ctx).Into(&r)
						return len(r.Status.History), err
					}},
					{"table, first page (kubectl get)", func() (int, error) {
						raw, err := rc.Get().Namespace(ns).Resource("webhookdeliveryrecords").Param("limit", "500").
							SetHeader("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io").Do(ctx).Raw()
						return strings.Count(string(raw), `"cells"`), err
					}},
				}
				for _, q := range queries {
					var times []time.Duration
					items := 0
					for range 20 {
						t0 := time.Now()
						got, err := q.run()
						if err != nil {
							t.Fatalf("%s: %v", q.name, err)
						}
						times = append(times, time.Since(t0))
						items = got
					}
					slices.Sort(times)
					rows = append(rows, row{e.name, n, q.name, times[len(times)/2], times[len(times)*95/100], items, len(times), wrote})
				}
				// Paging through everything, as kubectl get --chunk-size=500 does.
				t0 := time.Now()
				total, pages := 0, 0
				cont := ""
				for {
					l, err := listRecords(ctx, rc, ns, metav1.ListOptions{Limit: 500, Continue: cont})
					if err != nil {
						t.Fatal(err)
					}
					total, pages, cont = total+len(l.Items), pages+1, l.Continue
					if cont == "" {
						break
					}
				}
				rows = append(rows, row{e.name, n, fmt.Sprintf("all pages of 500 (%d pages)", pages), time.Since(t0), time.Since(t0), total, 1, wrote})
			}
		})
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\n| engine | records | request | p50 | p95 | items | runs |\n|---|---:|---|---:|---:|---:|---:|\n")
	for _, r := range rows {
		fmt.Fprintf(&b, "| %s | %d | %s | %s | %s | %d | %d |\n", r.engine, r.records, r.query, r.p50.Round(100*time.Microsecond), r.p95.Round(100*time.Microsecond), r.items, r.runs)
	}
	written := map[string]bool{}
	for _, r := range rows {
		if k := fmt.Sprintf("%s/%d", r.engine, r.records); !written[k] {
			written[k] = true
			fmt.Fprintf(&b, "\nwriting %d records on %s took %s", r.records, r.engine, r.writeTime.Round(time.Millisecond))
		}
	}
	t.Log(b.String())
}
