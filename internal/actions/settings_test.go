package actions_test

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
	"github.com/docrouter/webhook-operator/internal/actions"
	"github.com/docrouter/webhook-operator/internal/testenv/stack"
)

var st *stack.Stack

// The settings page's saves against a real API server (the CRD's validation, dry runs, owner
// references) with the operator running, so that an endpoint saved here becomes Ready.
func TestMain(m *testing.M) {
	klog.SetOutput(io.Discard)
	klog.LogToStderr(false)
	s, err := stack.Start(stack.Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	st = s
	code := m.Run()
	if err := s.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, "stopping the stack:", err)
	}
	os.Exit(code)
}

func adminClient(t *testing.T) *actions.Client {
	t.Helper()
	c, err := actions.New(st.Env.Config)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func secrets(t *testing.T, ns string) []corev1.Secret {
	t.Helper()
	var list corev1.SecretList
	if err := st.Client.List(context.Background(), &list, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	return list.Items
}

func ready(t *testing.T, ns, name string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ep := &webhooksv1alpha1.WebhookEndpoint{}
		if err := st.Client.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, ep); err != nil {
			t.Fatal(err)
		}
		for _, c := range ep.Status.Conditions {
			if c.Type == webhooksv1alpha1.ConditionReady && c.Status == "True" && c.ObservedGeneration == ep.Generation {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("endpoint %s is not Ready within 30s: %+v", name, ep.Status.Conditions)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Each way of giving an endpoint its secret: generated (returned once, stored in a new Secret
// that the endpoint owns), typed in (stored likewise, not returned), an existing Secret's key,
// and a header's value. The operator finds each Secret: the endpoint becomes Ready.
func TestCreateEndpointWithEachSecretSource(t *testing.T) {
	ctx := context.Background()
	ns := st.Env.Namespace(t)
	c := adminClient(t)
	base := actions.EndpointSettings{URL: "https://hooks.example.com/docrouter", EventTypes: []string{"llm.completed"}}

	gen := base
	gen.Name, gen.Auth, gen.Source = "generated", actions.AuthSignature, actions.SecretGenerate
	res, err := c.CreateEndpoint(ctx, ns, gen)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Generated) < 40 || res.SecretCreated == "" || res.Endpoint.Spec.SigningSecretRef == nil || res.Endpoint.Spec.SigningSecretRef.Name != res.SecretCreated {
		t.Fatalf("generated: %+v", res)
	}
	sec := &corev1.Secret{}
	if err := st.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: res.SecretCreated}, sec); err != nil {
		t.Fatal(err)
	}
	if string(sec.Data[actions.SigningSecretKey]) != res.Generated {
		t.Errorf("the Secret does not hold the generated secret")
	}
	if len(sec.OwnerReferences) != 1 || sec.OwnerReferences[0].UID != res.Endpoint.UID || sec.OwnerReferences[0].Kind != "WebhookEndpoint" {
		t.Errorf("the Secret is not owned by its endpoint: %+v", sec.OwnerReferences)
	}
	ready(t, ns, "generated")

	std := base
	std.Name, std.Auth, std.Source, std.SignatureScheme = "standard", actions.AuthSignature, actions.SecretGenerate, "StandardWebhooks"
	if res, err := c.CreateEndpoint(ctx, ns, std); err != nil || !strings.HasPrefix(res.Generated, "whsec_") || res.Endpoint.Spec.SignatureScheme != webhooksv1alpha1.SignatureSchemeStandardWebhooks {
		t.Errorf("a Standard Webhooks secret is whsec_<base64>: %+v %v", res, err)
	}

	typed := base
	typed.Name, typed.Auth, typed.Source, typed.Value = "typed", actions.AuthSignature, actions.SecretValue, "my-own-signing-secret"
	res, err = c.CreateEndpoint(ctx, ns, typed)
	if err != nil {
		t.Fatal(err)
	}
	if res.Generated != "" {
		t.Errorf("a typed secret is given back: %q", res.Generated)
	}
	if err := st.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: res.SecretCreated}, sec); err != nil || string(sec.Data[actions.SigningSecretKey]) != "my-own-signing-secret" {
		t.Errorf("the typed secret's Secret: %v %v", sec.Data, err)
	}
	ready(t, ns, "typed")

	if err := st.Client.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "shared"}, Data: map[string][]byte{"key": []byte("shared-secret")}}); err != nil {
		t.Fatal(err)
	}
	existing := base
	existing.Name, existing.Auth, existing.Source, existing.SecretName, existing.SecretKey = "existing", actions.AuthSignature, actions.SecretExisting, "shared", "key"
	res, err = c.CreateEndpoint(ctx, ns, existing)
	if err != nil {
		t.Fatal(err)
	}
	if res.SecretCreated != "" || *res.Endpoint.Spec.SigningSecretRef != (webhooksv1alpha1.SecretKeyRef{Name: "shared", Key: "key"}) {
		t.Errorf("an existing Secret: %+v", res)
	}
	ready(t, ns, "existing")

	header := base
	header.Name, header.Auth, header.Source, header.HeaderName, header.Value = "header", actions.AuthHeader, actions.SecretValue, "X-Api-Key", "api-key-1"
	res, err = c.CreateEndpoint(ctx, ns, header)
	if err != nil {
		t.Fatal(err)
	}
	if h := res.Endpoint.Spec.AuthHeader; h == nil || h.Name != "X-Api-Key" || h.SecretKeyRef.Key != actions.HeaderValueKey || res.Endpoint.Spec.SigningSecretRef != nil {
		t.Errorf("a header: %+v", res.Endpoint.Spec)
	}
	ready(t, ns, "header")
}

// The API server's validation refuses an endpoint before anything is made: the CRD's sentence
// comes back, and no Secret is left behind.
func TestRefusedEndpointLeavesNothing(t *testing.T) {
	ctx := context.Background()
	ns := st.Env.Namespace(t)
	c := adminClient(t)
	before := len(secrets(t, ns))
	for _, s := range []struct {
		settings actions.EndpointSettings
		want     string
	}{
		{actions.EndpointSettings{Name: "plain", URL: "http://hooks.example.com/", EventTypes: []string{"llm.completed"}, Auth: actions.AuthSignature, Source: actions.SecretGenerate},
			"spec.url uses plain http://: use an https:// URL, or set spec.allowInsecureHTTP: true"},
		{actions.EndpointSettings{Name: "events", URL: "https://hooks.example.com/", EventTypes: []string{"llm.done"}, Auth: actions.AuthSignature, Source: actions.SecretGenerate},
			"spec.eventTypes: each entry must be one of document.uploaded, llm.completed"},
		{actions.EndpointSettings{Name: "retries", URL: "https://hooks.example.com/", EventTypes: []string{"*"}, Auth: actions.AuthNone, RetryPolicy: webhooksv1alpha1.RetryPolicy{MaxRetries: ptr.To[int32](50)}},
			"spec.retryPolicy.maxRetries"},
		{actions.EndpointSettings{Name: "hdr", URL: "https://hooks.example.com/", EventTypes: []string{"*"}, Auth: actions.AuthHeader, Source: actions.SecretValue, HeaderName: "Content-Type", Value: "x"},
			"spec.authHeader.name must not be a header the operator sets itself"},
	} {
		_, err := c.CreateEndpoint(ctx, ns, s.settings)
		if !apierrors.IsInvalid(err) || !strings.Contains(actions.Sentence(err), s.want) {
			t.Errorf("%s: want the API server's sentence %q, got %v", s.settings.Name, s.want, err)
		}
	}
	if after := len(secrets(t, ns)); after != before {
		t.Errorf("refused endpoints left %d Secrets behind", after-before)
	}
	if _, err := c.CreateEndpoint(ctx, ns, actions.EndpointSettings{Name: "empty", URL: "https://hooks.example.com/", EventTypes: []string{"*"}, Auth: actions.AuthSignature, Source: actions.SecretValue}); err == nil || !strings.Contains(err.Error(), "enter the secret's value") {
		t.Errorf("an empty typed secret: %v", err)
	}
}

// An edit keeps the Secret it is told to keep, changes what the form changed, and is refused
// (a conflict) when the endpoint changed since the form was shown.
func TestUpdateEndpoint(t *testing.T) {
	ctx := context.Background()
	ns := st.Env.Namespace(t)
	c := adminClient(t)
	res, err := c.CreateEndpoint(ctx, ns, actions.EndpointSettings{Name: "crm", URL: "https://hooks.example.com/a", EventTypes: []string{"llm.completed"}, Auth: actions.AuthSignature, Source: actions.SecretGenerate})
	if err != nil {
		t.Fatal(err)
	}
	shown := res.Endpoint.Generation
	ready(t, ns, "crm") // the operator has written the status meanwhile: that is no change of the spec
	keep := actions.EndpointSettings{URL: "https://hooks.example.com/b", EventTypes: []string{"llm.completed", "llm.error"}, Auth: actions.AuthSignature, Source: actions.SecretKeep,
		RetryPolicy: webhooksv1alpha1.RetryPolicy{MaxRetries: ptr.To[int32](3)}}
	up, err := c.UpdateEndpoint(ctx, ns, "crm", shown, keep)
	if err != nil {
		t.Fatal(err)
	}
	if up.SecretCreated != "" || up.Endpoint.Spec.SigningSecretRef.Name != res.SecretCreated || up.Endpoint.Spec.URL != "https://hooks.example.com/b" || *up.Endpoint.Spec.RetryPolicy.MaxRetries != 3 {
		t.Errorf("the edit: %+v", up.Endpoint.Spec)
	}
	// The form of before the edit, sent again: refused, not overwriting.
	_, err = c.UpdateEndpoint(ctx, ns, "crm", shown, actions.EndpointSettings{URL: "https://hooks.example.com/c", EventTypes: []string{"*"}, Auth: actions.AuthNone})
	if err == nil || !strings.Contains(err.Error(), "endpoint crm was changed since this form was shown: reload the page and make the edit again") {
		t.Errorf("an edit of a changed endpoint: want a refusal that says so, got %v", err)
	}
	ep := &webhooksv1alpha1.WebhookEndpoint{}
	if err := st.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: "crm"}, ep); err != nil || ep.Spec.URL != "https://hooks.example.com/b" {
		t.Errorf("the refused edit changed the endpoint: %v %v", ep.Spec.URL, err)
	}
	_, err = c.UpdateEndpoint(ctx, ns, "crm", 0, actions.EndpointSettings{URL: "https://hooks.example.com/b", EventTypes: []string{"*"}, Auth: actions.AuthHeader, Source: actions.SecretKeep, HeaderName: "X-Api-Key"})
	if err == nil || !strings.Contains(err.Error(), "no Secret of that kind to keep") {
		t.Errorf("keeping a header the endpoint does not have: %v", err)
	}
}
