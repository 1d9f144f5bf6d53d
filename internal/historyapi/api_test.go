package historyapi_test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"

	historyv1alpha1 "github.com/docrouter/webhook-operator/api/history/v1alpha1"
	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
	"github.com/docrouter/webhook-operator/internal/history"
)

// TestHistoryAPI runs every scenario against each store engine, through the API server (the
// aggregator) with client-go, as kubectl and controllers reach it.
func TestHistoryAPI(t *testing.T) {
	for _, e := range engines {
		t.Run(e.name, func(t *testing.T) {
			a := startAPI(t, e.open(t))
			t.Run("GetShowsTheWholeRecord", a.testGet)
			t.Run("ListSelectors", a.testListSelectors)
			t.Run("PagingWhileRecordsArrive", a.testPaging)
			t.Run("Watch", a.testWatch)
			t.Run("Informer", a.testInformer)
			t.Run("Authorization", a.testAuthorization)
			t.Run("Table", a.testTable)
			t.Run("Kubectl", a.testKubectl)
			t.Run("Stats", a.testStats)
			t.Run("ReplicasShareTheCertificate", a.testReplicasShareTheCertificate)
		})
	}
}

func listRecords(ctx context.Context, rc *rest.RESTClient, ns string, opts metav1.ListOptions) (*historyv1alpha1.WebhookDeliveryRecordList, error) {
	var list historyv1alpha1.WebhookDeliveryRecordList
	req := rc.Get().Resource("webhookdeliveryrecords").VersionedParams(&opts, metav1.ParameterCodec)
	if ns != "" {
		req = req.Namespace(ns)
	}
	err := req.Do(ctx).Into(&list)
	return &list, err
}

func names(list *historyv1alpha1.WebhookDeliveryRecordList) []string {
	out := make([]string, len(list.Items))
	for i, r := range list.Items {
		out[i] = r.Name
	}
	return out
}

// A get returns the whole record: the event as sent, its labels, where the delivery is, and
// every attempt (far more than the 20 a WebhookDelivery's status keeps), also after the
// delivery has left etcd.
func (a *api) testGet(t *testing.T) {
	ctx := context.Background()
	ns := env.Namespace(t)
	codes := make([]int32, 30)
	for i := range codes {
		codes[i] = 500
	}
	rec := delivery{ns: ns, endpoint: "signed", eventID: "evt-get", phase: webhooksv1alpha1.PhaseFailed, codes: codes}.record()
	writeAll(t, a.store, []history.Record{rec})
	removedAt := time.Now().UTC().Truncate(time.Second)
	if err := a.store.MarkRemoved(ctx, []history.Key{{Namespace: ns, Name: rec.Name}}, removedAt); err != nil {
		t.Fatal(err)
	}

	rc := recordsClient(t, env.Config)
	var got historyv1alpha1.WebhookDeliveryRecord
	if err := rc.Get().Namespace(ns).Resource("webhookdeliveryrecords").Name(rec.Name).Do(ctx).Into(&got); err != nil {
		t.Fatalf("get: %v", err)
	}
	if got.Name != rec.Name || got.Namespace != ns || got.ResourceVersion == "" || got.UID != rec.UID {
		t.Errorf("metadata: got %s/%s rv %q uid %q", got.Namespace, got.Name, got.ResourceVersion, got.UID)
	}
	if got.Labels[webhooksv1alpha1.EndpointLabel] != "signed" || got.Labels[webhooksv1alpha1.EventTypeLabel] != "llm.completed" {
		t.Errorf("labels: %v", got.Labels)
	}
	ev := got.Spec.Event
	if got.Spec.EndpointRef.Name != "signed" || ev.ID != "evt-get" || ev.Type != "llm.completed" || ev.OrganizationID != "org-1" ||
		ev.Document.DocumentName != "invoice.pdf" || ev.Data == nil || string(ev.Data.Raw) != `{"total":42}` {
		t.Errorf("spec: %+v (data %s)", got.Spec, dataOf(ev.Data))
	}
	st := got.Status
	if st.Phase != "Failed" || st.Attempts != 30 || st.LastStatusCode != 500 || st.Reason != "RetriesExhausted" ||
		st.CompletionTime == nil || st.RemovedTime == nil || !st.RemovedTime.Time.Equal(removedAt) {
		t.Errorf("status: phase %s attempts %d code %d reason %s completion %v removed %v (want %v)",
			st.Phase, st.Attempts, st.LastStatusCode, st.Reason, st.CompletionTime, st.RemovedTime, removedAt)
	}
	if len(st.History) != 30 {
		t.Fatalf("status.history has %d attempts, want all 30", len(st.History))
	}
	for i, at := range st.History {
		if at.Number != int32(i+1) || at.StatusCode != 500 || at.Result != "HTTPError" || at.Error == "" || at.Trigger != "Scheduled" {
			t.Errorf("attempt %d: %+v", i+1, at)
		}
	}

	err := rc.Get().Namespace(ns).Resource("webhookdeliveryrecords").Name("no-such-delivery").Do(ctx).Error()
	if !apierrors.IsNotFound(err) || !strings.Contains(err.Error(), "no-such-delivery") {
		t.Errorf("get of a missing record: want 404 naming it, got %v", err)
	}
}

func dataOf(r interface{ MarshalJSON() ([]byte, error) }) string {
	if r == nil {
		return "<nil>"
	}
	b, _ := r.MarshalJSON()
	return string(b)
}

// Every selector kubectl users write works, newest first: the endpoint and event-type labels
// and the fields are answered by the store's indexes; other label requirements and != are
// checked record by record; contradictory selectors select nothing; an unknown field is a 400
// that says which fields exist.
func (a *api) testListSelectors(t *testing.T) {
	ctx := context.Background()
	ns, ns2 := env.Namespace(t), env.Namespace(t)
	base := time.Now().Add(-30 * time.Minute)
	ds := []delivery{
		{ns: ns, endpoint: "signed", eventID: ns + "-a", eventType: "llm.completed", phase: webhooksv1alpha1.PhaseSucceeded, codes: []int32{200}},
		{ns: ns, endpoint: "signed", eventID: ns + "-b", eventType: "llm.error", phase: webhooksv1alpha1.PhaseFailed, codes: []int32{500, 500}},
		{ns: ns, endpoint: "failing", eventID: ns + "-c", eventType: "llm.completed", phase: webhooksv1alpha1.PhaseFailed, codes: []int32{503}, labels: map[string]string{"team": "blue"}},
		{ns: ns, endpoint: "failing", eventID: ns + "-d", eventType: "document.uploaded", phase: webhooksv1alpha1.PhaseRetrying, codes: []int32{0}},
		{ns: ns, endpoint: "header-auth", eventID: ns + "-e", eventType: "llm.completed", phase: webhooksv1alpha1.PhaseSucceeded, codes: []int32{200}, labels: map[string]string{"team": "red"}},
	}
	var recs []history.Record
	for i, d := range ds {
		d.created = base.Add(time.Duration(i) * time.Minute)
		recs = append(recs, d.record())
	}
	// Written one by one: the last written is the newest.
	for _, r := range recs {
		writeAll(t, a.store, []history.Record{r})
	}
	other := delivery{ns: ns2, endpoint: "signed", eventID: ns + "-a", codes: []int32{200}}.record()
	writeAll(t, a.store, []history.Record{other})
	n := func(i ...int) []string {
		out := []string{}
		for _, j := range i {
			out = append(out, recs[j-1].Name)
		}
		return out
	}

	rc := recordsClient(t, env.Config)
	for _, c := range []struct {
		labels, fields string
		want           []string
	}{
		{"", "", n(5, 4, 3, 2, 1)},
		{"webhooks.docrouter.ai/endpoint=failing", "", n(4, 3)},
		{"webhooks.docrouter.ai/event-type=llm.completed", "", n(5, 3, 1)},
		{"webhooks.docrouter.ai/event-type in (llm.completed,llm.error)", "", n(5, 3, 2, 1)},
		{"webhooks.docrouter.ai/endpoint!=signed", "", n(5, 4, 3)},
		{"team", "", n(5, 3)},
		{"team=blue", "", n(3)},
		{"!team", "", n(4, 2, 1)},
		{"", "status.phase=Failed", n(3, 2)},
		{"", "status.phase!=Failed", n(5, 4, 1)},
		{"", "spec.endpointRef.name=signed", n(2, 1)},
		{"", "spec.event.id=" + ns + "-c", n(3)},
		{"", "spec.event.type=llm.error", n(2)},
		{"", "metadata.name=" + recs[3].Name, n(4)},
		{"", "metadata.namespace=" + ns, n(5, 4, 3, 2, 1)},
		{"webhooks.docrouter.ai/endpoint=failing", "status.phase=Failed", n(3)},
		{"webhooks.docrouter.ai/endpoint=failing", "spec.endpointRef.name=signed", n()},
		{"", "metadata.namespace=" + ns2, n()},
	} {
		list, err := listRecords(ctx, rc, ns, metav1.ListOptions{LabelSelector: c.labels, FieldSelector: c.fields})
		if err != nil {
			t.Errorf("list -l %q --field-selector %q: %v", c.labels, c.fields, err)
			continue
		}
		if got := names(list); !slices.Equal(got, c.want) {
			t.Errorf("list -l %q --field-selector %q: got %v, want %v", c.labels, c.fields, got, c.want)
		}
		if list.ResourceVersion == "" {
			t.Errorf("list -l %q --field-selector %q: no resourceVersion", c.labels, c.fields)
		}
	}

	// Across namespaces (kubectl get whdr -A): the same event id in both.
	all, err := listRecords(ctx, rc, "", metav1.ListOptions{FieldSelector: "spec.event.id=" + ns + "-a"})
	if err != nil {
		t.Fatal(err)
	}
	if got := names(all); len(got) != 2 || all.Items[0].Namespace != ns2 || all.Items[1].Namespace != ns {
		t.Errorf("list -A --field-selector spec.event.id: got %v in %v", got, []string{all.Items[0].Namespace})
	}

	_, err = listRecords(ctx, rc, ns, metav1.ListOptions{FieldSelector: "spec.url=https://example.com"})
	if !apierrors.IsBadRequest(err) || !strings.Contains(err.Error(), "spec.url") || !strings.Contains(err.Error(), "status.phase") {
		t.Errorf("an unknown field selector: want 400 naming it and the known ones, got %v", err)
	}
	_, err = listRecords(ctx, rc, ns, metav1.ListOptions{Limit: 2, Continue: "not-a-token"})
	if !apierrors.IsBadRequest(err) || !strings.Contains(err.Error(), "continue token") {
		t.Errorf("a bad continue token: want 400 saying so, got %v", err)
	}
}

// Paging with limit and continue over 5,000 records while new records arrive and old ones
// change: every record that existed at the first page is listed exactly once, newest first;
// the ones that arrive meanwhile are newer than the first page and are not; a watch from the
// first page's resourceVersion then sees every arrival and change. A list without a limit is
// served one bounded page with a continue token.
func (a *api) testPaging(t *testing.T) {
	ctx := context.Background()
	ns := env.Namespace(t)
	const total = 5000
	base := time.Now().Add(-5 * time.Hour)
	var recs []history.Record
	for i := range total {
		recs = append(recs, delivery{ns: ns, endpoint: "bulk", eventID: fmt.Sprintf("p-%05d", i), codes: []int32{200}, created: base.Add(time.Duration(i) * time.Second)}.record())
	}
	writeAll(t, a.store, recs)
	index := map[string]int{}
	for i, r := range recs {
		index[r.Name] = i
	}

	rc := recordsClient(t, env.Config)
	first, err := listRecords(ctx, rc, ns, metav1.ListOptions{Limit: 500})
	if err != nil {
		t.Fatal(err)
	}
	// Writers: new deliveries finish, and old ones change (a manual retry), while we page.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	added, changed := map[string]bool{}, map[string]bool{}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			r := delivery{ns: ns, endpoint: "bulk", eventID: fmt.Sprintf("new-%05d", i), codes: []int32{200}}.record()
			old := recs[(i*397)%total]
			old.Phase, old.AttemptCount = webhooksv1alpha1.PhaseFailed, old.AttemptCount+int32(i+1)
			if err := a.store.Write(ctx, []history.Record{r, old}); err != nil {
				t.Errorf("writing while paging: %v", err)
				return
			}
			mu.Lock()
			added[r.Name], changed[old.Name] = true, true
			mu.Unlock()
			time.Sleep(5 * time.Millisecond)
		}
	}()

	seen := map[string]int{}
	var order []string
	page := first
	for pages := 1; ; pages++ {
		for _, r := range page.Items {
			seen[r.Name]++
			order = append(order, r.Name)
		}
		if page.ResourceVersion != first.ResourceVersion {
			t.Errorf("page %d has resourceVersion %s, want the first page's %s", pages, page.ResourceVersion, first.ResourceVersion)
		}
		if page.Continue == "" {
			break
		}
		if pages > total/500+5 {
			t.Fatalf("more than %d pages", pages)
		}
		if page, err = listRecords(ctx, rc, ns, metav1.ListOptions{Limit: 500, Continue: page.Continue}); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
	if len(order) != total {
		t.Errorf("paging listed %d records, want the %d that existed at the first page", len(order), total)
	}
	for name, n := range seen {
		if n != 1 {
			t.Errorf("%s listed %d times", name, n)
		}
		if _, old := index[name]; !old {
			t.Errorf("%s arrived after the first page but was listed", name)
		}
	}
	for i := 1; i < len(order); i++ {
		if index[order[i]] >= index[order[i-1]] {
			t.Fatalf("not newest first at position %d: %s after %s", i, order[i], order[i-1])
		}
	}
	if len(added) == 0 {
		t.Fatal("no record arrived while paging: the test proves nothing")
	}

	// A watch from the first page sees every arrival (ADDED) and every change (MODIFIED).
	w, err := rc.Get().Namespace(ns).Resource("webhookdeliveryrecords").
		VersionedParams(&metav1.ListOptions{Watch: true, ResourceVersion: first.ResourceVersion}, metav1.ParameterCodec).Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	wantAdded, wantChanged := len(added), len(changed)
	deadline := time.After(60 * time.Second)
	for len(added) > 0 || len(changed) > 0 {
		select {
		case e, ok := <-w.ResultChan():
			if !ok {
				t.Fatalf("the watch ended; %d arrivals and %d changes not seen", len(added), len(changed))
			}
			r, isRecord := e.Object.(*historyv1alpha1.WebhookDeliveryRecord)
			if !isRecord {
				t.Fatalf("watch event %s of %T", e.Type, e.Object)
			}
			switch {
			case e.Type == watch.Added && added[r.Name]:
				delete(added, r.Name)
			case e.Type == watch.Modified:
				delete(changed, r.Name)
			case e.Type == watch.Added:
				t.Errorf("ADDED for %s, which existed before the watch's resourceVersion", r.Name)
			}
		case <-deadline:
			t.Fatalf("within 60s the watch missed %d of %d arrivals and %d of %d changes", len(added), wantAdded, len(changed), wantChanged)
		}
	}

	// No limit: one bounded page and a continue token, not the whole history.
	unbounded, err := listRecords(ctx, rc, ns, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(unbounded.Items) != history.MaxPageSize || unbounded.Continue == "" {
		t.Errorf("a list without a limit over %d records returned %d records, continue %q: want a page of %d and a continue token",
			total+wantAdded, len(unbounded.Items), unbounded.Continue, history.MaxPageSize)
	}
}

func nextEvent(t *testing.T, w watch.Interface) watch.Event {
	t.Helper()
	const within = 10 * time.Second
	select {
	case e, ok := <-w.ResultChan():
		if !ok {
			t.Fatal("the watch ended")
		}
		return e
	case <-time.After(within):
		t.Fatalf("no watch event within %s", within)
	}
	return watch.Event{}
}

func noEvent(t *testing.T, w watch.Interface, within time.Duration) {
	t.Helper()
	select {
	case e := <-w.ResultChan():
		t.Fatalf("unexpected watch event %s %v", e.Type, e.Object)
	case <-time.After(within):
	}
}

func recordOf(t *testing.T, e watch.Event) *historyv1alpha1.WebhookDeliveryRecord {
	t.Helper()
	r, ok := e.Object.(*historyv1alpha1.WebhookDeliveryRecord)
	if !ok {
		t.Fatalf("watch event %s carries %T", e.Type, e.Object)
	}
	return r
}

// A watch from a list's resourceVersion sees new records as ADDED and changed ones as
// MODIFIED, filtered by its selectors; a watch without a resourceVersion first lists what
// exists (ADDED), as the API server's own watches do.
func (a *api) testWatch(t *testing.T) {
	ctx := context.Background()
	ns := env.Namespace(t)
	rc := recordsClient(t, env.Config)
	r1 := delivery{ns: ns, endpoint: "signed", eventID: ns + "-1", phase: webhooksv1alpha1.PhaseRetrying, codes: []int32{500}}.record()
	writeAll(t, a.store, []history.Record{r1})
	list, err := listRecords(ctx, rc, ns, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	watchFrom := func(rv, fields string) watch.Interface {
		t.Helper()
		w, err := rc.Get().Namespace(ns).Resource("webhookdeliveryrecords").
			VersionedParams(&metav1.ListOptions{Watch: true, ResourceVersion: rv, FieldSelector: fields}, metav1.ParameterCodec).Watch(ctx)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(w.Stop)
		return w
	}

	w := watchFrom(list.ResourceVersion, "")
	failed := watchFrom(list.ResourceVersion, "status.phase=Failed")
	one := watchFrom(list.ResourceVersion, "metadata.name="+r1.Name) // kubectl get whdr NAME -w
	r2 := delivery{ns: ns, endpoint: "signed", eventID: ns + "-2", codes: []int32{200}}.record()
	writeAll(t, a.store, []history.Record{r2})
	r1.Phase, r1.AttemptCount, r1.NextAttemptTime = webhooksv1alpha1.PhaseFailed, 2, nil
	writeAll(t, a.store, []history.Record{r1})

	if e := nextEvent(t, w); e.Type != watch.Added || recordOf(t, e).Name != r2.Name {
		t.Errorf("first event: got %s %s, want ADDED %s", e.Type, recordOf(t, e).Name, r2.Name)
	}
	e := nextEvent(t, w)
	if got := recordOf(t, e); e.Type != watch.Modified || got.Name != r1.Name || got.Status.Phase != "Failed" || got.Status.Attempts != 2 {
		t.Errorf("second event: got %s %s %s/%d, want MODIFIED %s Failed/2", e.Type, got.Name, got.Status.Phase, got.Status.Attempts, r1.Name)
	}
	if e := nextEvent(t, failed); recordOf(t, e).Name != r1.Name {
		t.Errorf("the status.phase=Failed watch got %s %s, want %s only", e.Type, recordOf(t, e).Name, r1.Name)
	}
	if e := nextEvent(t, one); recordOf(t, e).Name != r1.Name {
		t.Errorf("the watch of %s got %s", r1.Name, recordOf(t, e).Name)
	}
	noEvent(t, failed, time.Second)
	noEvent(t, one, time.Second)

	// No resourceVersion: the existing records first, then what changes.
	w0 := watchFrom("", "")
	got := map[string]bool{}
	for range 2 {
		e := nextEvent(t, w0)
		if e.Type != watch.Added {
			t.Fatalf("initial event %s, want ADDED", e.Type)
		}
		got[recordOf(t, e).Name] = true
	}
	if !got[r1.Name] || !got[r2.Name] {
		t.Errorf("initial events: %v, want %s and %s", got, r1.Name, r2.Name)
	}
	r3 := delivery{ns: ns, endpoint: "signed", eventID: ns + "-3", codes: []int32{200}}.record()
	writeAll(t, a.store, []history.Record{r3})
	if e := nextEvent(t, w0); e.Type != watch.Added || recordOf(t, e).Name != r3.Name {
		t.Errorf("after the initial events: got %s %s, want ADDED %s", e.Type, recordOf(t, e).Name, r3.Name)
	}

	_, err = rc.Get().Namespace(ns).Resource("webhookdeliveryrecords").
		VersionedParams(&metav1.ListOptions{Watch: true, ResourceVersion: "yesterday"}, metav1.ParameterCodec).Watch(ctx)
	if !apierrors.IsBadRequest(err) {
		t.Errorf("a watch from resourceVersion \"yesterday\": want 400, got %v", err)
	}
}

// Table is kubectl's table (Accept: application/json;as=Table): the columns of kubectl get whd
// and COMPLETED, with the record's values.
func (a *api) testTable(t *testing.T) {
	ctx := context.Background()
	ns := env.Namespace(t)
	r := delivery{ns: ns, endpoint: "failing", eventID: ns + "-t", phase: webhooksv1alpha1.PhaseFailed, codes: []int32{500, 502, 503}}.record()
	writeAll(t, a.store, []history.Record{r})
	rc := recordsClient(t, env.Config)
	raw, err := rc.Get().Namespace(ns).Resource("webhookdeliveryrecords").
		SetHeader("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io").Do(ctx).Raw()
	if err != nil {
		t.Fatal(err)
	}
	var table metav1.Table
	if err := json.Unmarshal(raw, &table); err != nil {
		t.Fatal(err)
	}
	var cols, wide []string
	for _, c := range table.ColumnDefinitions {
		if c.Priority == 0 {
			cols = append(cols, c.Name)
		} else {
			wide = append(wide, c.Name)
		}
	}
	if want := []string{"Name", "Endpoint", "Event", "Phase", "Attempts", "Code", "Next Attempt", "Completed", "Age"}; !slices.Equal(cols, want) {
		t.Errorf("columns %v, want %v", cols, want)
	}
	if want := []string{"Event ID", "Last Error"}; !slices.Equal(wide, want) {
		t.Errorf("wide columns %v, want %v", wide, want)
	}
	if len(table.Rows) != 1 || table.ResourceVersion == "" {
		t.Fatalf("want one row and a resourceVersion, got %d rows, rv %q", len(table.Rows), table.ResourceVersion)
	}
	cells := map[string]any{}
	for i, c := range table.ColumnDefinitions {
		cells[c.Name] = table.Rows[0].Cells[i]
	}
	want := map[string]any{
		"Name": r.Name, "Endpoint": "failing", "Event": "llm.completed", "Phase": "Failed", "Attempts": float64(3),
		"Code": float64(503), "Next Attempt": "", "Completed": r.CompletionTime.UTC().Format(time.RFC3339),
		"Event ID": ns + "-t", "Last Error": "HTTP 503: failing on purpose",
	}
	for k, v := range want {
		if cells[k] != v {
			t.Errorf("cell %s = %v (%T), want %v", k, cells[k], cells[k], v)
		}
	}
	if age, _ := cells["Age"].(string); age == "" {
		t.Errorf("no age")
	}
}
