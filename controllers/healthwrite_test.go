package controllers

import (
	"net/http"
	"testing"
	"time"

	. "github.com/onsi/gomega"

	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
	"github.com/docrouter/webhook-operator/internal/testenv/testreceiver"
)

// A health write held back by --health-update-interval is written when the interval is over,
// even when no further attempt comes: the endpoint's status ends up current. (The held write's
// requeue was lost when the endpoint was not failing: minPositive took the 0 of "no
// auto-disable to schedule" for the earliest delay.)
func TestHeldBackHealthIsWrittenAfterTheInterval(t *testing.T) {
	g := NewWithT(t)
	ns := env.Namespace(t)
	signingSecret(t, ns)
	rcv := testreceiver.New(t, testKey, http.StatusOK)
	opts := testOptions()
	opts.HealthUpdateInterval = 3 * time.Second
	startOperator(t, ns, opts)
	create(t, newEndpoint(ns, "crm", rcv.URL))

	first := webhooksv1alpha1.NewDelivery(ns, "crm", newEvent("evt-first"))
	create(t, first)
	g.Eventually(func(g Gomega) {
		g.Expect(getEndpoint(g, ns, "crm").Status.LastSuccessTime).NotTo(BeNil())
	}).WithTimeout(10 * time.Second).Should(Succeed())
	time.Sleep(1100 * time.Millisecond) // a later second, within the interval
	second := webhooksv1alpha1.NewDelivery(ns, "crm", newEvent("evt-second"))
	create(t, second)
	g.Eventually(rcv.Count).WithTimeout(10 * time.Second).Should(Equal(2))
	sent := rcv.Requests()[1].At.Truncate(time.Second)

	g.Eventually(func(g Gomega) {
		last := getEndpoint(g, ns, "crm").Status.LastSuccessTime
		g.Expect(last).NotTo(BeNil())
		g.Expect(last.Time).To(BeTemporally(">=", sent), "the second success reaches status within the interval")
	}).WithTimeout(8 * time.Second).Should(Succeed())
}
