package historyapi

import (
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metainternalversion "k8s.io/apimachinery/pkg/apis/meta/internalversion"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"

	historyv1alpha1 "github.com/docrouter/webhook-operator/api/history/v1alpha1"
	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
	"github.com/docrouter/webhook-operator/internal/history"
)

// query is a list or watch request translated for the store. Equality on the endpoint and
// event-type labels, and on the record fields, becomes the store's indexed filters; every other
// requirement (other labels, !=, in with several values, exists, notin) is checked on each
// record the store returns (residual), which keeps paging exact: a page may then hold fewer
// records than the limit, never a record twice.
type query struct {
	store history.ListOptions
	// name is set by metadata.name=NAME (and by a watch of one object).
	name string
	// none is set when the selectors contradict each other (spec.endpointRef.name=a and the
	// endpoint label b): nothing matches.
	none bool
	// residual requirements, checked record by record; nil when there are none.
	labels labels.Selector
	fields fields.Selector
}

// parseQuery translates the selectors of a request in namespace ("" for all namespaces).
func parseQuery(namespace string, opts *metainternalversion.ListOptions) (*query, error) {
	q := &query{store: history.ListOptions{Namespace: namespace}}
	if opts == nil {
		return q, nil
	}
	set := func(dst *string, v string) {
		if *dst != "" && *dst != v {
			q.none = true
		}
		*dst = v
	}
	if opts.LabelSelector != nil && !opts.LabelSelector.Empty() {
		reqs, selectable := opts.LabelSelector.Requirements()
		if !selectable {
			q.none = true
		}
		var rest []labels.Requirement
		for _, r := range reqs {
			v, single := singleValue(r)
			switch {
			case single && r.Key() == webhooksv1alpha1.EndpointLabel:
				set(&q.store.Endpoint, v)
			case single && r.Key() == webhooksv1alpha1.EventTypeLabel:
				set(&q.store.EventType, v)
			default:
				rest = append(rest, r)
			}
		}
		if len(rest) > 0 {
			q.labels = labels.NewSelector().Add(rest...)
		}
	}
	if opts.FieldSelector != nil && !opts.FieldSelector.Empty() {
		var rest []fields.Selector
		for _, r := range opts.FieldSelector.Requirements() {
			if r.Operator != selection.Equals && r.Operator != selection.DoubleEquals {
				if r.Operator != selection.NotEquals {
					return nil, apierrors.NewBadRequest(fmt.Sprintf("field selector %s: operator %s is not supported; use =, == or !=", r.Field, r.Operator))
				}
				rest = append(rest, fields.OneTermNotEqualSelector(r.Field, r.Value))
				continue
			}
			switch r.Field {
			case "metadata.name":
				set(&q.name, r.Value)
			case "metadata.namespace":
				if namespace != "" && r.Value != namespace {
					q.none = true
				}
				set(&q.store.Namespace, r.Value)
			case historyv1alpha1.PhaseField:
				p := string(q.store.Phase)
				set(&p, r.Value)
				q.store.Phase = webhooksv1alpha1.DeliveryPhase(p)
			case historyv1alpha1.EndpointField:
				set(&q.store.Endpoint, r.Value)
			case historyv1alpha1.EventIDField:
				set(&q.store.EventID, r.Value)
			case historyv1alpha1.EventTypeField:
				set(&q.store.EventType, r.Value)
			default:
				// The scheme's field label conversion refuses other fields before this.
				return nil, apierrors.NewBadRequest(fmt.Sprintf("field selector %q is not supported for WebhookDeliveryRecord: use %v", r.Field, recordFields))
			}
		}
		if len(rest) > 0 {
			q.fields = fields.AndSelectors(rest...)
		}
	}
	return q, nil
}

// singleValue reports the value of an equality requirement (=, == or in with one value).
func singleValue(r labels.Requirement) (string, bool) {
	switch r.Operator() {
	case selection.Equals, selection.DoubleEquals, selection.In:
		if vals := r.Values(); vals.Len() == 1 {
			return vals.List()[0], true
		}
	}
	return "", false
}

// residual reports whether the requirements that the store did not apply hold for r.
func (q *query) residual(r *history.Record) bool {
	if q.labels != nil && !q.labels.Matches(labels.Set(r.Labels)) {
		return false
	}
	if q.fields != nil && !q.fields.Matches(recordFieldSet(r)) {
		return false
	}
	return true
}

// hasResidual reports whether some requirement is checked record by record.
func (q *query) hasResidual() bool { return q.labels != nil || q.fields != nil }

// matches reports whether r satisfies every requirement, the store's filters included: a watch
// reads the store's changes unfiltered and applies them all.
func (q *query) matches(r *history.Record) bool {
	s := q.store
	switch {
	case q.none,
		s.Namespace != "" && r.Namespace != s.Namespace,
		q.name != "" && r.Name != q.name,
		s.Endpoint != "" && r.Endpoint != s.Endpoint,
		s.Phase != "" && r.Phase != s.Phase,
		s.EventID != "" && r.Event.ID != s.EventID,
		s.EventType != "" && r.Event.Type != s.EventType,
		!s.Since.IsZero() && r.CreationTime.Before(s.Since):
		return false
	}
	return q.residual(r)
}

func recordFieldSet(r *history.Record) fields.Set {
	return fields.Set{
		"metadata.name":                r.Name,
		"metadata.namespace":           r.Namespace,
		historyv1alpha1.PhaseField:     string(r.Phase),
		historyv1alpha1.EndpointField:  r.Endpoint,
		historyv1alpha1.EventIDField:   r.Event.ID,
		historyv1alpha1.EventTypeField: r.Event.Type,
	}
}
