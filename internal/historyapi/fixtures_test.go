package historyapi_test

import (
	"fmt"
	"time"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
	"github.com/docrouter/webhook-operator/internal/history"
)

// delivery describes a record to write, as the archiver would for a finished delivery.
type delivery struct {
	ns, endpoint, eventID, eventType string
	phase                            webhooksv1alpha1.DeliveryPhase
	created                          time.Time
	// attempts: status codes (0: a timeout), each lasting duration.
	codes    []int32
	duration time.Duration
	labels   map[string]string
}

func (d delivery) record() history.Record {
	if d.eventType == "" {
		d.eventType = "llm.completed"
	}
	if d.phase == "" {
		d.phase = webhooksv1alpha1.PhaseSucceeded
	}
	if d.created.IsZero() {
		d.created = time.Now().Add(-time.Minute)
	}
	if d.duration == 0 {
		d.duration = 40 * time.Millisecond
	}
	labels := map[string]string{webhooksv1alpha1.EndpointLabel: d.endpoint, webhooksv1alpha1.EventTypeLabel: d.eventType}
	for k, v := range d.labels {
		labels[k] = v
	}
	uid := types.UID(fmt.Sprintf("uid-%s-%s-%s", d.ns, d.endpoint, d.eventID))
	r := history.Record{
		Namespace: d.ns,
		Name:      webhooksv1alpha1.DeliveryName(d.endpoint, d.eventID),
		UID:       uid,
		Endpoint:  d.endpoint,
		Event: webhooksv1alpha1.Event{
			ID: d.eventID, Type: d.eventType, Timestamp: d.created.Unix(), OrganizationID: "org-1",
			Document: webhooksv1alpha1.Document{DocumentID: "doc-" + d.eventID, DocumentName: "invoice.pdf", TagIDs: []string{"t1"}},
			Data:     &apiextensionsv1.JSON{Raw: []byte(`{"total":42}`)},
		},
		Labels:       labels,
		Phase:        d.phase,
		CreationTime: d.created.UTC().Truncate(time.Microsecond),
	}
	t := d.created.Add(time.Second)
	for i, code := range d.codes {
		a := webhooksv1alpha1.Attempt{
			Number: int32(i + 1), Time: metav1.NewTime(t.UTC().Truncate(time.Second)), StatusCode: code,
			DurationMilliseconds: d.duration.Milliseconds(), Trigger: webhooksv1alpha1.TriggerScheduled,
		}
		switch {
		case code == 0:
			a.Result, a.Error = "Timeout", "no answer within 10s"
		case code/100 == 2:
			a.Result = "Success"
		default:
			a.Result, a.Error = "HTTPError", fmt.Sprintf("HTTP %d: failing on purpose", code)
		}
		r.Attempts = append(r.Attempts, a)
		at := a.Time.Time
		r.LastAttemptTime, r.LastStatusCode, r.LastError = &at, code, a.Error
		t = t.Add(5 * time.Second)
	}
	r.AttemptCount = int32(len(d.codes))
	if d.phase.Finished() {
		done := t
		r.CompletionTime = &done
		r.Reason = map[webhooksv1alpha1.DeliveryPhase]string{webhooksv1alpha1.PhaseSucceeded: "Delivered", webhooksv1alpha1.PhaseFailed: "RetriesExhausted"}[d.phase]
	} else if d.phase == webhooksv1alpha1.PhaseRetrying {
		next := t.Add(time.Minute)
		r.NextAttemptTime = &next
	}
	return r
}
