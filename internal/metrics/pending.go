package metrics

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// PendingCounter counts the unfinished deliveries per namespace at scrape time, from an
// informer cache: the backlog includes deliveries that no worker has looked at yet.
type PendingCounter func() (map[string]int, error)

// pendingCollector reports docrouter_webhook_deliveries_pending from the registered counters.
// A manager registers its counter only while it is the leader, so that the replicas of one
// installation do not each report the same backlog.
type pendingCollector struct {
	desc *prometheus.Desc

	mu       sync.Mutex
	next     int
	counters map[int]PendingCounter
}

var pending = &pendingCollector{
	desc: prometheus.NewDesc(DeliveriesPendingName,
		"Deliveries not yet finished (Pending or Retrying), by namespace, as the leader's cache sees them.",
		[]string{"namespace"}, nil),
	counters: map[int]PendingCounter{},
}

// RegisterPendingCounter adds a source of the pending gauge until the returned function is called.
func RegisterPendingCounter(c PendingCounter) (unregister func()) {
	pending.mu.Lock()
	defer pending.mu.Unlock()
	id := pending.next
	pending.next++
	pending.counters[id] = c
	return func() {
		pending.mu.Lock()
		delete(pending.counters, id)
		pending.mu.Unlock()
	}
}

func (c *pendingCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *pendingCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	counters := make([]PendingCounter, 0, len(c.counters))
	for _, f := range c.counters {
		counters = append(counters, f)
	}
	c.mu.Unlock()

	total := map[string]int{}
	for _, f := range counters {
		counts, err := f()
		if err != nil {
			ch <- prometheus.NewInvalidMetric(c.desc, err)
			continue
		}
		for ns, n := range counts {
			total[ns] += n
		}
	}
	for ns, n := range total {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(n), ns)
	}
}
