package intake_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"github.com/prometheus/client_golang/prometheus/testutil"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
	"github.com/docrouter/webhook-operator/controllers"
	"github.com/docrouter/webhook-operator/dispatcher"
	"github.com/docrouter/webhook-operator/internal/history/historytest"
	"github.com/docrouter/webhook-operator/internal/intake"
	"github.com/docrouter/webhook-operator/internal/metrics"
	"github.com/docrouter/webhook-operator/internal/testenv"
	"github.com/docrouter/webhook-operator/internal/testenv/testreceiver"
	"github.com/docrouter/webhook-operator/publish"
)

var env *testenv.Env

func TestMain(m *testing.M) { os.Exit(testenv.Run(m, &env, historytest.Main)) }

var signingKey = []byte("whsec-intake-test-key")

// startIntake runs a namespace-scoped manager (with the controllers when deliver is true, so
// that deliveries are sent) and serves the intake handler on a loopback HTTP server.
func startIntake(tb testing.TB, ns string, opts intake.Options, deliver bool) string {
	tb.Helper()
	var h *intake.Handler
	env.StartManager(tb, env.ManagerOptions(ns), func(ctx context.Context, mgr ctrl.Manager) error {
		h = intake.NewHandler(mgr.GetClient(), mgr.GetCache(), opts)
		if !deliver {
			return nil
		}
		o := controllers.DefaultOptions()
		o.SecretTTL = 0
		_, err := controllers.Setup(ctx, mgr, o, controllers.Deps{Sender: dispatcher.NewSender(dispatcher.SenderOptions{})})
		return err
	})
	srv := httptest.NewServer(h)
	tb.Cleanup(srv.Close)
	return srv.URL
}

// publisher creates a ServiceAccount and returns a token of it from the TokenRequest API. When
// grant is true, a Role and RoleBinding let it publish (create webhookevents) in ns.
func publisher(tb testing.TB, ns, name string, grant bool, audiences ...string) string {
	tb.Helper()
	ctx := context.Background()
	create(tb, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}})
	if grant {
		create(tb,
			&rbacv1.Role{
				ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name + "-publish"},
				Rules: []rbacv1.PolicyRule{{
					APIGroups: []string{"webhooks.docrouter.ai"}, Resources: []string{"webhookevents"}, Verbs: []string{"create"},
				}},
			},
			&rbacv1.RoleBinding{
				ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name + "-publish"},
				RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: name + "-publish"},
				Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: name, Namespace: ns}},
			})
	}
	cs := kubernetes.NewForConfigOrDie(env.Config)
	tr, err := cs.CoreV1().ServiceAccounts(ns).CreateToken(ctx, name,
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr.To[int64](3600), Audiences: audiences}}, metav1.CreateOptions{})
	if err != nil {
		tb.Fatalf("requesting a token for %s: %v", name, err)
	}
	return tr.Status.Token
}

func create(tb testing.TB, objs ...client.Object) {
	tb.Helper()
	for _, o := range objs {
		if err := env.Client.Create(context.Background(), o); err != nil {
			tb.Fatalf("creating %T %s: %v", o, o.GetName(), err)
		}
	}
}

// endpoint creates a WebhookEndpoint to url subscribed to types, signing with signingKey.
func endpoint(tb testing.TB, ns, name, url string, types ...string) {
	tb.Helper()
	create(tb, &webhooksv1alpha1.WebhookEndpoint{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: webhooksv1alpha1.WebhookEndpointSpec{
			URL: url, AllowInsecureHTTP: true, EventTypes: types,
			SigningSecretRef: &webhooksv1alpha1.SecretKeyRef{Name: "signing", Key: "key"},
			TimeoutSeconds:   ptr.To[int32](2),
		},
	})
}

func signingSecret(t *testing.T, ns string) {
	t.Helper()
	create(t, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "signing"}, Data: map[string][]byte{"key": signingKey}})
}

type answer struct {
	status int
	body   []byte
	header http.Header
}

func (a answer) accepted(t *testing.T) publish.Accepted {
	t.Helper()
	if a.status != http.StatusAccepted {
		t.Fatalf("want 202, got %d: %s", a.status, a.body)
	}
	var acc publish.Accepted
	if err := json.Unmarshal(a.body, &acc); err != nil {
		t.Fatalf("202 answer is not JSON: %v: %s", err, a.body)
	}
	return acc
}

func (a answer) errorSentence(t *testing.T) string {
	t.Helper()
	var eb publish.ErrorBody
	if err := json.Unmarshal(a.body, &eb); err != nil || eb.Error == "" {
		t.Fatalf("%d answer is not a JSON error: %s", a.status, a.body)
	}
	return eb.Error
}

func post(t *testing.T, base, ns, token string, body []byte) answer {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, base+"/v1/namespaces/"+ns+"/events", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return answer{status: resp.StatusCode, body: b, header: resp.Header}
}

// deliveries lists the namespace's deliveries from the API server (not a cache).
func deliveries(tb testing.TB, ns string) []webhooksv1alpha1.WebhookDelivery {
	tb.Helper()
	var l webhooksv1alpha1.WebhookDeliveryList
	if err := env.Client.List(context.Background(), &l, client.InNamespace(ns)); err != nil {
		tb.Fatal(err)
	}
	return l.Items
}

const uploaded = `{"event_id": "evt-%s", "event_type": "document.uploaded", "timestamp": 1640995200,
  "organization_id": "org-1", "document": {"document_id": "doc-123", "document_name": "invoice.pdf",
  "tag_ids": ["tag1"], "metadata": {"pages": 3}}}`

func TestPublishFansOutToSubscribedEndpointsOnce(t *testing.T) {
	g := NewWithT(t)
	ns := env.Namespace(t)
	signingSecret(t, ns)
	docs, all, llm := testreceiver.New(t, signingKey), testreceiver.New(t, signingKey), testreceiver.New(t, signingKey)
	endpoint(t, ns, "docs", docs.URL, "document.*")
	endpoint(t, ns, "all", all.URL, "*")
	endpoint(t, ns, "llm", llm.URL, "llm.completed", "llm.error")
	base := startIntake(t, ns, intake.Options{}, true)
	token := publisher(t, ns, "pipeline", true)
	published := func() float64 {
		return testutil.ToFloat64(metrics.EventsPublished.WithLabelValues("document.uploaded"))
	}
	publishedBefore := published()

	acc := post(t, base, ns, token, fmt.Appendf(nil, uploaded, "1")).accepted(t)
	g.Expect(acc.EventID).To(Equal("evt-1"))
	g.Expect(acc.Deliveries).To(ConsistOf(
		publish.Delivery{Name: webhooksv1alpha1.DeliveryName("docs", "evt-1"), Endpoint: "docs", Created: true},
		publish.Delivery{Name: webhooksv1alpha1.DeliveryName("all", "evt-1"), Endpoint: "all", Created: true},
	))

	// Each subscribed receiver gets the event once, signed; the third gets nothing.
	for _, r := range []*testreceiver.Receiver{docs, all} {
		g.Eventually(r.Count, 20*time.Second, 50*time.Millisecond).Should(Equal(1))
		req := r.Requests()[0]
		g.Expect(req.Verified).To(BeTrue(), "signature: %v", req.VerifyErr)
		var p map[string]any
		g.Expect(json.Unmarshal(req.Body, &p)).To(Succeed())
		g.Expect(p).To(HaveKeyWithValue("event_id", "evt-1"))
		g.Expect(p).To(HaveKeyWithValue("event_type", "document.uploaded"))
		g.Expect(p).To(HaveKeyWithValue("timestamp", BeNumerically("==", 1640995200)))
		g.Expect(p).To(HaveKeyWithValue("document", HaveKeyWithValue("metadata", HaveKeyWithValue("pages", BeNumerically("==", 3)))))
	}
	g.Expect(deliveries(t, ns)).To(HaveLen(2))

	// The same event id again: the answer says both existed, and nothing new is created or sent.
	again := post(t, base, ns, token, fmt.Appendf(nil, uploaded, "1")).accepted(t)
	g.Expect(again.Deliveries).To(ConsistOf(
		publish.Delivery{Name: webhooksv1alpha1.DeliveryName("docs", "evt-1"), Endpoint: "docs", Created: false},
		publish.Delivery{Name: webhooksv1alpha1.DeliveryName("all", "evt-1"), Endpoint: "all", Created: false},
	))
	g.Expect(deliveries(t, ns)).To(HaveLen(2))
	g.Consistently(func() []int { return []int{docs.Count(), all.Count(), llm.Count()} }, 2*time.Second, 100*time.Millisecond).
		Should(Equal([]int{1, 1, 0}))
	g.Expect(published()-publishedBefore).To(Equal(2.0), "docrouter_webhook_events_published_total counts accepted publishes")
}

func TestPublishWithoutIDOrTimestampGeneratesThem(t *testing.T) {
	g := NewWithT(t)
	ns := env.Namespace(t)
	endpoint(t, ns, "all", "http://127.0.0.1:1/unused", "*")
	base := startIntake(t, ns, intake.Options{AllowAnonymous: true}, false)

	before := time.Now().Unix()
	acc := post(t, base, ns, "", []byte(`{"event_type": "llm.error", "document": {"document_id": "doc-9"}}`)).accepted(t)
	g.Expect(acc.EventID).To(MatchRegexp(`^[0-9a-f-]{36}$`))
	g.Expect(acc.Deliveries).To(HaveLen(1))
	d := deliveries(t, ns)
	g.Expect(d).To(HaveLen(1))
	g.Expect(d[0].Spec.Event.ID).To(Equal(acc.EventID))
	g.Expect(d[0].Spec.Event.Timestamp).To(BeNumerically(">=", before))
	g.Expect(d[0].Labels).To(HaveKeyWithValue(webhooksv1alpha1.EventTypeLabel, "llm.error"))

	second := post(t, base, ns, "", []byte(`{"event_type": "llm.error"}`)).accepted(t)
	g.Expect(second.EventID).NotTo(Equal(acc.EventID), "each event without an id gets its own")
	g.Expect(deliveries(t, ns)).To(HaveLen(2))
}

func TestPublishToNamespaceWithoutSubscribersAcceptsWithMessage(t *testing.T) {
	g := NewWithT(t)
	ns := env.Namespace(t)
	endpoint(t, ns, "llm", "http://127.0.0.1:1/unused", "llm.*")
	base := startIntake(t, ns, intake.Options{AllowAnonymous: true}, false)

	acc := post(t, base, ns, "", []byte(`{"event_type": "document.error"}`)).accepted(t)
	g.Expect(acc.Deliveries).To(BeEmpty())
	g.Expect(string(post(t, base, ns, "", []byte(`{"event_type": "document.error"}`)).body)).To(ContainSubstring(`"deliveries":[]`))
	g.Expect(acc.Message).To(ContainSubstring("subscribes to document.error"))
	g.Expect(deliveries(t, ns)).To(BeEmpty())
}

func TestPublishRefusesCallersWithoutPermission(t *testing.T) {
	g := NewWithT(t)
	ns := env.Namespace(t)
	endpoint(t, ns, "all", "http://127.0.0.1:1/unused", "*")
	base := startIntake(t, ns, intake.Options{}, false)
	other := env.Namespace(t)
	outsider := publisher(t, ns, "outsider", false)
	elsewhere := publisher(t, other, "elsewhere", true) // may publish in its own namespace only

	ev := fmt.Appendf(nil, uploaded, "denied")
	t.Run("no token is 401", func(t *testing.T) {
		a := post(t, base, ns, "", ev)
		g.Expect(a.status).To(Equal(http.StatusUnauthorized))
		g.Expect(a.header.Get("WWW-Authenticate")).To(HavePrefix("Bearer"))
		g.Expect(a.errorSentence(t)).To(ContainSubstring("missing bearer token"))
	})
	t.Run("a token the cluster did not issue is 401", func(t *testing.T) {
		a := post(t, base, ns, "eyJhbGciOiJSUzI1NiJ9.e30.c2lnbmF0dXJl", ev)
		g.Expect(a.status).To(Equal(http.StatusUnauthorized))
		g.Expect(a.errorSentence(t)).To(ContainSubstring("not valid"))
	})
	t.Run("a ServiceAccount without the grant is 403", func(t *testing.T) {
		a := post(t, base, ns, outsider, ev)
		g.Expect(a.status).To(Equal(http.StatusForbidden))
		g.Expect(a.errorSentence(t)).To(And(
			ContainSubstring(`"system:serviceaccount:`+ns+`:outsider" may not publish events in namespace "`+ns+`"`),
			ContainSubstring("create on webhookevents.webhooks.docrouter.ai")))
	})
	t.Run("a grant in another namespace is 403 here", func(t *testing.T) {
		g.Expect(post(t, base, ns, elsewhere, ev).status).To(Equal(http.StatusForbidden))
	})
	g.Expect(deliveries(t, ns)).To(BeEmpty())
}

// The publish grant is for the intake only: it does not let a publisher write deliveries.
func TestPublishGrantDoesNotAllowWritingDeliveries(t *testing.T) {
	g := NewWithT(t)
	ns := env.Namespace(t)
	token := publisher(t, ns, "pipeline", true)
	cfg := rest.AnonymousClientConfig(env.Config)
	cfg.BearerToken = token
	c, err := client.New(cfg, client.Options{Scheme: env.Scheme})
	g.Expect(err).NotTo(HaveOccurred())
	ev := webhooksv1alpha1.Event{ID: "evt-direct", Type: webhooksv1alpha1.EventDocumentUploaded, Timestamp: 1}
	err = c.Create(context.Background(), webhooksv1alpha1.NewDelivery(ns, "all", ev))
	g.Expect(apierrors.IsForbidden(err)).To(BeTrue(), "creating a delivery directly: %v", err)
}

func TestPublishRefusesBadEventsAndCreatesNothing(t *testing.T) {
	ns := env.Namespace(t)
	endpoint(t, ns, "all", "http://127.0.0.1:1/unused", "*")
	base := startIntake(t, ns, intake.Options{}, false)
	token := publisher(t, ns, "pipeline", true)

	big := `{"event_type": "llm.completed", "data": {"text": "` + strings.Repeat("x", intake.MaxBodyBytes) + `"}}`
	for _, tc := range []struct {
		name   string
		body   string
		status int
		says   string
	}{
		{"malformed JSON", `{"event_type": "document.uploaded",`, 400, "not valid JSON"},
		{"broken JSON", `{"event_type": document.uploaded}`, 400, "not valid JSON"},
		{"empty body", ``, 400, "body is empty"},
		{"not an object", `["document.uploaded"]`, 400, "must be a JSON object"},
		{"two objects", `{"event_type": "llm.error"} {"event_type": "llm.error"}`, 400, "exactly one JSON object"},
		{"oversized body", big, 413, "larger than 262144 bytes"},
		{"unknown event type", `{"event_type": "document.deleted"}`, 400, `event_type "document.deleted" is not an event type: use one of document.uploaded, llm.completed`},
		{"missing event_type", `{"event_id": "evt-1", "document": {"document_id": "d"}}`, 400, "event_type is required"},
		{"unknown top-level field", `{"event_type": "llm.error", "eventType": "llm.error"}`, 400, `unknown field "eventType"`},
		{"unknown document field", `{"event_type": "llm.error", "document": {"id": "d"}}`, 400, `unknown field "id"`},
		{"timestamp as a string", `{"event_type": "llm.error", "timestamp": "2026-11-28"}`, 400, "timestamp must be a whole number of Unix seconds"},
		{"negative timestamp", `{"event_type": "llm.error", "timestamp": -1}`, 400, "timestamp must be Unix seconds"},
		{"event id with a slash", `{"event_type": "llm.error", "event_id": "a/b"}`, 400, "event_id \"a/b\" has characters that are not allowed"},
		{"event id too long", `{"event_type": "llm.error", "event_id": "` + strings.Repeat("a", 129) + `"}`, 400, "at most 128"},
		{"metadata not an object", `{"event_type": "llm.error", "document": {"metadata": [1]}}`, 400, "document.metadata must be a JSON object"},
		{"data not an object", `{"event_type": "llm.completed", "data": "done"}`, 400, "data must be a JSON object"},
		{"tag ids not strings", `{"event_type": "llm.error", "document": {"tag_ids": [1]}}`, 400, "document.tag_ids"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			a := post(t, base, ns, token, []byte(tc.body))
			g.Expect(a.status).To(Equal(tc.status), "%s", a.body)
			g.Expect(a.header.Get("Content-Type")).To(Equal("application/json"))
			g.Expect(a.errorSentence(t)).To(ContainSubstring(tc.says))
		})
	}
	if d := deliveries(t, ns); len(d) != 0 {
		t.Fatalf("bad events created %d deliveries", len(d))
	}
}

func TestPublishAnswersJSONForWrongMethodAndRoute(t *testing.T) {
	g := NewWithT(t)
	ns := env.Namespace(t)
	base := startIntake(t, ns, intake.Options{AllowAnonymous: true}, false)

	resp, err := http.Get(base + "/v1/namespaces/" + ns + "/events")
	g.Expect(err).NotTo(HaveOccurred())
	resp.Body.Close()
	g.Expect(resp.StatusCode).To(Equal(http.StatusMethodNotAllowed))
	g.Expect(resp.Header.Get("Allow")).To(Equal("POST"))
	g.Expect(post(t, base, "Not_A_Namespace", "", []byte(`{"event_type":"llm.error"}`)).status).To(Equal(http.StatusBadRequest))
	a := post(t, base+"/v2", ns, "", []byte(`{}`))
	g.Expect(a.status).To(Equal(http.StatusNotFound))
	g.Expect(a.errorSentence(t)).To(ContainSubstring("POST /v1/namespaces/NAMESPACE/events"))
}

// A decision is remembered for the cache TTL: a revoked grant stops working within it, not at once.
func TestPublishPermissionDecisionsAreCachedBriefly(t *testing.T) {
	g := NewWithT(t)
	ns := env.Namespace(t)
	base := startIntake(t, ns, intake.Options{AuthCacheTTL: 2 * time.Second}, false)
	token := publisher(t, ns, "pipeline", true)
	ev := []byte(`{"event_type": "llm.error"}`)

	g.Expect(post(t, base, ns, token, ev).status).To(Equal(http.StatusAccepted))
	g.Expect(env.Client.Delete(context.Background(), &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "pipeline-publish"}})).To(Succeed())
	revoked := time.Now()
	g.Expect(post(t, base, ns, token, ev).status).To(Equal(http.StatusAccepted), "still allowed from the cache")
	g.Eventually(func() int { return post(t, base, ns, token, ev).status }, 5*time.Second, 200*time.Millisecond).
		Should(Equal(http.StatusForbidden))
	g.Expect(time.Since(revoked)).To(BeNumerically(">=", 2*time.Second-200*time.Millisecond))
}

// The publish client and the CLI's path: a *publish.Error carries the intake's sentence.
func TestPublishClient(t *testing.T) {
	g := NewWithT(t)
	ns := env.Namespace(t)
	endpoint(t, ns, "docs", "http://127.0.0.1:1/unused", "document.*")
	base := startIntake(t, ns, intake.Options{}, false)
	tokenFile := t.TempDir() + "/token"
	g.Expect(os.WriteFile(tokenFile, []byte(publisher(t, ns, "pipeline", true)+"\n"), 0o600)).To(Succeed())

	c := &publish.Client{URL: base, TokenFile: tokenFile}
	acc, err := c.Publish(context.Background(), ns, publish.Event{
		EventID: "evt-client", EventType: "document.uploaded", Timestamp: ptr.To[int64](1700000000),
		Document: dispatcher.Document{DocumentID: "doc-1", DocumentName: "a.pdf"},
	})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(acc.Deliveries).To(Equal([]publish.Delivery{{Name: webhooksv1alpha1.DeliveryName("docs", "evt-client"), Endpoint: "docs", Created: true}}))

	_, err = c.Publish(context.Background(), ns, publish.Event{EventType: "document.archived"})
	var perr *publish.Error
	g.Expect(errors.As(err, &perr)).To(BeTrue(), "%v", err)
	g.Expect(perr.StatusCode).To(Equal(http.StatusBadRequest))
	g.Expect(perr.Message).To(ContainSubstring(`event_type "document.archived" is not an event type`))

	_, err = (&publish.Client{URL: base}).Publish(context.Background(), ns, publish.Event{EventType: "llm.error"})
	g.Expect(errors.As(err, &perr)).To(BeTrue())
	g.Expect(perr.StatusCode).To(Equal(http.StatusUnauthorized))
	g.Expect(slices.ContainsFunc(deliveries(t, ns), func(d webhooksv1alpha1.WebhookDelivery) bool {
		return d.Spec.Event.Type != "document.uploaded"
	})).To(BeFalse())
}

// A paused endpoint still gets its delivery; it waits, unsent, until the endpoint is resumed.
func TestPublishIncludesPausedEndpoints(t *testing.T) {
	g := NewWithT(t)
	ns := env.Namespace(t)
	signingSecret(t, ns)
	r := testreceiver.New(t, signingKey)
	create(t, &webhooksv1alpha1.WebhookEndpoint{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "paused"},
		Spec: webhooksv1alpha1.WebhookEndpointSpec{
			URL: r.URL, AllowInsecureHTTP: true, EventTypes: []string{"*"}, Paused: true,
			SigningSecretRef: &webhooksv1alpha1.SecretKeyRef{Name: "signing", Key: "key"},
		},
	})
	base := startIntake(t, ns, intake.Options{AllowAnonymous: true}, true)

	acc := post(t, base, ns, "", []byte(`{"event_id": "evt-paused", "event_type": "llm.completed"}`)).accepted(t)
	g.Expect(acc.Deliveries).To(Equal([]publish.Delivery{{Name: webhooksv1alpha1.DeliveryName("paused", "evt-paused"), Endpoint: "paused", Created: true}}))
	g.Consistently(r.Count, time.Second, 100*time.Millisecond).Should(BeZero())

	ep := &webhooksv1alpha1.WebhookEndpoint{}
	g.Expect(env.Client.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "paused"}, ep)).To(Succeed())
	ep.Spec.Paused = false
	g.Expect(env.Client.Update(context.Background(), ep)).To(Succeed())
	g.Eventually(r.Count, 20*time.Second, 50*time.Millisecond).Should(Equal(1))
	g.Expect(r.Requests()[0].Verified).To(BeTrue())
}

// With an audience configured, only tokens made for the intake are accepted.
func TestPublishWithAudienceAcceptsOnlyTokensForIt(t *testing.T) {
	g := NewWithT(t)
	ns := env.Namespace(t)
	base := startIntake(t, ns, intake.Options{Audiences: []string{"docrouter-intake"}}, false)
	forIntake := publisher(t, ns, "pipeline", true, "docrouter-intake")
	forAPIServer := publisher(t, ns, "other", true)
	ev := []byte(`{"event_type": "llm.error"}`)

	g.Expect(post(t, base, ns, forIntake, ev).status).To(Equal(http.StatusAccepted))
	a := post(t, base, ns, forAPIServer, ev)
	g.Expect(a.status).To(Equal(http.StatusUnauthorized))
	g.Expect(a.errorSentence(t)).To(ContainSubstring("another audience"))
}

// When the API server refuses a create, the answer says so and carries the event id to publish
// again with (here: the namespace is being deleted, so creates in it are forbidden).
func TestPublishReportsFailedCreatesWithEventID(t *testing.T) {
	g := NewWithT(t)
	ns := env.Namespace(t)
	endpoint(t, ns, "all", "http://127.0.0.1:1/unused", "*")
	base := startIntake(t, ns, intake.Options{AllowAnonymous: true}, false)
	// Without a namespace controller, envtest leaves the namespace Terminating.
	g.Expect(env.Client.Delete(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}})).To(Succeed())

	a := post(t, base, ns, "", []byte(`{"event_type": "llm.error"}`))
	g.Expect(a.status).To(BeNumerically(">=", 500))
	var eb publish.ErrorBody
	g.Expect(json.Unmarshal(a.body, &eb)).To(Succeed())
	g.Expect(eb.Error).To(ContainSubstring("0 of 1 deliveries exist or wait in the backlog"))
	g.Expect(eb.Error).To(ContainSubstring("publish the same event_id again"))
	g.Expect(eb.EventID).NotTo(BeEmpty())
	g.Expect(deliveries(t, ns)).To(BeEmpty())
}
