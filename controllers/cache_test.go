package controllers

import (
	"context"
	"encoding/json"
	"net/http"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
	"github.com/docrouter/webhook-operator/dispatcher"
	"github.com/docrouter/webhook-operator/internal/testenv/testreceiver"
)

func heavyDelivery(phase webhooksv1alpha1.DeliveryPhase) *webhooksv1alpha1.WebhookDelivery {
	d := webhooksv1alpha1.NewDelivery("ns", "crm", webhooksv1alpha1.Event{
		ID: "evt-1", Type: webhooksv1alpha1.EventLLMCompleted, Timestamp: 1640995200, OrganizationID: "org-1",
		Document: webhooksv1alpha1.Document{DocumentID: "doc-1", DocumentName: "invoice.pdf", TagIDs: []string{"t1"},
			Metadata: &apiextensionsv1.JSON{Raw: []byte(`{"source":"email"}`)}},
		Data: &apiextensionsv1.JSON{Raw: []byte(`{"invoice_total":"1250.00"}`)},
	})
	d.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "kubectl"}}
	d.Annotations = map[string]string{webhooksv1alpha1.RetryAnnotation: "t1", corev1.LastAppliedConfigAnnotation: "{...}"}
	d.Status = webhooksv1alpha1.WebhookDeliveryStatus{
		Phase: phase, Attempts: 2, LastRetryToken: "t0", LastError: "HTTP 503",
		CompletionTime: &metav1.Time{Time: time.Unix(1640995300, 0)},
		History:        []webhooksv1alpha1.Attempt{{Number: 1, Result: "HTTPError"}, {Number: 2, Result: "Success"}},
		Conditions:     []metav1.Condition{{Type: webhooksv1alpha1.ConditionReady, Status: metav1.ConditionTrue, Reason: webhooksv1alpha1.ReasonDelivered}},
	}
	return d
}

// With the operator's cache options, a delivery leaves the cache when it fails (it costs the
// operator no memory then); a manual retry is still noticed, sends the whole event and keeps
// the whole attempt history, because the reconciler reads the record through the API.
func TestManualRetryOfFailedDeliveryOutsideTheCache(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := env.Namespace(t)
	key := []byte("whsec-cache-test-key")
	g.Expect(env.Client.Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "signing"}, Data: map[string][]byte{"key": key},
	})).To(Succeed())
	rcv := testreceiver.New(t, key, http.StatusServiceUnavailable)

	opts := env.ManagerOptions(ns)
	opts.Cache = CacheOptions(opts.Cache)
	var cached client.Reader
	env.StartManager(t, opts, func(ctx context.Context, mgr ctrl.Manager) error {
		cached = mgr.GetCache()
		o := DefaultOptions()
		o.Namespaces = []string{ns}
		_, err := Setup(ctx, mgr, o, Deps{Sender: dispatcher.NewSender(dispatcher.SenderOptions{})})
		return err
	})

	g.Expect(env.Client.Create(ctx, &webhooksv1alpha1.WebhookEndpoint{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "crm"},
		Spec: webhooksv1alpha1.WebhookEndpointSpec{
			URL: rcv.URL, AllowInsecureHTTP: true, EventTypes: []string{"*"}, TimeoutSeconds: ptr.To[int32](2),
			SigningSecretRef: &webhooksv1alpha1.SecretKeyRef{Name: "signing", Key: "key"},
			RetryPolicy:      &webhooksv1alpha1.RetryPolicy{MaxRetries: ptr.To[int32](0)},
		},
	})).To(Succeed())
	d := heavyDelivery("")
	d.Namespace, d.Annotations, d.ManagedFields, d.Status = ns, nil, nil, webhooksv1alpha1.WebhookDeliveryStatus{}
	g.Expect(env.Client.Create(ctx, d)).To(Succeed())
	k := client.ObjectKeyFromObject(d)

	// Failed after its single attempt: gone from the cache, whole on the API server.
	g.Eventually(func(g Gomega) {
		got := &webhooksv1alpha1.WebhookDelivery{}
		g.Expect(env.Client.Get(ctx, k, got)).To(Succeed())
		g.Expect(got.Status.Phase).To(Equal(webhooksv1alpha1.PhaseFailed))
		g.Expect(apierrors.IsNotFound(cached.Get(ctx, k, &webhooksv1alpha1.WebhookDelivery{}))).To(BeTrue())
	}).WithTimeout(15 * time.Second).Should(Succeed())
	full := &webhooksv1alpha1.WebhookDelivery{}
	g.Expect(env.Client.Get(ctx, k, full)).To(Succeed())
	g.Expect(full.Status.History).To(HaveLen(1))
	g.Expect(full.Spec.Event.Data).NotTo(BeNil())

	rcv.SetStatuses(http.StatusOK)
	patch := []byte(`{"metadata":{"annotations":{"` + webhooksv1alpha1.RetryAnnotation + `":"again"}}}`)
	g.Expect(env.Client.Patch(ctx, full, client.RawPatch("application/merge-patch+json", patch))).To(Succeed())

	g.Eventually(func(g Gomega) {
		got := &webhooksv1alpha1.WebhookDelivery{}
		g.Expect(env.Client.Get(ctx, k, got)).To(Succeed())
		g.Expect(got.Status.Phase).To(Equal(webhooksv1alpha1.PhaseSucceeded))
		g.Expect(got.Status.Attempts).To(Equal(int32(2)))
		g.Expect(got.Status.LastRetryToken).To(Equal("again"))
		g.Expect(got.Status.History).To(HaveLen(2), "the history of the first attempt survives the retry")
		g.Expect(got.Status.History[0].StatusCode).To(Equal(int32(http.StatusServiceUnavailable)))
		g.Expect(got.Status.History[1].Trigger).To(Equal(webhooksv1alpha1.TriggerManual))
		g.Expect(got.Spec.Event.Data).NotTo(BeNil())
	}).WithTimeout(15 * time.Second).Should(Succeed())

	reqs := rcv.Requests()
	g.Expect(reqs).To(HaveLen(2))
	g.Expect(reqs[1].Verified).To(BeTrue())
	var body map[string]any
	g.Expect(json.Unmarshal(reqs[1].Body, &body)).To(Succeed())
	g.Expect(body).To(HaveKeyWithValue("data", map[string]any{"invoice_total": "1250.00"}), "the retry sends the whole event")
	g.Expect(body["document"]).To(HaveKeyWithValue("metadata", map[string]any{"source": "email"}))
}

// Finished deliveries are deleted after their retention period by the sweep, each with one
// delete; a retention of 0 keeps them.
func TestRetentionSweepDeletesExpiredDeliveries(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := env.Namespace(t)
	signingSecret(t, ns)
	ok, down := testreceiver.New(t, testKey, http.StatusOK), testreceiver.New(t, testKey, http.StatusInternalServerError)
	opts := testOptions()
	opts.SucceededRetention, opts.FailedRetention, opts.RetentionSweepInterval = 2*time.Second, 0, 500*time.Millisecond
	startOperator(t, ns, opts)
	create(t, newEndpoint(ns, "ok", ok.URL), newEndpoint(ns, "down", down.URL, func(ep *webhooksv1alpha1.WebhookEndpoint) {
		ep.Spec.RetryPolicy = fastRetries(0)
	}))
	succeeded := webhooksv1alpha1.NewDelivery(ns, "ok", newEvent("evt-kept-briefly"))
	failed := webhooksv1alpha1.NewDelivery(ns, "down", newEvent("evt-kept"))
	create(t, succeeded, failed)

	g.Eventually(func(g Gomega) {
		g.Expect(getDelivery(g, ns, succeeded.Name).Status.Phase).To(Equal(webhooksv1alpha1.PhaseSucceeded))
		g.Expect(getDelivery(g, ns, failed.Name).Status.Phase).To(Equal(webhooksv1alpha1.PhaseFailed))
	}).WithTimeout(10 * time.Second).Should(Succeed())
	g.Consistently(func() error {
		return env.Client.Get(ctx, client.ObjectKeyFromObject(succeeded), &webhooksv1alpha1.WebhookDelivery{})
	}).WithTimeout(time.Second).Should(Succeed(), "kept for its retention period")
	g.Eventually(func() bool {
		return apierrors.IsNotFound(env.Client.Get(ctx, client.ObjectKeyFromObject(succeeded), &webhooksv1alpha1.WebhookDelivery{}))
	}).WithTimeout(10*time.Second).Should(BeTrue(), "deleted after it")
	g.Consistently(func() error {
		return env.Client.Get(ctx, client.ObjectKeyFromObject(failed), &webhooksv1alpha1.WebhookDelivery{})
	}).WithTimeout(2*time.Second).Should(Succeed(), "a retention of 0 keeps Failed deliveries")
}
