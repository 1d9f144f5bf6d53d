package history_test

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
	"github.com/docrouter/webhook-operator/internal/history"
	"github.com/docrouter/webhook-operator/internal/history/historytest"
)

func TestMain(m *testing.M) { os.Exit(historytest.Main(m)) }

// engines opens a fresh store of each engine.
var engines = []struct {
	name string
	open func(tb testing.TB, opts ...history.Options) history.Store
}{
	{"sqlite", historytest.SQLite},
	{"postgres", historytest.OpenPostgres},
}

// t0 is the fixtures' clock: a whole minute, so that minute arithmetic in tests is plain.
var t0 = time.Date(2031, 3, 14, 10, 0, 0, 0, time.UTC)

func ctxT(tb testing.TB) context.Context {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	tb.Cleanup(cancel)
	return ctx
}

// event is an event of about size bytes.
func event(id, typ string, size int) webhooksv1alpha1.Event {
	ev := webhooksv1alpha1.Event{
		ID: id, Type: typ, Timestamp: t0.Unix(), OrganizationID: "org-1",
		Document: webhooksv1alpha1.Document{DocumentID: "doc-" + id, DocumentName: "invoice.pdf", TagIDs: []string{"a", "b"}},
	}
	if size > 0 {
		ev.Data = &apiextensionsv1.JSON{Raw: []byte(fmt.Sprintf(`{"summary":%q,"total":42.5}`, strings.Repeat("x", size)))}
	}
	return ev
}

// attempt n of a delivery at a time, with a result and duration.
func attempt(n int32, at time.Time, result string, code int32, dur time.Duration) webhooksv1alpha1.Attempt {
	a := webhooksv1alpha1.Attempt{
		Number: n, Time: metav1.NewTime(at), StatusCode: code, DurationMilliseconds: dur.Milliseconds(),
		Result: webhooksv1alpha1.AttemptResult(result), Trigger: webhooksv1alpha1.TriggerScheduled,
	}
	if result != "Success" {
		a.Error = fmt.Sprintf("attempt %d: %s", n, result)
	}
	return a
}

// failedAttempts makes attempts from..to (inclusive), one a minute from start, failing with
// 503.
func failedAttempts(from, to int32, start time.Time) []webhooksv1alpha1.Attempt {
	var out []webhooksv1alpha1.Attempt
	for n := from; n <= to; n++ {
		out = append(out, attempt(n, start.Add(time.Duration(n)*time.Minute), "HTTPError", 503, 120*time.Millisecond))
	}
	return out
}

// record builds a record as the archiver would from a delivery: phase and attempts set,
// the rest following from them.
func record(ns, endpoint, eventID string, uid types.UID, phase webhooksv1alpha1.DeliveryPhase, attempts ...webhooksv1alpha1.Attempt) history.Record {
	ev := event(eventID, "llm.completed", 64)
	r := history.Record{
		Namespace: ns, Name: webhooksv1alpha1.DeliveryName(endpoint, eventID), UID: uid, Endpoint: endpoint,
		Event:        ev,
		Labels:       map[string]string{webhooksv1alpha1.EndpointLabel: endpoint, webhooksv1alpha1.EventTypeLabel: ev.Type},
		Phase:        phase,
		CreationTime: t0,
		Reason:       "Delivered",
	}
	if len(attempts) > 0 {
		last := attempts[len(attempts)-1]
		r.AttemptCount = last.Number
		r.LastStatusCode = last.StatusCode
		r.LastError = last.Error
		lt := last.Time.Time
		r.LastAttemptTime = &lt
		if len(attempts) > webhooksv1alpha1.MaxAttemptHistory {
			attempts = attempts[len(attempts)-webhooksv1alpha1.MaxAttemptHistory:]
		}
		r.Attempts = attempts
	}
	if phase.Finished() && r.LastAttemptTime != nil {
		ct := *r.LastAttemptTime
		r.CompletionTime = &ct
	}
	return r
}

func keyOf(r history.Record) history.Key { return history.Key{Namespace: r.Namespace, Name: r.Name} }

func mustWrite(tb testing.TB, s history.Store, recs ...history.Record) {
	tb.Helper()
	if err := s.Write(ctxT(tb), recs); err != nil {
		tb.Fatal(err)
	}
}

func mustGet(tb testing.TB, s history.Store, k history.Key) *history.Record {
	tb.Helper()
	r, err := s.Get(ctxT(tb), k)
	if err != nil {
		tb.Fatal(err)
	}
	return r
}

func mustRevision(tb testing.TB, s history.Store) int64 {
	tb.Helper()
	rev, err := s.Revision(ctxT(tb))
	if err != nil {
		tb.Fatal(err)
	}
	return rev
}

// mustStats are the stats of an endpoint of team-a, the fixtures' namespace.
func mustStats(tb testing.TB, s history.Store, endpoint string, now time.Time) *history.Stats {
	tb.Helper()
	st, err := s.Stats(ctxT(tb), history.EndpointKey{Namespace: "team-a", Name: endpoint}, now)
	if err != nil {
		tb.Fatal(err)
	}
	return st
}

// listAll pages through List and returns every record, failing on a repeat.
func listAll(tb testing.TB, s history.Store, opts history.ListOptions) []history.Record {
	tb.Helper()
	var out []history.Record
	for {
		page, err := s.List(ctxT(tb), opts)
		if err != nil {
			tb.Fatal(err)
		}
		out = append(out, page.Records...)
		if page.Continue == "" {
			return out
		}
		opts.Continue = page.Continue
	}
}

func attemptNumbers(r *history.Record) []string {
	var out []string
	for _, a := range r.Attempts {
		out = append(out, fmt.Sprint(a.Number))
	}
	return out
}
