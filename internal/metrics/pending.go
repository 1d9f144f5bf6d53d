package metrics

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// PendingCounter counts the unfinished deliveries per namespace at scrape time, from an
// informer cache: the backlog includes deliveries that no worker has looked at yet.
type PendingCounter func() (map[string]int, error)

// ThrottledCounter counts, at scrape time, the deliveries per namespace that wait for their
// turn under their endpoint's spec.rateLimit.
type ThrottledCounter = PendingCounter

// pendingCollector reports a gauge by namespace from the registered counters:
// docrouter_webhook_deliveries_pending, and docrouter_webhook_deliveries_throttled. A manager
// registers its counter only while it is the leader, so that the replicas of one installation
// do not each report the same backlog.
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

var throttled = &pendingCollector{
	desc: prometheus.NewDesc(DeliveriesThrottledName,
		"Deliveries waiting for their turn under their endpoint's spec.rateLimit, by namespace, on the leader.",
		[]string{"namespace"}, nil),
	counters: map[int]PendingCounter{},
}

// RegisterPendingCounter adds a source of the pending gauge until the returned function is called.
func RegisterPendingCounter(c PendingCounter) (unregister func()) { return pending.register(c) }

// RegisterThrottledCounter adds a source of the throttled gauge until the returned function is
// called.
func RegisterThrottledCounter(c ThrottledCounter) (unregister func()) { return throttled.register(c) }

func (c *pendingCollector) register(f PendingCounter) (unregister func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	id := c.next
	c.next++
	c.counters[id] = f
	return func() {
		c.mu.Lock()
		delete(c.counters, id)
		c.mu.Unlock()
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
