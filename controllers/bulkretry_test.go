package controllers

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"github.com/prometheus/client_golang/prometheus/testutil"
	eventsv1 "k8s.io/api/events/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
	"github.com/docrouter/webhook-operator/internal/metrics"
	"github.com/docrouter/webhook-operator/internal/testenv/testreceiver"
)

// setEndpointAnnotation sets an annotation on an endpoint with a merge patch, as
// `kubectl annotate --overwrite` does.
func setEndpointAnnotation(g Gomega, ns, name, key, value string) {
	ep := &webhooksv1alpha1.WebhookEndpoint{}
	ep.Namespace, ep.Name = ns, name
	patch := fmt.Sprintf(`{"metadata":{"annotations":{%q:%q}}}`, key, value)
	g.Expect(env.Client.Patch(context.Background(), ep, client.RawPatch("application/merge-patch+json", []byte(patch)))).To(Succeed())
}

// The retry-failed annotation on an endpoint gives each of its Failed deliveries one manual
// attempt, once per value: a Succeeded delivery of the endpoint and a Failed delivery of
// another endpoint are left alone, and the same value set again retries nothing.
func TestRetryFailedAnnotationRetriesEveryFailedDeliveryOfTheEndpointOnce(t *testing.T) {
	g := NewWithT(t)
	ns := env.Namespace(t)
	signingSecret(t, ns)
	crm := testreceiver.New(t, testKey, http.StatusOK, http.StatusInternalServerError)
	other := testreceiver.New(t, testKey, http.StatusInternalServerError)
	startOperator(t, ns, testOptions())
	noRetries := func(ep *webhooksv1alpha1.WebhookEndpoint) { ep.Spec.RetryPolicy = fastRetries(0) }
	create(t, newEndpoint(ns, "crm", crm.URL+"/hooks", noRetries), newEndpoint(ns, "other", other.URL+"/hooks", noRetries))

	phaseOf := func(g Gomega, name string) webhooksv1alpha1.DeliveryPhase {
		return getDelivery(g, ns, name).Status.Phase
	}
	ok := webhooksv1alpha1.NewDelivery(ns, "crm", newEvent("evt-ok"))
	create(t, ok)
	g.Eventually(func(g Gomega) { g.Expect(phaseOf(g, ok.Name)).To(Equal(webhooksv1alpha1.PhaseSucceeded)) }).
		WithTimeout(10 * time.Second).Should(Succeed())

	var failed []string
	for i := range 3 {
		d := webhooksv1alpha1.NewDelivery(ns, "crm", newEvent(fmt.Sprintf("evt-%d", i)))
		create(t, d)
		failed = append(failed, d.Name)
	}
	elsewhere := webhooksv1alpha1.NewDelivery(ns, "other", newEvent("evt-other"))
	create(t, elsewhere)
	for _, name := range append(failed, elsewhere.Name) {
		g.Eventually(func(g Gomega) { g.Expect(phaseOf(g, name)).To(Equal(webhooksv1alpha1.PhaseFailed)) }).
			WithTimeout(10 * time.Second).Should(Succeed())
	}
	g.Expect(crm.Requests()).To(HaveLen(4))

	// The receiver is fixed; one annotation retries the endpoint's failed deliveries.
	crm.SetStatuses(http.StatusOK)
	setEndpointAnnotation(g, ns, "crm", webhooksv1alpha1.RetryFailedAnnotation, "fixed-1")
	for _, name := range failed {
		g.Eventually(func(g Gomega) {
			d := getDelivery(g, ns, name)
			g.Expect(d.Status.Phase).To(Equal(webhooksv1alpha1.PhaseSucceeded))
			g.Expect(d.Status.Attempts).To(Equal(int32(2)))
			g.Expect(d.Status.History[len(d.Status.History)-1].Trigger).To(Equal(webhooksv1alpha1.TriggerManual))
			g.Expect(d.Annotations[webhooksv1alpha1.RetryAnnotation]).To(Equal("fixed-1"))
		}).WithTimeout(10 * time.Second).Should(Succeed())
	}
	g.Eventually(func(g Gomega) {
		ep := getEndpoint(g, ns, "crm")
		g.Expect(ep.Status.LastRetryFailedToken).To(Equal("fixed-1"))
	}).WithTimeout(10 * time.Second).Should(Succeed())
	g.Eventually(func(g Gomega) {
		var events eventsv1.EventList
		g.Expect(env.Client.List(context.Background(), &events, client.InNamespace(ns))).To(Succeed())
		var notes []string
		for _, e := range events.Items {
			if e.Reason == webhooksv1alpha1.EventReasonRetryingFailed && e.Regarding.Name == "crm" {
				notes = append(notes, e.Note)
			}
		}
		g.Expect(notes).To(ConsistOf("retrying 3 failed deliveries (webhooks.docrouter.ai/retry-failed=fixed-1)"))
	}).WithTimeout(10 * time.Second).Should(Succeed())
	// Handled once: one Event (not a series of two) and three deliveries counted.
	g.Expect(retryEventCount(g, ns)).To(Equal(int32(1)))
	g.Expect(testutil.ToFloat64(metrics.BulkRetriedDeliveries.WithLabelValues(ns))).To(Equal(3.0))

	// The same value again, and a new value with nothing Failed, send nothing.
	setEndpointAnnotation(g, ns, "crm", webhooksv1alpha1.RetryFailedAnnotation, "fixed-1")
	setEndpointAnnotation(g, ns, "crm", webhooksv1alpha1.RetryFailedAnnotation, "fixed-2")
	g.Eventually(func(g Gomega) {
		ep := getEndpoint(g, ns, "crm")
		g.Expect(ep.Status.LastRetryFailedToken).To(Equal("fixed-2"))
	}).WithTimeout(10 * time.Second).Should(Succeed())
	g.Consistently(func() int { return len(crm.Requests()) }).WithTimeout(2 * time.Second).Should(Equal(7))
	g.Expect(getDelivery(g, ns, ok.Name).Status.Attempts).To(Equal(int32(1)))
	d := getDelivery(g, ns, elsewhere.Name)
	g.Expect(d.Status.Phase).To(Equal(webhooksv1alpha1.PhaseFailed))
	g.Expect(d.Status.Attempts).To(Equal(int32(1)))
	g.Expect(other.Requests()).To(HaveLen(1))
}

// retryEventCount is how many times the RetryingFailed Event was recorded (an Event series
// counts repeats).
func retryEventCount(g Gomega, ns string) int32 {
	var events eventsv1.EventList
	g.Expect(env.Client.List(context.Background(), &events, client.InNamespace(ns))).To(Succeed())
	var n int32
	for _, e := range events.Items {
		if e.Reason == webhooksv1alpha1.EventReasonRetryingFailed {
			n++
			if e.Series != nil {
				n += e.Series.Count - 1
			}
		}
	}
	return n
}
