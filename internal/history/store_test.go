package history_test

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"reflect"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"

	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
	"github.com/docrouter/webhook-operator/internal/history"
)

const (
	succeeded = webhooksv1alpha1.PhaseSucceeded
	failed    = webhooksv1alpha1.PhaseFailed
	retrying  = webhooksv1alpha1.PhaseRetrying
	pending   = webhooksv1alpha1.PhasePending
)

// storeCases is the suite every engine passes. Each case gets a fresh store.
var storeCases = []struct {
	name string
	run  func(t *testing.T, s history.Store)
}{
	{"a written record reads back with its values and every attempt", testWriteThenGet},
	{"Get of a record the store does not hold is ErrNotFound", testGetNotFound},
	{"writing the same snapshot twice changes no record, attempt, rollup or revision", testIdempotentWrite},
	{"25 attempts written as three snapshots of the last 20 are all stored", testAttemptsBeyondStatus},
	{"a record re-created with a new UID keeps its old attempts and adds the new ones", testRecreatedUID},
	{"an older snapshot of a delivery does not overwrite a newer one", testStaleSnapshot},
	{"Write refuses a record without a name, UID or endpoint with a sentence", testWriteValidation},
	{"List returns records newest first, and each filter exactly its records", testListFilters},
	{"paging over 5,000 records while others are written neither skips nor repeats one", testPagingUnderWrites},
	{"List refuses a continue token it did not issue, an unknown phase and a negative limit", testListBadInput},
	{"Changes returns new and changed records by increasing revision", testChanges},
	{"Archived holds only finished records of the same UID with enough attempts", testArchived},
	{"MarkRemoved sets the removed time once, and a late write of that delivery keeps it", testMarkRemoved},
	{"Prune deletes old finished records that left etcd, with their attempts, and nothing else", testPrune},
	{"Prune deletes rollups older than its time and keeps the newer ones", testPruneRollups},
	{"Known finds names among records and the backlog, and only those", testKnown},
	{"Enqueue keeps publish order and does not add a name the store knows", testEnqueue},
	{"Enqueue from several goroutines at once adds each name once, in each caller's order", testEnqueueConcurrent},
	{"Enqueue from replicas that take the same names in opposite orders adds each once, without an error", testEnqueueOppositeOrders},
	{"NextBacklog, DeleteBacklog and BacklogCounts follow the backlog", testBacklogDrain},
	{"Stats agree with the attempts and deliveries written", testStats},
	{"a Failed delivery that succeeds by a manual retry counts one success more, once", testManualRetryCounted},
	{"concurrent writers of the same records lose no attempt, count each once and share no revision", testConcurrentWriters},
	{"a closed store answers every call with an error", testClosed},
}

func TestStore(t *testing.T) {
	for _, e := range engines {
		t.Run(e.name, func(t *testing.T) {
			t.Parallel() // SQLite works in this process, PostgreSQL mostly in its own
			for _, c := range storeCases {
				t.Run(c.name, func(t *testing.T) {
					c.run(t, e.open(t, history.Options{Now: func() time.Time { return t0.Add(time.Hour) }}))
				})
			}
		})
	}
}

func testWriteThenGet(t *testing.T, s history.Store) {
	atts := []webhooksv1alpha1.Attempt{
		attempt(1, t0.Add(time.Second), "HTTPError", 500, 30*time.Millisecond),
		attempt(2, t0.Add(time.Minute), "Timeout", 0, 10*time.Second),
		attempt(3, t0.Add(3*time.Minute), "Success", 200, 42*time.Millisecond),
	}
	r := record("team-a", "crm", "evt-1", "uid-1", succeeded, atts...)
	next := t0.Add(5 * time.Minute)
	r.NextAttemptTime = &next
	r.LastRetryToken = "tok-1"
	r.Message = "delivered after 3 attempts"
	mustWrite(t, s, r)

	got := mustGet(t, s, keyOf(r))
	if got.Seq == 0 || got.Revision == 0 {
		t.Fatalf("seq %d, revision %d: both should be assigned", got.Seq, got.Revision)
	}
	want := r
	want.Seq, want.Revision = got.Seq, got.Revision
	if !reflect.DeepEqual(normalise(*got), normalise(want)) {
		t.Fatalf("read back:\n%+v\nwritten:\n%+v", normalise(*got), normalise(want))
	}
	if string(got.Event.Data.Raw) != string(r.Event.Data.Raw) {
		t.Fatalf("event data %s, written %s", got.Event.Data.Raw, r.Event.Data.Raw)
	}
}

// normalise makes times comparable (the store keeps microseconds, in UTC).
func normalise(r history.Record) history.Record {
	fix := func(t *time.Time) *time.Time {
		if t == nil {
			return nil
		}
		v := t.UTC().Truncate(time.Microsecond)
		return &v
	}
	r.CreationTime = *fix(&r.CreationTime)
	r.LastAttemptTime, r.NextAttemptTime = fix(r.LastAttemptTime), fix(r.NextAttemptTime)
	r.CompletionTime, r.RemovedTime = fix(r.CompletionTime), fix(r.RemovedTime)
	atts := slices.Clone(r.Attempts)
	for i := range atts {
		atts[i].Time.Time = atts[i].Time.UTC().Truncate(time.Microsecond)
	}
	r.Attempts = atts
	return r
}

func testGetNotFound(t *testing.T, s history.Store) {
	_, err := s.Get(ctxT(t), history.Key{Namespace: "team-a", Name: "nothing"})
	if !errors.Is(err, history.ErrNotFound) {
		t.Fatalf("Get of a missing record: %v, want ErrNotFound", err)
	}
}

func testIdempotentWrite(t *testing.T, s history.Store) {
	var recs []history.Record
	for i := range 10 {
		recs = append(recs, record("team-a", "crm", fmt.Sprintf("evt-%d", i), types.UID(fmt.Sprint("uid-", i)), failed,
			failedAttempts(1, 3, t0)...))
	}
	mustWrite(t, s, recs...)
	rev := mustRevision(t, s)
	before := listAll(t, s, history.ListOptions{})
	stats := mustStats(t, s, "crm", t0.Add(time.Hour))

	mustWrite(t, s, recs...)
	mustWrite(t, s, recs[3:5]...)

	if got := mustRevision(t, s); got != rev {
		t.Errorf("revision %d after writing the same snapshots again, was %d", got, rev)
	}
	after := listAll(t, s, history.ListOptions{})
	if !reflect.DeepEqual(before, after) {
		t.Errorf("records changed by writing the same snapshots again")
	}
	for _, r := range recs {
		if got := mustGet(t, s, keyOf(r)); len(got.Attempts) != 3 {
			t.Errorf("%s has %d attempts, want 3", r.Name, len(got.Attempts))
		}
	}
	if again := mustStats(t, s, "crm", t0.Add(time.Hour)); !reflect.DeepEqual(stats, again) {
		t.Errorf("stats changed by writing the same snapshots again:\nbefore %+v\nafter  %+v", stats.Windows[0], again.Windows[0])
	}
	if w := stats.Windows[0]; w.Failed != 10 || w.Attempts["5xx"] != 30 {
		t.Errorf("stats count %d failed deliveries and %d 5xx attempts, want 10 and 30", w.Failed, w.Attempts["5xx"])
	}
}

func testAttemptsBeyondStatus(t *testing.T, s history.Store) {
	all := failedAttempts(1, 25, t0)
	// Status keeps the last 20: three snapshots as the delivery goes on.
	for _, upTo := range []int32{8, 21, 25} {
		phase := retrying
		if upTo == 25 {
			phase = failed
		}
		mustWrite(t, s, record("team-a", "crm", "evt-1", "uid-1", phase, all[:upTo]...))
	}
	got := mustGet(t, s, keyOf(record("team-a", "crm", "evt-1", "uid-1", failed)))
	if len(got.Attempts) != 25 {
		t.Fatalf("%d attempts stored, want 25: %v", len(got.Attempts), attemptNumbers(got))
	}
	for i, a := range got.Attempts {
		if a.Number != int32(i+1) {
			t.Fatalf("attempt %d is number %d: attempts out of order: %v", i, a.Number, attemptNumbers(got))
		}
	}
	if got.AttemptCount != 25 || got.Phase != failed {
		t.Fatalf("attempt count %d, phase %s; want 25, Failed", got.AttemptCount, got.Phase)
	}
	st := mustStats(t, s, "crm", t0.Add(30*time.Minute))
	if n := st.Windows[0].Attempts["5xx"]; n != 25 {
		t.Fatalf("stats count %d attempts, want 25 (each once)", n)
	}
}

func testRecreatedUID(t *testing.T, s history.Store) {
	first := record("team-a", "crm", "evt-1", "uid-old", failed, failedAttempts(1, 3, t0)...)
	mustWrite(t, s, first)
	rev1 := mustGet(t, s, keyOf(first))

	// A manual retry after the delivery left etcd: a new delivery, same name, numbers from 1.
	retried := record("team-a", "crm", "evt-1", "uid-new", succeeded,
		attempt(1, t0.Add(time.Hour), "Success", 200, 50*time.Millisecond))
	retried.Attempts[0].Trigger = webhooksv1alpha1.TriggerManual
	mustWrite(t, s, retried)

	got := mustGet(t, s, keyOf(first))
	if len(got.Attempts) != 4 {
		t.Fatalf("%d attempts, want the old 3 and the new 1: %v", len(got.Attempts), attemptNumbers(got))
	}
	if last := got.Attempts[3]; last.Result != "Success" || last.Trigger != webhooksv1alpha1.TriggerManual {
		t.Fatalf("last attempt %+v, want the manual success", last)
	}
	if got.UID != "uid-new" || got.Phase != succeeded {
		t.Fatalf("UID %s phase %s, want the new delivery's uid-new Succeeded", got.UID, got.Phase)
	}
	if got.Seq != rev1.Seq || got.Revision <= rev1.Revision {
		t.Fatalf("seq %d→%d, revision %d→%d: seq stays, revision grows", rev1.Seq, got.Seq, rev1.Revision, got.Revision)
	}
}

func testStaleSnapshot(t *testing.T, s history.Store) {
	newer := record("team-a", "crm", "evt-1", "uid-1", failed, failedAttempts(1, 5, t0)...)
	older := record("team-a", "crm", "evt-1", "uid-1", retrying, failedAttempts(1, 2, t0)...)
	mustWrite(t, s, newer)
	rev := mustRevision(t, s)
	mustWrite(t, s, older)
	got := mustGet(t, s, keyOf(newer))
	if got.Phase != failed || got.AttemptCount != 5 || len(got.Attempts) != 5 {
		t.Fatalf("after an older snapshot: phase %s, %d attempts (%d stored); want Failed, 5, 5", got.Phase, got.AttemptCount, len(got.Attempts))
	}
	if now := mustRevision(t, s); now != rev {
		t.Fatalf("an older snapshot moved the revision from %d to %d", rev, now)
	}
}

func testWriteValidation(t *testing.T, s history.Store) {
	good := record("team-a", "crm", "evt-1", "uid-1", succeeded)
	for name, mutate := range map[string]func(*history.Record){
		"no name":     func(r *history.Record) { r.Name = "" },
		"no UID":      func(r *history.Record) { r.UID = "" },
		"no endpoint": func(r *history.Record) { r.Endpoint = "" },
		"phase":       func(r *history.Record) { r.Phase = "Done" },
		"attempt 0":   func(r *history.Record) { r.Attempts = failedAttempts(0, 0, t0) },
	} {
		r := good
		mutate(&r)
		err := s.Write(ctxT(t), []history.Record{good, r})
		if err == nil {
			t.Errorf("a record with %s was accepted", name)
			continue
		}
		t.Logf("%s: %v", name, err)
	}
	if _, err := s.Get(ctxT(t), keyOf(good)); !errors.Is(err, history.ErrNotFound) {
		t.Errorf("a refused batch wrote its good record: %v", err)
	}
}

func testListFilters(t *testing.T, s history.Store) {
	rng := rand.New(rand.NewPCG(1, 2))
	phases := []webhooksv1alpha1.DeliveryPhase{succeeded, failed, retrying, pending}
	typesOf := []string{"llm.completed", "llm.error", "document.uploaded"}
	var all []history.Record
	for i := range 300 {
		ns := []string{"team-a", "team-b"}[rng.IntN(2)]
		ep := []string{"crm", "erp", "n8n"}[rng.IntN(3)]
		r := record(ns, ep, fmt.Sprintf("evt-%d", rng.IntN(120)), types.UID(fmt.Sprint("uid-", i)), phases[rng.IntN(4)],
			failedAttempts(1, 1, t0)...)
		r.Event.Type = typesOf[rng.IntN(3)]
		r.CreationTime = t0.Add(time.Duration(rng.IntN(600)) * time.Minute)
		all = append(all, r)
	}
	// Write in several batches, so that seq follows write order across batches.
	for lo := 0; lo < len(all); lo += 70 {
		mustWrite(t, s, all[lo:min(lo+70, len(all))]...)
	}
	// The expected state: the last write of each key wins; newest first is by first write.
	type entry struct {
		r     history.Record
		first int
	}
	latest := map[history.Key]*entry{}
	for i, r := range all {
		if e, ok := latest[keyOf(r)]; ok {
			e.r = r
			continue
		}
		latest[keyOf(r)] = &entry{r, i}
	}
	var expect []*entry
	for _, e := range latest {
		expect = append(expect, e)
	}
	sort.Slice(expect, func(i, j int) bool { return expect[i].first > expect[j].first })

	since := t0.Add(300 * time.Minute)
	for _, f := range []struct {
		name string
		opts history.ListOptions
		keep func(history.Record) bool
	}{
		{"everything", history.ListOptions{}, func(history.Record) bool { return true }},
		{"namespace", history.ListOptions{Namespace: "team-b"}, func(r history.Record) bool { return r.Namespace == "team-b" }},
		{"endpoint", history.ListOptions{Namespace: "team-a", Endpoint: "erp"}, func(r history.Record) bool { return r.Namespace == "team-a" && r.Endpoint == "erp" }},
		{"phase", history.ListOptions{Phase: failed}, func(r history.Record) bool { return r.Phase == failed }},
		{"phase in namespace", history.ListOptions{Namespace: "team-a", Phase: retrying}, func(r history.Record) bool { return r.Namespace == "team-a" && r.Phase == retrying }},
		{"endpoint and phase", history.ListOptions{Namespace: "team-b", Endpoint: "crm", Phase: succeeded}, func(r history.Record) bool {
			return r.Namespace == "team-b" && r.Endpoint == "crm" && r.Phase == succeeded
		}},
		{"event id", history.ListOptions{EventID: "evt-7"}, func(r history.Record) bool { return r.Event.ID == "evt-7" }},
		{"event type", history.ListOptions{Namespace: "team-a", EventType: "llm.error"}, func(r history.Record) bool { return r.Namespace == "team-a" && r.Event.Type == "llm.error" }},
		{"since", history.ListOptions{Since: since}, func(r history.Record) bool { return !r.CreationTime.Before(since) }},
	} {
		var want []string
		for _, e := range expect {
			if f.keep(e.r) {
				want = append(want, e.r.Namespace+"/"+e.r.Name+"/"+string(e.r.UID))
			}
		}
		for _, limit := range []int{0, 7} {
			opts := f.opts
			opts.Limit = limit
			var got []string
			var lastSeq int64 = math.MaxInt64
			for _, r := range listAll(t, s, opts) {
				if r.Seq >= lastSeq {
					t.Fatalf("%s: seq %d after %d: not newest first", f.name, r.Seq, lastSeq)
				}
				lastSeq = r.Seq
				if len(r.Attempts) != 0 {
					t.Fatalf("%s: List returned attempts", f.name)
				}
				got = append(got, r.Namespace+"/"+r.Name+"/"+string(r.UID))
			}
			if len(want) == 0 {
				t.Fatalf("%s: the fixture selects nothing", f.name)
			}
			if !slices.Equal(got, want) {
				t.Errorf("%s (limit %d): got %d records, want %d\ngot  %v\nwant %v", f.name, limit, len(got), len(want), got, want)
			}
		}
	}
}

func testPagingUnderWrites(t *testing.T, s history.Store) {
	const n = 5000
	var recs []history.Record
	for i := range n {
		recs = append(recs, record("team-a", "crm", fmt.Sprintf("evt-%d", i), types.UID(fmt.Sprint("uid-", i)), succeeded,
			attempt(1, t0, "Success", 200, 20*time.Millisecond)))
	}
	for lo := 0; lo < n; lo += 500 {
		mustWrite(t, s, recs[lo:lo+500]...)
	}

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var writeErr error
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			// New records, and changes to existing ones (which keep their seq).
			batch := []history.Record{
				record("team-a", "crm", fmt.Sprintf("new-%d", i), types.UID(fmt.Sprint("uid-new-", i)), succeeded),
				record("team-a", "crm", fmt.Sprintf("evt-%d", (i*37)%n), types.UID(fmt.Sprint("uid-", (i*37)%n)), succeeded,
					attempt(1, t0, "Success", 200, 20*time.Millisecond), attempt(2, t0.Add(time.Minute), "Success", 200, 20*time.Millisecond)),
			}
			if err := s.Write(ctxT(t), batch); err != nil {
				writeErr = err
				return
			}
			time.Sleep(2 * time.Millisecond) // leave the readers some of the machine
		}
	})

	seen := map[string]int{}
	opts := history.ListOptions{Namespace: "team-a", Endpoint: "crm", Limit: 450}
	var tokens []string
	pages := 0
	for {
		page, err := s.List(ctxT(t), opts)
		if err != nil {
			t.Fatal(err)
		}
		pages++
		for _, r := range page.Records {
			seen[r.Name]++
		}
		if page.Continue == "" {
			break
		}
		tokens = append(tokens, page.Continue)
		opts.Continue = page.Continue
	}
	close(stop)
	wg.Wait()
	if writeErr != nil {
		t.Fatal(writeErr)
	}
	for _, r := range recs {
		if c := seen[r.Name]; c != 1 {
			t.Fatalf("%s seen %d times over %d pages, want once", r.Name, c, pages)
		}
	}
	for name, c := range seen {
		if c != 1 {
			t.Fatalf("%s seen %d times", name, c)
		}
	}
	// A token read again gives the same page of existing records.
	opts.Continue = tokens[len(tokens)/2]
	a, err := s.List(ctxT(t), opts)
	if err != nil {
		t.Fatal(err)
	}
	b, err := s.List(ctxT(t), opts)
	if err != nil {
		t.Fatal(err)
	}
	if len(a.Records) != 450 || a.Records[0].Name != b.Records[0].Name || a.Continue != b.Continue {
		t.Fatalf("the same continue token gave different pages")
	}
}

func testListBadInput(t *testing.T, s history.Store) {
	for _, opts := range []history.ListOptions{
		{Continue: "not-a-token"},
		{Continue: "LTE"}, // base64 of -1
		{Phase: "Done"},
		{Limit: -1},
	} {
		if _, err := s.List(ctxT(t), opts); err == nil {
			t.Errorf("List(%+v) was accepted", opts)
		} else {
			t.Logf("%+v: %v", opts, err)
		}
	}
	page, err := s.List(ctxT(t), history.ListOptions{Limit: history.MaxPageSize + 1})
	if err != nil || len(page.Records) != 0 || page.Continue != "" {
		t.Fatalf("a limit above the maximum should be capped: %v", err)
	}
}

func testChanges(t *testing.T, s history.Store) {
	a := record("team-a", "crm", "evt-a", "uid-a", retrying, failedAttempts(1, 1, t0)...)
	b := record("team-b", "crm", "evt-b", "uid-b", succeeded, attempt(1, t0, "Success", 200, time.Millisecond))
	mustWrite(t, s, a, b)
	start := mustRevision(t, s)
	if start == 0 {
		t.Fatal("revision 0 after a write")
	}

	page, err := s.List(ctxT(t), history.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if page.Revision != start {
		t.Fatalf("List's revision %d, store's %d", page.Revision, start)
	}
	a2 := record("team-a", "crm", "evt-a", "uid-a", failed, failedAttempts(1, 2, t0)...)
	c := record("team-a", "crm", "evt-c", "uid-c", succeeded)
	mustWrite(t, s, a2)
	mustWrite(t, s, c)

	got, err := s.Changes(ctxT(t), "", start, 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Name != a.Name || got[1].Name != c.Name || got[0].Phase != failed {
		t.Fatalf("changes after %d: %+v; want a (now Failed), then c", start, got)
	}
	if got[0].Revision <= start || got[1].Revision <= got[0].Revision {
		t.Fatalf("revisions %d, %d after %d: not increasing", got[0].Revision, got[1].Revision, start)
	}
	if mustRevision(t, s) != got[1].Revision {
		t.Fatalf("the store's revision is not its last record's")
	}
	one, err := s.Changes(ctxT(t), "", start, 1)
	if err != nil || len(one) != 1 || one[0].Name != a.Name {
		t.Fatalf("limit 1: %v, %v", one, err)
	}
	other, err := s.Changes(ctxT(t), "team-b", 0, 100)
	if err != nil || len(other) != 1 || other[0].Name != b.Name {
		t.Fatalf("team-b's changes from 0: %v, %v", other, err)
	}
	none, err := s.Changes(ctxT(t), "", mustRevision(t, s), 100)
	if err != nil || len(none) != 0 {
		t.Fatalf("changes after the current revision: %v, %v", none, err)
	}
}

func testArchived(t *testing.T, s history.Store) {
	done := record("team-a", "crm", "evt-1", "uid-1", succeeded, failedAttempts(1, 2, t0)...)
	done.ResourceVersion = "1007"
	live := record("team-a", "crm", "evt-2", "uid-2", retrying, failedAttempts(1, 2, t0)...)
	live.ResourceVersion = "1008"
	mustWrite(t, s, done, live)
	got, err := s.Archived(ctxT(t), []history.ArchiveCheck{
		{Key: keyOf(done), UID: "uid-1", ResourceVersion: "1007"},
		{Key: keyOf(done), UID: "uid-other", ResourceVersion: "1007"},
		{Key: keyOf(live), UID: "uid-2", ResourceVersion: "1008"},
		{Key: history.Key{Namespace: "team-a", Name: "missing"}, UID: "uid-3"},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := map[types.UID]bool{"uid-1": true, "uid-other": false, "uid-2": false, "uid-3": false}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("archived %v, want %v", got, want)
	}
	// A delivery changed since the store took it (another resourceVersion) is not archived.
	changed, err := s.Archived(ctxT(t), []history.ArchiveCheck{{Key: keyOf(done), UID: "uid-1", ResourceVersion: "1011"}})
	if err != nil || changed["uid-1"] {
		t.Fatalf("archived at a resourceVersion the store does not hold: %v, %v", changed, err)
	}
	// A snapshot with only a new resourceVersion is written: the store holds that version now.
	done.ResourceVersion = "1011"
	mustWrite(t, s, done)
	now, err := s.Archived(ctxT(t), []history.ArchiveCheck{{Key: keyOf(done), UID: "uid-1", ResourceVersion: "1011"}})
	if err != nil || !now["uid-1"] {
		t.Fatalf("not archived at the resourceVersion just written: %v, %v", now, err)
	}
	got2, err := s.Get(ctxT(t), keyOf(done))
	if err != nil || got2.ResourceVersion != "1011" {
		t.Fatalf("Get: resourceVersion %q, %v", got2.ResourceVersion, err)
	}
}

func testMarkRemoved(t *testing.T, s history.Store) {
	r := record("team-a", "crm", "evt-1", "uid-1", succeeded, failedAttempts(1, 1, t0)...)
	mustWrite(t, s, r)
	rev := mustRevision(t, s)
	at := t0.Add(10 * time.Minute)
	missing := history.Key{Namespace: "team-a", Name: "missing"}
	if err := s.MarkRemoved(ctxT(t), []history.Key{keyOf(r), missing}, at); err != nil {
		t.Fatal(err)
	}
	got := mustGet(t, s, keyOf(r))
	if got.RemovedTime == nil || !got.RemovedTime.Equal(at) || got.Revision != rev+1 {
		t.Fatalf("removed %v revision %d; want %v and %d", got.RemovedTime, got.Revision, at, rev+1)
	}
	// Again, later: the first time stays and nothing changes.
	if err := s.MarkRemoved(ctxT(t), []history.Key{keyOf(r)}, at.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if again := mustGet(t, s, keyOf(r)); !again.RemovedTime.Equal(at) || again.Revision != got.Revision {
		t.Fatalf("a second MarkRemoved changed the record: %v, revision %d", again.RemovedTime, again.Revision)
	}
	// A late write of the same delivery (its snapshot has no removed time) keeps it removed.
	r.Message = "late"
	mustWrite(t, s, r)
	if late := mustGet(t, s, keyOf(r)); late.RemovedTime == nil || late.Message != "late" {
		t.Fatalf("a late write of the removed delivery: removed %v, message %q", late.RemovedTime, late.Message)
	}
	// The delivery re-created with a new UID is back in etcd.
	mustWrite(t, s, record("team-a", "crm", "evt-1", "uid-2", pending))
	if back := mustGet(t, s, keyOf(r)); back.RemovedTime != nil {
		t.Fatalf("a re-created delivery is still marked removed at %v", back.RemovedTime)
	}
}

func testPrune(t *testing.T, s history.Store) {
	old := t0.Add(-48 * time.Hour)
	var removedOld, keep []history.Record
	for i := range 23 {
		r := record("team-a", "crm", fmt.Sprintf("old-%d", i), types.UID(fmt.Sprint("uid-old-", i)), []webhooksv1alpha1.DeliveryPhase{succeeded, failed}[i%2],
			failedAttempts(1, 3, old)...)
		removedOld = append(removedOld, r)
	}
	inEtcd := record("team-a", "crm", "old-in-etcd", "uid-e", succeeded, failedAttempts(1, 2, old)...)
	recent := record("team-a", "crm", "recent", "uid-r", succeeded, failedAttempts(1, 2, t0)...)
	unfinished := record("team-a", "crm", "unfinished", "uid-u", retrying, failedAttempts(1, 2, old)...)
	keep = append(keep, inEtcd, recent, unfinished)
	mustWrite(t, s, append(slices.Clone(removedOld), keep...)...)
	var removedKeys []history.Key
	for _, r := range append(slices.Clone(removedOld), recent, unfinished) {
		removedKeys = append(removedKeys, keyOf(r))
	}
	if err := s.MarkRemoved(ctxT(t), removedKeys, t0); err != nil {
		t.Fatal(err)
	}

	n, err := s.Prune(ctxT(t), t0.Add(-24*time.Hour), 5)
	if err != nil {
		t.Fatal(err)
	}
	if n != len(removedOld) {
		t.Fatalf("pruned %d records, want %d", n, len(removedOld))
	}
	for _, r := range removedOld {
		if _, err := s.Get(ctxT(t), keyOf(r)); !errors.Is(err, history.ErrNotFound) {
			t.Fatalf("%s survived the prune: %v", r.Name, err)
		}
	}
	for _, r := range keep {
		if got := mustGet(t, s, keyOf(r)); len(got.Attempts) != len(r.Attempts) {
			t.Fatalf("%s kept %d attempts of %d", r.Name, len(got.Attempts), len(r.Attempts))
		}
	}
	// The attempts of the pruned records went too: the same names written again start empty.
	again := removedOld[0]
	again.Attempts = nil
	mustWrite(t, s, again)
	if got := mustGet(t, s, keyOf(again)); len(got.Attempts) != 0 {
		t.Fatalf("%s has %d attempts left from before the prune", again.Name, len(got.Attempts))
	}
	if n, err := s.Prune(ctxT(t), t0.Add(-24*time.Hour), 5); err != nil || n != 0 {
		t.Fatalf("a second prune deleted %d (%v), want 0", n, err)
	}
	if _, err := s.Prune(ctxT(t), t0, 0); err == nil {
		t.Fatal("a prune batch of 0 was accepted")
	}
}

func testPruneRollups(t *testing.T, s history.Store) {
	now := t0.Add(10 * 24 * time.Hour)
	oldR := record("team-a", "crm", "evt-old", "uid-1", succeeded, attempt(1, now.Add(-3*24*time.Hour), "Success", 200, time.Millisecond))
	newR := record("team-a", "crm", "evt-new", "uid-2", succeeded, attempt(1, now.Add(-time.Hour), "Success", 200, time.Millisecond))
	mustWrite(t, s, oldR, newR)
	if w := mustStats(t, s, "crm", now).Windows[2]; w.Succeeded != 2 || w.Attempts["2xx"] != 2 {
		t.Fatalf("the week counts %d deliveries and %d attempts, want 2 and 2", w.Succeeded, w.Attempts["2xx"])
	}
	if _, err := s.Prune(ctxT(t), now.Add(-2*24*time.Hour), 1); err != nil {
		t.Fatal(err)
	}
	if w := mustStats(t, s, "crm", now).Windows[2]; w.Succeeded != 1 || w.Attempts["2xx"] != 1 {
		t.Fatalf("after the prune the week counts %d deliveries and %d attempts, want 1 and 1", w.Succeeded, w.Attempts["2xx"])
	}
}

func backlogItem(ns, endpoint, eventID string) history.BacklogItem {
	return history.BacklogItem{
		Namespace: ns, Endpoint: endpoint, Name: webhooksv1alpha1.DeliveryName(endpoint, eventID),
		Event: event(eventID, "llm.completed", 32), EnqueuedAt: t0,
	}
}

func testKnown(t *testing.T, s history.Store) {
	r := record("team-a", "crm", "evt-1", "uid-1", succeeded)
	mustWrite(t, s, r)
	q := backlogItem("team-a", "crm", "evt-2")
	if _, err := s.Enqueue(ctxT(t), []history.BacklogItem{q, backlogItem("team-b", "crm", "evt-3")}); err != nil {
		t.Fatal(err)
	}
	other := webhooksv1alpha1.DeliveryName("crm", "evt-3") // in team-b only
	got, err := s.Known(ctxT(t), "team-a", []string{r.Name, q.Name, other, "nothing"})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{r.Name: true, q.Name: true}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("known %v, want %v", got, want)
	}
	// Many names at once (more than one IN list).
	names := []string{r.Name}
	for i := range 1200 {
		names = append(names, fmt.Sprint("n-", i))
	}
	names = append(names, q.Name)
	if got, err := s.Known(ctxT(t), "team-a", names); err != nil || len(got) != 2 {
		t.Fatalf("known among 1,202 names: %v, %v", got, err)
	}
}

func testEnqueue(t *testing.T, s history.Store) {
	r := record("team-a", "crm", "evt-archived", "uid-1", succeeded)
	mustWrite(t, s, r)
	var items []history.BacklogItem
	for i := range 5 {
		items = append(items, backlogItem("team-a", "crm", fmt.Sprint("evt-", i)))
	}
	items = append(items, backlogItem("team-a", "crm", "evt-archived"), backlogItem("team-a", "crm", "evt-1"))
	added, err := s.Enqueue(ctxT(t), items)
	if err != nil {
		t.Fatal(err)
	}
	if want := []bool{true, true, true, true, true, false, false}; !slices.Equal(added, want) {
		t.Fatalf("added %v, want %v (a record's name and a repeat are not added)", added, want)
	}
	again, err := s.Enqueue(ctxT(t), items[:2])
	if err != nil || !slices.Equal(again, []bool{false, false}) {
		t.Fatalf("enqueue of names already in the backlog: %v, %v", again, err)
	}
	got, err := s.NextBacklog(ctxT(t), history.EndpointKey{Namespace: "team-a", Name: "crm"}, 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 5 {
		t.Fatalf("%d items in the backlog, want 5", len(got))
	}
	for i, it := range got {
		if it.Name != items[i].Name || it.Event.ID != items[i].Event.ID || !it.EnqueuedAt.Equal(t0) {
			t.Fatalf("item %d is %s (%s), want %s: not in publish order", i, it.Name, it.Event.ID, items[i].Name)
		}
		if i > 0 && it.ID <= got[i-1].ID {
			t.Fatalf("ids %d then %d: not increasing", got[i-1].ID, it.ID)
		}
	}
	if _, err := s.Enqueue(ctxT(t), []history.BacklogItem{{Namespace: "team-a", Name: "x"}}); err == nil {
		t.Fatal("an item without an endpoint was accepted")
	}
}

func testEnqueueConcurrent(t *testing.T, s history.Store) {
	const writers, perWriter = 4, 60
	ep := history.EndpointKey{Namespace: "team-a", Name: "crm"}
	var wg sync.WaitGroup
	addedBy := make([][]bool, writers)
	errs := make([]error, writers)
	for w := range writers {
		wg.Go(func() {
			// Every writer publishes the same events, in the same order, in small batches,
			// as replicas that each got the event would.
			for lo := 0; lo < perWriter; lo += 6 {
				var batch []history.BacklogItem
				for i := lo; i < lo+6; i++ {
					batch = append(batch, backlogItem("team-a", "crm", fmt.Sprint("evt-", i)))
				}
				added, err := s.Enqueue(ctxT(t), batch)
				if err != nil {
					errs[w] = err
					return
				}
				addedBy[w] = append(addedBy[w], added...)
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	for i := range perWriter {
		n := 0
		for w := range writers {
			if addedBy[w][i] {
				n++
			}
		}
		if n != 1 {
			t.Fatalf("event %d added by %d writers, want exactly 1", i, n)
		}
	}
	got, err := s.NextBacklog(ctxT(t), ep, 1000)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != perWriter {
		t.Fatalf("%d items, want %d", len(got), perWriter)
	}
	for i, it := range got {
		if want := fmt.Sprint("evt-", i); it.Event.ID != want {
			t.Fatalf("item %d is %s, want %s: publish order lost", i, it.Event.ID, want)
		}
	}
}

func testBacklogDrain(t *testing.T, s history.Store) {
	crm := history.EndpointKey{Namespace: "team-a", Name: "crm"}
	erp := history.EndpointKey{Namespace: "team-a", Name: "erp"}
	crmB := history.EndpointKey{Namespace: "team-b", Name: "crm"}
	var items []history.BacklogItem
	for i := range 12 {
		items = append(items, backlogItem("team-a", "crm", fmt.Sprint("evt-", i)))
		if i < 4 {
			items = append(items, backlogItem("team-a", "erp", fmt.Sprint("evt-", i)))
		}
	}
	items = append(items, backlogItem("team-b", "crm", "evt-0"))
	if _, err := s.Enqueue(ctxT(t), items); err != nil {
		t.Fatal(err)
	}
	counts, err := s.BacklogCounts(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if want := map[history.EndpointKey]int64{crm: 12, erp: 4, crmB: 1}; !reflect.DeepEqual(counts, want) {
		t.Fatalf("counts %v, want %v", counts, want)
	}
	var drained []string
	for {
		next, err := s.NextBacklog(ctxT(t), crm, 5)
		if err != nil {
			t.Fatal(err)
		}
		if len(next) == 0 {
			break
		}
		if len(next) > 5 {
			t.Fatalf("NextBacklog returned %d items for a limit of 5", len(next))
		}
		var ids []int64
		for _, it := range next {
			if it.Endpoint != "crm" || it.Namespace != "team-a" {
				t.Fatalf("item of %s/%s in crm's backlog", it.Namespace, it.Endpoint)
			}
			drained = append(drained, it.Event.ID)
			ids = append(ids, it.ID)
		}
		if err := s.DeleteBacklog(ctxT(t), ids); err != nil {
			t.Fatal(err)
		}
	}
	for i, id := range drained {
		if id != fmt.Sprint("evt-", i) {
			t.Fatalf("drained %v: not in publish order", drained)
		}
	}
	if len(drained) != 12 {
		t.Fatalf("drained %d items, want 12", len(drained))
	}
	counts, err = s.BacklogCounts(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if want := map[history.EndpointKey]int64{erp: 4, crmB: 1}; !reflect.DeepEqual(counts, want) {
		t.Fatalf("counts after draining crm: %v, want %v", counts, want)
	}
	if st := mustStats(t, s, "erp", t0); st.Backlog != 4 {
		t.Fatalf("stats backlog %d, want 4", st.Backlog)
	}
	// A deleted item's name is free again.
	added, err := s.Enqueue(ctxT(t), items[:1])
	if err != nil || !added[0] {
		t.Fatalf("re-enqueue after delete: %v, %v", added, err)
	}
}

func testStats(t *testing.T, s history.Store) {
	now := t0.Add(10 * 24 * time.Hour).Add(30 * time.Second)
	rng := rand.New(rand.NewPCG(3, 4))
	// Results and the class each maps to.
	kinds := []struct {
		result string
		code   int32
		class  string
	}{
		{"Success", 200, "2xx"}, {"Success", 204, "2xx"}, {"HTTPError", 302, "3xx"}, {"HTTPError", 404, "4xx"},
		{"HTTPError", 503, "5xx"}, {"Timeout", 0, "timeout"}, {"NetworkError", 0, "network"},
		{"Blocked", 0, "blocked"}, {"InvalidRequest", 0, "invalid"}, {"HTTPError", 101, "other"},
	}
	type seen struct {
		classes   map[string]int64
		durations []time.Duration
		succeeded int64
		failed    int64
	}
	windows := map[time.Duration]*seen{}
	for _, w := range history.StatsWindows {
		windows[w] = &seen{classes: map[string]int64{}}
	}
	hourPoints := make([]int64, 12)
	var recs []history.Record
	for i := range 400 {
		// Attempts spread over 8 days before now, so each window sees a part.
		age := time.Duration(rng.Int64N(int64(8 * 24 * time.Hour)))
		if i%4 == 0 {
			age = time.Duration(rng.Int64N(int64(time.Hour)))
		}
		at := now.Add(-age)
		nAtt := 1 + rng.IntN(3)
		var atts []webhooksv1alpha1.Attempt
		for n := range nAtt {
			k := kinds[rng.IntN(len(kinds))]
			dur := time.Duration(math.Exp(rng.Float64()*math.Log(90000))) * time.Millisecond
			a := attempt(int32(n+1), at.Add(-time.Duration(nAtt-n)*time.Second), k.result, k.code, dur)
			atts = append(atts, a)
			for w, sn := range windows {
				if windowHolds(now, w, a.Time.Time) {
					sn.classes[k.class]++
					sn.durations = append(sn.durations, time.Duration(a.DurationMilliseconds)*time.Millisecond)
				}
			}
			if windowHolds(now, time.Hour, a.Time.Time) {
				start := now.Truncate(time.Minute).Add(time.Minute - time.Hour)
				hourPoints[int(a.Time.Sub(start)/(5*time.Minute))]++
			}
		}
		phase := []webhooksv1alpha1.DeliveryPhase{succeeded, failed, retrying}[rng.IntN(3)]
		r := record("team-a", "crm", fmt.Sprint("evt-", i), types.UID(fmt.Sprint("uid-", i)), phase, atts...)
		if phase.Finished() {
			for w, sn := range windows {
				if windowHolds(now, w, *r.CompletionTime) {
					if phase == succeeded {
						sn.succeeded++
					} else {
						sn.failed++
					}
				}
			}
		}
		recs = append(recs, r)
	}
	// Another endpoint's and namespace's records do not count.
	recs = append(recs,
		record("team-a", "erp", "evt-x", "uid-x", succeeded, attempt(1, now.Add(-time.Minute), "Success", 200, time.Millisecond)),
		record("team-b", "crm", "evt-y", "uid-y", failed, attempt(1, now.Add(-time.Minute), "Timeout", 0, time.Second)))
	mustWrite(t, s, recs...)

	st := mustStats(t, s, "crm", now)
	if len(st.Windows) != len(history.StatsWindows) {
		t.Fatalf("%d windows", len(st.Windows))
	}
	for i, w := range st.Windows {
		want := windows[history.StatsWindows[i]]
		if w.Window != history.StatsWindows[i] || !w.End.After(now) || w.End.Sub(w.Start) != w.Window {
			t.Fatalf("window %d covers %s..%s, want %s ending at now", i, w.Start, w.End, history.StatsWindows[i])
		}
		for _, c := range history.Classes {
			if w.Attempts[c] != want.classes[c] {
				t.Errorf("%s: %d %s attempts, want %d", w.Window, w.Attempts[c], c, want.classes[c])
			}
		}
		if w.Succeeded != want.succeeded || w.Failed != want.failed {
			t.Errorf("%s: %d succeeded and %d failed, want %d and %d", w.Window, w.Succeeded, w.Failed, want.succeeded, want.failed)
		}
		if rate := float64(want.succeeded) / float64(want.succeeded+want.failed); math.Abs(w.SuccessRate-rate) > 1e-9 {
			t.Errorf("%s: success rate %f, want %f", w.Window, w.SuccessRate, rate)
		}
		if len(w.Series) != []int{12, 24, 28}[i] {
			t.Errorf("%s: %d points", w.Window, len(w.Series))
		}
		var sum, failedSum int64
		for _, p := range w.Series {
			sum += p.Attempts
			failedSum += p.FailedAttempts
		}
		if sum != int64(len(want.durations)) || failedSum != sum-want.classes["2xx"] {
			t.Errorf("%s: the points hold %d attempts (%d failed), the window %d (%d failed)", w.Window, sum, failedSum, len(want.durations), int64(len(want.durations))-want.classes["2xx"])
		}
		sorted := slices.Clone(want.durations)
		slices.Sort(sorted)
		for _, p := range []struct {
			q   float64
			got time.Duration
		}{{0.50, w.LatencyP50}, {0.95, w.LatencyP95}, {0.99, w.LatencyP99}} {
			truth := sorted[int(math.Ceil(p.q*float64(len(sorted))))-1]
			lower, upper := bucketAround(truth)
			if p.got < lower || p.got > upper {
				t.Errorf("%s: p%v %s, true %s: outside its bucket %s..%s", w.Window, p.q*100, p.got, truth, lower, upper)
			}
		}
	}
	for i, p := range st.Windows[0].Series {
		if p.Attempts != hourPoints[i] {
			t.Errorf("hour point %d (%s) holds %d attempts, want %d", i, p.Start, p.Attempts, hourPoints[i])
		}
	}
	retryingCount := int64(0)
	for _, r := range recs {
		if r.Namespace == "team-a" && r.Endpoint == "crm" && r.Phase == retrying {
			retryingCount++
		}
	}
	if st.Unfinished != retryingCount {
		t.Errorf("unfinished %d, want %d", st.Unfinished, retryingCount)
	}
	empty := mustStats(t, s, "nothing", now)
	if w := empty.Windows[0]; w.SuccessRate != -1 || w.LatencyP50 != 0 || w.Attempts["2xx"] != 0 {
		t.Errorf("an endpoint without records: %+v", w)
	}
}

// windowHolds reports whether t is in the window of Stats at now: windows end at the end of
// now's minute.
func windowHolds(now time.Time, w time.Duration, t time.Time) bool {
	end := now.Truncate(time.Minute).Add(time.Minute)
	return !t.Before(end.Add(-w)) && t.Before(end)
}

// bucketAround returns the bounds of the histogram bucket that holds d.
func bucketAround(d time.Duration) (lower, upper time.Duration) {
	for _, b := range history.DurationBuckets {
		if d <= b {
			return lower, b
		}
		lower = b
	}
	return lower, lower
}

func testManualRetryCounted(t *testing.T, s history.Store) {
	now := t0.Add(2 * time.Hour)
	r := record("team-a", "crm", "evt-1", "uid-1", failed, failedAttempts(1, 3, now.Add(-40*time.Minute))...)
	mustWrite(t, s, r)
	mustWrite(t, s, r) // archived twice
	// The retry annotation on the finished delivery: one manual attempt that succeeds.
	retried := r
	retried.Attempts = append(slices.Clone(r.Attempts), attempt(4, now.Add(-5*time.Minute), "Success", 200, 30*time.Millisecond))
	retried.Attempts[3].Trigger = webhooksv1alpha1.TriggerManual
	retried.Phase = succeeded
	retried.AttemptCount = 4
	ct := now.Add(-5 * time.Minute)
	retried.CompletionTime = &ct
	mustWrite(t, s, retried)
	mustWrite(t, s, retried)

	w := mustStats(t, s, "crm", now).Windows[0]
	if w.Failed != 1 || w.Succeeded != 1 {
		t.Fatalf("%d failed and %d succeeded, want 1 and 1", w.Failed, w.Succeeded)
	}
	if w.Attempts["5xx"] != 3 || w.Attempts["2xx"] != 1 {
		t.Fatalf("attempts %v, want 3 5xx and 1 2xx", w.Attempts)
	}
}

func testClosed(t *testing.T, s history.Store) {
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t)
	k := history.Key{Namespace: "a", Name: "b"}
	ep := history.EndpointKey{Namespace: "a", Name: "b"}
	calls := map[string]func() error{
		"Ping":          func() error { return s.Ping(ctx) },
		"Write":         func() error { return s.Write(ctx, []history.Record{record("a", "b", "c", "d", succeeded)}) },
		"Get":           func() error { _, err := s.Get(ctx, k); return err },
		"List":          func() error { _, err := s.List(ctx, history.ListOptions{}); return err },
		"Changes":       func() error { _, err := s.Changes(ctx, "", 0, 10); return err },
		"Revision":      func() error { _, err := s.Revision(ctx); return err },
		"Archived":      func() error { _, err := s.Archived(ctx, []history.ArchiveCheck{{Key: k}}); return err },
		"MarkRemoved":   func() error { return s.MarkRemoved(ctx, []history.Key{k}, t0) },
		"Known":         func() error { _, err := s.Known(ctx, "a", []string{"b"}); return err },
		"Stats":         func() error { _, err := s.Stats(ctx, ep, t0); return err },
		"Prune":         func() error { _, err := s.Prune(ctx, t0, 10); return err },
		"Enqueue":       func() error { _, err := s.Enqueue(ctx, []history.BacklogItem{backlogItem("a", "b", "c")}); return err },
		"NextBacklog":   func() error { _, err := s.NextBacklog(ctx, ep, 10); return err },
		"DeleteBacklog": func() error { return s.DeleteBacklog(ctx, []int64{1}) },
		"BacklogCounts": func() error { _, err := s.BacklogCounts(ctx); return err },
	}
	for name, call := range calls {
		if err := call(); err == nil {
			t.Errorf("%s on a closed store returned no error", name)
		} else if errors.Is(err, history.ErrNotFound) {
			t.Errorf("%s on a closed store: %v, not a failure", name, err)
		}
	}
}

func testConcurrentWriters(t *testing.T, s history.Store) {
	// Two archivers (a leader handover) write overlapping snapshots of the same 40 deliveries:
	// each delivery's attempts grow from 1 to 6, every snapshot written by both.
	const deliveries, attempts = 40, 6
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for w := range 2 {
		wg.Go(func() {
			for n := int32(1); n <= attempts; n++ {
				var batch []history.Record
				for i := range deliveries {
					// The writers go through the deliveries in opposite orders.
					if w == 1 {
						i = deliveries - 1 - i
					}
					phase := retrying
					if n == attempts {
						phase = failed
					}
					batch = append(batch, record("team-a", "crm", fmt.Sprint("evt-", i), types.UID(fmt.Sprint("uid-", i)), phase,
						failedAttempts(1, n, t0)...))
				}
				if err := s.Write(ctxT(t), batch); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	revisions := map[int64]string{}
	for _, r := range listAll(t, s, history.ListOptions{}) {
		got := mustGet(t, s, keyOf(r))
		if len(got.Attempts) != attempts || got.Phase != failed {
			t.Fatalf("%s: %d attempts, phase %s; want %d, Failed", r.Name, len(got.Attempts), got.Phase, attempts)
		}
		if other, dup := revisions[r.Revision]; dup {
			t.Fatalf("%s and %s share revision %d", r.Name, other, r.Revision)
		}
		revisions[r.Revision] = r.Name
	}
	if len(revisions) != deliveries {
		t.Fatalf("%d records, want %d", len(revisions), deliveries)
	}
	w := mustStats(t, s, "crm", t0.Add(30*time.Minute)).Windows[0]
	if w.Attempts["5xx"] != deliveries*attempts || w.Failed != deliveries {
		t.Fatalf("stats: %d attempts and %d failed, want %d and %d (each once)", w.Attempts["5xx"], w.Failed, deliveries*attempts, deliveries)
	}
}

func testEnqueueOppositeOrders(t *testing.T, s history.Store) {
	const writers, names, rounds = 4, 40, 3
	var wg sync.WaitGroup
	var mu sync.Mutex
	addedCount := map[string]int{}
	errs := make(chan error, writers)
	for w := range writers {
		wg.Go(func() {
			for r := range rounds {
				var batch []history.BacklogItem
				for i := range names {
					if w%2 == 1 {
						i = names - 1 - i
					}
					batch = append(batch, backlogItem("team-a", "crm", fmt.Sprintf("evt-%d-%d", r, i)))
				}
				added, err := s.Enqueue(ctxT(t), batch)
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				for i, ok := range added {
					if ok {
						addedCount[batch[i].Name]++
					}
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if len(addedCount) != names*rounds {
		t.Fatalf("%d names added, want %d", len(addedCount), names*rounds)
	}
	for name, n := range addedCount {
		if n != 1 {
			t.Fatalf("%s added %d times", name, n)
		}
	}
	counts, err := s.BacklogCounts(ctxT(t))
	if err != nil || counts[history.EndpointKey{Namespace: "team-a", Name: "crm"}] != names*rounds {
		t.Fatalf("backlog counts %v, %v", counts, err)
	}
}
