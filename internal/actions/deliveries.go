package actions

import (
	"context"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"time"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	historyv1alpha1 "github.com/docrouter/webhook-operator/api/history/v1alpha1"
	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
	"github.com/docrouter/webhook-operator/controllers"
)

// DeliveryFilter selects deliveries; empty fields select everything.
type DeliveryFilter struct {
	Endpoint  string
	Phase     string
	EventType string
	EventID   string
	// Since keeps deliveries created at or after this time.
	Since time.Time
}

// Delivery is one delivery in a list: what `kubectl get whdr` shows of it.
type Delivery struct {
	Namespace, Name string
	Endpoint        string
	EventID         string
	EventType       string
	Phase           string
	Attempts        int32
	LastStatusCode  int32
	LastError       string
	Created         time.Time
	LastAttempt     *time.Time
	NextAttempt     *time.Time
	Completed       *time.Time
	// Live is true while the WebhookDelivery is in etcd; false once it left and only its
	// record in the history remains.
	Live bool
}

// DeliveryPage is one page of deliveries, newest first.
type DeliveryPage struct {
	Items []Delivery
	// Continue fetches the next page; empty on the last one.
	Continue string
	// HistoryErr is set when the history could not be read: the page then holds the live
	// deliveries in etcd only.
	HistoryErr error
}

// Page sizes of ListDeliveries.
const (
	DefaultDeliveryPage = 50
	MaxDeliveryPage     = 500
)

// ListDeliveries lists a page of the namespace's deliveries, live and finished alike, newest
// first, from the history API (webhookdeliveryrecords: one record per delivery, whether it is
// still in etcd or not). The filters run in the history store (indexed), except Since, which
// the API does not take: a page may then hold fewer than limit. When the history
// cannot be read, the live WebhookDeliveries are listed instead and HistoryErr says why.
//
// Records come in the order they were first written, which is the order deliveries were
// created but for the odd one archived late (after an operator restart): Since is checked on
// each record, and the list ends at a page whose records were all created before it.
func (c *Client) ListDeliveries(ctx context.Context, namespace string, f DeliveryFilter, limit int64, cont string) (*DeliveryPage, error) {
	if limit <= 0 {
		limit = DefaultDeliveryPage
	}
	limit = min(limit, MaxDeliveryPage)
	page, err := c.listRecords(ctx, namespace, f, limit, cont)
	if err == nil {
		return page, nil
	}
	if !historyUnavailable(err) {
		return nil, err
	}
	live, liveErr := c.listLive(ctx, namespace, f, limit, cont)
	if liveErr != nil {
		return nil, liveErr
	}
	live.HistoryErr = &HistoryUnavailableError{Err: err}
	return live, nil
}

func (c *Client) listRecords(ctx context.Context, namespace string, f DeliveryFilter, limit int64, cont string) (*DeliveryPage, error) {
	fields := client.MatchingFields{}
	if f.Endpoint != "" {
		fields[historyv1alpha1.EndpointField] = f.Endpoint
	}
	if f.Phase != "" {
		fields[historyv1alpha1.PhaseField] = f.Phase
	}
	if f.EventType != "" {
		fields[historyv1alpha1.EventTypeField] = f.EventType
	}
	if f.EventID != "" {
		fields[historyv1alpha1.EventIDField] = f.EventID
	}
	var list historyv1alpha1.WebhookDeliveryRecordList
	opts := []client.ListOption{client.InNamespace(namespace), client.Limit(limit), client.Continue(cont)}
	if len(fields) > 0 {
		opts = append(opts, fields)
	}
	if err := c.kube.List(ctx, &list, opts...); err != nil {
		return nil, err
	}
	page := &DeliveryPage{Continue: list.Continue}
	for i := range list.Items {
		d := fromRecord(&list.Items[i])
		if !f.Since.IsZero() && d.Created.Before(f.Since) {
			continue
		}
		page.Items = append(page.Items, d)
	}
	if !f.Since.IsZero() && len(page.Items) == 0 && len(list.Items) > 0 {
		// A whole page created before Since: the rest, written earlier still, is older too.
		page.Continue = ""
	}
	return page, nil
}

// listLive lists WebhookDeliveries in etcd: by the API server's selectable fields and labels,
// the event id and Since checked here (a page may then hold fewer than limit), sorted newest
// first within the page (the API server lists by name).
func (c *Client) listLive(ctx context.Context, namespace string, f DeliveryFilter, limit int64, cont string) (*DeliveryPage, error) {
	fields := client.MatchingFields{}
	if f.Endpoint != "" {
		fields[webhooksv1alpha1.EndpointField] = f.Endpoint
	}
	if f.Phase != "" {
		fields[webhooksv1alpha1.PhaseField] = f.Phase
	}
	opts := []client.ListOption{client.InNamespace(namespace), client.Limit(limit), client.Continue(cont)}
	if len(fields) > 0 {
		opts = append(opts, fields)
	}
	if f.EventType != "" {
		opts = append(opts, client.MatchingLabels{webhooksv1alpha1.EventTypeLabel: f.EventType})
	}
	var list webhooksv1alpha1.WebhookDeliveryList
	if err := c.kube.List(ctx, &list, opts...); err != nil {
		return nil, err
	}
	page := &DeliveryPage{Continue: list.Continue}
	for i := range list.Items {
		d := fromLive(&list.Items[i])
		if (f.EventID != "" && d.EventID != f.EventID) || (!f.Since.IsZero() && d.Created.Before(f.Since)) {
			continue
		}
		page.Items = append(page.Items, d)
	}
	sort.SliceStable(page.Items, func(i, j int) bool { return page.Items[i].Created.After(page.Items[j].Created) })
	return page, nil
}

func fromRecord(r *historyv1alpha1.WebhookDeliveryRecord) Delivery {
	return Delivery{
		Namespace: r.Namespace, Name: r.Name,
		Endpoint: r.Spec.EndpointRef.Name, EventID: r.Spec.Event.ID, EventType: r.Spec.Event.Type,
		Phase: r.Status.Phase, Attempts: r.Status.Attempts,
		LastStatusCode: r.Status.LastStatusCode, LastError: r.Status.LastError,
		Created:     r.CreationTimestamp.Time,
		LastAttempt: timeOf(r.Status.LastAttemptTime), NextAttempt: timeOf(r.Status.NextAttemptTime),
		Completed: timeOf(r.Status.CompletionTime),
		Live:      r.Status.RemovedTime == nil,
	}
}

func fromLive(d *webhooksv1alpha1.WebhookDelivery) Delivery {
	phase := string(d.Status.Phase)
	if phase == "" {
		phase = string(webhooksv1alpha1.PhasePending)
	}
	return Delivery{
		Namespace: d.Namespace, Name: d.Name,
		Endpoint: d.Spec.EndpointRef.Name, EventID: d.Spec.Event.ID, EventType: d.Spec.Event.Type,
		Phase: phase, Attempts: d.Status.Attempts,
		LastStatusCode: d.Status.LastStatusCode, LastError: d.Status.LastError,
		Created:     d.CreationTimestamp.Time,
		LastAttempt: timeOf(d.Status.LastAttemptTime), NextAttempt: timeOf(d.Status.NextAttemptTime),
		Completed: timeOf(d.Status.CompletionTime),
		Live:      true,
	}
}

func timeOf(t *metav1.Time) *time.Time {
	if t == nil {
		return nil
	}
	v := t.Time
	return &v
}

// DeliveryDetail is one delivery with its event, the payload as sent and every attempt.
type DeliveryDetail struct {
	Delivery
	Event webhooksv1alpha1.Event
	// Payload is the body every attempt sent (the same bytes each time, as signed); PayloadErr
	// says why it could not be built (an event the operator refuses to send).
	Payload    []byte
	PayloadErr error
	// Reason and Message are those of the delivery's Ready condition.
	Reason, Message string
	// LastRetryToken is the last retry annotation value the operator handled.
	LastRetryToken string
	// Attempts are every attempt, oldest first: the history's, and those of the live
	// WebhookDelivery not yet in it.
	History []webhooksv1alpha1.Attempt
	// Removed is when the WebhookDelivery left etcd.
	Removed *time.Time
	// HistoryErr is set when the record could not be read: what is shown comes from the
	// WebhookDelivery in etcd alone (its last 20 attempts).
	HistoryErr error
}

// GetDelivery reads one delivery: its record in the history (every attempt) and, while it is
// in etcd, the WebhookDelivery (the freshest status). Neither found: a NotFound error that
// says where it looked.
func (c *Client) GetDelivery(ctx context.Context, namespace, name string) (*DeliveryDetail, error) {
	key := client.ObjectKey{Namespace: namespace, Name: name}
	rec := &historyv1alpha1.WebhookDeliveryRecord{}
	recErr := c.kube.Get(ctx, key, rec)
	live := &webhooksv1alpha1.WebhookDelivery{}
	liveErr := c.kube.Get(ctx, key, live)
	switch {
	case liveErr != nil && !apierrors.IsNotFound(liveErr) && recErr != nil:
		return nil, liveErr // such as a 403 on webhookdeliveries
	case recErr != nil && !apierrors.IsNotFound(recErr) && !historyUnavailable(recErr):
		return nil, recErr
	case recErr != nil && liveErr != nil && apierrors.IsNotFound(recErr):
		return nil, deliveryNotFound(namespace, name)
	case recErr != nil && liveErr != nil:
		return nil, fmt.Errorf("delivery %s is not in etcd, and %w", name, &HistoryUnavailableError{Err: recErr})
	}
	if liveErr != nil {
		live = nil
	}

	d := &DeliveryDetail{}
	if recErr == nil {
		d.Delivery = fromRecord(rec)
		d.Event = eventOfRecord(rec)
		d.Reason, d.Message, d.LastRetryToken = rec.Status.Reason, rec.Status.Message, rec.Status.LastRetryToken
		d.Removed = timeOf(rec.Status.RemovedTime)
		for _, a := range rec.Status.History {
			d.History = append(d.History, webhooksv1alpha1.Attempt{
				Number: a.Number, Time: a.Time, StatusCode: a.StatusCode, DurationMilliseconds: a.DurationMilliseconds,
				Result: webhooksv1alpha1.AttemptResult(a.Result), Error: a.Error, Trigger: webhooksv1alpha1.AttemptTrigger(a.Trigger),
			})
		}
	} else if !apierrors.IsNotFound(recErr) {
		d.HistoryErr = &HistoryUnavailableError{Err: recErr}
	}
	if live != nil {
		// The WebhookDelivery is ahead of its record (the record is written after each status
		// write): its status wins, and its attempts not yet archived are added.
		d.Delivery = fromLive(live)
		d.Event = live.Spec.Event
		d.Removed = nil
		if c := readyCondition(live); c != nil {
			d.Reason, d.Message = c.Reason, c.Message
		}
		d.LastRetryToken = live.Status.LastRetryToken
		d.History = mergeAttempts(d.History, live.Status.History)
		if n := int32(len(d.History)); n > d.Attempts {
			d.Attempts = n
		}
	}
	d.Payload, d.PayloadErr = controllers.PayloadBody(d.Event)
	return d, nil
}

func readyCondition(d *webhooksv1alpha1.WebhookDelivery) *metav1.Condition {
	for i := range d.Status.Conditions {
		if d.Status.Conditions[i].Type == webhooksv1alpha1.ConditionReady {
			return &d.Status.Conditions[i]
		}
	}
	return nil
}

// mergeAttempts adds the live attempts whose number the record does not hold, in number order.
func mergeAttempts(recorded, live []webhooksv1alpha1.Attempt) []webhooksv1alpha1.Attempt {
	seen := map[int32]bool{}
	for _, a := range recorded {
		seen[a.Number] = true
	}
	out := append([]webhooksv1alpha1.Attempt(nil), recorded...)
	for _, a := range live {
		if !seen[a.Number] {
			out = append(out, a)
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Number < out[j].Number })
	return out
}

// eventOfRecord is the event of a record, as a WebhookDelivery's spec holds it.
func eventOfRecord(r *historyv1alpha1.WebhookDeliveryRecord) webhooksv1alpha1.Event {
	e := r.Spec.Event
	return webhooksv1alpha1.Event{
		ID: e.ID, Type: e.Type, Timestamp: e.Timestamp, OrganizationID: e.OrganizationID,
		Document: webhooksv1alpha1.Document{
			DocumentID: e.Document.DocumentID, DocumentName: e.Document.DocumentName,
			TagIDs: e.Document.TagIDs, Metadata: jsonOf(e.Document.Metadata),
		},
		Data: jsonOf(e.Data),
	}
}

func jsonOf(r *runtime.RawExtension) *apiextensionsv1.JSON {
	if r == nil || len(r.Raw) == 0 {
		return nil
	}
	return &apiextensionsv1.JSON{Raw: append([]byte(nil), r.Raw...)}
}

// RetryOutcome says what Retry did.
type RetryOutcome string

const (
	// RetryRequested: the delivery is in etcd; its retry annotation now holds the token.
	RetryRequested RetryOutcome = "Requested"
	// RetryRestored: the delivery had left etcd; it was re-created from its record, with the
	// retry annotation, for one manual attempt numbered after the record's.
	RetryRestored RetryOutcome = "Restored"
	// RetryAlreadyHandled: the operator already handled this token for this delivery.
	RetryAlreadyHandled RetryOutcome = "AlreadyHandled"
)

// Retry asks for one more attempt of a delivery, once per token. A delivery in etcd gets the
// retry annotation (a merge patch of its metadata). One that left etcd is re-created from its
// history record under the same name, with the same event, the retry annotation and the
// restored-attempts annotation: the operator makes one manual attempt numbered after the
// record's (a failure leaves it Failed, with no automatic retries), and the history adds it to
// the same record. A token the record says was handled is not sent again; a delivery that came
// back meanwhile (the create answers AlreadyExists) is annotated instead.
func (c *Client) Retry(ctx context.Context, namespace, name, token string) (RetryOutcome, error) {
	key := client.ObjectKey{Namespace: namespace, Name: name}
	live := &webhooksv1alpha1.WebhookDelivery{}
	err := c.kube.Get(ctx, key, live)
	if err == nil {
		return c.retryLive(ctx, live, token)
	}
	if !apierrors.IsNotFound(err) {
		return "", err
	}
	rec := &historyv1alpha1.WebhookDeliveryRecord{}
	if err := c.kube.Get(ctx, key, rec); err != nil {
		if apierrors.IsNotFound(err) {
			return "", deliveryNotFound(namespace, name)
		}
		if historyUnavailable(err) && !apierrors.IsForbidden(err) {
			return "", fmt.Errorf("delivery %s is not in etcd, and %w", name, &HistoryUnavailableError{Err: err})
		}
		return "", err
	}
	return c.restore(ctx, rec, token)
}

func (c *Client) retryLive(ctx context.Context, d *webhooksv1alpha1.WebhookDelivery, token string) (RetryOutcome, error) {
	if d.Status.LastRetryToken == token || d.Annotations[webhooksv1alpha1.RetryAnnotation] == token {
		return RetryAlreadyHandled, nil
	}
	if err := c.annotate(ctx, d, webhooksv1alpha1.RetryAnnotation, token); err != nil {
		return "", err
	}
	return RetryRequested, nil
}

// restore re-creates a delivery that left etcd from its record.
func (c *Client) restore(ctx context.Context, rec *historyv1alpha1.WebhookDeliveryRecord, token string) (RetryOutcome, error) {
	if rec.Status.LastRetryToken == token {
		return RetryAlreadyHandled, nil
	}
	d := webhooksv1alpha1.NewDelivery(rec.Namespace, rec.Spec.EndpointRef.Name, eventOfRecord(rec))
	d.Name = rec.Name
	d.Annotations = map[string]string{
		webhooksv1alpha1.RetryAnnotation:            token,
		webhooksv1alpha1.RestoredAttemptsAnnotation: strconv.FormatInt(int64(rec.Status.Attempts), 10),
	}
	err := c.kube.Create(ctx, d)
	if apierrors.IsAlreadyExists(err) {
		live := &webhooksv1alpha1.WebhookDelivery{}
		if err := c.kube.Get(ctx, client.ObjectKeyFromObject(d), live); err != nil {
			return "", err
		}
		return c.retryLive(ctx, live, token)
	}
	if err != nil {
		return "", err
	}
	return RetryRestored, nil
}

// RetryFailedResult counts what RetryFailed did.
type RetryFailedResult struct {
	// Requested were in etcd and got the retry annotation; Restored had left etcd and were
	// re-created; AlreadyHandled had handled the token before.
	Requested, Restored, AlreadyHandled int
	// Errors are the deliveries that could not be retried, by name.
	Errors map[string]error
}

// Total is how many deliveries were asked for one more attempt.
func (r *RetryFailedResult) Total() int { return r.Requested + r.Restored }

// DefaultRetryFailedMax bounds the deliveries one RetryFailed retries.
const DefaultRetryFailedMax = 1000

// RetryFailed retries every Failed delivery of an endpoint created since the given time, once
// per token (the same token on each, so that running it again with it changes nothing). It
// retries none and says so when more than max match, since each retry may put a delivery back
// into etcd: narrow the time or raise max. A 403 stops it at once (the next would be refused
// alike) and is returned.
func (c *Client) RetryFailed(ctx context.Context, namespace, endpoint string, since time.Time, token string, max int) (*RetryFailedResult, error) {
	if max <= 0 {
		max = DefaultRetryFailedMax
	}
	ep := &webhooksv1alpha1.WebhookEndpoint{}
	if err := c.kube.Get(ctx, client.ObjectKey{Namespace: namespace, Name: endpoint}, ep); err != nil {
		return nil, err
	}
	var names []string
	filter := DeliveryFilter{Endpoint: endpoint, Phase: string(webhooksv1alpha1.PhaseFailed), Since: since}
	cont := ""
	for {
		page, err := c.ListDeliveries(ctx, namespace, filter, MaxDeliveryPage, cont)
		if err != nil {
			return nil, err
		}
		for _, d := range page.Items {
			names = append(names, d.Name)
		}
		if len(names) > max {
			return nil, fmt.Errorf("more than %d Failed deliveries of endpoint %s since %s: retry fewer at once (a shorter --since) or raise --max", max, endpoint, since.UTC().Format(time.RFC3339))
		}
		if page.Continue == "" {
			break
		}
		cont = page.Continue
	}
	res := &RetryFailedResult{Errors: map[string]error{}}
	for _, name := range names {
		outcome, err := c.Retry(ctx, namespace, name, token)
		switch {
		case apierrors.IsForbidden(err):
			return res, err
		case err != nil:
			res.Errors[name] = err
		case outcome == RetryRequested:
			res.Requested++
		case outcome == RetryRestored:
			res.Restored++
		default:
			res.AlreadyHandled++
		}
	}
	return res, nil
}

// WaitForDelivery polls the WebhookDelivery every interval until done says so (true), ctx ends
// (its error), or the delivery is missing for longer than ctx allows (the last NotFound).
func (c *Client) WaitForDelivery(ctx context.Context, namespace, name string, interval time.Duration, done func(*webhooksv1alpha1.WebhookDelivery) bool) (*webhooksv1alpha1.WebhookDelivery, error) {
	t := time.NewTicker(interval)
	defer t.Stop()
	var last error
	for {
		d := &webhooksv1alpha1.WebhookDelivery{}
		err := c.kube.Get(ctx, client.ObjectKey{Namespace: namespace, Name: name}, d)
		switch {
		case err == nil:
			if done(d) {
				return d, nil
			}
			last = nil
		case apierrors.IsNotFound(err):
			last = err
		case ctx.Err() == nil:
			return nil, err
		}
		select {
		case <-ctx.Done():
			if last != nil {
				return nil, last
			}
			return d, ctx.Err()
		case <-t.C:
		}
	}
}

// deliveryNotFound is the NotFound of a delivery that is neither in etcd nor in the history.
func deliveryNotFound(namespace, name string) error {
	return &apierrors.StatusError{ErrStatus: metav1.Status{
		Status: metav1.StatusFailure, Code: http.StatusNotFound, Reason: metav1.StatusReasonNotFound,
		Details: &metav1.StatusDetails{Group: webhooksv1alpha1.GroupVersion.Group, Kind: "webhookdeliveries", Name: name},
		Message: fmt.Sprintf("no delivery named %s in namespace %s: neither a WebhookDelivery in etcd nor a record in the delivery history", name, namespace),
	}}
}
