package intake_test

import (
	"bytes"
	"fmt"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/docrouter/webhook-operator/dispatcher/intake"
)

// BenchmarkPublish measures one intake end to end against envtest's kube-apiserver and etcd:
// concurrent publishers POST events over loopback HTTP (anonymous, so no reviews), and the
// handler lists endpoints from the cache and creates one delivery per subscribed endpoint. No
// controller runs, so the API server does only the creates. It reports events/s and
// deliveries/s; run with -benchtime=2000x -cpu 1 to measure a fixed number of events.
func BenchmarkPublish(b *testing.B) {
	for _, fanOut := range []int{1, 5} {
		b.Run(fmt.Sprintf("fanOut=%d", fanOut), func(b *testing.B) {
			ns := env.Namespace(b)
			for i := range fanOut {
				endpoint(b, ns, fmt.Sprintf("ep-%d", i), "http://127.0.0.1:1/unused", "*")
			}
			base := startIntake(b, ns, intake.Options{AllowAnonymous: true}, false)
			tr := &http.Transport{MaxIdleConnsPerHost: 256}
			c := &http.Client{Transport: tr}
			var seq atomic.Int64
			b.SetParallelism(32) // publishers per GOMAXPROCS
			b.ResetTimer()
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					body := fmt.Appendf(nil, `{"event_id": "bench-%d", "event_type": "document.uploaded", "document": {"document_id": "doc-1"}}`, seq.Add(1))
					resp, err := c.Post(base+"/v1/namespaces/"+ns+"/events", "application/json", bytes.NewReader(body))
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
