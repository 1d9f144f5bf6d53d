package historyapi

import (
	"fmt"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/duration"

	historyv1alpha1 "github.com/docrouter/webhook-operator/api/history/v1alpha1"
)

// recordColumns are those of `kubectl get whd` (the WebhookDelivery CRD's printer columns), plus
// COMPLETED; priority 1 shows with -o wide.
var recordColumns = []metav1.TableColumnDefinition{
	{Name: "Name", Type: "string", Format: "name", Description: "The delivery's name: the endpoint's name and a hash of the event id."},
	{Name: "Endpoint", Type: "string", Description: "spec.endpointRef.name"},
	{Name: "Event", Type: "string", Description: "spec.event.type"},
	{Name: "Phase", Type: "string", Description: "status.phase"},
	{Name: "Attempts", Type: "integer", Description: "status.attempts"},
	{Name: "Code", Type: "integer", Description: "status.lastStatusCode"},
	{Name: "Next Attempt", Type: "string", Description: "status.nextAttemptTime"},
	{Name: "Completed", Type: "string", Description: "status.completionTime"},
	{Name: "Event ID", Type: "string", Priority: 1, Description: "spec.event.id"},
	{Name: "Last Error", Type: "string", Priority: 1, Description: "status.lastError"},
	{Name: "Age", Type: "string", Description: "Time since the delivery was created (metadata.creationTimestamp)."},
}

// recordTable converts a record or a list of records to kubectl's table. Empty cells are those
// the CRD's columns leave empty (an omitted field): no code, no attempts yet, no next attempt.
func recordTable(obj runtime.Object) (*metav1.Table, error) {
	t := &metav1.Table{ColumnDefinitions: recordColumns}
	var items []historyv1alpha1.WebhookDeliveryRecord
	switch o := obj.(type) {
	case *historyv1alpha1.WebhookDeliveryRecord:
		items = []historyv1alpha1.WebhookDeliveryRecord{*o}
		t.ResourceVersion = o.ResourceVersion
	case *historyv1alpha1.WebhookDeliveryRecordList:
		items = o.Items
		t.ResourceVersion, t.Continue = o.ResourceVersion, o.Continue
	default:
		return nil, fmt.Errorf("cannot show %T as a table of WebhookDeliveryRecords", obj)
	}
	now := time.Now()
	t.Rows = make([]metav1.TableRow, 0, len(items))
	for i := range items {
		r := &items[i]
		t.Rows = append(t.Rows, metav1.TableRow{
			Cells: []any{
				r.Name,
				r.Spec.EndpointRef.Name,
				r.Spec.Event.Type,
				r.Status.Phase,
				nonZero(int64(r.Status.Attempts)),
				nonZero(int64(r.Status.LastStatusCode)),
				timestamp(r.Status.NextAttemptTime),
				timestamp(r.Status.CompletionTime),
				r.Spec.Event.ID,
				r.Status.LastError,
				age(r.CreationTimestamp, now),
			},
			Object: runtime.RawExtension{Object: r},
		})
	}
	return t, nil
}

// nonZero is n, or an empty cell for 0.
func nonZero(n int64) any {
	if n == 0 {
		return ""
	}
	return n
}

func timestamp(t *metav1.Time) string {
	if t == nil || t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339)
}

func age(t metav1.Time, now time.Time) string {
	if t.IsZero() {
		return "<unknown>"
	}
	return duration.HumanDuration(now.Sub(t.Time))
}

var statsColumns = []metav1.TableColumnDefinition{
	{Name: "Name", Type: "string", Format: "name", Description: "The endpoint's name."},
	{Name: "Succeeded 24h", Type: "integer", Description: "Deliveries that succeeded in the last 24 hours."},
	{Name: "Failed 24h", Type: "integer", Description: "Deliveries given up in the last 24 hours."},
	{Name: "Success 24h", Type: "string", Description: "Succeeded / (succeeded + failed) in the last 24 hours."},
	{Name: "P50", Type: "string", Description: "Median attempt duration in the last 24 hours."},
	{Name: "P95", Type: "string", Description: "95th percentile of attempt durations in the last 24 hours."},
	{Name: "P99", Type: "string", Description: "99th percentile of attempt durations in the last 24 hours."},
	{Name: "Backlog", Type: "integer", Description: "Events waiting in the history store for room in the working set."},
	{Name: "Unfinished", Type: "integer", Description: "Deliveries in phase Pending or Retrying."},
	{Name: "Success 1h", Type: "string", Priority: 1, Description: "Success rate in the last hour."},
	{Name: "Success 7d", Type: "string", Priority: 1, Description: "Success rate in the last 7 days."},
}

func statsTable(obj runtime.Object) (*metav1.Table, error) {
	t := &metav1.Table{ColumnDefinitions: statsColumns}
	var items []historyv1alpha1.WebhookEndpointStats
	switch o := obj.(type) {
	case *historyv1alpha1.WebhookEndpointStats:
		items = []historyv1alpha1.WebhookEndpointStats{*o}
	case *historyv1alpha1.WebhookEndpointStatsList:
		items = o.Items
		t.ResourceVersion, t.Continue = o.ResourceVersion, o.Continue
	default:
		return nil, fmt.Errorf("cannot show %T as a table of WebhookEndpointStats", obj)
	}
	for i := range items {
		s := &items[i]
		w := map[string]*historyv1alpha1.StatsWindow{}
		for j := range s.Windows {
			w[s.Windows[j].Window] = &s.Windows[j]
		}
		day := w["24h"]
		if day == nil {
			day = &historyv1alpha1.StatsWindow{}
		}
		t.Rows = append(t.Rows, metav1.TableRow{
			Cells: []any{
				s.Name,
				day.Deliveries.Succeeded,
				day.Deliveries.Failed,
				rate(day),
				millis(day.Latency.P50Milliseconds),
				millis(day.Latency.P95Milliseconds),
				millis(day.Latency.P99Milliseconds),
				s.Backlog,
				s.Unfinished,
				rate(w["1h"]),
				rate(w["7d"]),
			},
			Object: runtime.RawExtension{Object: s},
		})
	}
	return t, nil
}

func rate(w *historyv1alpha1.StatsWindow) string {
	if w == nil || w.SuccessRate == nil {
		return ""
	}
	return fmt.Sprintf("%.1f%%", *w.SuccessRate*100)
}

func millis(ms int64) string {
	if ms == 0 {
		return ""
	}
	return (time.Duration(ms) * time.Millisecond).String()
}
