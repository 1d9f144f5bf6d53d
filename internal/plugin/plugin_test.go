package plugin_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	historyv1alpha1 "github.com/docrouter/webhook-operator/api/history/v1alpha1"
	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
	"github.com/docrouter/webhook-operator/internal/history"
	"github.com/docrouter/webhook-operator/internal/testenv"
)

// endpoints shows each endpoint's Ready condition, its 24 h success rate and p95 latency from
// the history's statistics, its backlog and its last failure.
func TestEndpoints(t *testing.T) {
	f := newFixture(t)
	f.endpoint(t, "signed", "/hooks")
	f.endpoint(t, "failing", "/fail/hooks")
	f.endpoint(t, "held", "/hooks", func(ep *webhooksv1alpha1.WebhookEndpoint) { ep.Spec.Paused = true })
	for i := range 3 {
		f.deliver(t, "signed", fmt.Sprintf("evt-ok-%d", i), "llm.completed")
	}
	f.deliver(t, "failing", "evt-bad-0", "llm.completed")

	// The statistics count a delivery once it finished; poll until the last one is counted.
	var r result
	eventually(t, 30*time.Second, "the statistics to count every delivery", func(context.Context) (bool, error) {
		r = ok(t, admin(), f.ns, "endpoints")
		return row(t, r.out, "signed")["SUCCESS 24H"] == "100.0%" && row(t, r.out, "failing")["SUCCESS 24H"] == "0.0%", nil
	})
	if !strings.HasPrefix(r.out, "NAME ") || !strings.Contains(strings.SplitN(r.out, "\n", 2)[0], "READY   REASON   SUCCESS 24H   P95 24H   BACKLOG   LAST FAILURE   AGE") {
		t.Errorf("the header is not kubectl's aligned columns:\n%s", r.out)
	}
	signed, failing, held := row(t, r.out, "signed"), row(t, r.out, "failing"), row(t, r.out, "held")
	if signed["READY"] != "True" || signed["REASON"] != "Valid" || signed["LAST FAILURE"] != "<none>" || signed["BACKLOG"] != "0" {
		t.Errorf("signed: want Ready, no failure, no backlog, got %v", signed)
	}
	if !regexp.MustCompile(`^[0-9]+(ms|\.[0-9]+s)$`).MatchString(signed["P95 24H"]) {
		t.Errorf("signed: p95 %q is not a latency", signed["P95 24H"])
	}
	if !strings.HasSuffix(failing["LAST FAILURE"], " ago") {
		t.Errorf("failing: last failure %q, want an age", failing["LAST FAILURE"])
	}
	if held["REASON"] != "Paused" || held["SUCCESS 24H"] != "-" {
		t.Errorf("held: want Paused with no delivery (-), got %v", held)
	}
	wide := ok(t, admin(), f.ns, "endpoints", "signed", "-o", "wide")
	if w := row(t, wide.out, "signed"); w["URL"] != f.receiver.URL+"/hooks" || w["DELIVERIES 24H"] != "3" || w["EVENTS"] != "*" {
		t.Errorf("-o wide: want the URL, 3 deliveries and the events, got %v", w)
	}
	if strings.Contains(wide.out, "failing") {
		t.Errorf("endpoints signed listed other endpoints:\n%s", wide.out)
	}
	if r := run(t, admin(), f.ns, "endpoints", "nosuch"); r.code != 1 || !strings.Contains(r.err, "no WebhookEndpoint named nosuch in namespace "+f.ns) {
		t.Errorf("endpoints nosuch: want exit 1 and a sentence naming it, got %d %q", r.code, r.err)
	}
}

// deliveries lists live and finished deliveries together, newest first, with each filter and
// in pages that neither skip nor repeat.
func TestDeliveries(t *testing.T) {
	f := newFixture(t)
	f.endpoint(t, "signed", "/hooks")
	f.endpoint(t, "failing", "/fail/hooks")
	// A record from three hours ago, as the archiver wrote it then: --since leaves it out.
	old := time.Now().Add(-3 * time.Hour).UTC().Truncate(time.Second)
	oldName := webhooksv1alpha1.DeliveryName("signed", "evt-old")
	removed := old.Add(time.Minute)
	writeRecord(t, history.Record{
		Namespace: f.ns, Name: oldName, UID: types.UID("uid-old"), Endpoint: "signed",
		Event:  webhooksv1alpha1.Event{ID: "evt-old", Type: "llm.completed", Timestamp: old.Unix()},
		Labels: map[string]string{webhooksv1alpha1.EndpointLabel: "signed", webhooksv1alpha1.EventTypeLabel: "llm.completed"},
		Phase:  webhooksv1alpha1.PhaseSucceeded, AttemptCount: 1, LastStatusCode: 200, CreationTime: old,
		CompletionTime: &removed, RemovedTime: &removed,
		Attempts: []webhooksv1alpha1.Attempt{{Number: 1, Time: metav1.NewTime(old), StatusCode: 200, Result: "Success", Trigger: webhooksv1alpha1.TriggerScheduled}},
	})

	var names []string
	for i := range 4 {
		names = append(names, f.deliver(t, "signed", fmt.Sprintf("evt-%d", i), []string{"llm.completed", "document.uploaded"}[i%2]))
	}
	failed := f.deliver(t, "failing", "evt-failing", "llm.error")
	f.goneFromEtcd(t, failed)
	all := ok(t, admin(), f.ns, "deliveries")
	lines := strings.Split(strings.TrimSpace(all.out), "\n")
	if got := strings.Join(strings.Fields(lines[0]), " "); got != "NAME ENDPOINT EVENT PHASE ATTEMPTS CODE IN ETCD AGE" {
		t.Errorf("header %q", got)
	}
	var order []string
	for _, l := range lines[1:] {
		order = append(order, strings.Fields(l)[0])
	}
	want := []string{failed, names[3], names[2], names[1], names[0], oldName}
	if strings.Join(order, " ") != strings.Join(want, " ") {
		t.Errorf("deliveries, newest first: got %v, want %v", order, want)
	}
	if r := row(t, all.out, failed); r["PHASE"] != "Failed" || r["IN ETCD"] != "no" || r["CODE"] != "500" || r["ATTEMPTS"] != "1" {
		t.Errorf("the failed delivery that left etcd: %v", r)
	}
	if r := row(t, all.out, names[0]); r["PHASE"] != "Succeeded" || r["IN ETCD"] != "yes" || r["CODE"] != "200" {
		t.Errorf("a live succeeded delivery: %v", r)
	}

	for _, c := range []struct {
		args []string
		want []string
	}{
		{[]string{"--phase", "failed"}, []string{failed}},
		{[]string{"--endpoint", "signed", "--since", "1h"}, []string{names[3], names[2], names[1], names[0]}},
		{[]string{"--event-type", "document.uploaded"}, []string{names[3], names[1]}},
		{[]string{"--event-id", "evt-2"}, []string{names[2]}},
		{[]string{"--since", "2h", "--phase", "Succeeded"}, []string{names[3], names[2], names[1], names[0]}},
		{[]string{"--endpoint", "signed", "--phase", "Succeeded"}, []string{names[3], names[2], names[1], names[0], oldName}},
	} {
		r := ok(t, admin(), f.ns, append([]string{"deliveries"}, c.args...)...)
		if got := firstColumn(r.out); strings.Join(got, " ") != strings.Join(c.want, " ") {
			t.Errorf("deliveries %v: got %v, want %v", c.args, got, c.want)
		}
	}
	if r := run(t, admin(), f.ns, "deliveries", "--phase", "Done"); r.code != 1 || !strings.Contains(r.err, "want Pending, Retrying, Succeeded or Failed") {
		t.Errorf("--phase Done: want a sentence listing the phases, got %q", r.err)
	}
	if r := run(t, admin(), f.ns, "deliveries", "--since", "yesterday"); r.code != 1 || !strings.Contains(r.err, "such as 30m, 2h or 7d") {
		t.Errorf("--since yesterday: want a sentence with examples, got %q", r.err)
	}

	// Pages of 2: every delivery once, in order, then no further page.
	var paged []string
	cont := ""
	for page := 0; ; page++ {
		args := []string{"deliveries", "--limit", "2"}
		if cont != "" {
			args = append(args, "--continue", cont)
		}
		r := ok(t, admin(), f.ns, args...)
		paged = append(paged, firstColumn(r.out)...)
		m := regexp.MustCompile(`More deliveries: add --continue=(\S+)`).FindStringSubmatch(r.err)
		if m == nil {
			break
		}
		if cont = m[1]; page > 5 {
			t.Fatal("more pages than deliveries")
		}
	}
	if strings.Join(paged, " ") != strings.Join(want, " ") {
		t.Errorf("paged by 2: got %v, want %v", paged, want)
	}

	wide := ok(t, admin(), f.ns, "deliveries", "--phase", "Failed", "-o", "wide")
	if r := row(t, wide.out, failed); r["EVENT ID"] != "evt-failing" || !strings.Contains(r["LAST ERROR"], "500") || !strings.HasSuffix(r["COMPLETED"], "ago") {
		t.Errorf("-o wide of the failed delivery: %v", r)
	}
	if r := run(t, admin(), f.ns, "deliveries", "--event-id", "nothing-like-it"); r.code != 0 || !strings.Contains(r.err, "No deliveries found in "+f.ns+" namespace.") {
		t.Errorf("no match: want kubectl's sentence, got %+v", r)
	}
}

func firstColumn(table string) []string {
	var out []string
	for i, l := range strings.Split(strings.TrimSpace(table), "\n") {
		if i > 0 && strings.TrimSpace(l) != "" {
			out = append(out, strings.Fields(l)[0])
		}
	}
	return out
}

func writeRecord(t *testing.T, r history.Record) {
	t.Helper()
	if err := st.Store.Write(context.Background(), []history.Record{r}); err != nil {
		t.Fatal(err)
	}
	if err := st.Store.MarkRemoved(context.Background(), []history.Key{{Namespace: r.Namespace, Name: r.Name}}, *r.RemovedTime); err != nil {
		t.Fatal(err)
	}
}

// describe shows the payload as the receiver got it and every attempt.
func TestDescribe(t *testing.T) {
	f := newFixture(t)
	f.endpoint(t, "signed", "/hooks")
	name := f.deliver(t, "signed", "evt-describe", "llm.completed")
	r := ok(t, admin(), f.ns, "describe", name)
	for _, want := range []string{
		"Name:         " + name, "Endpoint:     signed", "Event:        llm.completed evt-describe",
		"Phase:        Succeeded (Delivered)", "Attempts:     1", "In etcd:      yes",
	} {
		if !strings.Contains(r.out, want) {
			t.Errorf("describe lacks %q:\n%s", want, r.out)
		}
	}
	payload := r.out[strings.Index(r.out, "Payload (as sent):")+len("Payload (as sent):") : strings.Index(r.out, "\nAttempts:\n")]
	var body map[string]any
	if err := json.Unmarshal([]byte(payload), &body); err != nil {
		t.Fatalf("the payload is not JSON: %v\n%s", err, payload)
	}
	if body["event_id"] != "evt-describe" || body["organization_id"] != "org-1" || body["document"].(map[string]any)["document_name"] != "invoice.pdf" {
		t.Errorf("payload %v is not the event as sent", body)
	}
	attempts := r.out[strings.Index(r.out, "\nAttempts:\n"):]
	if !regexp.MustCompile(`(?m)^\s+1\s+\d{4}-\d\d-\d\dT\S+Z\s+Scheduled\s+Success\s+200\s+<?\d+ms\s+<none>$`).MatchString(attempts) {
		t.Errorf("the attempts table lacks attempt 1:\n%s", attempts)
	}
	if r := run(t, admin(), f.ns, "describe", "nosuch"); r.code != 1 || !strings.Contains(r.err, "Error from server (NotFound): no delivery named nosuch in namespace "+f.ns) {
		t.Errorf("describe nosuch: want a NotFound sentence, got %q", r.err)
	}
}

// retry makes one more attempt: on a live delivery by annotation, on one that left etcd by
// re-creating it from its record, whose earlier attempts stay; once per token either way.
func TestRetry(t *testing.T) {
	f := newFixture(t)
	f.endpoint(t, "signed", "/hooks")
	f.endpoint(t, "failing", "/fail/hooks")

	live := f.deliver(t, "signed", "evt-live", "llm.completed")
	r := ok(t, admin(), f.ns, "retry", live)
	if !regexp.MustCompile(`webhookdelivery/`+live+`: retry requested \(kubectl-\d+-[0-9a-f]{8}\)\n`).MatchString(r.out) ||
		!strings.Contains(r.out, "webhookdelivery/"+live+": attempt 2 (Manual): Success, HTTP 200 in ") ||
		!strings.HasSuffix(r.out, "; the delivery is Succeeded\n") {
		t.Errorf("retry of a live delivery:\n%s", r.out)
	}
	if got := f.receiver.requests("evt-live"); len(got) != 2 || got[1] != 200 {
		t.Errorf("the receiver got %v for evt-live, want [200 200]", got)
	}

	gone := f.deliver(t, "failing", "evt-gone", "llm.completed")
	f.goneFromEtcd(t, gone)
	r = ok(t, admin(), f.ns, "retry", gone, "--token", "t-1")
	if !strings.Contains(r.out, "webhookdelivery/"+gone+" had left etcd: re-created from its history record for one attempt (retry t-1)") ||
		!strings.Contains(r.out, "attempt 2 (Manual): HTTPError, HTTP 500 in ") || !strings.HasSuffix(r.out, "; the delivery is Failed\n") {
		t.Errorf("retry of a delivery that left etcd:\n%s", r.out)
	}
	if got := f.receiver.requests("evt-gone"); len(got) != 2 {
		t.Errorf("the receiver got %v for evt-gone, want two requests (the first attempt and the retry)", got)
	}
	rec := f.waitRecord(t, gone, func(r *historyv1alpha1.WebhookDeliveryRecord) bool { return len(r.Status.History) == 2 })
	if a := rec.Status.History; a[0].Trigger != "Scheduled" || a[1].Trigger != "Manual" || a[1].Number != 2 || rec.Status.Attempts != 2 {
		t.Errorf("the record keeps the first attempt and adds the manual one: %+v", a)
	}
	d := &webhooksv1alpha1.WebhookDelivery{}
	if err := st.Env.Client.Get(context.Background(), client.ObjectKey{Namespace: f.ns, Name: gone}, d); err == nil {
		if d.Status.Phase != webhooksv1alpha1.PhaseFailed || d.Status.NextAttemptTime != nil {
			t.Errorf("a failed manual attempt leaves it Failed with no retry scheduled, got %s next %v", d.Status.Phase, d.Status.NextAttemptTime)
		}
	}
	// The same token again: nothing more is sent, whether it is back in etcd or left again.
	r = ok(t, admin(), f.ns, "retry", gone, "--token", "t-1", "--wait=false")
	if !strings.Contains(r.out, "retry t-1 was handled already; nothing more is sent") {
		t.Errorf("the same token twice:\n%s", r.out)
	}
	time.Sleep(time.Second)
	if got := f.receiver.requests("evt-gone"); len(got) != 2 {
		t.Errorf("the receiver got %v for evt-gone after the same token again, want still two", got)
	}
	if r := run(t, admin(), f.ns, "retry", "nosuch"); r.code != 1 || !strings.Contains(r.err, "no delivery named nosuch in namespace "+f.ns) {
		t.Errorf("retry nosuch: %q", r.err)
	}
}

// retry-failed retries the Failed deliveries of an endpoint created within --since, those that
// left etcd too, and no others.
func TestRetryFailed(t *testing.T) {
	f := newFixture(t)
	f.endpoint(t, "failing", "/fail/hooks")
	f.endpoint(t, "signed", "/hooks")
	// A Failed delivery of 5 hours ago, archived then and gone from etcd.
	old := time.Now().Add(-5 * time.Hour).UTC().Truncate(time.Second)
	writeRecord(t, history.Record{
		Namespace: f.ns, Name: webhooksv1alpha1.DeliveryName("failing", "evt-old"), UID: "uid-old-failed", Endpoint: "failing",
		Event:  webhooksv1alpha1.Event{ID: "evt-old", Type: "llm.completed", Timestamp: old.Unix()},
		Labels: map[string]string{webhooksv1alpha1.EndpointLabel: "failing", webhooksv1alpha1.EventTypeLabel: "llm.completed"},
		Phase:  webhooksv1alpha1.PhaseFailed, AttemptCount: 1, LastStatusCode: 500, CreationTime: old, CompletionTime: &old, RemovedTime: &old,
		Attempts: []webhooksv1alpha1.Attempt{{Number: 1, Time: metav1.NewTime(old), StatusCode: 500, Result: "HTTPError", Trigger: webhooksv1alpha1.TriggerScheduled}},
	})

	var failed []string
	for i := range 3 {
		failed = append(failed, f.deliver(t, "failing", fmt.Sprintf("evt-f-%d", i), "llm.completed"))
	}
	other := f.deliver(t, "signed", "evt-ok", "llm.completed")
	for _, n := range failed {
		f.goneFromEtcd(t, n)
	}
	r := okRun(t, f.ns, "retry-failed", "failing", "--since", "2h")
	if !regexp.MustCompile(`webhookendpoint/failing: retried 3 Failed deliveries since \S+ \(0 in etcd, 3 re-created from the history; retry kubectl-\S+\)`).MatchString(r.out) {
		t.Errorf("retry-failed:\n%s", r.out)
	}
	for i, n := range failed {
		f.waitRecord(t, n, func(r *historyv1alpha1.WebhookDeliveryRecord) bool { return len(r.Status.History) == 2 })
		if got := f.receiver.requests(fmt.Sprintf("evt-f-%d", i)); len(got) != 2 {
			t.Errorf("%s: the receiver got %v, want two requests", n, got)
		}
	}
	if got := f.receiver.requests("evt-old"); len(got) != 0 {
		t.Errorf("the delivery from 5 hours ago was retried (%v): --since 2h leaves it out", got)
	}
	if got := f.receiver.requests("evt-ok"); len(got) != 1 {
		t.Errorf("a delivery of another endpoint was retried: %v (%s)", got, other)
	}
	r = okRun(t, f.ns, "retry-failed", "signed")
	if !strings.Contains(r.out, "webhookendpoint/signed: no Failed delivery since ") {
		t.Errorf("retry-failed of an endpoint without failures:\n%s", r.out)
	}
	if r := run(t, admin(), f.ns, "retry-failed", "failing", "--since", "2h", "--max", "2"); r.code != 1 || !strings.Contains(r.err, "more than 2 Failed deliveries of endpoint failing since") {
		t.Errorf("--max 2 with 3 Failed deliveries: want a refusal that says so, got %q", r.err)
	}
	if r := run(t, admin(), f.ns, "retry-failed", "nosuch"); r.code != 1 || !strings.Contains(r.err, `webhookendpoints.webhooks.docrouter.ai "nosuch" not found`) {
		t.Errorf("retry-failed nosuch: %q", r.err)
	}
}

func okRun(t *testing.T, ns string, args ...string) result {
	t.Helper()
	return ok(t, admin(), ns, args...)
}

// test sends a webhook.test event that the receiver verifies, and says how it went; a receiver
// that refuses it makes the command fail.
func TestTest(t *testing.T) {
	f := newFixture(t)
	ep := f.endpoint(t, "signed", "/hooks", func(ep *webhooksv1alpha1.WebhookEndpoint) { ep.Spec.EventTypes = []string{"llm.completed"} })
	f.endpoint(t, "failing", "/fail/hooks")
	r := ok(t, admin(), f.ns, "test", "signed")
	m := regexp.MustCompile(`webhookendpoint/signed: test event requested as webhookdelivery/(signed-[0-9a-f]{16})\n`).FindStringSubmatch(r.out)
	if m == nil || !strings.Contains(r.out, "webhookdelivery/"+m[1]+": attempt 1 (Scheduled): Success, HTTP 200 in ") {
		t.Fatalf("test signed:\n%s", r.out)
	}
	d := &webhooksv1alpha1.WebhookDelivery{}
	if err := st.Env.Client.Get(context.Background(), client.ObjectKey{Namespace: f.ns, Name: m[1]}, d); err != nil {
		t.Fatal(err)
	}
	if d.Spec.Event.Type != webhooksv1alpha1.EventWebhookTest || d.Name != webhooksv1alpha1.DeliveryName(ep.Name, d.Spec.Event.ID) {
		t.Errorf("the delivery named is not the webhook.test the operator made: %+v", d.Spec.Event)
	}
	if got := f.receiver.requests(d.Spec.Event.ID); len(got) != 1 || got[0] != 200 || f.receiver.verified[d.Spec.Event.ID] != 1 {
		t.Errorf("the receiver answered %v to the test event, want one verified 200", got)
	}
	r = run(t, admin(), f.ns, "test", "failing")
	if r.code != 1 || !strings.Contains(r.out, "attempt 1 (Scheduled): HTTPError, HTTP 500") || !strings.Contains(r.err, "the receiver did not accept the test event") {
		t.Errorf("test of a failing receiver: want exit 1 and why, got %+v", r)
	}
}

// pause holds an endpoint's deliveries; resume sends them.
func TestPauseResume(t *testing.T) {
	f := newFixture(t)
	f.endpoint(t, "signed", "/hooks")
	r := ok(t, admin(), f.ns, "pause", "signed")
	if r.out != "webhookendpoint/signed paused: its deliveries wait until it is resumed\n" {
		t.Errorf("pause: %q", r.out)
	}
	eventually(t, 20*time.Second, "the endpoint to show Paused", func(context.Context) (bool, error) {
		return row(t, ok(t, admin(), f.ns, "endpoints").out, "signed")["REASON"] == "Paused", nil
	})
	d := webhooksv1alpha1.NewDelivery(f.ns, "signed", webhooksv1alpha1.Event{ID: "evt-held", Type: "llm.completed", Timestamp: time.Now().Unix()})
	create(t, d)
	time.Sleep(2 * time.Second)
	if got := f.receiver.requests("evt-held"); len(got) != 0 {
		t.Fatalf("a paused endpoint got %v", got)
	}
	r = ok(t, admin(), f.ns, "resume", "signed")
	if r.out != "webhookendpoint/signed resumed: its waiting deliveries are sent\n" {
		t.Errorf("resume: %q", r.out)
	}
	f.waitRecord(t, d.Name, func(r *historyv1alpha1.WebhookDeliveryRecord) bool { return r.Status.Phase == "Succeeded" })
	if got := f.receiver.requests("evt-held"); len(got) != 1 {
		t.Errorf("after resuming, the receiver got %v, want one request", got)
	}
	if r := run(t, admin(), f.ns, "pause", "nosuch"); r.code != 1 || !strings.Contains(r.err, `Error from server (NotFound): webhookendpoints.webhooks.docrouter.ai "nosuch" not found`) {
		t.Errorf("pause nosuch: %q", r.err)
	}
}

// RBAC decides, with the user's own credentials: a user bound to view reads endpoints and
// deliveries but may not retry, test or pause, and is told so by the API server's sentence; a
// user bound to edit may; a user without a binding reads nothing.
func TestRBAC(t *testing.T) {
	f := newFixture(t)
	f.endpoint(t, "signed", "/hooks")
	f.endpoint(t, "failing", "/fail/hooks")
	live := f.deliver(t, "signed", "evt-rbac", "llm.completed")
	gone := f.deliver(t, "failing", "evt-rbac-gone", "llm.completed")
	f.goneFromEtcd(t, gone)

	dir := t.TempDir()
	viewer, err := st.NewUser("viewer-"+f.ns, dir)
	if err != nil {
		t.Fatal(err)
	}
	editor, err := st.NewUser("editor-"+f.ns, dir)
	if err != nil {
		t.Fatal(err)
	}
	nobody, err := st.NewUser("nobody-"+f.ns, dir)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := st.Bind(ctx, f.ns, viewer.Name, "view"); err != nil {
		t.Fatal(err)
	}
	if err := st.Bind(ctx, f.ns, editor.Name, "edit"); err != nil {
		t.Fatal(err)
	}
	// The built-in roles hold the operator's rules once kube-controller-manager aggregated them,
	// and the history API caches denials for 10 s.
	eventually(t, 60*time.Second, "the viewer to read deliveries and stats", func(context.Context) (bool, error) {
		r := run(t, viewer.Kubeconfig, f.ns, "deliveries")
		e := run(t, viewer.Kubeconfig, f.ns, "endpoints")
		return r.code == 0 && strings.Contains(r.out, live) && strings.Contains(r.out, gone) && !strings.Contains(r.err, "Warning") &&
			e.code == 0 && !strings.Contains(e.err, "Warning"), nil
	})

	forbidden := func(r result, verb, resource string) {
		t.Helper()
		want := fmt.Sprintf(`Error from server (Forbidden): %s.webhooks.docrouter.ai `, resource)
		user := fmt.Sprintf(`User "%s" cannot %s resource "%s" in API group "webhooks.docrouter.ai" in the namespace "%s"`, viewer.Name, verb, resource, f.ns)
		if r.code != 1 || !strings.Contains(r.err, want) || !strings.Contains(r.err, user) {
			t.Errorf("want exit 1 and the API server's sentence %q, got %d: %s", user, r.code, r.err)
		}
	}
	forbidden(run(t, viewer.Kubeconfig, f.ns, "retry", live), "patch", "webhookdeliveries")
	forbidden(run(t, viewer.Kubeconfig, f.ns, "retry", gone), "create", "webhookdeliveries")
	forbidden(run(t, viewer.Kubeconfig, f.ns, "pause", "signed"), "patch", "webhookendpoints")
	forbidden(run(t, viewer.Kubeconfig, f.ns, "test", "signed"), "patch", "webhookendpoints")
	if got := f.receiver.requests("evt-rbac"); len(got) != 1 {
		t.Errorf("a refused retry sent something: %v", got)
	}

	eventually(t, 60*time.Second, "the editor to retry", func(context.Context) (bool, error) {
		return run(t, editor.Kubeconfig, f.ns, "retry", live, "--token", "by-editor").code == 0, nil
	})
	if got := f.receiver.requests("evt-rbac"); len(got) != 2 {
		t.Errorf("the editor's retry: the receiver got %v, want two requests", got)
	}

	r := run(t, nobody.Kubeconfig, f.ns, "deliveries")
	if r.code != 1 || !strings.Contains(r.err, fmt.Sprintf(`User "%s" cannot list resource "webhookdeliveries"`, nobody.Name)) {
		t.Errorf("a user without a binding: want the API server's 403 sentence, got %d: %s %s", r.code, r.out, r.err)
	}
}

// kubectl finds the operator's binary on PATH under the name kubectl-webhooks, as
// make install-plugin installs it, and runs it as `kubectl webhooks`.
func TestKubectlRunsThePlugin(t *testing.T) {
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		t.Fatal("kubectl is not on PATH: install it (https://kubernetes.io/docs/tasks/tools/) to test the plugin as kubectl runs it")
	}
	f := newFixture(t)
	f.endpoint(t, "signed", "/hooks")
	bin := t.TempDir()
	build := exec.Command("go", "build", "-o", filepath.Join(bin, "kubectl-webhooks"), ".")
	build.Dir = testenv.RepoRoot()
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	cmd := exec.Command(kubectl, "webhooks", "endpoints", "--kubeconfig", admin(), "-n", f.ns)
	cmd.Env = append(os.Environ(), "PATH="+bin+string(os.PathListSeparator)+os.Getenv("PATH"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl webhooks endpoints: %v\n%s", err, out)
	}
	if !strings.HasPrefix(string(out), "NAME ") || !strings.Contains(string(out), "\nsigned ") {
		t.Errorf("kubectl webhooks endpoints:\n%s", out)
	}
	list := exec.Command(kubectl, "plugin", "list")
	list.Env = cmd.Env
	if out, _ := list.CombinedOutput(); !strings.Contains(string(out), filepath.Join(bin, "kubectl-webhooks")) {
		t.Errorf("kubectl plugin list does not list it:\n%s", out)
	}
}
