package intake

import (
	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
	"github.com/docrouter/webhook-operator/internal/filter"
	"github.com/docrouter/webhook-operator/internal/metrics"
	"github.com/docrouter/webhook-operator/publish"
)

// skippedBy applies a subscribed endpoint's spec.filter to the event: nil when the endpoint
// gets a delivery, else why not. An endpoint whose filter does not compile gets nothing: an
// event is never sent past a filter that cannot be evaluated (the endpoint is Ready=False with
// reason InvalidFilter and a Warning Event, and the answer names it). webhook.test events are
// not filtered: they test the receiver, whatever the filter selects.
func (h *Handler) skippedBy(ep *webhooksv1alpha1.WebhookEndpoint, in *filter.Input, eventType string) *publish.Skipped {
	if ep.Spec.Filter == "" || eventType == webhooksv1alpha1.EventWebhookTest {
		return nil
	}
	program, err := h.filters.For(ep)
	if err != nil {
		metrics.DeliveriesFiltered.WithLabelValues(ep.Namespace, metrics.FilterInvalid).Inc()
		return &publish.Skipped{Endpoint: ep.Name, Reason: publish.SkippedInvalidFilter,
			Message: "the endpoint's spec.filter does not compile: fix it, then publish the same event_id again to deliver the event. " + err.Error()}
	}
	ok, err := program.Matches(in)
	switch {
	case err != nil:
		metrics.DeliveriesFiltered.WithLabelValues(ep.Namespace, metrics.FilterError).Inc()
		return &publish.Skipped{Endpoint: ep.Name, Reason: publish.SkippedFilterFailed, Message: err.Error()}
	case !ok:
		metrics.DeliveriesFiltered.WithLabelValues(ep.Namespace, metrics.FilterNoMatch).Inc()
		return &publish.Skipped{Endpoint: ep.Name, Reason: publish.SkippedNotMatched}
	}
	return nil
}
