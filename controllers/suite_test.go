package controllers

import (
	"context"
	"encoding/json"
	"os"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
	"github.com/docrouter/webhook-operator/dispatcher"
	"github.com/docrouter/webhook-operator/internal/history/historytest"
	"github.com/docrouter/webhook-operator/internal/testenv"
)

var env *testenv.Env

func TestMain(m *testing.M) { os.Exit(testenv.Run(m, &env, historytest.Main)) }

// testOptions are the operator's options with intervals short enough for tests.
func testOptions() Options {
	o := DefaultOptions()
	o.WaitRetryInterval = 500 * time.Millisecond
	o.HealthUpdateInterval = 200 * time.Millisecond
	o.SecretTTL = 0
	return o
}

// startOperator runs the controllers against namespace ns, as the operator binary does.
func startOperator(t *testing.T, ns string, opts Options) (stop func()) {
	t.Helper()
	opts.Namespaces = []string{ns}
	mgrOpts := env.ManagerOptions(ns)
	mgrOpts.Cache = CacheOptions(mgrOpts.Cache) // as main.go: finished deliveries stripped in the cache
	return env.StartManager(t, mgrOpts, func(ctx context.Context, mgr ctrl.Manager) error {
		_, err := Setup(ctx, mgr, opts, Deps{Sender: dispatcher.NewSender(dispatcher.SenderOptions{})})
		return err
	})
}

var testKey = []byte("whsec-test-signing-key")

// signingSecret creates the Secret that endpoints of the tests sign with.
func signingSecret(t *testing.T, ns string) {
	t.Helper()
	s := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "signing"},
		Data:       map[string][]byte{"key": testKey},
	}
	if err := env.Client.Create(context.Background(), s); err != nil {
		t.Fatal(err)
	}
}

// fastRetries is a retry policy of seconds, not hours, without jitter.
func fastRetries(maxRetries int32) *webhooksv1alpha1.RetryPolicy {
	return &webhooksv1alpha1.RetryPolicy{
		MaxRetries: ptr.To(maxRetries), InitialDelaySeconds: ptr.To[int32](1),
		BackoffFactor: ptr.To[int32](2), MaxDelaySeconds: ptr.To[int32](60), JitterPercent: ptr.To[int32](0),
	}
}

func newEndpoint(ns, name, url string, mutate ...func(*webhooksv1alpha1.WebhookEndpoint)) *webhooksv1alpha1.WebhookEndpoint {
	ep := &webhooksv1alpha1.WebhookEndpoint{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: webhooksv1alpha1.WebhookEndpointSpec{
			URL:               url,
			AllowInsecureHTTP: true,
			EventTypes:        []string{"*"},
			SigningSecretRef:  &webhooksv1alpha1.SecretKeyRef{Name: "signing", Key: "key"},
			TimeoutSeconds:    ptr.To[int32](2),
			RetryPolicy:       fastRetries(3),
		},
	}
	for _, m := range mutate {
		m(ep)
	}
	return ep
}

func create(t *testing.T, objs ...client.Object) {
	t.Helper()
	for _, o := range objs {
		if err := env.Client.Create(context.Background(), o); err != nil {
			t.Fatalf("creating %T %s: %v", o, o.GetName(), err)
		}
	}
}

// newEvent is an llm.completed event with metadata and extraction results.
func newEvent(id string) webhooksv1alpha1.Event {
	return webhooksv1alpha1.Event{
		ID:             id,
		Type:           webhooksv1alpha1.EventLLMCompleted,
		Timestamp:      1640995200,
		OrganizationID: "org-1",
		Document: webhooksv1alpha1.Document{
			DocumentID: "doc-123", DocumentName: "invoice.pdf", TagIDs: []string{"tag1", "tag2"},
			Metadata: &apiextJSON{Raw: []byte(`{"source":"email"}`)},
		},
		Data: &apiextJSON{Raw: []byte(`{"invoice_total":"1250.00","currency":"EUR"}`)},
	}
}

func getDelivery(g Gomega, ns, name string) *webhooksv1alpha1.WebhookDelivery {
	d := &webhooksv1alpha1.WebhookDelivery{}
	g.Expect(env.Client.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: name}, d)).To(Succeed())
	return d
}

func getEndpoint(g Gomega, ns, name string) *webhooksv1alpha1.WebhookEndpoint {
	ep := &webhooksv1alpha1.WebhookEndpoint{}
	g.Expect(env.Client.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: name}, ep)).To(Succeed())
	return ep
}

func condition(conds []metav1.Condition, t string) metav1.Condition {
	if c := meta.FindStatusCondition(conds, t); c != nil {
		return *c
	}
	return metav1.Condition{}
}

func decode(t *testing.T, body []byte) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(body, &m); err != nil {
		t.Fatalf("body is not JSON: %v: %s", err, body)
	}
	return m
}

type apiextJSON = apiextensionsv1.JSON
