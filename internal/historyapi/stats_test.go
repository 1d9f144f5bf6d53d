package historyapi_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	historyv1alpha1 "github.com/docrouter/webhook-operator/api/history/v1alpha1"
	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
	"github.com/docrouter/webhook-operator/internal/history"
)

// attemptClass is the class a stats window counts an attempt under, from the attempt as the
// fixtures make it (a status code, or 0 for a timeout).
func attemptClass(a webhooksv1alpha1.Attempt) string {
	switch {
	case a.Result == "Timeout":
		return "timeout"
	case a.StatusCode/100 == 2:
		return "2xx"
	case a.StatusCode/100 == 5:
		return "5xx"
	}
	return fmt.Sprintf("code %d", a.StatusCode)
}

// The stats of an endpoint agree with the records they summarise: for each window, the
// deliveries that finished in it by phase, its attempts by class, the success rate, latency
// within the histogram bucket of the attempts' duration, chart series that add up to the
// window, the unfinished deliveries and the backlog. Expectations are computed from the
// records written, not written down.
func (a *api) testStats(t *testing.T) {
	ctx := context.Background()
	ns := env.Namespace(t)
	now := time.Now()
	at := func(ago time.Duration) time.Time { return now.Add(-ago) }
	var ds []delivery
	for i := range 6 {
		ds = append(ds, delivery{eventID: fmt.Sprintf("ok-%d", i), codes: []int32{200}, created: at(20*time.Minute + time.Duration(i)*time.Minute)})
	}
	for i := range 2 {
		ds = append(ds, delivery{eventID: fmt.Sprintf("fail-%d", i), phase: webhooksv1alpha1.PhaseFailed, codes: []int32{500, 502, 503}, created: at(30 * time.Minute)})
	}
	ds = append(ds, delivery{eventID: "slow-then-ok", codes: []int32{0, 200}, created: at(40 * time.Minute)})
	for i := range 3 {
		ds = append(ds, delivery{eventID: fmt.Sprintf("earlier-%d", i), codes: []int32{200}, created: at(3 * time.Hour)})
	}
	for i := range 2 {
		ds = append(ds, delivery{eventID: fmt.Sprintf("days-ago-%d", i), phase: webhooksv1alpha1.PhaseFailed, codes: []int32{503}, created: at(50 * time.Hour)})
	}
	ds = append(ds, delivery{eventID: "still-retrying", phase: webhooksv1alpha1.PhaseRetrying, codes: []int32{500}, created: at(10 * time.Minute)})
	var recs []history.Record
	for _, d := range ds {
		d.ns, d.endpoint, d.duration = ns, "stats-ep", 30*time.Millisecond
		recs = append(recs, d.record())
	}
	// Another endpoint's deliveries must not count.
	recs = append(recs, delivery{ns: ns, endpoint: "other", eventID: "x", codes: []int32{500}, phase: webhooksv1alpha1.PhaseFailed, created: at(20 * time.Minute)}.record())
	writeAll(t, a.store, recs)
	backlog := []history.BacklogItem{}
	for i := range 3 {
		ev := webhooksv1alpha1.Event{ID: fmt.Sprintf("%s-queued-%d", ns, i), Type: "llm.completed", Timestamp: now.Unix()}
		backlog = append(backlog, history.BacklogItem{Namespace: ns, Endpoint: "stats-ep", Name: webhooksv1alpha1.DeliveryName("stats-ep", ev.ID), Event: ev, EnqueuedAt: now})
	}
	if _, err := a.store.Enqueue(ctx, backlog); err != nil {
		t.Fatal(err)
	}

	rc := recordsClient(t, env.Config)
	var got historyv1alpha1.WebhookEndpointStats
	if err := rc.Get().Namespace(ns).Resource("webhookendpointstats").Name("stats-ep").Do(ctx).Into(&got); err != nil {
		t.Fatalf("get webhookendpointstats: %v", err)
	}
	if got.Name != "stats-ep" || got.Backlog != 3 || got.Unfinished != 1 {
		t.Errorf("stats-ep: name %q backlog %d unfinished %d, want backlog 3 and 1 unfinished", got.Name, got.Backlog, got.Unfinished)
	}
	if len(got.Windows) != 3 || got.Windows[0].Window != "1h" || got.Windows[1].Window != "24h" || got.Windows[2].Window != "7d" {
		t.Fatalf("windows: %+v", got.Windows)
	}
	for _, w := range got.Windows {
		start, end := w.Start.Time, w.End.Time
		in := func(ts time.Time) bool { return !ts.Before(start) && ts.Before(end) }
		var succeeded, failed int64
		attempts := map[string]int64{}
		for _, r := range recs {
			if r.Endpoint != "stats-ep" {
				continue
			}
			if r.CompletionTime != nil && in(*r.CompletionTime) {
				switch r.Phase {
				case webhooksv1alpha1.PhaseSucceeded:
					succeeded++
				case webhooksv1alpha1.PhaseFailed:
					failed++
				}
			}
			for _, at := range r.Attempts {
				if in(at.Time.Time) {
					attempts[attemptClass(at)]++
				}
			}
		}
		if w.Deliveries.Succeeded != succeeded || w.Deliveries.Failed != failed {
			t.Errorf("%s: deliveries %+v, the records say succeeded %d failed %d", w.Window, w.Deliveries, succeeded, failed)
		}
		if fmt.Sprint(w.Attempts) != fmt.Sprint(attempts) {
			t.Errorf("%s: attempts %v, the records say %v", w.Window, w.Attempts, attempts)
		}
		wantRate := float64(succeeded) / float64(succeeded+failed)
		if w.SuccessRate == nil || *w.SuccessRate < wantRate-1e-9 || *w.SuccessRate > wantRate+1e-9 {
			t.Errorf("%s: success rate %v, the records say %v", w.Window, w.SuccessRate, wantRate)
		}
		// Every attempt took 30 ms: the percentiles lie in the histogram bucket (20, 40] ms.
		for name, ms := range map[string]int64{"p50": w.Latency.P50Milliseconds, "p95": w.Latency.P95Milliseconds, "p99": w.Latency.P99Milliseconds} {
			if ms < 20 || ms > 40 {
				t.Errorf("%s: latency %s %d ms, outside the bucket (20, 40] ms of the 30 ms attempts", w.Window, name, ms)
			}
		}
		var sumOK, sumFailed, sumAttempts int64
		for _, p := range w.Series {
			sumOK, sumFailed, sumAttempts = sumOK+p.Succeeded, sumFailed+p.Failed, sumAttempts+p.Attempts
		}
		var total int64
		for _, n := range attempts {
			total += n
		}
		if sumOK != succeeded || sumFailed != failed || sumAttempts != total {
			t.Errorf("%s: the series add up to %d/%d/%d, the window to %d/%d/%d", w.Window, sumOK, sumFailed, sumAttempts, succeeded, failed, total)
		}
		if n := int64(len(w.Series)); n == 0 || w.SeriesStepSeconds*n != w.WindowSeconds {
			t.Errorf("%s: %d points of %d s for a window of %d s", w.Window, n, w.SeriesStepSeconds, w.WindowSeconds)
		}
	}
	if w := got.Windows[0]; w.Deliveries.Succeeded != 7 || w.Deliveries.Failed != 2 {
		t.Errorf("the fixtures are meant to put 7 successes and 2 failures in the last hour, got %+v", w.Deliveries)
	}

	// A list shows the stats of the namespace's WebhookEndpoints.
	ep := &webhooksv1alpha1.WebhookEndpoint{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "stats-ep"}}
	ep.Spec.URL = "https://receiver.example.com/hooks"
	ep.Spec.EventTypes = []string{"llm.completed"}
	if err := env.Client.Create(ctx, ep); err != nil {
		t.Fatal(err)
	}
	var list historyv1alpha1.WebhookEndpointStatsList
	if err := rc.Get().Namespace(ns).Resource("webhookendpointstats").Do(ctx).Into(&list); err != nil {
		t.Fatalf("list webhookendpointstats: %v", err)
	}
	if len(list.Items) != 1 || list.Items[0].Name != "stats-ep" || list.Items[0].Windows[1].Deliveries != got.Windows[1].Deliveries {
		t.Errorf("list webhookendpointstats: %+v", list.Items)
	}
	raw, err := rc.Get().Namespace(ns).Resource("webhookendpointstats").Name("stats-ep").
		SetHeader("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io").Do(ctx).Raw()
	if err != nil || !strings.Contains(string(raw), `"Success 24h"`) || !strings.Contains(string(raw), "83.3%") {
		t.Errorf("the stats table (24h: 10 of 12 succeeded): %v %s", err, raw)
	}
}
