package controllers

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
	"github.com/docrouter/webhook-operator/internal/metrics"
	"github.com/docrouter/webhook-operator/internal/testenv/testreceiver"
)

// scrape fetches the metrics as Prometheus does: over HTTP, in the text format, from the
// registry the manager serves on its metrics endpoint.
func scrape(g Gomega, url string) map[string]*dto.MetricFamily {
	resp, err := http.Get(url)
	g.Expect(err).NotTo(HaveOccurred())
	defer resp.Body.Close()
	g.Expect(resp.StatusCode).To(Equal(http.StatusOK))
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	g.Expect(err).NotTo(HaveOccurred())
	return families
}

// sample is the value of the series of family name whose labels include want (a histogram's
// sample count); 0 when there is no such series.
func sample(families map[string]*dto.MetricFamily, name string, want map[string]string) float64 {
	f, ok := families[name]
	if !ok {
		return 0
	}
	var sum float64
series:
	for _, m := range f.GetMetric() {
		for k, v := range want {
			found := false
			for _, l := range m.GetLabel() {
				if l.GetName() == k && l.GetValue() == v {
					found = true
				}
			}
			if !found {
				continue series
			}
		}
		switch {
		case m.Counter != nil:
			sum += m.GetCounter().GetValue()
		case m.Gauge != nil:
			sum += m.GetGauge().GetValue()
		case m.Histogram != nil:
			sum += float64(m.GetHistogram().GetSampleCount())
		}
	}
	return sum
}

// After real deliveries (three accepted, one refused twice with 500, one to a closed port),
// the scraped counters moved by exactly what happened, the pending gauge counts a delivery
// held by a paused endpoint, and the in-flight gauge counts an attempt the receiver holds.
func TestMetricsCountRealDeliveries(t *testing.T) {
	g := NewWithT(t)
	ns := env.Namespace(t)
	signingSecret(t, ns)
	srv := httptest.NewServer(promhttp.HandlerFor(ctrlmetrics.Registry, promhttp.HandlerOpts{}))
	defer srv.Close()
	before := scrape(g, srv.URL)
	inNS := func(labels ...string) map[string]string {
		m := map[string]string{"namespace": ns}
		for i := 0; i+1 < len(labels); i += 2 {
			m[labels[i]] = labels[i+1]
		}
		return m
	}

	ok := testreceiver.New(t, testKey, http.StatusOK)
	failing := testreceiver.New(t, testKey, http.StatusInternalServerError)
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	g.Expect(err).NotTo(HaveOccurred())
	closedURL := "http://" + closed.Addr().String() + "/hooks"
	g.Expect(closed.Close()).To(Succeed())

	startOperator(t, ns, testOptions())
	create(t,
		newEndpoint(ns, "ok", ok.URL+"/hooks"),
		newEndpoint(ns, "failing", failing.URL+"/hooks", func(ep *webhooksv1alpha1.WebhookEndpoint) { ep.Spec.RetryPolicy = fastRetries(1) }),
		newEndpoint(ns, "closed", closedURL, func(ep *webhooksv1alpha1.WebhookEndpoint) { ep.Spec.RetryPolicy = fastRetries(0) }),
		newEndpoint(ns, "paused", ok.URL+"/hooks", func(ep *webhooksv1alpha1.WebhookEndpoint) { ep.Spec.Paused = true }),
	)
	var finished []string
	for i, ep := range []string{"ok", "ok", "ok", "failing", "closed"} {
		d := webhooksv1alpha1.NewDelivery(ns, ep, newEvent("evt-"+string(rune('a'+i))))
		create(t, d)
		finished = append(finished, d.Name)
	}
	create(t, webhooksv1alpha1.NewDelivery(ns, "paused", newEvent("evt-held")))

	for _, name := range finished {
		g.Eventually(func(g Gomega) {
			g.Expect(getDelivery(g, ns, name).Status.Phase.Finished()).To(BeTrue())
		}).WithTimeout(20 * time.Second).Should(Succeed())
	}

	after := scrape(g, srv.URL)
	delta := func(name string, labels map[string]string) float64 {
		return sample(after, name, labels) - sample(before, name, labels)
	}
	g.Expect(delta(metrics.DeliveriesFinishedName, inNS("result", "succeeded"))).To(Equal(3.0))
	g.Expect(delta(metrics.DeliveriesFinishedName, inNS("result", "failed"))).To(Equal(2.0))
	g.Expect(delta(metrics.AttemptsName, inNS("class", "2xx"))).To(Equal(3.0))
	g.Expect(delta(metrics.AttemptsName, inNS("class", "5xx"))).To(Equal(2.0))
	g.Expect(delta(metrics.AttemptsName, inNS("class", "network"))).To(Equal(1.0))
	g.Expect(delta(metrics.AttemptsName, inNS())).To(Equal(6.0))
	// The histograms have no namespace label; no other test runs meanwhile.
	g.Expect(delta(metrics.AttemptDurationName, map[string]string{"class": "2xx"})).To(Equal(3.0))
	g.Expect(delta(metrics.AttemptDurationName, nil)).To(Equal(6.0))
	g.Expect(delta(metrics.DeliveryLagName, nil)).To(Equal(6.0))
	g.Expect(sample(after, metrics.DeliveriesPendingName, inNS())).To(Equal(1.0))

	// The retry of the failing delivery waited about its backoff (1 s): the lag histogram's sum
	// grew by less than a few seconds, so lag measures lateness, not the backoff.
	lagSum := after[metrics.DeliveryLagName].GetMetric()[0].GetHistogram().GetSampleSum()
	if b, ok := before[metrics.DeliveryLagName]; ok {
		lagSum -= b.GetMetric()[0].GetHistogram().GetSampleSum()
	}
	g.Expect(lagSum).To(BeNumerically("<", 6*2.0))

	// An attempt the receiver holds is in flight; unpausing lets the held delivery go.
	release := make(chan struct{})
	ok.OnRequest(func(*http.Request) { <-release })
	ep := getEndpoint(g, ns, "paused")
	base := ep.DeepCopy()
	ep.Spec.Paused = false
	ep.Spec.TimeoutSeconds = ptr.To[int32](10)
	g.Expect(env.Client.Patch(context.Background(), ep, client.MergeFrom(base))).To(Succeed())
	g.Eventually(func(g Gomega) {
		g.Expect(sample(scrape(g, srv.URL), metrics.AttemptsInFlightName, nil)).To(Equal(1.0))
	}).WithTimeout(10 * time.Second).Should(Succeed())
	close(release)
	g.Eventually(func(g Gomega) {
		now := scrape(g, srv.URL)
		g.Expect(sample(now, metrics.AttemptsInFlightName, nil)).To(Equal(0.0))
		g.Expect(sample(now, metrics.DeliveriesPendingName, inNS())).To(Equal(0.0))
		g.Expect(sample(now, metrics.DeliveriesFinishedName, inNS("result", "succeeded")) -
			sample(before, metrics.DeliveriesFinishedName, inNS("result", "succeeded"))).To(Equal(4.0))
	}).WithTimeout(10 * time.Second).Should(Succeed())
}
