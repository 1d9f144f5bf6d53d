package controllers

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
	"github.com/docrouter/webhook-operator/dispatcher"
	"github.com/docrouter/webhook-operator/internal/testenv/testreceiver"
)

// A delivery to a healthy receiver succeeds at its first attempt, signed as the product docs
// say, with the documented payload, and status tells the story.
func TestDeliverySucceedsAtFirstAttempt(t *testing.T) {
	g := NewWithT(t)
	ns := env.Namespace(t)
	signingSecret(t, ns)
	rcv := testreceiver.New(t, testKey, http.StatusOK)
	startOperator(t, ns, testOptions())

	create(t, newEndpoint(ns, "crm", rcv.URL+"/hooks"))
	d := webhooksv1alpha1.NewDelivery(ns, "crm", newEvent("evt-1"))
	create(t, d)

	g.Eventually(func(g Gomega) {
		got := getDelivery(g, ns, d.Name)
		g.Expect(got.Status.Phase).To(Equal(webhooksv1alpha1.PhaseSucceeded))
		g.Expect(got.Status.Attempts).To(Equal(int32(1)))
		g.Expect(got.Status.LastStatusCode).To(Equal(int32(200)))
		g.Expect(got.Status.CompletionTime).NotTo(BeNil())
		g.Expect(got.Status.NextAttemptTime).To(BeNil())
		g.Expect(got.Status.History).To(HaveLen(1))
		g.Expect(got.Status.History[0].Trigger).To(Equal(webhooksv1alpha1.TriggerScheduled))
		g.Expect(condition(got.Status.Conditions, "Ready").Status).To(Equal(metav1.ConditionTrue))
		g.Expect(got.Status.ObservedGeneration).To(Equal(got.Generation))
	}).WithTimeout(10 * time.Second).Should(Succeed())

	reqs := rcv.Requests()
	g.Expect(reqs).To(HaveLen(1))
	r := reqs[0]
	g.Expect(r.VerifyErr).NotTo(HaveOccurred())
	g.Expect(r.Header.Get("Content-Type")).To(Equal("application/json"))
	g.Expect(r.Header.Get(dispatcher.HeaderEventID)).To(Equal("evt-1"))
	g.Expect(r.Header.Get(dispatcher.HeaderEventType)).To(Equal("llm.completed"))
	g.Expect(r.Header.Get(dispatcher.HeaderAttempt)).To(Equal("1"))
	ts, err := strconv.ParseInt(r.Header.Get(dispatcher.HeaderTimestamp), 10, 64)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(time.Since(time.Unix(ts, 0))).To(BeNumerically("<", time.Minute))
	g.Expect(decode(t, r.Body)).To(Equal(map[string]any{
		"event_id": "evt-1", "event_type": "llm.completed", "timestamp": float64(1640995200),
		"organization_id": "org-1",
		"document": map[string]any{
			"document_id": "doc-123", "document_name": "invoice.pdf",
			"tag_ids": []any{"tag1", "tag2"}, "metadata": map[string]any{"source": "email"},
		},
		"data": map[string]any{"invoice_total": "1250.00", "currency": "EUR"},
	}))

	// The endpoint's status reports the success (copied from memory at a bounded rate).
	g.Eventually(func(g Gomega) {
		ep := getEndpoint(g, ns, "crm")
		g.Expect(ep.Status.LastSuccessTime).NotTo(BeNil())
		g.Expect(ep.Status.ConsecutiveFailures).To(BeZero())
		g.Expect(condition(ep.Status.Conditions, "Ready").Reason).To(Equal(webhooksv1alpha1.ReasonValid))
	}).WithTimeout(10 * time.Second).Should(Succeed())
}

// A delivery's spec and status are each one value to server-side apply (structType=atomic):
// their managedFields name spec and status, not every field of them. kube-apiserver keeps each
// entry as a tree of maps in every copy of the object its watch cache holds (three per
// first-try delivery), and field by field they made up a third of that memory.
func TestDeliveryManagedFieldsNameSpecAndStatusWhole(t *testing.T) {
	g := NewWithT(t)
	ns := env.Namespace(t)
	signingSecret(t, ns)
	rcv := testreceiver.New(t, testKey, http.StatusOK)
	startOperator(t, ns, testOptions())
	create(t, newEndpoint(ns, "crm", rcv.URL))
	d := webhooksv1alpha1.NewDelivery(ns, "crm", newEvent("evt-1"))
	create(t, d)

	var got *webhooksv1alpha1.WebhookDelivery
	g.Eventually(func(g Gomega) {
		got = getDelivery(g, ns, d.Name)
		g.Expect(got.Status.Phase).To(Equal(webhooksv1alpha1.PhaseSucceeded))
	}).WithTimeout(10 * time.Second).Should(Succeed())
	owned := map[string]string{}
	for _, mf := range got.ManagedFields {
		g.Expect(mf.FieldsV1).NotTo(BeNil())
		var fields map[string]any
		g.Expect(json.Unmarshal(mf.FieldsV1.GetRawBytes(), &fields)).To(Succeed())
		for _, part := range []string{"f:spec", "f:status"} {
			if sub, ok := fields[part]; ok {
				g.Expect(sub).To(BeEmpty(), "%s of %s (%s) lists fields one by one: %s", part, mf.Manager, mf.Subresource, mf.FieldsV1.GetRawString())
				owned[part] = mf.Manager
			}
		}
	}
	g.Expect(owned).To(HaveKey("f:spec"), "the creator owns spec")
	g.Expect(owned).To(HaveKey("f:status"), "the controller owns status")
}

// 500, 500, 200: Succeeded after 3 attempts, each retry waiting at least its backoff
// (1 s, then 2 s with initialDelaySeconds 1 and backoffFactor 2).
func TestRetriesWithBackoffUntilSuccess(t *testing.T) {
	g := NewWithT(t)
	ns := env.Namespace(t)
	signingSecret(t, ns)
	rcv := testreceiver.New(t, testKey, 500, 500, 200)
	startOperator(t, ns, testOptions())

	create(t, newEndpoint(ns, "flaky", rcv.URL))
	d := webhooksv1alpha1.NewDelivery(ns, "flaky", newEvent("evt-retry"))
	create(t, d)

	// While retrying, status shows the schedule.
	g.Eventually(func(g Gomega) {
		got := getDelivery(g, ns, d.Name)
		g.Expect(got.Status.Phase).To(Equal(webhooksv1alpha1.PhaseRetrying))
		g.Expect(got.Status.NextAttemptTime).NotTo(BeNil())
		g.Expect(got.Status.LastStatusCode).To(Equal(int32(500)))
		g.Expect(condition(got.Status.Conditions, "Reconciling").Status).To(Equal(metav1.ConditionTrue))
	}).WithTimeout(10 * time.Second).Should(Succeed())

	g.Eventually(func(g Gomega) {
		got := getDelivery(g, ns, d.Name)
		g.Expect(got.Status.Phase).To(Equal(webhooksv1alpha1.PhaseSucceeded))
		g.Expect(got.Status.Attempts).To(Equal(int32(3)))
		g.Expect(got.Status.History).To(HaveLen(3))
	}).WithTimeout(20 * time.Second).Should(Succeed())

	reqs := rcv.Requests()
	g.Expect(reqs).To(HaveLen(3))
	for i, r := range reqs {
		g.Expect(r.VerifyErr).NotTo(HaveOccurred())
		g.Expect(r.Header.Get(dispatcher.HeaderAttempt)).To(Equal(strconv.Itoa(i + 1)))
		g.Expect(r.Header.Get(dispatcher.HeaderEventID)).To(Equal("evt-retry"), "every attempt carries the same event id")
	}
	g.Expect(reqs[1].At.Sub(reqs[0].At)).To(BeNumerically(">=", 1*time.Second))
	g.Expect(reqs[1].At.Sub(reqs[0].At)).To(BeNumerically("<", 1800*time.Millisecond))
	g.Expect(reqs[2].At.Sub(reqs[1].At)).To(BeNumerically(">=", 2*time.Second))
	g.Expect(reqs[2].At.Sub(reqs[1].At)).To(BeNumerically("<", 2800*time.Millisecond))
}

// After maxRetries the delivery is Failed and Stalled, with a Warning Event; a manual retry then
// makes exactly one more attempt per token.
func TestExhaustionThenManualRetry(t *testing.T) {
	g := NewWithT(t)
	ns := env.Namespace(t)
	signingSecret(t, ns)
	rcv := testreceiver.New(t, testKey, 503)
	startOperator(t, ns, testOptions())

	create(t, newEndpoint(ns, "down", rcv.URL, func(ep *webhooksv1alpha1.WebhookEndpoint) {
		ep.Spec.RetryPolicy = fastRetries(1)
	}))
	d := webhooksv1alpha1.NewDelivery(ns, "down", newEvent("evt-exhaust"))
	create(t, d)

	g.Eventually(func(g Gomega) {
		got := getDelivery(g, ns, d.Name)
		g.Expect(got.Status.Phase).To(Equal(webhooksv1alpha1.PhaseFailed))
		g.Expect(got.Status.Attempts).To(Equal(int32(2)))
		g.Expect(got.Status.NextAttemptTime).To(BeNil())
		g.Expect(condition(got.Status.Conditions, "Stalled").Status).To(Equal(metav1.ConditionTrue))
		g.Expect(condition(got.Status.Conditions, "Ready").Reason).To(Equal(webhooksv1alpha1.ReasonRetriesExhausted))
	}).WithTimeout(15 * time.Second).Should(Succeed())
	g.Eventually(func(g Gomega) []string { return eventReasons(g, ns, d.Name) }).
		WithTimeout(10 * time.Second).Should(ContainElements(webhooksv1alpha1.ReasonAttemptFailed, webhooksv1alpha1.ReasonRetriesExhausted))
	g.Consistently(rcv.Count).WithTimeout(2 * time.Second).Should(Equal(2))

	rcv.SetStatuses(http.StatusNoContent)
	annotate(t, ns, d.Name, webhooksv1alpha1.RetryAnnotation, "first")
	g.Eventually(func(g Gomega) {
		got := getDelivery(g, ns, d.Name)
		g.Expect(got.Status.Phase).To(Equal(webhooksv1alpha1.PhaseSucceeded))
		g.Expect(got.Status.Attempts).To(Equal(int32(3)))
		g.Expect(got.Status.LastRetryToken).To(Equal("first"))
		g.Expect(got.Status.History[2].Trigger).To(Equal(webhooksv1alpha1.TriggerManual))
		g.Expect(condition(got.Status.Conditions, "Ready").Status).To(Equal(metav1.ConditionTrue))
	}).WithTimeout(10 * time.Second).Should(Succeed())

	// The same token again is not a new request; other annotations are not either.
	annotate(t, ns, d.Name, webhooksv1alpha1.RetryAnnotation, "first")
	annotate(t, ns, d.Name, "example.com/note", "touched")
	g.Consistently(rcv.Count).WithTimeout(2 * time.Second).Should(Equal(3))

	// A new token re-sends even a Succeeded delivery, once.
	annotate(t, ns, d.Name, webhooksv1alpha1.RetryAnnotation, "second")
	g.Eventually(rcv.Count).WithTimeout(10 * time.Second).Should(Equal(4))
	g.Consistently(rcv.Count).WithTimeout(2 * time.Second).Should(Equal(4))
}

// A missing Secret makes the endpoint Ready=False with its reason, and its deliveries wait
// without any attempt; creating the Secret releases them.
func TestMissingSecretHoldsDeliveries(t *testing.T) {
	g := NewWithT(t)
	ns := env.Namespace(t)
	rcv := testreceiver.New(t, testKey, http.StatusOK)
	startOperator(t, ns, testOptions())

	create(t, newEndpoint(ns, "nosecret", rcv.URL))
	d := webhooksv1alpha1.NewDelivery(ns, "nosecret", newEvent("evt-nosecret"))
	create(t, d)

	g.Eventually(func(g Gomega) {
		ep := getEndpoint(g, ns, "nosecret")
		ready := condition(ep.Status.Conditions, "Ready")
		g.Expect(ready.Status).To(Equal(metav1.ConditionFalse))
		g.Expect(ready.Reason).To(Equal(webhooksv1alpha1.ReasonSecretNotFound))
		g.Expect(ready.Message).To(ContainSubstring(`Secret "signing" not found`))
	}).WithTimeout(10 * time.Second).Should(Succeed())
	g.Eventually(func(g Gomega) {
		got := getDelivery(g, ns, d.Name)
		g.Expect(got.Status.Phase).To(Equal(webhooksv1alpha1.PhasePending))
		g.Expect(got.Status.Attempts).To(BeZero())
		g.Expect(condition(got.Status.Conditions, "Ready").Reason).To(Equal(webhooksv1alpha1.ReasonSecretNotFound))
	}).WithTimeout(10 * time.Second).Should(Succeed())
	g.Expect(rcv.Count()).To(BeZero())

	// A Secret without the key is a different, equally clear reason.
	create(t, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "signing"}, Data: map[string][]byte{"other": []byte("x")}})
	g.Eventually(func(g Gomega) string {
		return condition(getDelivery(g, ns, d.Name).Status.Conditions, "Ready").Reason
	}).WithTimeout(10 * time.Second).Should(Equal(webhooksv1alpha1.ReasonSecretKeyNotFound))

	s := &corev1.Secret{}
	g.Expect(env.Client.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "signing"}, s)).To(Succeed())
	s.Data["key"] = testKey
	g.Expect(env.Client.Update(context.Background(), s)).To(Succeed())
	g.Eventually(func(g Gomega) {
		g.Expect(getDelivery(g, ns, d.Name).Status.Phase).To(Equal(webhooksv1alpha1.PhaseSucceeded))
	}).WithTimeout(10 * time.Second).Should(Succeed())
	g.Expect(rcv.Requests()[0].VerifyErr).NotTo(HaveOccurred())
}

// A paused endpoint's deliveries wait, and go out when it is unpaused.
func TestPausedEndpointHoldsDeliveries(t *testing.T) {
	g := NewWithT(t)
	ns := env.Namespace(t)
	signingSecret(t, ns)
	rcv := testreceiver.New(t, testKey, http.StatusOK)
	startOperator(t, ns, testOptions())

	ep := newEndpoint(ns, "paused", rcv.URL, func(ep *webhooksv1alpha1.WebhookEndpoint) { ep.Spec.Paused = true })
	create(t, ep)
	d := webhooksv1alpha1.NewDelivery(ns, "paused", newEvent("evt-paused"))
	create(t, d)
	g.Eventually(func(g Gomega) string {
		return condition(getDelivery(g, ns, d.Name).Status.Conditions, "Ready").Reason
	}).WithTimeout(10 * time.Second).Should(Equal(webhooksv1alpha1.ReasonEndpointPaused))
	g.Consistently(rcv.Count).WithTimeout(time.Second).Should(BeZero())

	patch := client.MergeFrom(ep.DeepCopy())
	ep.Spec.Paused = false
	g.Expect(env.Client.Patch(context.Background(), ep, patch)).To(Succeed())
	g.Eventually(func(g Gomega) {
		g.Expect(getDelivery(g, ns, d.Name).Status.Phase).To(Equal(webhooksv1alpha1.PhaseSucceeded))
	}).WithTimeout(10 * time.Second).Should(Succeed())
}

// A static auth header from a Secret is sent for header-authenticated receivers (n8n, Zapier).
func TestAuthHeaderFromSecret(t *testing.T) {
	g := NewWithT(t)
	ns := env.Namespace(t)
	rcv := testreceiver.New(t, nil, http.StatusOK)
	startOperator(t, ns, testOptions())
	create(t, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "n8n"}, Data: map[string][]byte{"token": []byte("Bearer n8n-token")}})
	create(t, newEndpoint(ns, "n8n", rcv.URL, func(ep *webhooksv1alpha1.WebhookEndpoint) {
		ep.Spec.SigningSecretRef = nil
		ep.Spec.AuthHeader = &webhooksv1alpha1.AuthHeader{Name: "Authorization",
			SecretKeyRef: webhooksv1alpha1.SecretKeyRef{Name: "n8n", Key: "token"}}
	}))
	create(t, webhooksv1alpha1.NewDelivery(ns, "n8n", newEvent("evt-n8n")))
	g.Eventually(rcv.Count).WithTimeout(10 * time.Second).Should(Equal(1))
	r := rcv.Requests()[0]
	g.Expect(r.Header.Get("Authorization")).To(Equal("Bearer n8n-token"))
	g.Expect(r.Header.Get(dispatcher.HeaderSignature)).To(BeEmpty(), "no signing secret, no signature")
}

// Annotating an endpoint with a test token creates one webhook.test delivery per token.
func TestTestAnnotationSendsOneTestEventPerToken(t *testing.T) {
	g := NewWithT(t)
	ns := env.Namespace(t)
	signingSecret(t, ns)
	rcv := testreceiver.New(t, testKey, http.StatusOK)
	startOperator(t, ns, testOptions())
	ep := newEndpoint(ns, "tested", rcv.URL, func(ep *webhooksv1alpha1.WebhookEndpoint) {
		ep.Spec.EventTypes = []string{"document.uploaded"} // the test event is sent regardless
	})
	create(t, ep)

	annotateEndpoint(t, ns, "tested", "t1")
	g.Eventually(rcv.Count).WithTimeout(10 * time.Second).Should(Equal(1))
	body := decode(t, rcv.Requests()[0].Body)
	g.Expect(body["event_type"]).To(Equal("webhook.test"))
	g.Expect(rcv.Requests()[0].VerifyErr).NotTo(HaveOccurred())

	annotateEndpoint(t, ns, "tested", "t1") // unchanged token
	g.Consistently(rcv.Count).WithTimeout(2 * time.Second).Should(Equal(1))
	annotateEndpoint(t, ns, "tested", "t2")
	g.Eventually(rcv.Count).WithTimeout(10 * time.Second).Should(Equal(2))

	var list webhooksv1alpha1.WebhookDeliveryList
	g.Expect(env.Client.List(context.Background(), &list, client.InNamespace(ns),
		client.MatchingLabels{webhooksv1alpha1.EventTypeLabel: "webhook.test", webhooksv1alpha1.EndpointLabel: "tested"})).To(Succeed())
	g.Expect(list.Items).To(HaveLen(2))
	g.Eventually(func(g Gomega) string {
		got := &webhooksv1alpha1.WebhookEndpoint{}
		g.Expect(env.Client.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "tested"}, got)).To(Succeed())
		return got.Status.LastTestToken
	}).WithTimeout(5 * time.Second).Should(Equal("t2"))
}

// A restarted operator resumes the schedule from status: nothing is sent before
// nextAttemptTime, and the overdue attempt is sent once.
func TestRestartResumesScheduleWithoutBurst(t *testing.T) {
	g := NewWithT(t)
	ns := env.Namespace(t)
	signingSecret(t, ns)
	rcv := testreceiver.New(t, testKey, 500, 200)
	stop := startOperator(t, ns, testOptions())
	create(t, newEndpoint(ns, "restart", rcv.URL, func(ep *webhooksv1alpha1.WebhookEndpoint) {
		ep.Spec.RetryPolicy.InitialDelaySeconds = ptr.To[int32](4)
	}))
	d := webhooksv1alpha1.NewDelivery(ns, "restart", newEvent("evt-restart"))
	create(t, d)

	var next time.Time
	g.Eventually(func(g Gomega) {
		got := getDelivery(g, ns, d.Name)
		g.Expect(got.Status.Phase).To(Equal(webhooksv1alpha1.PhaseRetrying))
		next = got.Status.NextAttemptTime.Time
	}).WithTimeout(10 * time.Second).Should(Succeed())
	stop()

	startOperator(t, ns, testOptions())
	g.Eventually(rcv.Count).WithTimeout(15 * time.Second).Should(Equal(2))
	second := rcv.Requests()[1].At
	// nextAttemptTime has one-second precision in status (RFC 3339).
	g.Expect(second).To(BeTemporally(">=", next.Add(-time.Second)))
	g.Eventually(func(g Gomega) {
		g.Expect(getDelivery(g, ns, d.Name).Status.Phase).To(Equal(webhooksv1alpha1.PhaseSucceeded))
	}).WithTimeout(10 * time.Second).Should(Succeed())
	g.Consistently(rcv.Count).WithTimeout(2 * time.Second).Should(Equal(2))
}

// The operator does not send twice because of its own lagging cache: a delivery touched
// repeatedly right after it succeeded gets exactly one request.
func TestNoDuplicateSendWhenTouchedAfterSuccess(t *testing.T) {
	g := NewWithT(t)
	ns := env.Namespace(t)
	signingSecret(t, ns)
	rcv := testreceiver.New(t, testKey, http.StatusOK)
	startOperator(t, ns, testOptions())
	create(t, newEndpoint(ns, "once", rcv.URL))

	const n = 20
	names := make([]string, n)
	for i := range n {
		d := webhooksv1alpha1.NewDelivery(ns, "once", newEvent("evt-once-"+strconv.Itoa(i)))
		create(t, d)
		names[i] = d.Name
	}
	// Touch every delivery several times while and right after it is delivered.
	for round := range 5 {
		for _, name := range names {
			annotate(t, ns, name, "example.com/touch", strconv.Itoa(round))
		}
	}
	g.Eventually(rcv.Count).WithTimeout(15 * time.Second).Should(Equal(n))
	g.Consistently(rcv.Count).WithTimeout(3 * time.Second).Should(Equal(n))
}

func annotate(t *testing.T, ns, name, key, value string) {
	t.Helper()
	d := &webhooksv1alpha1.WebhookDelivery{}
	d.Namespace, d.Name = ns, name
	patch := []byte(`{"metadata":{"annotations":{"` + key + `":"` + value + `"}}}`)
	if err := env.Client.Patch(context.Background(), d, client.RawPatch("application/merge-patch+json", patch)); err != nil {
		t.Fatalf("annotating %s: %v", name, err)
	}
}

func annotateEndpoint(t *testing.T, ns, name, value string) {
	t.Helper()
	ep := &webhooksv1alpha1.WebhookEndpoint{}
	ep.Namespace, ep.Name = ns, name
	patch := []byte(`{"metadata":{"annotations":{"` + webhooksv1alpha1.TestAnnotation + `":"` + value + `"}}}`)
	if err := env.Client.Patch(context.Background(), ep, client.RawPatch("application/merge-patch+json", patch)); err != nil {
		t.Fatalf("annotating endpoint %s: %v", name, err)
	}
}

// eventReasons lists the reasons of the events.k8s.io Events about a delivery.
func eventReasons(g Gomega, ns, name string) []string {
	var list eventsv1.EventList
	g.Expect(env.Client.List(context.Background(), &list, client.InNamespace(ns))).To(Succeed())
	var reasons []string
	for _, e := range list.Items {
		if e.Regarding.Name == name {
			reasons = append(reasons, e.Reason)
		}
	}
	return reasons
}
