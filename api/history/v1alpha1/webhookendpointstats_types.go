package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// WebhookEndpointStats summarise one WebhookEndpoint's deliveries over the last hour, day and
// week, computed by the history store from per-minute rollups when it is read. Its name is the
// endpoint's name; an endpoint without deliveries (or one that no longer exists) has zero
// counts. Read-only.
//
//	kubectl get webhookendpointstats signed -o yaml
//
// +kubebuilder:object:root=true
type WebhookEndpointStats struct {
	metav1.TypeMeta `json:",inline"`
	// metadata: name is the endpoint's name; creationTimestamp is when the stats were computed.
	// +optional
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// windows are the last hour (1h), day (24h) and week (7d), in that order.
	// +optional
	// +listType=atomic
	Windows []StatsWindow `json:"windows,omitempty"`

	// backlog counts the endpoint's events that wait in the history store for room in the
	// working set.
	// +optional
	Backlog int64 `json:"backlog,omitempty"`

	// unfinished counts the endpoint's deliveries in phase Pending or Retrying.
	// +optional
	Unfinished int64 `json:"unfinished,omitempty"`
}

// StatsWindow covers [start, end).
type StatsWindow struct {
	// window names the window: 1h, 24h or 7d.
	// +optional
	Window string `json:"window,omitempty"`

	// windowSeconds is the window's length in seconds.
	// +optional
	WindowSeconds int64 `json:"windowSeconds,omitempty"`

	// start of the window.
	// +optional
	Start metav1.Time `json:"start,omitempty"`

	// end of the window (exclusive).
	// +optional
	End metav1.Time `json:"end,omitempty"`

	// deliveries counts the deliveries that reached a final phase in the window.
	// +optional
	Deliveries DeliveryCounts `json:"deliveries,omitempty"`

	// attempts counts the window's attempts by class: 2xx, 3xx, 4xx, 5xx, timeout, network,
	// blocked, invalid, other (classes without attempts are absent).
	// +optional
	Attempts map[string]int64 `json:"attempts,omitempty"`

	// successRate is succeeded / (succeeded + failed), from 0 to 1; unset when no delivery
	// finished in the window.
	// +optional
	SuccessRate *float64 `json:"successRate,omitempty"`

	// latency holds percentiles of the durations of the window's attempts (interpolated within
	// histogram buckets); zero when there was no attempt.
	// +optional
	Latency LatencyPercentiles `json:"latency,omitempty"`

	// seriesStepSeconds is the length of each point of series, in seconds.
	// +optional
	SeriesStepSeconds int64 `json:"seriesStepSeconds,omitempty"`

	// series splits the window into equal points for charts, oldest first: 12 for an hour, 24
	// for a day, 28 for a week.
	// +optional
	// +listType=atomic
	Series []StatsPoint `json:"series,omitempty"`
}

// DeliveryCounts count deliveries by final phase.
type DeliveryCounts struct {
	// succeeded counts deliveries that succeeded.
	// +optional
	Succeeded int64 `json:"succeeded,omitempty"`

	// failed counts deliveries that were given up.
	// +optional
	Failed int64 `json:"failed,omitempty"`
}

// LatencyPercentiles are attempt durations in milliseconds.
type LatencyPercentiles struct {
	// p50Milliseconds is the median.
	// +optional
	P50Milliseconds int64 `json:"p50Milliseconds,omitempty"`

	// p95Milliseconds is the 95th percentile.
	// +optional
	P95Milliseconds int64 `json:"p95Milliseconds,omitempty"`

	// p99Milliseconds is the 99th percentile.
	// +optional
	P99Milliseconds int64 `json:"p99Milliseconds,omitempty"`
}

// StatsPoint is one point of a chart.
type StatsPoint struct {
	// start of the point; it lasts seriesStepSeconds.
	// +optional
	Start metav1.Time `json:"start,omitempty"`

	// succeeded counts deliveries that succeeded in it.
	// +optional
	Succeeded int64 `json:"succeeded,omitempty"`

	// failed counts deliveries that were given up in it.
	// +optional
	Failed int64 `json:"failed,omitempty"`

	// attempts counts its attempts.
	// +optional
	Attempts int64 `json:"attempts,omitempty"`

	// failedAttempts counts its attempts that did not succeed.
	// +optional
	FailedAttempts int64 `json:"failedAttempts,omitempty"`

	// latencyP50Milliseconds is the median duration of its attempts.
	// +optional
	LatencyP50Milliseconds int64 `json:"latencyP50Milliseconds,omitempty"`

	// latencyP95Milliseconds is the 95th percentile of the durations of its attempts.
	// +optional
	LatencyP95Milliseconds int64 `json:"latencyP95Milliseconds,omitempty"`
}

// WebhookEndpointStatsList holds the stats of a namespace's WebhookEndpoints.
// +kubebuilder:object:root=true
type WebhookEndpointStatsList struct {
	metav1.TypeMeta `json:",inline"`
	// +optional
	metav1.ListMeta `json:"metadata,omitempty"`

	// items are the stats, by endpoint name.
	Items []WebhookEndpointStats `json:"items"`
}
