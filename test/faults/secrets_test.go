package faults

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
	"github.com/docrouter/webhook-operator/dispatcher"
	"github.com/docrouter/webhook-operator/internal/testenv/testreceiver"
)

// credentials are the secret values of one endpoint, each unique to the test run, so that a hit
// in the captured output can only be a leak.
type credentials struct {
	signingKey, authValue, pathToken, queryToken string
}

func newCredentials(name string) credentials {
	n := time.Now().UnixNano()
	return credentials{
		signingKey: fmt.Sprintf("SIGNKEY-%s-%d", name, n),
		authValue:  fmt.Sprintf("Bearer AUTHTOKEN-%s-%d", name, n),
		pathToken:  fmt.Sprintf("PATHTOKEN-%s-%d", name, n),
		queryToken: fmt.Sprintf("QUERYTOKEN-%s-%d", name, n),
	}
}

// leakEndpoint creates an endpoint to base whose URL holds a token in its path and query (as
// n8n's and Zapier's do), signed and with an auth header, each from a Secret.
func leakEndpoint(t *testing.T, ns, name, base string, c credentials, mutate ...func(*webhooksv1alpha1.WebhookEndpoint)) *webhooksv1alpha1.WebhookEndpoint {
	t.Helper()
	auth := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name + "-auth"},
		Data:       map[string][]byte{"value": []byte(c.authValue)},
	}
	if err := env.Client.Create(context.Background(), auth); err != nil {
		t.Fatal(err)
	}
	url := base + "/webhook/" + c.pathToken + "?token=" + c.queryToken
	return endpointFor(t, ns, name, url, []byte(c.signingKey), append([]func(*webhooksv1alpha1.WebhookEndpoint){
		func(ep *webhooksv1alpha1.WebhookEndpoint) {
			ep.Spec.AuthHeader = &webhooksv1alpha1.AuthHeader{Name: "Authorization",
				SecretKeyRef: webhooksv1alpha1.SecretKeyRef{Name: auth.Name, Key: "value"}}
			ep.Spec.TimeoutSeconds = ptr.To[int32](1)
			ep.Spec.RetryPolicy.MaxRetries = ptr.To[int32](0) // one attempt, then Failed
		}}, mutate...)...)
}

// echoReceiver verifies the signature, then answers 500 with a body that echoes the request's
// Authorization and signature headers, as debugging endpoints and some frameworks' error pages do.
func echoReceiver(tb testing.TB, key []byte) *testreceiver.Receiver {
	tb.Helper()
	r := testreceiver.New(tb, key)
	r.Respond(func(req testreceiver.Request) testreceiver.Answer {
		return testreceiver.Answer{Status: http.StatusInternalServerError,
			Body: fmt.Sprintf("rejected: Authorization=%s signature=%s", req.Header.Get("Authorization"), req.Header.Get(dispatcher.HeaderSignature))}
	})
	return r
}

// TestNoCredentialsInOutput is issue 6, case 10: with endpoints whose URLs carry tokens, signed
// and with auth headers, and attempts that succeed, fail with 500, are refused, time out, or
// cannot start for a missing Secret key, no secret value, signature, auth header value or
// credential-bearing URL appears in what a user or a log pipeline sees: the operator's log at
// debug level, Events, the objects' status, and the metrics endpoint.
func TestNoCredentialsInOutput(t *testing.T) {
	ns := env.Namespace(t)
	creds := map[string]credentials{}
	var signatures []string
	record := func(reqs []testreceiver.Request) {
		for _, r := range reqs {
			signatures = append(signatures, r.Header.Get(dispatcher.HeaderSignature))
		}
	}

	// ok: answers 200. slow: answers after the 1 s timeout. refused: nobody listens.
	// missing: its signing Secret lacks the key, so no attempt is made.
	for _, name := range []string{"ok", "slow", "refused", "missing", "echo"} {
		creds[name] = newCredentials(name)
	}
	ok := testreceiver.New(t, []byte(creds["ok"].signingKey))
	slow := newHoldingReceiver(t, []byte(creds["slow"].signingKey), 2500*time.Millisecond)
	refused := freeAddr(t) // closed again: connections are refused
	echo := echoReceiver(t, []byte(creds["echo"].signingKey))

	endpoints := map[string]*webhooksv1alpha1.WebhookEndpoint{
		"ok":      leakEndpoint(t, ns, "ok", ok.URL, creds["ok"]),
		"slow":    leakEndpoint(t, ns, "slow", slow.URL, creds["slow"]),
		"refused": leakEndpoint(t, ns, "refused", "http://"+refused, creds["refused"]),
		"missing": leakEndpoint(t, ns, "missing", ok.URL, creds["missing"], func(ep *webhooksv1alpha1.WebhookEndpoint) {
			ep.Spec.SigningSecretRef.Key = "no-such-key"
		}),
		"echo": leakEndpoint(t, ns, "echo", echo.URL, creds["echo"]),
	}

	metricsAddr := freeAddr(t)
	op := startOperator(t, "operator", "--metrics-bind-address", metricsAddr, "--wait-retry-interval", "1s")
	op.waitDelivering(t, 60*time.Second)
	for name := range endpoints {
		createDeliveries(t, ns, name, "leak-"+name, 2)
	}

	// Every delivery finished, except the two waiting for the missing key.
	eventually(t, 60*time.Second, "8 deliveries finished", func() bool {
		p, err := phases(t, ns)
		return err == nil && p[webhooksv1alpha1.PhaseSucceeded] == 2 && p[webhooksv1alpha1.PhaseFailed] == 6
	})
	time.Sleep(3 * time.Second) // the held requests are recorded; the waiting deliveries look again
	record(ok.Requests())
	record(slow.Requests())
	var echoed []string // the signatures the echo receiver put in its answers
	for _, r := range echo.Requests() {
		if r.Verified {
			echoed = append(echoed, r.Header.Get(dispatcher.HeaderSignature))
		}
	}
	signatures = append(signatures, echoed...)
	if len(signatures) < 6 {
		t.Fatalf("the receivers saw %d signed requests, want at least 6", len(signatures))
	}

	// What a user and a log pipeline see.
	sources := map[string]string{"log": op.out.String()}
	var events eventsv1.EventList
	if err := env.Client.List(context.Background(), &events, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	if len(events.Items) == 0 {
		t.Errorf("no Events in the namespace: the failing attempts should have made some")
	}
	sources["events"] = mustJSON(t, events.Items)
	var deliveries webhooksv1alpha1.WebhookDeliveryList
	var eps webhooksv1alpha1.WebhookEndpointList
	if err := env.Client.List(context.Background(), &deliveries, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	if err := env.Client.List(context.Background(), &eps, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	var status strings.Builder
	for _, d := range deliveries.Items {
		status.WriteString(mustJSON(t, d.Status))
		if d.Spec.EndpointRef.Name == "missing" && d.Status.Attempts != 0 {
			t.Errorf("delivery %s made %d attempts without its signing key", d.Name, d.Status.Attempts)
		}
	}
	for _, ep := range eps.Items {
		status.WriteString(mustJSON(t, ep.Status))
	}
	sources["status"] = status.String()
	sources["metrics"] = scrape(t, metricsAddr, metricsReaderToken(t, ns))
	if !strings.Contains(sources["metrics"], "docrouter_webhook_attempts_total") {
		t.Errorf("the scrape holds no docrouter_webhook_attempts_total series: nothing was searched")
	}

	// Our own credentials must not appear anywhere. The echo endpoint's credentials are split
	// out: they can only appear because the receiver put them in its answer.
	type needle struct{ what, value string }
	var ours, echoedBack []needle
	for name, c := range creds {
		ns := []needle{
			{name + " signing key", c.signingKey},
			{name + " auth header value", c.authValue},
			{name + " auth token", strings.TrimPrefix(c.authValue, "Bearer ")},
			{name + " URL path token", c.pathToken},
			{name + " URL query token", c.queryToken},
			{name + " URL", endpoints[name].Spec.URL},
		}
		if name == "echo" {
			ours = append(ours, ns[0], ns[3], ns[4], ns[5])
			echoedBack = append(echoedBack, ns[1], ns[2])
			continue
		}
		ours = append(ours, ns...)
	}
	for _, s := range signatures {
		if s == "" {
			continue
		}
		n := needle{"signature " + s, s}
		if contains(echoed, s) {
			echoedBack = append(echoedBack, n)
		} else {
			ours = append(ours, n)
		}
	}
	for source, text := range sources {
		if len(text) == 0 {
			t.Errorf("captured nothing from %s", source)
		}
		for _, n := range ours {
			if strings.Contains(text, n.value) {
				t.Errorf("the %s holds the %s", source, n.what)
			}
		}
	}
	t.Logf("searched %d credential values in log (%d bytes), Events (%d), status (%d bytes), metrics (%d bytes)",
		len(ours), len(sources["log"]), len(events.Items), len(sources["status"]), len(sources["metrics"]))

	// A receiver that echoes the request's credentials in its error answer: the operator stores a
	// short snippet of the answer, which must not carry the credentials it sent. The operator
	// knows those values, so it can redact them; status and Events are readable by many more
	// people than the Secrets.
	t.Run("a receiver echoes the credentials in its error answer", func(t *testing.T) {
		for source, text := range sources {
			for _, n := range echoedBack {
				if strings.Contains(text, n.value) {
					t.Errorf("the %s holds the %s, echoed by the receiver", source, n.what)
				}
			}
		}
	})
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func mustJSON(tb testing.TB, v any) string {
	tb.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		tb.Fatal(err)
	}
	return string(b)
}

// scrape reads the operator's metrics endpoint (HTTPS with a self-signed certificate, on
// loopback).
func scrape(tb testing.TB, addr, token string) string {
	tb.Helper()
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // the operator's own self-signed loopback endpoint
	}}
	req, err := http.NewRequest(http.MethodGet, "https://"+addr+"/metrics", nil)
	if err != nil {
		tb.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := c.Do(req)
	if err != nil {
		tb.Errorf("scraping the metrics: %v", err)
		return ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		tb.Errorf("scraping the metrics: HTTP %d: %s", resp.StatusCode, b)
	}
	return string(b)
}

// metricsReaderToken is a ServiceAccount token allowed to GET /metrics, as Prometheus has in a
// cluster: the metrics endpoint authenticates and authorises every scrape.
func metricsReaderToken(tb testing.TB, ns string) string {
	tb.Helper()
	ctx := context.Background()
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "prometheus"}}
	role := &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: ns + "-metrics-reader"},
		Rules: []rbacv1.PolicyRule{{NonResourceURLs: []string{"/metrics"}, Verbs: []string{"get"}}}}
	binding := &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: ns + "-metrics-reader"},
		RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role.Name},
		Subjects: []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: ns, Name: sa.Name}}}
	for _, o := range []client.Object{sa, role, binding} {
		if err := env.Client.Create(ctx, o); err != nil {
			tb.Fatalf("creating %T: %v", o, err)
		}
	}
	tr, err := kubernetes.NewForConfigOrDie(env.Config).CoreV1().ServiceAccounts(ns).CreateToken(ctx, sa.Name,
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr.To[int64](600)}}, metav1.CreateOptions{})
	if err != nil {
		tb.Fatalf("requesting a token: %v", err)
	}
	return tr.Status.Token
}
