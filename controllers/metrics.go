package controllers

import (
	"context"
	"time"

	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/manager"

	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
	"github.com/docrouter/webhook-operator/dispatcher"
	"github.com/docrouter/webhook-operator/internal/metrics"
)

// attemptClass maps an attempt's result onto the class label of the attempts counter.
func attemptClass(res dispatcher.Result) string {
	switch res.Class {
	case dispatcher.ClassSuccess:
		return metrics.Class2xx
	case dispatcher.ClassTimeout:
		return metrics.ClassTimeout
	case dispatcher.ClassNetwork:
		return metrics.ClassNetwork
	case dispatcher.ClassBlocked:
		return metrics.ClassBlocked
	case dispatcher.ClassInvalid:
		return metrics.ClassInvalid
	}
	switch res.StatusCode / 100 {
	case 2:
		return metrics.Class2xx
	case 3:
		return metrics.Class3xx
	case 4:
		return metrics.Class4xx
	case 5:
		return metrics.Class5xx
	}
	return metrics.ClassOther
}

// observeAttempt records an attempt that starts now, and returns the function that records
// its result. The lag is observed for automatic attempts only: a manual retry was never due.
// An attempt that waited for its turn under the endpoint's rate limit was due at its turn, not
// earlier: the wait is the receiver's choice, not a delay of the operator.
func observeAttempt(d *webhooksv1alpha1.WebhookDelivery, manual bool, started, turn time.Time) func(dispatcher.Result) {
	if !manual {
		due := d.CreationTimestamp.Time
		if d.Status.NextAttemptTime != nil {
			due = d.Status.NextAttemptTime.Time
		}
		due = later(due, turn)
		metrics.DeliveryLag.Observe(max(started.Sub(due), 0).Seconds())
	}
	metrics.AttemptsInFlight.Inc()
	return func(res dispatcher.Result) {
		metrics.AttemptsInFlight.Dec()
		class := attemptClass(res)
		metrics.Attempts.WithLabelValues(d.Namespace, class).Inc()
		metrics.AttemptDuration.WithLabelValues(class).Observe(res.Duration.Seconds())
	}
}

// observeFinished counts a delivery that moves from phase from into the finished phase to.
func observeFinished(namespace string, from, to webhooksv1alpha1.DeliveryPhase) {
	if from == to {
		return
	}
	switch to {
	case webhooksv1alpha1.PhaseSucceeded:
		metrics.DeliveriesFinished.WithLabelValues(namespace, metrics.ResultSucceeded).Inc()
	case webhooksv1alpha1.PhaseFailed:
		metrics.DeliveriesFinished.WithLabelValues(namespace, metrics.ResultFailed).Inc()
	}
}

// pendingReporter feeds the pending gauge from the manager's cache while this replica leads.
type pendingReporter struct {
	reader client.Reader
}

var _ manager.LeaderElectionRunnable = pendingReporter{}

// NeedLeaderElection is true: only the leader reports the backlog.
func (pendingReporter) NeedLeaderElection() bool { return true }

// Start registers the counter until ctx ends.
func (p pendingReporter) Start(ctx context.Context) error {
	unregister := metrics.RegisterPendingCounter(func() (map[string]int, error) { return p.count(ctx) })
	<-ctx.Done()
	unregister()
	return nil
}

// count lists the deliveries in the cache (without copying them) and counts the unfinished
// ones per namespace. A namespace whose deliveries are all finished reports 0.
func (p pendingReporter) count(ctx context.Context) (map[string]int, error) {
	var list webhooksv1alpha1.WebhookDeliveryList
	if err := p.reader.List(ctx, &list, client.UnsafeDisableDeepCopy); err != nil {
		ctrl.LoggerFrom(ctx).Error(err, "counting pending deliveries for the metrics")
		return nil, err
	}
	counts := map[string]int{}
	for i := range list.Items {
		d := &list.Items[i]
		if d.Status.Phase.Finished() {
			counts[d.Namespace] += 0
		} else {
			counts[d.Namespace]++
		}
	}
	return counts, nil
}

// observeBulkRetried counts deliveries retried by an endpoint's retry-failed annotation.
func observeBulkRetried(namespace string, n int) {
	if n > 0 {
		metrics.BulkRetriedDeliveries.WithLabelValues(namespace).Add(float64(n))
	}
}
