package actions

import (
	"context"
	"sync"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	historyv1alpha1 "github.com/docrouter/webhook-operator/api/history/v1alpha1"
	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
)

// Stats windows, as the history API names them.
const (
	Window1h  = "1h"
	Window24h = "24h"
	Window7d  = "7d"
)

// Endpoint is a WebhookEndpoint with its delivery statistics.
type Endpoint struct {
	webhooksv1alpha1.WebhookEndpoint
	// Stats are the endpoint's webhookendpointstats; nil when they could not be read (StatsErr
	// says why).
	Stats    *historyv1alpha1.WebhookEndpointStats
	StatsErr error
}

// Ready is the endpoint's Ready condition; Status Unknown before the operator has seen it.
func (e *Endpoint) Ready() metav1.Condition {
	if c := meta.FindStatusCondition(e.Status.Conditions, webhooksv1alpha1.ConditionReady); c != nil {
		return *c
	}
	return metav1.Condition{Type: webhooksv1alpha1.ConditionReady, Status: metav1.ConditionUnknown, Reason: "NotObserved", Message: "the operator has not looked at this endpoint yet"}
}

// Window returns the stats window called name (Window1h, Window24h, Window7d), or nil.
func (e *Endpoint) Window(name string) *historyv1alpha1.StatsWindow {
	if e.Stats == nil {
		return nil
	}
	for i := range e.Stats.Windows {
		if e.Stats.Windows[i].Window == name {
			return &e.Stats.Windows[i]
		}
	}
	return nil
}

// Backlog is how many of the endpoint's events wait in the history store's backlog.
func (e *Endpoint) Backlog() int64 {
	if e.Stats != nil {
		return e.Stats.Backlog
	}
	return 0
}

// EndpointPage is one page of a namespace's endpoints.
type EndpointPage struct {
	Items []Endpoint
	// Continue fetches the next page; empty on the last one.
	Continue string
	// StatsErr is set when the statistics of some endpoint could not be read (the first
	// reason); the endpoints are listed all the same.
	StatsErr error
}

// statsConcurrency bounds the stats requests in flight for one page.
const statsConcurrency = 8

// ListEndpoints lists a page of the namespace's endpoints (at most limit; 0: the API server's
// default) with the statistics of each.
func (c *Client) ListEndpoints(ctx context.Context, namespace string, limit int64, cont string) (*EndpointPage, error) {
	var list webhooksv1alpha1.WebhookEndpointList
	opts := []client.ListOption{client.InNamespace(namespace), client.Continue(cont)}
	if limit > 0 {
		opts = append(opts, client.Limit(limit))
	}
	if err := c.kube.List(ctx, &list, opts...); err != nil {
		return nil, err
	}
	page := &EndpointPage{Continue: list.Continue, Items: make([]Endpoint, len(list.Items))}
	for i := range list.Items {
		page.Items[i] = Endpoint{WebhookEndpoint: list.Items[i]}
	}
	page.StatsErr = c.fillStats(ctx, page.Items)
	return page, nil
}

// GetEndpoint reads one endpoint and its statistics.
func (c *Client) GetEndpoint(ctx context.Context, namespace, name string) (*Endpoint, error) {
	e := &Endpoint{}
	if err := c.kube.Get(ctx, client.ObjectKey{Namespace: namespace, Name: name}, &e.WebhookEndpoint); err != nil {
		return nil, err
	}
	items := []Endpoint{*e}
	_ = c.fillStats(ctx, items) // a failure is the endpoint's StatsErr
	return &items[0], nil
}

// fillStats reads the stats of each endpoint, a few at a time, and returns the first failure.
// When the first answer says that the history API cannot be used here at all (not installed,
// or not allowed in this namespace), the others are not asked.
func (c *Client) fillStats(ctx context.Context, items []Endpoint) error {
	if len(items) == 0 {
		return nil
	}
	get := func(e *Endpoint) error {
		st := &historyv1alpha1.WebhookEndpointStats{}
		if err := c.kube.Get(ctx, client.ObjectKey{Namespace: e.Namespace, Name: e.Name}, st); err != nil {
			if historyUnavailable(err) {
				e.StatsErr = &HistoryUnavailableError{Err: err}
			} else {
				e.StatsErr = err
			}
			return err
		}
		e.Stats = st
		return nil
	}
	if err := get(&items[0]); err != nil && (meta.IsNoMatchError(err) || apierrors.IsForbidden(err) || apierrors.IsNotFound(err)) {
		for i := range items[1:] {
			items[i+1].StatsErr = items[0].StatsErr
		}
		return items[0].StatsErr
	}
	var wg sync.WaitGroup
	sem := make(chan struct{}, statsConcurrency)
	for i := range items[1:] {
		wg.Add(1)
		sem <- struct{}{}
		go func(e *Endpoint) {
			defer func() { <-sem; wg.Done() }()
			_ = get(e)
		}(&items[i+1])
	}
	wg.Wait()
	for i := range items {
		if items[i].StatsErr != nil {
			return items[i].StatsErr
		}
	}
	return nil
}

// SetPaused pauses an endpoint (its deliveries wait; nothing is dropped) or resumes it, with a
// merge patch of spec.paused.
func (c *Client) SetPaused(ctx context.Context, namespace, name string, paused bool) error {
	patch := `{"spec":{"paused":null}}`
	if paused {
		patch = `{"spec":{"paused":true}}`
	}
	ep := &webhooksv1alpha1.WebhookEndpoint{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name}}
	return c.kube.Patch(ctx, ep, client.RawPatch(types.MergePatchType, []byte(patch)))
}

// Test asks the operator for one webhook.test delivery to the endpoint (the product's "Test
// webhook"), with the test annotation set to token, and returns the name that delivery has.
func (c *Client) Test(ctx context.Context, namespace, name, token string) (string, error) {
	ep := &webhooksv1alpha1.WebhookEndpoint{}
	if err := c.kube.Get(ctx, client.ObjectKey{Namespace: namespace, Name: name}, ep); err != nil {
		return "", err
	}
	if err := c.annotate(ctx, ep, webhooksv1alpha1.TestAnnotation, token); err != nil {
		return "", err
	}
	return webhooksv1alpha1.DeliveryName(ep.Name, webhooksv1alpha1.TestEventID(ep.UID, token)), nil
}

// Enable re-enables an endpoint that the operator disabled (every attempt failed for days, or
// the receiver answered 410 Gone), with the enable annotation set to token.
func (c *Client) Enable(ctx context.Context, namespace, name, token string) error {
	ep := &webhooksv1alpha1.WebhookEndpoint{}
	if err := c.kube.Get(ctx, client.ObjectKey{Namespace: namespace, Name: name}, ep); err != nil {
		return err
	}
	return c.annotate(ctx, ep, webhooksv1alpha1.EnableAnnotation, token)
}

// EndpointNames lists the names of a namespace's endpoints (at most 500), for filters.
func (c *Client) EndpointNames(ctx context.Context, namespace string) ([]string, error) {
	list := &metav1.PartialObjectMetadataList{}
	list.SetGroupVersionKind(webhooksv1alpha1.GroupVersion.WithKind("WebhookEndpointList"))
	if err := c.kube.List(ctx, list, client.InNamespace(namespace), client.Limit(500)); err != nil {
		return nil, err
	}
	names := make([]string, len(list.Items))
	for i, e := range list.Items {
		names[i] = e.Name
	}
	return names, nil
}
