package historyapi

import (
	"strconv"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"

	historyv1alpha1 "github.com/docrouter/webhook-operator/api/history/v1alpha1"
	"github.com/docrouter/webhook-operator/internal/history"
)

// revisionString is a store revision as a resourceVersion.
func revisionString(rev int64) string { return strconv.FormatInt(rev, 10) }

// toRecord maps a stored record to the API's object. Attempts are those the record carries: all
// of them from Get, none from List (a list is a table of deliveries; get one for its attempts).
func toRecord(r *history.Record) *historyv1alpha1.WebhookDeliveryRecord {
	out := &historyv1alpha1.WebhookDeliveryRecord{
		TypeMeta: metav1.TypeMeta{APIVersion: historyv1alpha1.GroupVersion.String(), Kind: "WebhookDeliveryRecord"},
		ObjectMeta: metav1.ObjectMeta{
			Namespace:         r.Namespace,
			Name:              r.Name,
			UID:               r.UID,
			ResourceVersion:   revisionString(r.Revision),
			CreationTimestamp: metav1.NewTime(r.CreationTime),
			Labels:            copyLabels(r.Labels),
		},
		Spec: historyv1alpha1.WebhookDeliveryRecordSpec{
			EndpointRef: historyv1alpha1.EndpointReference{Name: r.Endpoint},
			Event: historyv1alpha1.Event{
				ID:             r.Event.ID,
				Type:           r.Event.Type,
				Timestamp:      r.Event.Timestamp,
				OrganizationID: r.Event.OrganizationID,
				Document: historyv1alpha1.Document{
					DocumentID:   r.Event.Document.DocumentID,
					DocumentName: r.Event.Document.DocumentName,
					TagIDs:       append([]string(nil), r.Event.Document.TagIDs...),
					Metadata:     rawJSON(r.Event.Document.Metadata),
				},
				Data: rawJSON(r.Event.Data),
			},
		},
		Status: historyv1alpha1.WebhookDeliveryRecordStatus{
			Phase:           string(r.Phase),
			Attempts:        r.AttemptCount,
			LastAttemptTime: metaTime(r.LastAttemptTime),
			NextAttemptTime: metaTime(r.NextAttemptTime),
			LastStatusCode:  r.LastStatusCode,
			LastError:       r.LastError,
			CompletionTime:  metaTime(r.CompletionTime),
			RemovedTime:     metaTime(r.RemovedTime),
			Reason:          r.Reason,
			Message:         r.Message,
			LastRetryToken:  r.LastRetryToken,
		},
	}
	if n := len(r.Attempts); n > 0 {
		out.Status.History = make([]historyv1alpha1.Attempt, n)
		for i, a := range r.Attempts {
			out.Status.History[i] = historyv1alpha1.Attempt{
				Number:               a.Number,
				Time:                 a.Time,
				StatusCode:           a.StatusCode,
				DurationMilliseconds: a.DurationMilliseconds,
				Result:               string(a.Result),
				Error:                a.Error,
				Trigger:              string(a.Trigger),
			}
		}
		out.Status.LastDurationMilliseconds = r.Attempts[n-1].DurationMilliseconds
	}
	return out
}

func copyLabels(in map[string]string) map[string]string {
	if len(in) == 0 {
		return nil
	}
	out := make(map[string]string, len(in))
	for k, v := range in {
		out[k] = v
	}
	return out
}

func rawJSON(j *apiextensionsv1.JSON) *runtime.RawExtension {
	if j == nil || len(j.Raw) == 0 {
		return nil
	}
	return &runtime.RawExtension{Raw: append([]byte(nil), j.Raw...)}
}

func metaTime(t *time.Time) *metav1.Time {
	if t == nil || t.IsZero() {
		return nil
	}
	mt := metav1.NewTime(*t)
	return &mt
}

// windowName names a stats window as users write it.
func windowName(d time.Duration) string {
	if d >= 24*time.Hour && d%(24*time.Hour) == 0 && d != 24*time.Hour {
		return strconv.Itoa(int(d/(24*time.Hour))) + "d"
	}
	if d%time.Hour == 0 {
		return strconv.Itoa(int(d/time.Hour)) + "h"
	}
	return d.String()
}

// toStats maps the store's stats of an endpoint to the API's object.
func toStats(namespace, endpoint string, s *history.Stats, now time.Time) *historyv1alpha1.WebhookEndpointStats {
	out := &historyv1alpha1.WebhookEndpointStats{
		TypeMeta: metav1.TypeMeta{APIVersion: historyv1alpha1.GroupVersion.String(), Kind: "WebhookEndpointStats"},
		ObjectMeta: metav1.ObjectMeta{
			Namespace:         namespace,
			Name:              endpoint,
			CreationTimestamp: metav1.NewTime(now),
		},
		Backlog:    s.Backlog,
		Unfinished: s.Unfinished,
	}
	for _, w := range s.Windows {
		sw := historyv1alpha1.StatsWindow{
			Window:        windowName(w.Window),
			WindowSeconds: int64(w.Window / time.Second),
			Start:         metav1.NewTime(w.Start),
			End:           metav1.NewTime(w.End),
			Deliveries:    historyv1alpha1.DeliveryCounts{Succeeded: w.Succeeded, Failed: w.Failed},
			Latency: historyv1alpha1.LatencyPercentiles{
				P50Milliseconds: w.LatencyP50.Milliseconds(),
				P95Milliseconds: w.LatencyP95.Milliseconds(),
				P99Milliseconds: w.LatencyP99.Milliseconds(),
			},
		}
		if w.SuccessRate >= 0 && w.Succeeded+w.Failed > 0 {
			rate := w.SuccessRate
			sw.SuccessRate = &rate
		}
		for class, n := range w.Attempts {
			if n == 0 {
				continue
			}
			if sw.Attempts == nil {
				sw.Attempts = map[string]int64{}
			}
			sw.Attempts[class] = n
		}
		if n := len(w.Series); n > 0 {
			sw.SeriesStepSeconds = int64(w.Window/time.Duration(n)) / int64(time.Second)
			sw.Series = make([]historyv1alpha1.StatsPoint, n)
			for i, p := range w.Series {
				sw.Series[i] = historyv1alpha1.StatsPoint{
					Start:                  metav1.NewTime(p.Start),
					Succeeded:              p.Succeeded,
					Failed:                 p.Failed,
					Attempts:               p.Attempts,
					FailedAttempts:         p.FailedAttempts,
					LatencyP50Milliseconds: p.LatencyP50.Milliseconds(),
					LatencyP95Milliseconds: p.LatencyP95.Milliseconds(),
				}
			}
		}
		out.Windows = append(out.Windows, sw)
	}
	return out
}
