package intake

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
	"github.com/docrouter/webhook-operator/internal/filter"
	"github.com/docrouter/webhook-operator/internal/history"
	"github.com/docrouter/webhook-operator/internal/metrics"
	"github.com/docrouter/webhook-operator/publish"
)

// Retry-After of refusals: the working set frees at the receivers' pace; an etcd that is out
// of space needs its operator.
const (
	retryAfterFull     = 5 * time.Second
	retryAfterEtcdFull = 30 * time.Second
)

// fanOut takes the event's delivery for each subscribed endpoint of ns whose spec.filter, if
// any, selects it (filter.go; the others are listed under skipped): as a WebhookDelivery
// when the working set has room and the endpoint has no backlog, else into the history store's
// backlog, where it waits in publish order. A delivery that already exists, or that the store
// already holds (the event id was published before), is reported with created=false. A
// delivery that neither etcd nor the store can take is refused: 429 (or 503 when etcd is out of
// space) with Retry-After and a sentence that says why; what was taken stays taken, and
// publishing the same event id again completes the rest.
//
// One API write per delivery created; endpoints come from the cache.
func (h *Handler) fanOut(ctx context.Context, ns string, event webhooksv1alpha1.Event) (*publish.Accepted, *requestError) {
	var endpoints webhooksv1alpha1.WebhookEndpointList
	if err := h.endpoints.List(ctx, &endpoints, client.InNamespace(ns), client.UnsafeDisableDeepCopy); err != nil {
		return nil, &requestError{status: http.StatusServiceUnavailable, cause: err,
			message: fmt.Sprintf("could not list the WebhookEndpoints of namespace %q (%s): publish the same event_id again", ns, reasonOf(err))}
	}
	accepted := &publish.Accepted{EventID: event.ID, Deliveries: []publish.Delivery{}}
	input := filter.NewInput(&event)
	for i := range endpoints.Items {
		ep := &endpoints.Items[i]
		if !ep.Spec.Subscribes(event.Type) {
			continue
		}
		if skipped := h.skippedBy(ep, input, event.Type); skipped != nil {
			accepted.Skipped = append(accepted.Skipped, *skipped)
			continue
		}
		accepted.Deliveries = append(accepted.Deliveries, publish.Delivery{
			Name: webhooksv1alpha1.DeliveryName(ep.Name, event.ID), Endpoint: ep.Name,
		})
	}
	switch {
	case len(accepted.Deliveries) == 0 && len(accepted.Skipped) > 0:
		accepted.Message = fmt.Sprintf("the %d WebhookEndpoints of namespace %q that subscribe to %s did not select the event with their spec.filter (see skipped): nothing will be delivered",
			len(accepted.Skipped), ns, event.Type)
		return accepted, nil
	case len(accepted.Deliveries) == 0:
		accepted.Message = fmt.Sprintf("no WebhookEndpoint in namespace %q subscribes to %s: nothing will be delivered", ns, event.Type)
		return accepted, nil
	}

	known := h.known(ctx, ns, accepted.Deliveries)
	var direct, queue []int
	why := make([]string, len(accepted.Deliveries))
	for i, d := range accepted.Deliveries {
		if known[d.Name] {
			continue // taken before: created=false
		}
		if ws := h.opts.WorkingSet; ws != nil {
			ep, key := types.NamespacedName{Namespace: ns, Name: d.Endpoint}, types.NamespacedName{Namespace: ns, Name: d.Name}
			if ws.HasBacklog(ep) {
				queue, why[i] = append(queue, i), fmt.Sprintf("WebhookEndpoint %q has earlier events waiting in the backlog", d.Endpoint)
				continue
			}
			if ok, reason := ws.Admit(ep, key); !ok {
				queue, why[i] = append(queue, i), reason
				continue
			}
		}
		direct = append(direct, i)
	}

	errs := make([]error, len(accepted.Deliveries))
	etcdFull := make([]bool, len(accepted.Deliveries))
	g := errgroup.Group{}
	g.SetLimit(h.opts.MaxConcurrentCreates)
	for _, i := range direct {
		d := &accepted.Deliveries[i]
		g.Go(func() error {
			err := h.client.Create(ctx, webhooksv1alpha1.NewDelivery(ns, d.Endpoint, event))
			if err != nil && h.opts.WorkingSet != nil {
				h.opts.WorkingSet.Release(types.NamespacedName{Namespace: ns, Name: d.Name})
			}
			switch {
			case err == nil:
				d.Created = true
			case apierrors.IsAlreadyExists(err):
			case isEtcdFull(err):
				etcdFull[i] = true
			default:
				errs[i] = err
			}
			return nil
		})
	}
	_ = g.Wait()
	for i, full := range etcdFull {
		if full {
			queue, why[i] = append(queue, i), "the cluster's etcd is out of space (mvcc: database space exceeded)"
		}
	}

	failed := 0
	for _, err := range errs {
		if err != nil {
			failed++
		}
	}
	if refused, err := h.enqueue(ctx, ns, event, accepted, queue); err != nil {
		return nil, h.refusal(len(accepted.Deliveries)-failed-len(refused), len(accepted.Deliveries), refused, why, etcdFull, err)
	}
	if first := firstError(errs); first != nil {
		if apierrors.IsInvalid(first) {
			// The API server refused the event itself (a rule this intake does not check).
			return nil, badRequest("the API server refused the event's delivery: %s", first.Error())
		}
		status := http.StatusServiceUnavailable
		if apierrors.IsForbidden(first) || apierrors.IsNotFound(first) {
			status = http.StatusInternalServerError
		}
		return nil, &requestError{status: status, cause: first,
			message: fmt.Sprintf("%d of %d deliveries exist or wait in the backlog; creating the others failed (%s): publish the same event_id again to complete them",
				len(accepted.Deliveries)-failed, len(accepted.Deliveries), reasonOf(first))}
	}
	return accepted, nil
}

// known asks the store which of the deliveries it already holds. Without an answer (no store,
// or it does not answer) nothing is known: the delivery is created, and AlreadyExists still
// catches one that is in etcd.
func (h *Handler) known(ctx context.Context, ns string, deliveries []publish.Delivery) map[string]bool {
	if h.opts.Store == nil {
		return nil
	}
	names := make([]string, len(deliveries))
	for i, d := range deliveries {
		names[i] = d.Name
	}
	known, err := h.opts.Store.Known(ctx, ns, names)
	if err != nil {
		ctrl.LoggerFrom(ctx).V(1).Info("the history store did not say which deliveries it holds; creating them", "error", err.Error())
		return nil
	}
	return known
}

// enqueue puts the deliveries queue (indexes into accepted.Deliveries) into the store's backlog.
// It returns those it could not put there, and why.
func (h *Handler) enqueue(ctx context.Context, ns string, event webhooksv1alpha1.Event, accepted *publish.Accepted, queue []int) (refused []int, err error) {
	if len(queue) == 0 {
		return nil, nil
	}
	if h.opts.Store == nil {
		return queue, errNoStore
	}
	var full error
	if ws := h.opts.WorkingSet; ws != nil {
		room := queue[:0:0]
		for _, i := range queue {
			if ok, why := ws.BacklogRoom(types.NamespacedName{Namespace: ns, Name: accepted.Deliveries[i].Endpoint}); !ok {
				refused, full = append(refused, i), &backlogFullError{why: why}
				continue
			}
			room = append(room, i)
		}
		queue = room
	}
	items := make([]history.BacklogItem, len(queue))
	now := h.opts.Now()
	for j, i := range queue {
		d := accepted.Deliveries[i]
		items[j] = history.BacklogItem{Namespace: ns, Endpoint: d.Endpoint, Name: d.Name, Event: event, EnqueuedAt: now}
	}
	added, err := h.opts.Store.Enqueue(ctx, items)
	if err != nil {
		return append(refused, queue...), err
	}
	for j, i := range queue {
		if added[j] {
			d := &accepted.Deliveries[i]
			d.Created, d.Queued = true, true
			metrics.EventsQueued.Inc()
			if h.opts.WorkingSet != nil {
				h.opts.WorkingSet.Queued(types.NamespacedName{Namespace: ns, Name: d.Endpoint})
			}
		}
	}
	if full != nil {
		return refused, full
	}
	return nil, nil
}

var errNoStore = fmt.Errorf("the operator keeps no history store to hold them (--history-database is empty)")

// backlogFullError refuses deliveries whose endpoint's backlog is at --max-backlog-per-endpoint.
type backlogFullError struct{ why string }

func (e *backlogFullError) Error() string { return e.why }

// refusal is the answer when deliveries could go neither into etcd nor into the store.
func (h *Handler) refusal(taken, total int, queue []int, why []string, etcdFull []bool, storeErr error) *requestError {
	status, retryAfter, reason := http.StatusTooManyRequests, retryAfterFull, metrics.RefusedWorkingSetFull
	var full *backlogFullError
	switch {
	case errors.As(storeErr, &full):
		reason = metrics.RefusedBacklogFull
	case storeErr != errNoStore:
		reason = metrics.RefusedStoreUnavailable
	}
	var reasons []string
	seen := map[string]bool{}
	for _, i := range queue {
		if etcdFull[i] {
			status, retryAfter, reason = http.StatusServiceUnavailable, retryAfterEtcdFull, metrics.RefusedEtcdFull
		}
		if !seen[why[i]] {
			seen[why[i]] = true
			reasons = append(reasons, why[i])
		}
	}
	metrics.EventsRefused.WithLabelValues(reason).Inc()
	store := "the history store cannot take them either (" + storeErr.Error() + ")"
	if storeErr == errNoStore || full != nil {
		store = storeErr.Error()
	}
	return &requestError{status: status, retryAfter: retryAfter, cause: storeErr,
		message: fmt.Sprintf("%d of %d deliveries exist or wait in the backlog; the others cannot be taken: %s, and %s. Publish the same event_id again after %s to complete them",
			taken, total, strings.Join(reasons, "; "), store, retryAfter)}
}

// isEtcdFull reports whether the API server could not write because etcd reached its quota.
func isEtcdFull(err error) bool {
	return err != nil && strings.Contains(err.Error(), "database space exceeded")
}
