// Package metrics defines the operator's Prometheus series and registers them on
// controller-runtime's registry, which the manager serves on its metrics endpoint.
//
// Every series is an aggregate: no label carries an object's name. The namespace label on the
// counters and the pending gauge is bounded by the cluster's namespaces, which the cluster's
// administrators create, not the publishers; histograms have no namespace label.
//
// The package imports neither the controllers nor the intake, so that both can record into it.
package metrics

import (
	"slices"

	"github.com/prometheus/client_golang/prometheus"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
)

// Names of the series, public: alerts and dashboards use them.
const (
	DeliveriesFinishedName    = "docrouter_webhook_deliveries_finished_total"
	AttemptsName              = "docrouter_webhook_attempts_total"
	AttemptDurationName       = "docrouter_webhook_attempt_duration_seconds"
	DeliveryLagName           = "docrouter_webhook_delivery_lag_seconds"
	DeliveriesPendingName     = "docrouter_webhook_deliveries_pending"
	AttemptsInFlightName      = "docrouter_webhook_attempts_in_flight"
	EventsPublishedName       = "docrouter_webhook_events_published_total"
	BulkRetriedDeliveriesName = "docrouter_webhook_bulk_retried_deliveries_total"
	AttemptsThrottledName     = "docrouter_webhook_attempts_throttled_total"
	DeliveriesThrottledName   = "docrouter_webhook_deliveries_throttled"
	DeliveriesFilteredName    = "docrouter_webhook_deliveries_filtered_total"
	HistoryStoreUpName        = "docrouter_webhook_history_store_up"
	HistoryWritesName         = "docrouter_webhook_history_writes_total"
	HistoryPendingName        = "docrouter_webhook_history_pending_records"
	HistoryDroppedName        = "docrouter_webhook_history_dropped_snapshots_total"
	ArchiveLagName            = "docrouter_webhook_archive_lag_seconds"
	WorkingSetName            = "docrouter_webhook_working_set_deliveries"
	BacklogName               = "docrouter_webhook_backlog_events"
	EventsRefusedName         = "docrouter_webhook_events_refused_total"
	EventsQueuedName          = "docrouter_webhook_events_queued_total"
	ResultSucceeded           = "succeeded"
	ResultFailed              = "failed"
	otherLabelValue           = "other"
)

// Attempt outcome classes, the values of the class label.
const (
	Class2xx     = "2xx"
	Class3xx     = "3xx"
	Class4xx     = "4xx"
	Class5xx     = "5xx"
	ClassTimeout = "timeout"
	ClassNetwork = "network"
	ClassBlocked = "blocked"
	// ClassInvalid is a request that could not be built (an unparsable URL).
	ClassInvalid = "invalid"
	// ClassOther is anything else, such as a 1xx final answer.
	ClassOther = "other"
)

// Why the intake created no delivery for a subscribed endpoint, the values of the reason label
// of docrouter_webhook_deliveries_filtered_total.
const (
	// FilterNoMatch: the endpoint's spec.filter is false for the event.
	FilterNoMatch = "no_match"
	// FilterInvalid: the endpoint's spec.filter does not compile (its Ready condition says why).
	FilterInvalid = "invalid"
	// FilterError: the filter failed on this event (a key the event lacks, a type it does not expect).
	FilterError = "error"
)

var (
	// DeliveriesFinished counts deliveries that reached Succeeded or Failed. A manual retry of
	// a Failed delivery that succeeds counts once more, as succeeded.
	DeliveriesFinished = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: DeliveriesFinishedName,
		Help: "Deliveries that reached a finished phase, by namespace and result (succeeded, failed).",
	}, []string{"namespace", "result"})

	// Attempts counts HTTP attempts by outcome class.
	Attempts = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: AttemptsName,
		Help: "Delivery attempts, by namespace and outcome class (2xx, 3xx, 4xx, 5xx, timeout, network, blocked, invalid, other).",
	}, []string{"namespace", "class"})

	// AttemptDuration is the wall time of one attempt, from the request to the end of the
	// response read (or the failure).
	AttemptDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    AttemptDurationName,
		Help:    "Duration of one delivery attempt in seconds, by outcome class.",
		Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
	}, []string{"class"})

	// DeliveryLag is how late an attempt started: its start minus the time it was due (the
	// delivery's creation for a first attempt, status.nextAttemptTime for a retry).
	DeliveryLag = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    DeliveryLagName,
		Help:    "Seconds between the time an automatic attempt was due and the time it started.",
		Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300},
	})

	// AttemptsInFlight is the number of HTTP attempts under way on this replica.
	AttemptsInFlight = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: AttemptsInFlightName,
		Help: "Delivery attempts under way (HTTP request sent, answer not yet read).",
	})

	// EventsPublished counts events accepted by the intake, by event type.
	EventsPublished = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: EventsPublishedName,
		Help: "Events accepted by the intake, by event type (each fans out to zero or more deliveries).",
	}, []string{"type"})

	// BulkRetriedDeliveries counts Failed deliveries given a new attempt by the retry-failed
	// annotation of their endpoint.
	BulkRetriedDeliveries = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: BulkRetriedDeliveriesName,
		Help: "Failed deliveries retried through an endpoint's retry-failed annotation, by namespace.",
	}, []string{"namespace"})

	// AttemptsThrottled counts attempts that had to wait for their turn under their endpoint's
	// spec.rateLimit (once per attempt, however long it waited).
	AttemptsThrottled = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: AttemptsThrottledName,
		Help: "Attempts that waited for their turn under their endpoint's spec.rateLimit, by namespace.",
	}, []string{"namespace"})

	// DeliveriesFiltered counts the deliveries the intake did not create because of an
	// endpoint's spec.filter, by reason (no_match, invalid, error).
	DeliveriesFiltered = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: DeliveriesFilteredName,
		Help: "Deliveries not created because of the endpoint's spec.filter, by namespace and reason (no_match; invalid: the filter does not compile; error: it failed on the event).",
	}, []string{"namespace", "reason"})

	// HistoryStoreUp is 1 while the history store answers, 0 when it does not.
	HistoryStoreUp = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: HistoryStoreUpName,
		Help: "1 while the history store answers, 0 when it does not (deliveries go on; finished ones stay in etcd).",
	})

	// HistoryWrites counts the archiver's store transactions, by result.
	HistoryWrites = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: HistoryWritesName,
		Help: "Transactions that wrote delivery records to the history store, by result (succeeded, failed); each carries up to 500 records.",
	}, []string{"result"})

	// HistoryPending is the number of delivery snapshots waiting to be written to the store.
	HistoryPending = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: HistoryPendingName,
		Help: "Delivery snapshots waiting to be written to the history store (one per delivery at most).",
	})

	// HistoryDropped counts snapshots of unfinished deliveries not kept because too many waited.
	HistoryDropped = prometheus.NewCounter(prometheus.CounterOpts{
		Name: HistoryDroppedName,
		Help: "Snapshots of unfinished deliveries not kept because 20,000 waited for the store; the delivery's next change is kept again, and finished deliveries are archived from etcd.",
	})

	// ArchiveLag is how long a finished delivery waited to be written to the store.
	ArchiveLag = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    ArchiveLagName,
		Help:    "Seconds from a delivery's last status write to its record in the history store, for finished deliveries.",
		Buckets: []float64{.05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300},
	})

	// WorkingSet is the number of WebhookDeliveries in etcd, by state.
	WorkingSet = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: WorkingSetName,
		Help: "WebhookDeliveries in etcd as this replica counts them, by state (unfinished, finished).",
	}, []string{"state"})

	// Backlog is the number of events waiting in the history store's backlog, by namespace.
	Backlog = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: BacklogName,
		Help: "Events waiting in the history store's backlog for room in the working set, by namespace, as the leader counts them.",
	}, []string{"namespace"})

	// EventsRefused counts deliveries of accepted-looking events the intake refused, by reason.
	EventsRefused = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: EventsRefusedName,
		Help: "Publishes the intake refused although the event was valid, by reason (working_set_full, etcd_full, store_unavailable).",
	}, []string{"reason"})

	// EventsQueued counts deliveries that went to the store's backlog instead of etcd.
	EventsQueued = prometheus.NewCounter(prometheus.CounterOpts{
		Name: EventsQueuedName,
		Help: "Deliveries the intake put into the history store's backlog because the working set was full, the endpoint had a backlog, or etcd was out of space.",
	})
)

// Reasons of EventsRefused.
const (
	RefusedWorkingSetFull   = "working_set_full"
	RefusedEtcdFull         = "etcd_full"
	RefusedStoreUnavailable = "store_unavailable"
	RefusedBacklogFull      = "backlog_full"
)

func init() {
	ctrlmetrics.Registry.MustRegister(DeliveriesFinished, Attempts, AttemptDuration, DeliveryLag,
		AttemptsInFlight, EventsPublished, BulkRetriedDeliveries, pending,
		HistoryStoreUp, HistoryWrites, HistoryPending, HistoryDropped, ArchiveLag, WorkingSet, Backlog,
		EventsRefused, EventsQueued, AttemptsThrottled, throttled, DeliveriesFiltered)
}

// RecordEventPublished counts one event accepted by the intake. An event type outside the
// product's list is counted as "other", so that the label stays bounded.
//
// The intake (internal/intake) calls it once per accepted event.
func RecordEventPublished(eventType string) {
	if !slices.Contains(webhooksv1alpha1.EventTypes, eventType) {
		eventType = otherLabelValue
	}
	EventsPublished.WithLabelValues(eventType).Inc()
}

// Names lists every series the operator exports (histograms by their base name), for checks
// that alerts and dashboards use only real series.
func Names() []string {
	return []string{DeliveriesFinishedName, AttemptsName, AttemptDurationName, DeliveryLagName,
		DeliveriesPendingName, AttemptsInFlightName, EventsPublishedName, BulkRetriedDeliveriesName,
		HistoryStoreUpName, HistoryWritesName, HistoryPendingName, HistoryDroppedName, ArchiveLagName,
		WorkingSetName, BacklogName, EventsRefusedName, EventsQueuedName,
		AttemptsThrottledName, DeliveriesThrottledName, DeliveriesFilteredName}
}
