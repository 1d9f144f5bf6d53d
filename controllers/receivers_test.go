package controllers

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/prometheus/client_golang/prometheus/testutil"

	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
	"github.com/docrouter/webhook-operator/dispatcher"
	"github.com/docrouter/webhook-operator/internal/metrics"
	"github.com/docrouter/webhook-operator/internal/testenv/testreceiver"
)

// What receivers need: a rate limit, a bound on concurrent requests, filters. These tests run
// the operator against a real API server and real receivers that verify every signature.

// createDeliveries creates n deliveries for endpoint at once (8 at a time), and returns them.
func createDeliveries(t *testing.T, ns, endpoint string, n int) []*webhooksv1alpha1.WebhookDelivery {
	t.Helper()
	ds := make([]*webhooksv1alpha1.WebhookDelivery, n)
	for i := range ds {
		ds[i] = webhooksv1alpha1.NewDelivery(ns, endpoint, newEvent(fmt.Sprintf("evt-%03d", i)))
	}
	var wg sync.WaitGroup
	errs := make(chan error, n)
	sem := make(chan struct{}, 8)
	for _, d := range ds {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			if err := env.Client.Create(context.Background(), d); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("creating deliveries: %v", err)
	}
	return ds
}

// A rate of 5 per second: 50 deliveries created at once reach the receiver spread over at least
// 9 s (49 gaps of 200 ms), every one at its first attempt: waiting for its turn is not a failed
// attempt, spends no retry and writes nothing to the delivery. The endpoint's status and the
// metrics show the throttling while it lasts.
func TestRateLimitSpreadsDeliveriesWithoutSpendingRetries(t *testing.T) {
	g := NewWithT(t)
	ns := env.Namespace(t)
	signingSecret(t, ns)
	rcv := testreceiver.New(t, testKey, http.StatusOK)
	startOperator(t, ns, testOptions())
	throttledBefore := testutil.ToFloat64(metrics.AttemptsThrottled.WithLabelValues(ns))

	create(t, newEndpoint(ns, "zapier", rcv.URL, func(ep *webhooksv1alpha1.WebhookEndpoint) {
		ep.Spec.RateLimit = &webhooksv1alpha1.RateLimit{Requests: 5, PeriodSeconds: ptr.To[int32](1)}
	}))
	g.Eventually(func(g Gomega) {
		g.Expect(condition(getEndpoint(g, ns, "zapier").Status.Conditions, "Throttled").Reason).To(Equal(webhooksv1alpha1.ReasonWithinRateLimit))
	}).WithTimeout(10 * time.Second).Should(Succeed())
	ds := createDeliveries(t, ns, "zapier", 50)

	// While they wait, the endpoint says so, and the deliveries not yet sent have no status
	// written: waiting for the rate limit costs no API write.
	g.Eventually(func(g Gomega) {
		ep := getEndpoint(g, ns, "zapier")
		c := condition(ep.Status.Conditions, "Throttled")
		g.Expect(c.Status).To(Equal(metav1.ConditionTrue))
		g.Expect(c.Reason).To(Equal(webhooksv1alpha1.ReasonRateLimited))
		g.Expect(c.Message).To(ContainSubstring("wait for their turn under spec.rateLimit (5 requests per 1s: one request every 200ms)"))
		g.Expect(ep.Status.ThrottledDeliveries).To(BeNumerically(">", 0))
		g.Expect(ep.Status.ThrottledUntil).NotTo(BeNil())
		g.Expect(condition(ep.Status.Conditions, "Ready").Status).To(Equal(metav1.ConditionTrue), "throttling is not a failure")
	}).WithTimeout(10 * time.Second).Should(Succeed())
	var list webhooksv1alpha1.WebhookDeliveryList
	g.Expect(env.Client.List(context.Background(), &list, client.InNamespace(ns))).To(Succeed())
	untouched := 0
	for _, d := range list.Items {
		if d.Status.Attempts == 0 {
			g.Expect(d.Status.Phase).To(BeEmpty(), "a delivery waiting for its turn has no status written")
			g.Expect(d.Status.Conditions).To(BeEmpty())
			untouched++
		}
	}
	g.Expect(untouched).To(BeNumerically(">", 10), "most deliveries are still waiting a few seconds in")

	g.Eventually(func(g Gomega) {
		for _, d := range ds {
			g.Expect(getDelivery(g, ns, d.Name).Status.Phase).To(Equal(webhooksv1alpha1.PhaseSucceeded))
		}
	}).WithTimeout(60 * time.Second).WithPolling(250 * time.Millisecond).Should(Succeed())

	reqs := rcv.Requests()
	g.Expect(reqs).To(HaveLen(50))
	for _, r := range reqs {
		g.Expect(r.VerifyErr).NotTo(HaveOccurred())
		g.Expect(r.Header.Get(dispatcher.HeaderAttempt)).To(Equal("1"))
	}
	spread := reqs[len(reqs)-1].At.Sub(reqs[0].At)
	g.Expect(spread).To(BeNumerically(">=", 9*time.Second), "50 requests at 5/s")
	t.Logf("50 deliveries at 5/s reached the receiver over %s", spread)
	for _, d := range ds {
		got := getDelivery(g, ns, d.Name)
		g.Expect(got.Status.Attempts).To(Equal(int32(1)), "%s used a retry", d.Name)
		g.Expect(got.Status.History).To(HaveLen(1))
		g.Expect(got.Status.History[0].Result).To(Equal(webhooksv1alpha1.AttemptSuccess))
	}
	var events eventsv1.EventList
	g.Expect(env.Client.List(context.Background(), &events, client.InNamespace(ns))).To(Succeed())
	for _, e := range events.Items {
		g.Expect(e.Reason).NotTo(Equal(webhooksv1alpha1.ReasonAttemptFailed), "no attempt failed: %s", e.Note)
	}
	g.Expect(testutil.ToFloat64(metrics.AttemptsThrottled.WithLabelValues(ns))-throttledBefore).
		To(BeNumerically(">=", 40), "docrouter_webhook_attempts_throttled_total counts the attempts that waited")

	// Once the last one is sent, the endpoint is no longer throttled.
	g.Eventually(func(g Gomega) {
		ep := getEndpoint(g, ns, "zapier")
		g.Expect(condition(ep.Status.Conditions, "Throttled").Status).To(Equal(metav1.ConditionFalse), "%+v", ep.Status)
		g.Expect(ep.Status.ThrottledDeliveries).To(BeZero())
		g.Expect(ep.Status.ThrottledUntil).To(BeNil())
	}).WithTimeout(15 * time.Second).Should(Succeed())
}

// Throttling starting and ending are written at once, not held back by the health interval
// (10 s here): the status says "throttled" while deliveries wait and stops saying it once the
// last one is sent, even though the endpoint's health was written just before.
func TestThrottlingIsShownWhenItStartsAndEnds(t *testing.T) {
	g := NewWithT(t)
	ns := env.Namespace(t)
	signingSecret(t, ns)
	rcv := testreceiver.New(t, testKey, http.StatusOK)
	opts := testOptions()
	opts.HealthUpdateInterval = 10 * time.Second
	startOperator(t, ns, opts)
	create(t, newEndpoint(ns, "crm", rcv.URL, func(ep *webhooksv1alpha1.WebhookEndpoint) {
		ep.Spec.RateLimit = &webhooksv1alpha1.RateLimit{Requests: 5, PeriodSeconds: ptr.To[int32](1)}
	}))
	first := webhooksv1alpha1.NewDelivery(ns, "crm", newEvent("evt-first"))
	create(t, first)
	g.Eventually(func(g Gomega) {
		g.Expect(getEndpoint(g, ns, "crm").Status.LastSuccessTime).NotTo(BeNil())
	}).WithTimeout(10 * time.Second).Should(Succeed())

	// Health was just written: a plain health update would wait 10 s.
	createDeliveries(t, ns, "crm", 20)
	created := time.Now()
	g.Eventually(func(g Gomega) {
		g.Expect(getEndpoint(g, ns, "crm").Status.ThrottledDeliveries).To(BeNumerically(">", 0))
	}).WithTimeout(5*time.Second).WithPolling(100*time.Millisecond).Should(Succeed(), "throttling shown at once")
	t.Logf("throttling shown %s after the deliveries were created", time.Since(created).Round(10*time.Millisecond))

	g.Eventually(rcv.Count).WithTimeout(20 * time.Second).Should(Equal(21))
	sent := time.Now()
	g.Eventually(func(g Gomega) {
		ep := getEndpoint(g, ns, "crm")
		g.Expect(ep.Status.ThrottledDeliveries).To(BeZero())
		g.Expect(condition(ep.Status.Conditions, "Throttled").Status).To(Equal(metav1.ConditionFalse))
	}).WithTimeout(5*time.Second).WithPolling(100*time.Millisecond).Should(Succeed(), "the end of throttling shown at once")
	t.Logf("the end shown %s after the last request", time.Since(sent).Round(10*time.Millisecond))
}

// Under a rate limit, Retry-After is honoured as without one: the retry waits for what the
// receiver asked when that is longer than the rate's spacing (no turn is added on top of it),
// and for its turn when the turn is later. The 429 is the one failed attempt either way.
func TestRateLimitHonoursRetryAfter(t *testing.T) {
	g := NewWithT(t)
	ns := env.Namespace(t)
	signingSecret(t, ns)
	startOperator(t, ns, testOptions())
	asksLonger := testreceiver.New(t, testKey)
	asksLonger.Script(testreceiver.RetryAfter(http.StatusTooManyRequests, "4"), testreceiver.Answer{Status: http.StatusOK})
	turnIsLater := testreceiver.New(t, testKey)
	turnIsLater.Script(testreceiver.RetryAfter(http.StatusTooManyRequests, "1"), testreceiver.Answer{Status: http.StatusOK})
	create(t,
		newEndpoint(ns, "asks-longer", asksLonger.URL, func(ep *webhooksv1alpha1.WebhookEndpoint) {
			ep.Spec.RateLimit = &webhooksv1alpha1.RateLimit{Requests: 1, PeriodSeconds: ptr.To[int32](2)}
		}),
		newEndpoint(ns, "turn-is-later", turnIsLater.URL, func(ep *webhooksv1alpha1.WebhookEndpoint) {
			ep.Spec.RateLimit = &webhooksv1alpha1.RateLimit{Requests: 1, PeriodSeconds: ptr.To[int32](5)}
		}))
	d1 := webhooksv1alpha1.NewDelivery(ns, "asks-longer", newEvent("evt-asks"))
	d2 := webhooksv1alpha1.NewDelivery(ns, "turn-is-later", newEvent("evt-turn"))
	create(t, d1, d2)
	for _, tc := range []struct {
		name     string
		rcv      *testreceiver.Receiver
		min, max time.Duration
	}{
		{d1.Name, asksLonger, 4 * time.Second, 5500 * time.Millisecond},
		// The turn is enforced when an attempt starts; the receiver sees the two requests
		// with the jitter of the send path (a few milliseconds) on top of it.
		{d2.Name, turnIsLater, 5*time.Second - 100*time.Millisecond, 6500 * time.Millisecond},
	} {
		g.Eventually(func(g Gomega) {
			got := getDelivery(g, ns, tc.name)
			g.Expect(got.Status.Phase).To(Equal(webhooksv1alpha1.PhaseSucceeded))
			g.Expect(got.Status.Attempts).To(Equal(int32(2)))
			g.Expect(got.Status.History[0].StatusCode).To(Equal(int32(http.StatusTooManyRequests)))
		}).WithTimeout(20 * time.Second).Should(Succeed())
		for _, r := range tc.rcv.Requests() {
			g.Expect(r.VerifyErr).NotTo(HaveOccurred())
		}
		at := tc.rcv.Arrivals()
		g.Expect(at).To(HaveLen(2))
		gap := at[1].Sub(at[0])
		t.Logf("%s: second attempt %s after the first", tc.name, gap)
		g.Expect(gap).To(BeNumerically(">=", tc.min))
		g.Expect(gap).To(BeNumerically("<", tc.max))
	}
}

// spec.maxInFlight bounds what a slow receiver sees at once, below the operator's default; an
// endpoint without it gets the operator's default.
func TestMaxInFlightBoundsConcurrentRequests(t *testing.T) {
	g := NewWithT(t)
	ns := env.Namespace(t)
	signingSecret(t, ns)
	slow := func() (*testreceiver.Receiver, *atomic.Int32) {
		var now, peak atomic.Int32
		r := testreceiver.New(t, testKey, http.StatusOK)
		r.OnRequest(func(*http.Request) {
			n := now.Add(1)
			for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
			}
			time.Sleep(time.Second)
			now.Add(-1)
		})
		return r, &peak
	}
	bounded, boundedPeak := slow()
	open, openPeak := slow()
	opts := testOptions()
	opts.MaxInFlightPerEndpoint = 16
	startOperator(t, ns, opts)
	create(t,
		newEndpoint(ns, "n8n", bounded.URL, func(ep *webhooksv1alpha1.WebhookEndpoint) {
			ep.Spec.MaxInFlight = ptr.To[int32](3)
			ep.Spec.TimeoutSeconds = ptr.To[int32](10)
		}),
		newEndpoint(ns, "crm", open.URL, func(ep *webhooksv1alpha1.WebhookEndpoint) {
			ep.Spec.TimeoutSeconds = ptr.To[int32](10)
		}))
	ds := append(createDeliveries(t, ns, "n8n", 12), createDeliveries(t, ns, "crm", 12)...)

	g.Eventually(func(g Gomega) {
		for _, d := range ds {
			got := getDelivery(g, ns, d.Name)
			g.Expect(got.Status.Phase).To(Equal(webhooksv1alpha1.PhaseSucceeded))
			g.Expect(got.Status.Attempts).To(Equal(int32(1)), "waiting for a slot is not a failed attempt")
		}
	}).WithTimeout(60 * time.Second).WithPolling(250 * time.Millisecond).Should(Succeed())
	g.Expect(bounded.Count()).To(Equal(12))
	g.Expect(boundedPeak.Load()).To(Equal(int32(3)), "spec.maxInFlight 3: the receiver saw at most (and at some point exactly) 3 requests at once")
	g.Expect(openPeak.Load()).To(BeNumerically(">", 3), "without spec.maxInFlight the operator's default of 16 applies")
	for _, r := range append(bounded.Requests(), open.Requests()...) {
		g.Expect(r.VerifyErr).NotTo(HaveOccurred())
	}
}

// A filter that does not compile, or whose cost could exceed the limit, makes the endpoint
// Ready=False with reason InvalidFilter, the compiler's message and a Warning Event; fixing it
// makes the endpoint Ready again.
func TestInvalidFilterMakesTheEndpointNotReady(t *testing.T) {
	g := NewWithT(t)
	ns := env.Namespace(t)
	signingSecret(t, ns)
	startOperator(t, ns, testOptions())
	create(t,
		newEndpoint(ns, "typo", "http://127.0.0.1:1/unused", func(ep *webhooksv1alpha1.WebhookEndpoint) {
			ep.Spec.Filter = `event.organisation_id == "org-1"`
		}),
		newEndpoint(ns, "costly", "http://127.0.0.1:1/unused", func(ep *webhooksv1alpha1.WebhookEndpoint) {
			ep.Spec.Filter = `event.document.tag_ids.all(a, event.document.tag_ids.all(b, a == b || a.startsWith(b)))`
		}))

	for name, says := range map[string][]string{
		"typo":   {"spec.filter is not a valid CEL expression", "undefined field 'organisation_id'", "spec.filter:1:6", "no event is delivered to this endpoint until spec.filter is fixed"},
		"costly": {"may cost up to", "above the limit of 100000", "256 tag ids of 256 characters, a 256 KiB body"},
	} {
		g.Eventually(func(g Gomega) {
			ready := condition(getEndpoint(g, ns, name).Status.Conditions, "Ready")
			g.Expect(ready.Status).To(Equal(metav1.ConditionFalse))
			g.Expect(ready.Reason).To(Equal(webhooksv1alpha1.ReasonInvalidFilter))
			for _, s := range says {
				g.Expect(ready.Message).To(ContainSubstring(s))
			}
		}).WithTimeout(10*time.Second).Should(Succeed(), name)
		g.Eventually(func(g Gomega) []string { return eventReasons(g, ns, name) }).
			WithTimeout(10*time.Second).Should(ContainElement(webhooksv1alpha1.ReasonInvalidFilter), name)
	}

	ep := getEndpoint(g, ns, "typo")
	ep.Spec.Filter = `event.organization_id == "org-1"`
	g.Expect(env.Client.Update(context.Background(), ep)).To(Succeed())
	g.Eventually(func(g Gomega) {
		ready := condition(getEndpoint(g, ns, "typo").Status.Conditions, "Ready")
		g.Expect(ready.Status).To(Equal(metav1.ConditionTrue))
		g.Expect(ready.Reason).To(Equal(webhooksv1alpha1.ReasonValid))
		g.Expect(ready.Message).To(ContainSubstring("filter are valid"))
	}).WithTimeout(10 * time.Second).Should(Succeed())
}

// The test annotation's webhook.test delivery is sent whatever the filter says: to an endpoint
// whose filter selects none of its events, and to one whose filter does not compile.
func TestTestDeliveryIsSentWhateverTheFilterSays(t *testing.T) {
	g := NewWithT(t)
	ns := env.Namespace(t)
	signingSecret(t, ns)
	startOperator(t, ns, testOptions())
	narrow, broken := testreceiver.New(t, testKey), testreceiver.New(t, testKey)
	create(t,
		newEndpoint(ns, "narrow", narrow.URL, func(ep *webhooksv1alpha1.WebhookEndpoint) {
			ep.Spec.Filter = `event.organization_id == "no-such-org" && "never" in event.document.tag_ids`
		}),
		newEndpoint(ns, "broken", broken.URL, func(ep *webhooksv1alpha1.WebhookEndpoint) {
			ep.Spec.Filter = `event.nope`
		}))
	annotateEndpoint(t, ns, "narrow", "t1")
	annotateEndpoint(t, ns, "broken", "t1")
	for _, r := range []*testreceiver.Receiver{narrow, broken} {
		g.Eventually(r.Count).WithTimeout(15 * time.Second).Should(Equal(1))
		req := r.Requests()[0]
		g.Expect(req.VerifyErr).NotTo(HaveOccurred())
		g.Expect(req.Header.Get(dispatcher.HeaderEventType)).To(Equal(webhooksv1alpha1.EventWebhookTest))
	}
}
