package controllers

import (
	"context"
	"encoding/pem"
	"net/http"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
	"github.com/docrouter/webhook-operator/internal/testenv/testreceiver"
)

// TestGoneFailsAtOnce: a 410 Gone fails the delivery at once, without retries, with the reason
// EndpointGone, and the endpoint gets a Warning Event EndpointGone.
func TestGoneFailsAtOnce(t *testing.T) {
	g := NewWithT(t)
	ns := env.Namespace(t)
	signingSecret(t, ns)
	rcv := testreceiver.New(t, testKey, http.StatusGone)
	startOperator(t, ns, testOptions())

	create(t, newEndpoint(ns, "gone", rcv.URL)) // 3 retries from 1 s, were it retried
	d := webhooksv1alpha1.NewDelivery(ns, "gone", newEvent("evt-gone"))
	create(t, d)

	g.Eventually(func(g Gomega) {
		got := getDelivery(g, ns, d.Name)
		g.Expect(got.Status.Phase).To(Equal(webhooksv1alpha1.PhaseFailed))
		g.Expect(got.Status.LastStatusCode).To(Equal(int32(http.StatusGone)))
		stalled := condition(got.Status.Conditions, webhooksv1alpha1.ConditionStalled)
		g.Expect(stalled.Status).To(Equal(metav1.ConditionTrue))
		g.Expect(stalled.Reason).To(Equal(webhooksv1alpha1.ReasonEndpointGone))
		g.Expect(got.Status.NextAttemptTime).To(BeNil())
	}).WithTimeout(10 * time.Second).Should(Succeed())
	g.Eventually(func(g Gomega) {
		g.Expect(eventReasons(g, ns, "gone")).To(ContainElement(webhooksv1alpha1.ReasonEndpointGone))
	}).WithTimeout(10 * time.Second).Should(Succeed())

	// Longer than the first two retries would have waited: still one request.
	g.Consistently(rcv.Count).WithTimeout(3500 * time.Millisecond).Should(Equal(1))
	g.Expect(getDelivery(g, ns, d.Name).Status.Attempts).To(Equal(int32(1)))

	// The endpoint is disabled: its next delivery is parked, not sent to a URL that is gone.
	g.Eventually(func(g Gomega) {
		ep := getEndpoint(g, ns, "gone")
		g.Expect(ep.Status.DisabledSince).NotTo(BeNil())
		g.Expect(ep.Status.DisabledReason).To(Equal(webhooksv1alpha1.DisabledReasonGone))
		g.Expect(condition(ep.Status.Conditions, "Ready").Reason).To(Equal(webhooksv1alpha1.ReasonEndpointGone))
	}).WithTimeout(10 * time.Second).Should(Succeed())
	next := webhooksv1alpha1.NewDelivery(ns, "gone", newEvent("evt-after-gone"))
	create(t, next)
	g.Eventually(func(g Gomega) string {
		return condition(getDelivery(g, ns, next.Name).Status.Conditions, "Ready").Reason
	}).WithTimeout(10 * time.Second).Should(Equal(webhooksv1alpha1.ReasonEndpointDisabled))
	g.Consistently(rcv.Count).WithTimeout(time.Second).Should(Equal(1))

	// Pointing the endpoint at a live receiver (a spec change) re-enables it.
	moved := testreceiver.New(t, testKey, http.StatusOK)
	ep := getEndpoint(g, ns, "gone")
	patch := client.MergeFrom(ep.DeepCopy())
	ep.Spec.URL = moved.URL
	g.Expect(env.Client.Patch(context.Background(), ep, patch)).To(Succeed())
	g.Eventually(func(g Gomega) {
		g.Expect(getDelivery(g, ns, next.Name).Status.Phase).To(Equal(webhooksv1alpha1.PhaseSucceeded))
		g.Expect(getEndpoint(g, ns, "gone").Status.DisabledSince).To(BeNil())
	}).WithTimeout(10 * time.Second).Should(Succeed())
	g.Expect(moved.Count()).To(Equal(1))
}

// TestRetryAfterDelaysNextAttempt: a 429 or 503 with Retry-After delays the next attempt by
// what the receiver asked (here 3 s instead of the 1 s backoff), up to maxDelaySeconds.
func TestRetryAfterDelaysNextAttempt(t *testing.T) {
	g := NewWithT(t)
	ns := env.Namespace(t)
	signingSecret(t, ns)
	startOperator(t, ns, testOptions())

	asked := testreceiver.New(t, testKey)
	asked.Script(testreceiver.RetryAfter(http.StatusTooManyRequests, "3"), testreceiver.Answer{Status: http.StatusOK})
	capped := testreceiver.New(t, testKey)
	capped.Script(testreceiver.RetryAfter(http.StatusServiceUnavailable, time.Now().Add(time.Hour).UTC().Format(http.TimeFormat)),
		testreceiver.Answer{Status: http.StatusOK})

	create(t,
		newEndpoint(ns, "asks", asked.URL),
		newEndpoint(ns, "capped", capped.URL, func(ep *webhooksv1alpha1.WebhookEndpoint) {
			ep.Spec.RetryPolicy.MaxDelaySeconds = ptr.To[int32](2)
		}))
	d1 := webhooksv1alpha1.NewDelivery(ns, "asks", newEvent("evt-429"))
	d2 := webhooksv1alpha1.NewDelivery(ns, "capped", newEvent("evt-503"))
	create(t, d1, d2)

	for _, tc := range []struct {
		name     string
		rcv      *testreceiver.Receiver
		min, max time.Duration
	}{
		{d1.Name, asked, 3 * time.Second, 4500 * time.Millisecond},
		{d2.Name, capped, 2 * time.Second, 3500 * time.Millisecond},
	} {
		g.Eventually(func(g Gomega) {
			g.Expect(getDelivery(g, ns, tc.name).Status.Phase).To(Equal(webhooksv1alpha1.PhaseSucceeded))
		}).WithTimeout(15 * time.Second).Should(Succeed())
		expectSecondAttemptAfter(t, g, tc.name, tc.rcv, tc.min, tc.max)
	}
}

// TestCABundleRef: an https receiver with a private CA is delivered to when the endpoint's
// caBundleRef (here a ConfigMap) holds that CA, and fails certificate verification without it.
func TestCABundleRef(t *testing.T) {
	g := NewWithT(t)
	ns := env.Namespace(t)
	signingSecret(t, ns)
	srv := testreceiver.NewTLS(t, testKey)
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	startOperator(t, ns, testOptions())

	create(t,
		&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "receiver-ca"}, Data: map[string]string{"ca.crt": string(caPEM)}},
		newEndpoint(ns, "private-ca", srv.URL, func(ep *webhooksv1alpha1.WebhookEndpoint) {
			ep.Spec.CABundleRef = &webhooksv1alpha1.CABundleRef{Kind: "ConfigMap", Name: "receiver-ca", Key: "ca.crt"}
		}),
		newEndpoint(ns, "system-roots", srv.URL),
		newEndpoint(ns, "missing-ca", srv.URL, func(ep *webhooksv1alpha1.WebhookEndpoint) {
			ep.Spec.CABundleRef = &webhooksv1alpha1.CABundleRef{Kind: "Secret", Name: "no-such-secret", Key: "ca.crt"}
		}),
		newEndpoint(ns, "wrong-key", srv.URL, func(ep *webhooksv1alpha1.WebhookEndpoint) {
			ep.Spec.CABundleRef = &webhooksv1alpha1.CABundleRef{Kind: "ConfigMap", Name: "receiver-ca", Key: "tls.crt"}
		}))
	ok := webhooksv1alpha1.NewDelivery(ns, "private-ca", newEvent("evt-ca"))
	untrusted := webhooksv1alpha1.NewDelivery(ns, "system-roots", newEvent("evt-roots"))
	waiting := webhooksv1alpha1.NewDelivery(ns, "missing-ca", newEvent("evt-missing"))
	wrongKey := webhooksv1alpha1.NewDelivery(ns, "wrong-key", newEvent("evt-wrong-key"))
	create(t, ok, untrusted, waiting, wrongKey)

	g.Eventually(func(g Gomega) {
		g.Expect(getDelivery(g, ns, ok.Name).Status.Phase).To(Equal(webhooksv1alpha1.PhaseSucceeded))

		got := getDelivery(g, ns, untrusted.Name)
		g.Expect(got.Status.Phase).To(Equal(webhooksv1alpha1.PhaseRetrying))
		g.Expect(got.Status.LastError).To(ContainSubstring("certificate"))
		g.Expect(got.Status.LastError).To(ContainSubstring("spec.caBundleRef"))

		got = getDelivery(g, ns, waiting.Name)
		g.Expect(got.Status.Attempts).To(BeZero())
		g.Expect(condition(got.Status.Conditions, webhooksv1alpha1.ConditionReady).Reason).To(Equal(webhooksv1alpha1.ReasonSecretNotFound))
		g.Expect(condition(got.Status.Conditions, webhooksv1alpha1.ConditionReady).Message).To(ContainSubstring("spec.caBundleRef"))

		got = getDelivery(g, ns, wrongKey.Name)
		g.Expect(got.Status.Attempts).To(BeZero())
		g.Expect(condition(got.Status.Conditions, webhooksv1alpha1.ConditionReady).Reason).To(Equal(webhooksv1alpha1.ReasonCABundleNotFound))
		g.Expect(condition(got.Status.Conditions, webhooksv1alpha1.ConditionReady).Message).To(ContainSubstring(`no key "tls.crt"`))
	}).WithTimeout(15 * time.Second).Should(Succeed())
	g.Expect(srv.Count()).To(Equal(1), "only the endpoint that trusts the CA got through")
}

// expectSecondAttemptAfter checks that rcv got exactly two attempts of delivery name, the second
// at least min and less than max after the first.
func expectSecondAttemptAfter(t *testing.T, g Gomega, name string, rcv *testreceiver.Receiver, minGap, maxGap time.Duration) {
	t.Helper()
	at := rcv.Arrivals()
	g.Expect(at).To(HaveLen(2))
	gap := at[1].Sub(at[0])
	t.Logf("%s: second attempt %s after the first", name, gap)
	g.Expect(gap).To(BeNumerically(">=", minGap))
	g.Expect(gap).To(BeNumerically("<", maxGap))
}
