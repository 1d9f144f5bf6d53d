package intake_test

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
	"github.com/docrouter/webhook-operator/internal/intake"
)

// BenchmarkPublish measures one intake end to end against envtest's kube-apiserver and etcd:
// concurrent publishers POST events over loopback HTTP (anonymous, or with one
// ServiceAccount's token whose review is cached after the first request), and the
// handler lists endpoints from the cache and creates one delivery per subscribed endpoint. No
// controller runs, so the API server does only the creates. It reports events/s and
// deliveries/s; run with -benchtime=3000x to measure a fixed number of events.
//
// BenchmarkCreateDeliveriesDirectly is the ceiling to compare with, measured the same way:
// the same concurrency creating the same deliveries straight through an unthrottled client.
func BenchmarkPublish(b *testing.B) {
	for _, bc := range []struct {
		fanOut int
		auth   bool
	}{{1, false}, {5, false}, {1, true}} {
		fanOut := bc.fanOut
		b.Run(fmt.Sprintf("fanOut=%d,auth=%t", fanOut, bc.auth), func(b *testing.B) {
			ns := env.Namespace(b)
			for i := range fanOut {
				endpoint(b, ns, fmt.Sprintf("ep-%d", i), "http://127.0.0.1:1/unused", "*")
			}
			base := startIntake(b, ns, intake.Options{AllowAnonymous: !bc.auth}, false)
			auth := ""
			if bc.auth {
				auth = "Bearer " + publisher(b, ns, "pipeline", true)
			}
			tr := &http.Transport{MaxIdleConnsPerHost: 256}
			c := &http.Client{Transport: tr}
			var seq atomic.Int64
			b.SetParallelism(32) // publishers per GOMAXPROCS
			b.ResetTimer()
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					body := fmt.Appendf(nil, `{"event_id": "bench-%d", "event_type": "document.uploaded", "document": {"document_id": "doc-1"}}`, seq.Add(1))
					req, _ := http.NewRequest(http.MethodPost, base+"/v1/namespaces/"+ns+"/events", bytes.NewReader(body))
					req.Header.Set("Content-Type", "application/json")
					if auth != "" {
						req.Header.Set("Authorization", auth)
					}
					resp, err := c.Do(req)
					if err != nil {
						b.Error(err)
						return
					}
					resp.Body.Close()
					if resp.StatusCode != http.StatusAccepted {
						b.Errorf("answer %d", resp.StatusCode)
						return
					}
				}
			})
			elapsed := time.Since(start)
			b.StopTimer()
			events := float64(seq.Load())
			b.ReportMetric(events/elapsed.Seconds(), "events/s")
			b.ReportMetric(events*float64(fanOut)/elapsed.Seconds(), "deliveries/s")
			if got := len(deliveries(b, ns)); got != int(events)*fanOut {
				b.Fatalf("%d events with fan-out %d made %d deliveries", int(events), fanOut, got)
			}
		})
	}
}

func BenchmarkCreateDeliveriesDirectly(b *testing.B) {
	ns := env.Namespace(b)
	var seq atomic.Int64
	b.SetParallelism(32)
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			ev := webhooksv1alpha1.Event{ID: fmt.Sprintf("bench-%d", seq.Add(1)), Type: webhooksv1alpha1.EventDocumentUploaded,
				Timestamp: time.Now().Unix(), Document: webhooksv1alpha1.Document{DocumentID: "doc-1"}}
			if err := env.Client.Create(context.Background(), webhooksv1alpha1.NewDelivery(ns, "ep-0", ev)); err != nil {
				b.Error(err)
				return
			}
		}
	})
	elapsed := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(seq.Load())/elapsed.Seconds(), "deliveries/s")
}
