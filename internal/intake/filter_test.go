package intake_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
	"github.com/docrouter/webhook-operator/internal/intake"
	"github.com/docrouter/webhook-operator/internal/metrics"
	"github.com/docrouter/webhook-operator/internal/testenv/testreceiver"
	"github.com/docrouter/webhook-operator/publish"
)

// filteredEndpoint creates an endpoint subscribed to every type, signing with signingKey, with
// spec.filter expr ("" for none).
func filteredEndpoint(t *testing.T, ns, name, url, expr string) {
	t.Helper()
	create(t, &webhooksv1alpha1.WebhookEndpoint{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: webhooksv1alpha1.WebhookEndpointSpec{
			URL: url, AllowInsecureHTTP: true, EventTypes: []string{"*"}, Filter: expr,
			SigningSecretRef: &webhooksv1alpha1.SecretKeyRef{Name: "signing", Key: "key"},
			TimeoutSeconds:   ptr.To[int32](2),
		},
	})
}

const invoiceEvent = `{"event_id": "evt-%s", "event_type": "llm.completed", "organization_id": "%s",
  "document": {"document_id": "doc-1", "document_name": "invoice.pdf", "tag_ids": [%s], "metadata": {"source": "email"}},
  "data": {"invoice_total": 1250.5, "currency": "EUR"}}`

// An event is delivered to the endpoints whose filter selects it and to those without one; the
// others get no delivery, and the 202 answer names them and says why: not matched, a filter
// that does not compile (never evaluated, never bypassed) or one that failed on this event.
func TestPublishAppliesEndpointFilters(t *testing.T) {
	g := NewWithT(t)
	ns := env.Namespace(t)
	signingSecret(t, ns)
	invoices, otherOrg, broken, all, bigTotals := testreceiver.New(t, signingKey), testreceiver.New(t, signingKey),
		testreceiver.New(t, signingKey), testreceiver.New(t, signingKey), testreceiver.New(t, signingKey)
	filteredEndpoint(t, ns, "invoices", invoices.URL, `event.organization_id == "org-1" && "invoices" in event.document.tag_ids`)
	filteredEndpoint(t, ns, "other-org", otherOrg.URL, `event.organization_id == "org-2"`)
	filteredEndpoint(t, ns, "broken", broken.URL, `event.organisation_id == "org-1"`)
	filteredEndpoint(t, ns, "all", all.URL, "")
	filteredEndpoint(t, ns, "big-totals", bigTotals.URL, `event.data.invoice_total > 1000 && event.document.metadata.source == "email"`)
	base := startIntake(t, ns, intake.Options{AllowAnonymous: true}, true)
	filtered := func(reason string) float64 {
		return testutil.ToFloat64(metrics.DeliveriesFiltered.WithLabelValues(ns, reason))
	}

	// The endpoint reconciler reports the broken filter before anything is published.
	g.Eventually(func(g Gomega) {
		ep := &webhooksv1alpha1.WebhookEndpoint{}
		g.Expect(env.Client.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "broken"}, ep)).To(Succeed())
		ready := meta.FindStatusCondition(ep.Status.Conditions, webhooksv1alpha1.ConditionReady)
		g.Expect(ready).NotTo(BeNil())
		g.Expect(ready.Reason).To(Equal(webhooksv1alpha1.ReasonInvalidFilter))
		g.Expect(ready.Message).To(ContainSubstring("undefined field 'organisation_id'"))
	}).WithTimeout(10 * time.Second).Should(Succeed())

	acc := post(t, base, ns, "", fmt.Appendf(nil, invoiceEvent, "1", "org-1", `"invoices", "2026"`)).accepted(t)
	g.Expect(acc.Deliveries).To(ConsistOf(
		publish.Delivery{Name: webhooksv1alpha1.DeliveryName("invoices", "evt-1"), Endpoint: "invoices", Created: true},
		publish.Delivery{Name: webhooksv1alpha1.DeliveryName("all", "evt-1"), Endpoint: "all", Created: true},
		publish.Delivery{Name: webhooksv1alpha1.DeliveryName("big-totals", "evt-1"), Endpoint: "big-totals", Created: true},
	))
	g.Expect(acc.Skipped).To(ConsistOf(
		publish.Skipped{Endpoint: "other-org", Reason: publish.SkippedNotMatched},
		And(HaveField("Endpoint", "broken"), HaveField("Reason", publish.SkippedInvalidFilter),
			HaveField("Message", And(ContainSubstring("undefined field 'organisation_id'"), ContainSubstring("publish the same event_id again")))),
	))
	for _, r := range []*testreceiver.Receiver{invoices, all, bigTotals} {
		g.Eventually(r.Count, 20*time.Second, 50*time.Millisecond).Should(Equal(1))
		g.Expect(r.Requests()[0].Verified).To(BeTrue())
	}
	g.Expect(deliveries(t, ns)).To(HaveLen(3))

	// Another organization's event without the tag: only the endpoints it selects; a filter that
	// reads data the event lacks fails for this event and skips it, saying why.
	before := map[string]float64{}
	for _, r := range []string{metrics.FilterNoMatch, metrics.FilterInvalid, metrics.FilterError} {
		before[r] = filtered(r)
	}
	acc = post(t, base, ns, "", []byte(`{"event_id": "evt-2", "event_type": "document.uploaded", "organization_id": "org-2"}`)).accepted(t)
	g.Expect(acc.Deliveries).To(ConsistOf(
		publish.Delivery{Name: webhooksv1alpha1.DeliveryName("other-org", "evt-2"), Endpoint: "other-org", Created: true},
		publish.Delivery{Name: webhooksv1alpha1.DeliveryName("all", "evt-2"), Endpoint: "all", Created: true},
	))
	g.Expect(acc.Skipped).To(ConsistOf(
		publish.Skipped{Endpoint: "invoices", Reason: publish.SkippedNotMatched},
		HaveField("Reason", publish.SkippedInvalidFilter),
		And(HaveField("Endpoint", "big-totals"), HaveField("Reason", publish.SkippedFilterFailed),
			HaveField("Message", ContainSubstring("no such key: invoice_total"))),
	))
	g.Expect(filtered(metrics.FilterNoMatch) - before[metrics.FilterNoMatch]).To(Equal(1.0))
	g.Expect(filtered(metrics.FilterInvalid) - before[metrics.FilterInvalid]).To(Equal(1.0))
	g.Expect(filtered(metrics.FilterError) - before[metrics.FilterError]).To(Equal(1.0))
	g.Eventually(otherOrg.Count, 20*time.Second, 50*time.Millisecond).Should(Equal(1))
	g.Eventually(all.Count, 20*time.Second, 50*time.Millisecond).Should(Equal(2))
	g.Consistently(func() []int { return []int{invoices.Count(), broken.Count(), bigTotals.Count()} }, 2*time.Second, 100*time.Millisecond).
		Should(Equal([]int{1, 0, 1}), "nothing reaches a receiver past a filter that did not select the event")

	// webhook.test is not filtered: it tests the receiver.
	acc = post(t, base, ns, "", []byte(`{"event_id": "evt-test", "event_type": "webhook.test"}`)).accepted(t)
	g.Expect(acc.Deliveries).To(HaveLen(5))
	g.Expect(acc.Skipped).To(BeEmpty())
}

// When no subscribed endpoint's filter selects the event, the answer says so.
func TestPublishSelectedByNoFilterAcceptsWithMessage(t *testing.T) {
	g := NewWithT(t)
	ns := env.Namespace(t)
	filteredEndpoint(t, ns, "org-2", "http://127.0.0.1:1/unused", `event.organization_id == "org-2"`)
	base := startIntake(t, ns, intake.Options{AllowAnonymous: true}, false)
	acc := post(t, base, ns, "", fmt.Appendf(nil, invoiceEvent, "3", "org-1", `"invoices"`)).accepted(t)
	g.Expect(acc.Deliveries).To(BeEmpty())
	g.Expect(acc.Skipped).To(Equal([]publish.Skipped{{Endpoint: "org-2", Reason: publish.SkippedNotMatched}}))
	g.Expect(acc.Message).To(ContainSubstring("did not select the event with their spec.filter"))
	g.Expect(deliveries(t, ns)).To(BeEmpty())
}
