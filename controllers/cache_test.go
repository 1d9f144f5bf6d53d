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
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
	"github.com/docrouter/webhook-operator/dispatcher"
	"github.com/docrouter/webhook-operator/internal/testenv"
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
		Conditions:     []metav1.Condition{{Type: webhooksv1alpha1.ConditionReady, Status: metav1.ConditionTrue, Reason: ReasonDelivered}},
	}
	return d
}

// A finished delivery is cached without its event body, history and conditions, but with all
// that decides its future (phase, attempts, completion time, retry tokens, labels); an
// unfinished one keeps everything but managed fields.
func TestStripFinishedDelivery(t *testing.T) {
	for _, phase := range []webhooksv1alpha1.DeliveryPhase{webhooksv1alpha1.PhaseSucceeded, webhooksv1alpha1.PhaseFailed} {
		t.Run(string(phase), func(t *testing.T) {
			g := NewWithT(t)
			out, err := StripFinishedDelivery(heavyDelivery(phase))
			g.Expect(err).NotTo(HaveOccurred())
			d := out.(*webhooksv1alpha1.WebhookDelivery)
			g.Expect(d.ManagedFields).To(BeNil())
			g.Expect(d.Annotations).To(Equal(map[string]string{webhooksv1alpha1.RetryAnnotation: "t1"}))
			g.Expect(d.Labels).To(HaveKeyWithValue(webhooksv1alpha1.EndpointLabel, "crm"))
			g.Expect(d.Spec.EndpointRef.Name).To(Equal("crm"))
			g.Expect(d.Spec.Event).To(Equal(webhooksv1alpha1.Event{ID: "evt-1", Type: webhooksv1alpha1.EventLLMCompleted, Timestamp: 1640995200}))
			g.Expect(d.Status.History).To(BeNil())
			g.Expect(d.Status.Conditions).To(BeNil())
			g.Expect(d.Status.LastError).To(BeEmpty())
			g.Expect(d.Status.Phase).To(Equal(phase))
			g.Expect(d.Status.Attempts).To(Equal(int32(2)))
			g.Expect(d.Status.LastRetryToken).To(Equal("t0"))
			g.Expect(d.Status.CompletionTime).NotTo(BeNil())

			again, err := StripFinishedDelivery(d.DeepCopy())
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(again).To(Equal(d), "the transform is idempotent")
		})
	}
	t.Run("Retrying", func(t *testing.T) {
		g := NewWithT(t)
		in := heavyDelivery(webhooksv1alpha1.PhaseRetrying)
		want := in.DeepCopy()
		want.ManagedFields = nil
		delete(want.Annotations, corev1.LastAppliedConfigAnnotation)
		out, err := StripFinishedDelivery(in)
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(out).To(Equal(want))
	})
	t.Run("other kinds pass through", func(t *testing.T) {
		g := NewWithT(t)
		s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "x"}}}}
		out, err := StripFinishedDelivery(s)
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(out.(*corev1.Secret).ManagedFields).To(HaveLen(1))
	})
}

// With the operator's cache options, a Failed delivery sits stripped in the cache; a manual
// retry still sends the whole event and keeps the whole attempt history, because the
// reconciler reads the record through the API reader first.
func TestManualRetryOfStrippedFailedDelivery(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := env.Namespace(t)
	key := []byte("whsec-cache-test-key")
	g.Expect(env.Client.Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "signing"}, Data: map[string][]byte{"key": key},
	})).To(Succeed())
	rcv := testenv.NewReceiver(t, key, http.StatusServiceUnavailable)

	opts := env.ManagerOptions(ns)
	opts.Cache = CacheOptions(opts.Cache)
	var cached client.Reader
	env.StartManager(t, opts, func(ctx context.Context, mgr ctrl.Manager) error {
		cached = mgr.GetCache()
		return Setup(ctx, mgr, dispatcher.NewSender(dispatcher.SenderOptions{}), DefaultOptions(), nil)
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

	// Failed after its single attempt; the cache holds it stripped, the API server whole.
	g.Eventually(func(g Gomega) {
		got := &webhooksv1alpha1.WebhookDelivery{}
		g.Expect(cached.Get(ctx, k, got)).To(Succeed())
		g.Expect(got.Status.Phase).To(Equal(webhooksv1alpha1.PhaseFailed))
		g.Expect(got.Status.History).To(BeEmpty())
		g.Expect(got.Spec.Event.Data).To(BeNil())
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
