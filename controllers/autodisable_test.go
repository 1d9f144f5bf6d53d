package controllers

import (
	"context"
	"net/http"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
	"github.com/docrouter/webhook-operator/internal/testenv/testreceiver"
)

// An endpoint whose attempts all fail for the auto-disable period is disabled: a Warning Event,
// Ready=False AutoDisabled, and its deliveries parked (no attempt, nothing dropped). The enable
// annotation re-enables it and the parked deliveries go out.
func TestEndpointAutoDisabledThenReEnabled(t *testing.T) {
	g := NewWithT(t)
	ns := env.Namespace(t)
	signingSecret(t, ns)
	rcv := testreceiver.New(t, testKey, http.StatusInternalServerError)
	opts := testOptions()
	opts.AutoDisableAfter = 2 * time.Second
	startOperator(t, ns, opts)

	create(t, newEndpoint(ns, "dead", rcv.URL, func(ep *webhooksv1alpha1.WebhookEndpoint) {
		ep.Spec.RetryPolicy = fastRetries(20)
		ep.Spec.RetryPolicy.BackoffFactor = ptr.To[int32](1) // one attempt a second
	}))
	first := webhooksv1alpha1.NewDelivery(ns, "dead", newEvent("evt-dead-1"))
	create(t, first)

	g.Eventually(func(g Gomega) {
		ep := getEndpoint(g, ns, "dead")
		g.Expect(ep.Status.DisabledSince).NotTo(BeNil())
		g.Expect(ep.Status.FailingSince).NotTo(BeNil())
		ready := condition(ep.Status.Conditions, "Ready")
		g.Expect(ready.Reason).To(Equal(webhooksv1alpha1.ReasonAutoDisabled))
		g.Expect(ready.Message).To(ContainSubstring(webhooksv1alpha1.EnableAnnotation))
	}).WithTimeout(15 * time.Second).Should(Succeed())
	g.Eventually(func(g Gomega) []string { return eventReasons(g, ns, "dead") }).
		WithTimeout(5 * time.Second).Should(ContainElement(webhooksv1alpha1.ReasonAutoDisabled))

	// Parked: the retrying delivery and a new one make no attempt, and are not failed.
	second := webhooksv1alpha1.NewDelivery(ns, "dead", newEvent("evt-dead-2"))
	create(t, second)
	g.Eventually(func(g Gomega) {
		for _, name := range []string{first.Name, second.Name} {
			d := getDelivery(g, ns, name)
			g.Expect(condition(d.Status.Conditions, "Ready").Reason).To(Equal(webhooksv1alpha1.ReasonEndpointDisabled))
			g.Expect(d.Status.Phase).NotTo(Equal(webhooksv1alpha1.PhaseFailed))
		}
	}).WithTimeout(10 * time.Second).Should(Succeed())
	parkedAt := rcv.Count()
	g.Consistently(rcv.Count).WithTimeout(3 * time.Second).Should(Equal(parkedAt))

	// The receiver is fixed; re-enabling resumes both deliveries.
	rcv.SetStatuses(http.StatusOK)
	ep := getEndpoint(g, ns, "dead")
	patch := client.MergeFrom(ep.DeepCopy())
	metav1.SetMetaDataAnnotation(&ep.ObjectMeta, webhooksv1alpha1.EnableAnnotation, "fixed")
	g.Expect(env.Client.Patch(context.Background(), ep, patch)).To(Succeed())
	g.Eventually(func(g Gomega) {
		for _, name := range []string{first.Name, second.Name} {
			g.Expect(getDelivery(g, ns, name).Status.Phase).To(Equal(webhooksv1alpha1.PhaseSucceeded))
		}
		ep := getEndpoint(g, ns, "dead")
		g.Expect(ep.Status.DisabledSince).To(BeNil())
		g.Expect(ep.Status.LastEnableToken).To(Equal("fixed"))
		g.Expect(condition(ep.Status.Conditions, "Ready").Status).To(Equal(metav1.ConditionTrue))
	}).WithTimeout(15 * time.Second).Should(Succeed())
}
