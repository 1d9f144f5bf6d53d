package historyapi

import (
	"context"
	"encoding/base64"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/go-logr/logr"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metainternalversion "k8s.io/apimachinery/pkg/apis/meta/internalversion"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	genericapirequest "k8s.io/apiserver/pkg/endpoints/request"
	"k8s.io/apiserver/pkg/registry/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	historyv1alpha1 "github.com/docrouter/webhook-operator/api/history/v1alpha1"
	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
	"github.com/docrouter/webhook-operator/internal/history"
)

// EndpointLister lists WebhookEndpoints, for a list of webhookendpointstats (a get needs none:
// the store answers for any name).
type EndpointLister interface {
	// ListEndpoints returns the endpoints of namespace ("" for every namespace).
	ListEndpoints(ctx context.Context, namespace string) ([]history.EndpointKey, error)
}

// ClientEndpoints lists WebhookEndpoints with a controller-runtime reader, such as the
// manager's cache (which holds them already: the controllers watch them).
type ClientEndpoints struct{ Reader client.Reader }

// ListEndpoints implements EndpointLister.
func (c ClientEndpoints) ListEndpoints(ctx context.Context, namespace string) ([]history.EndpointKey, error) {
	var list webhooksv1alpha1.WebhookEndpointList
	if err := c.Reader.List(ctx, &list, client.InNamespace(namespace)); err != nil {
		return nil, err
	}
	out := make([]history.EndpointKey, len(list.Items))
	for i, e := range list.Items {
		out[i] = history.EndpointKey{Namespace: e.Namespace, Name: e.Name}
	}
	return out, nil
}

// statsStorage serves webhookendpointstats: a get computes one endpoint's stats in the store;
// a list does so for a page of the namespace's WebhookEndpoints (at most maxStatsPage).
type statsStorage struct {
	store     history.Store
	endpoints EndpointLister
	now       func() time.Time
	log       logr.Logger
}

const maxStatsPage = 100

var statsResource = historyv1alpha1.Resource(historyv1alpha1.StatsResource)

var (
	_ rest.Storage              = &statsStorage{}
	_ rest.Scoper               = &statsStorage{}
	_ rest.Getter               = &statsStorage{}
	_ rest.Lister               = &statsStorage{}
	_ rest.TableConvertor       = &statsStorage{}
	_ rest.SingularNameProvider = &statsStorage{}
	_ rest.ShortNamesProvider   = &statsStorage{}
)

func (s *statsStorage) New() runtime.Object     { return &historyv1alpha1.WebhookEndpointStats{} }
func (s *statsStorage) NewList() runtime.Object { return &historyv1alpha1.WebhookEndpointStatsList{} }
func (s *statsStorage) Destroy()                {}
func (s *statsStorage) NamespaceScoped() bool   { return true }
func (s *statsStorage) GetSingularName() string { return "webhookendpointstats" }
func (s *statsStorage) ShortNames() []string    { return []string{"whes"} }
func (s *statsStorage) ConvertToTable(ctx context.Context, obj runtime.Object, _ runtime.Object) (*metav1.Table, error) {
	return statsTable(obj)
}

// Get computes the stats of the endpoint called name.
func (s *statsStorage) Get(ctx context.Context, name string, _ *metav1.GetOptions) (runtime.Object, error) {
	return s.get(ctx, history.EndpointKey{Namespace: genericapirequest.NamespaceValue(ctx), Name: name})
}

func (s *statsStorage) get(ctx context.Context, key history.EndpointKey) (*historyv1alpha1.WebhookEndpointStats, error) {
	now := s.now()
	st, err := s.store.Stats(ctx, key, now)
	if err != nil {
		if ctx.Err() != nil {
			return nil, apierrors.NewTimeoutError("computing stats was cancelled", 1)
		}
		s.log.Error(err, "history store failed", "operation", "stats", "endpoint", key.Namespace+"/"+key.Name)
		return nil, apierrors.NewServiceUnavailable(fmt.Sprintf("computing the stats of endpoint %s failed: the history store did not answer; try again later (the operator's log says why)", key.Name))
	}
	return toStats(key.Namespace, key.Name, st, now), nil
}

// List computes the stats of the namespace's WebhookEndpoints, by name, a page at a time.
func (s *statsStorage) List(ctx context.Context, opts *metainternalversion.ListOptions) (runtime.Object, error) {
	ns := genericapirequest.NamespaceValue(ctx)
	if s.endpoints == nil {
		return nil, apierrors.NewMethodNotSupported(statsResource, "list")
	}
	list := &historyv1alpha1.WebhookEndpointStatsList{Items: []historyv1alpha1.WebhookEndpointStats{}}
	if opts == nil {
		opts = &metainternalversion.ListOptions{}
	}
	if opts.LabelSelector != nil && !opts.LabelSelector.Empty() && !opts.LabelSelector.Matches(labels.Set{}) {
		return list, nil // stats have no labels
	}
	keys, err := s.endpoints.ListEndpoints(ctx, ns)
	if err != nil {
		s.log.Error(err, "listing WebhookEndpoints for stats failed")
		return nil, apierrors.NewServiceUnavailable("listing the WebhookEndpoints failed; try again later (the operator's log says why)")
	}
	slices.SortFunc(keys, func(a, b history.EndpointKey) int {
		return strings.Compare(a.Namespace+"/"+a.Name, b.Namespace+"/"+b.Name)
	})
	after := ""
	if opts.Continue != "" {
		b, err := base64.RawURLEncoding.DecodeString(opts.Continue)
		if err != nil {
			return nil, apierrors.NewBadRequest("the continue token is not one this server made: list again without it")
		}
		after = string(b)
	}
	limit := maxStatsPage
	if opts.Limit > 0 && opts.Limit < int64(limit) {
		limit = int(opts.Limit)
	}
	for _, k := range keys {
		id := k.Namespace + "/" + k.Name
		if after != "" && id <= after {
			continue
		}
		if opts.FieldSelector != nil && !opts.FieldSelector.Matches(fields.Set{"metadata.name": k.Name, "metadata.namespace": k.Namespace}) {
			continue
		}
		if len(list.Items) == limit {
			last := list.Items[len(list.Items)-1]
			list.Continue = base64.RawURLEncoding.EncodeToString([]byte(last.Namespace + "/" + last.Name))
			break
		}
		st, err := s.get(ctx, k)
		if err != nil {
			return nil, err
		}
		list.Items = append(list.Items, *st)
	}
	return list, nil
}
