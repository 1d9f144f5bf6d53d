package faults

import (
	"context"
	"strconv"
	"testing"
	"time"

	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
	"github.com/docrouter/webhook-operator/internal/history"
	"github.com/docrouter/webhook-operator/internal/testenv/testreceiver"
)

// TestSIGKILLBetweenArchiveAndDeleteKeepsExactlyOneRecord is issue 12's crash case: a delivery is
// archived, then deleted from etcd; the operator is SIGKILLed between the two steps, and while
// it deletes. A user finds every delivery in the history exactly once, with its one attempt, and
// none left in etcd; no event is sent again.
//
// First every delivery is archived while its time in etcd (1 h) keeps it there: the state a
// crash between the two steps leaves. Then operators with a time in etcd of 1 s delete them,
// and are killed while they do.
func TestSIGKILLBetweenArchiveAndDeleteKeepsExactlyOneRecord(t *testing.T) {
	const n = 300
	ctx := context.Background()
	ns := env.Namespace(t)
	key := []byte("faults-archive-signing-key")
	rcv := testreceiver.New(t, key)
	endpointFor(t, ns, "crm", rcv.URL+"/hooks", key)
	dsn := historyDSN(t)

	op := startOperator(t, "operator-keep", "--succeeded-retention", "1h")
	op.waitDelivering(t, 60*time.Second)
	ids := createDeliveries(t, ns, "crm", "archive", n)
	waitSucceeded(t, ns, n, 120*time.Second)
	store, err := history.Open(ctx, dsn, history.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	eventually(t, 60*time.Second, "every delivery is archived", func() bool { return len(records(t, store, ns)) == n })
	op.kill()
	if left := inEtcd(t, ns); left != n {
		t.Fatalf("%d deliveries in etcd before the deletes, want %d", left, n)
	}

	// Each operator is killed as soon as it has begun deleting: its sweep is under way, some
	// records are marked removed and their deliveries not yet deleted.
	kills := 0
	for left := n; left > 0 && kills < 3; kills++ {
		op = startOperator(t, "operator-delete-"+strconv.Itoa(kills), "--succeeded-retention", "1s", "--retention-sweep-interval", "200ms")
		before := left
		eventually(t, 90*time.Second, "deliveries leave etcd", func() bool { left = inEtcd(t, ns); return left < before })
		op.kill()
		left = inEtcd(t, ns)
		t.Logf("killed %s with %d deliveries left in etcd", op.name, left)
	}
	startOperator(t, "operator-final", "--succeeded-retention", "1s", "--retention-sweep-interval", "200ms")
	eventually(t, 90*time.Second, "every delivery left etcd", func() bool { return inEtcd(t, ns) == 0 })

	recs := records(t, store, ns)
	seen := map[string]int{}
	for _, r := range recs {
		seen[r.Event.ID]++
		if r.Phase != webhooksv1alpha1.PhaseSucceeded || r.AttemptCount != 1 {
			t.Errorf("record %s: phase %s, %d attempts", r.Name, r.Phase, r.AttemptCount)
		}
		full, err := store.Get(ctx, history.Key{Namespace: r.Namespace, Name: r.Name})
		if err != nil || len(full.Attempts) != 1 || full.RemovedTime == nil {
			t.Errorf("record %s: %v, attempts %d, removed %v", r.Name, err, len(full.Attempts), full.RemovedTime)
		}
	}
	for _, id := range ids {
		if seen[id] != 1 {
			t.Errorf("event %s has %d records, want exactly 1", id, seen[id])
		}
	}
	if len(recs) != n {
		t.Errorf("%d records, want %d", len(recs), n)
	}
	if got := tallyOf(rcv.Requests()); got.requests != n || got.duplicates() != 0 {
		t.Errorf("the receiver got %d requests (%d duplicates), want %d: archiving and deleting must not send again", got.requests, got.duplicates(), n)
	}
	t.Logf("%d deliveries archived, %d kills while deleting: %d records, none twice, none left in etcd", n, kills, len(recs))
}

// records lists every record of ns, page by page.
func records(tb testing.TB, store history.Store, ns string) []history.Record {
	tb.Helper()
	var out []history.Record
	for cont := ""; ; {
		page, err := store.List(context.Background(), history.ListOptions{Namespace: ns, Continue: cont, Limit: 500})
		if err != nil {
			tb.Logf("listing records: %v", err)
			return nil
		}
		out = append(out, page.Records...)
		if cont = page.Continue; cont == "" {
			return out
		}
	}
}

// inEtcd counts the deliveries of ns in etcd.
func inEtcd(tb testing.TB, ns string) int {
	tb.Helper()
	p, err := phases(tb, ns)
	if err != nil {
		return 1 << 30 // unknown: not yet done
	}
	total := 0
	for _, n := range p {
		total += n
	}
	return total
}
