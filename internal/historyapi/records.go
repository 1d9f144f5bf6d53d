package historyapi

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/go-logr/logr"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metainternalversion "k8s.io/apimachinery/pkg/apis/meta/internalversion"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	genericapirequest "k8s.io/apiserver/pkg/endpoints/request"
	"k8s.io/apiserver/pkg/registry/rest"

	historyv1alpha1 "github.com/docrouter/webhook-operator/api/history/v1alpha1"
	"github.com/docrouter/webhook-operator/internal/history"
)

// recordStorage serves webhookdeliveryrecords from the history store: get, list and watch.
type recordStorage struct {
	store history.Store
	log   logr.Logger
	// pollInterval is how often a watch asks the store for changes.
	pollInterval time.Duration
	// watches bounds the watches served at once (each polls the store).
	watches chan struct{}
	// done is closed when the server stops: watches end, so that shutdown does not wait for
	// them.
	done <-chan struct{}
}

var (
	_ rest.Storage              = &recordStorage{}
	_ rest.Scoper               = &recordStorage{}
	_ rest.Getter               = &recordStorage{}
	_ rest.Lister               = &recordStorage{}
	_ rest.Watcher              = &recordStorage{}
	_ rest.TableConvertor       = &recordStorage{}
	_ rest.SingularNameProvider = &recordStorage{}
	_ rest.ShortNamesProvider   = &recordStorage{}
	_ rest.CategoriesProvider   = &recordStorage{}
)

// Bounds of a list request. A list without a limit is served a page of maxListPage records
// with a continue token: the whole history is never read into one response.
const (
	maxListPage = history.MaxPageSize
	// maxStorePagesPerList bounds the store pages one list request reads to fill its page when
	// selectors are checked record by record.
	maxStorePagesPerList = 8
	// watchBatch is how many changes a watch reads from the store at once.
	watchBatch = 100
	// initialPage is the page size of a watch's initial events.
	initialPage = 500
	// bookmarkEvery is how often an idle watch that allows bookmarks gets one.
	bookmarkEvery = time.Minute
)

var recordsResource = historyv1alpha1.Resource(historyv1alpha1.RecordsResource)

func (s *recordStorage) New() runtime.Object { return &historyv1alpha1.WebhookDeliveryRecord{} }
func (s *recordStorage) NewList() runtime.Object {
	return &historyv1alpha1.WebhookDeliveryRecordList{}
}
func (s *recordStorage) Destroy()                {}
func (s *recordStorage) NamespaceScoped() bool   { return true }
func (s *recordStorage) GetSingularName() string { return "webhookdeliveryrecord" }
func (s *recordStorage) ShortNames() []string    { return []string{"whdr"} }
func (s *recordStorage) Categories() []string    { return []string{"webhooks"} }
func (s *recordStorage) ConvertToTable(ctx context.Context, obj runtime.Object, _ runtime.Object) (*metav1.Table, error) {
	return recordTable(obj)
}

// Get returns a record with every attempt.
func (s *recordStorage) Get(ctx context.Context, name string, _ *metav1.GetOptions) (runtime.Object, error) {
	ns := genericapirequest.NamespaceValue(ctx)
	r, err := s.store.Get(ctx, history.Key{Namespace: ns, Name: name})
	if errors.Is(err, history.ErrNotFound) {
		return nil, apierrors.NewNotFound(recordsResource, name)
	}
	if err != nil {
		return nil, s.storeError(ctx, "reading record "+ns+"/"+name, err)
	}
	return toRecord(r), nil
}

// continueToken is the continue of a list: the store's position, and the revision of the
// first page, which every page reports as its resourceVersion (a watch from it then misses no
// change made while the pages were read).
type continueToken struct {
	V        int    `json:"v"`
	Store    string `json:"c"`
	Revision int64  `json:"rv"`
}

func encodeContinue(t continueToken) string {
	t.V = 1
	b, _ := json.Marshal(t)
	return base64.RawURLEncoding.EncodeToString(b)
}

func decodeContinue(s string) (continueToken, error) {
	var t continueToken
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err == nil {
		err = json.Unmarshal(b, &t)
	}
	if err == nil && (t.V != 1 || t.Store == "") {
		err = errors.New("unknown version")
	}
	if err != nil {
		return t, apierrors.NewBadRequest(fmt.Sprintf("the continue token is not one this server made (%v): list again without it", err))
	}
	return t, nil
}

// List returns a page of records, newest first (see query for the selectors).
func (s *recordStorage) List(ctx context.Context, opts *metainternalversion.ListOptions) (runtime.Object, error) {
	ns := genericapirequest.NamespaceValue(ctx)
	if opts != nil && opts.ResourceVersionMatch == metav1.ResourceVersionMatchExact {
		return nil, apierrors.NewBadRequest("resourceVersionMatch=Exact is not supported: the history store serves its latest state only; list without it")
	}
	q, err := parseQuery(ns, opts)
	if err != nil {
		return nil, err
	}
	list := &historyv1alpha1.WebhookDeliveryRecordList{Items: []historyv1alpha1.WebhookDeliveryRecord{}}
	if q.none || q.name != "" {
		rev, err := s.store.Revision(ctx)
		if err != nil {
			return nil, s.storeError(ctx, "reading the store's revision", err)
		}
		list.ResourceVersion = revisionString(rev)
		if q.name != "" && !q.none {
			r, err := s.getForList(ctx, q)
			if err != nil {
				return nil, err
			}
			if r != nil {
				list.Items = append(list.Items, *toRecord(r))
			}
		}
		return list, nil
	}

	limit := maxListPage
	if opts != nil && opts.Limit > 0 && opts.Limit < int64(maxListPage) {
		limit = int(opts.Limit)
	}
	so := q.store
	firstRevision := int64(-1)
	if opts != nil && opts.Continue != "" {
		t, err := decodeContinue(opts.Continue)
		if err != nil {
			return nil, err
		}
		so.Continue, firstRevision = t.Store, t.Revision
	}
	for pages := 0; ; pages++ {
		so.Limit = limit - len(list.Items)
		page, err := s.store.List(ctx, so)
		if err != nil {
			// The store refuses a token it did not make before it reads anything (its error names
			// the token); any other error is the store's.
			if so.Continue != "" && pages == 0 && strings.Contains(err.Error(), "continue token") {
				return nil, apierrors.NewBadRequest("the continue token is not one this server made: list again without it")
			}
			return nil, s.storeError(ctx, "listing records", err)
		}
		if firstRevision < 0 {
			firstRevision = page.Revision
		}
		for i := range page.Records {
			if q.residual(&page.Records[i]) {
				list.Items = append(list.Items, *toRecord(&page.Records[i]))
			}
		}
		so.Continue = page.Continue
		if page.Continue == "" || len(list.Items) >= limit || !q.hasResidual() || pages+1 >= maxStorePagesPerList {
			break
		}
	}
	list.ResourceVersion = revisionString(firstRevision)
	if so.Continue != "" {
		list.Continue = encodeContinue(continueToken{Store: so.Continue, Revision: firstRevision})
	}
	return list, nil
}

// getForList reads the one record a metadata.name selector names, if it matches the rest.
func (s *recordStorage) getForList(ctx context.Context, q *query) (*history.Record, error) {
	if q.store.Namespace == "" {
		return nil, apierrors.NewBadRequest("metadata.name selects one record of a namespace: give the namespace too")
	}
	r, err := s.store.Get(ctx, history.Key{Namespace: q.store.Namespace, Name: q.name})
	if errors.Is(err, history.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, s.storeError(ctx, "reading record "+q.store.Namespace+"/"+q.name, err)
	}
	r.Attempts = nil // as in a list
	if !q.matches(r) {
		return nil, nil
	}
	return r, nil
}

// storeError logs a store failure and answers 503 with a sentence; the cause (which may name
// the database's host) is logged, not sent to the caller.
func (s *recordStorage) storeError(ctx context.Context, what string, err error) error {
	if ctx.Err() != nil {
		return apierrors.NewTimeoutError(what+" was cancelled", 1)
	}
	s.log.Error(err, "history store failed", "operation", what)
	return apierrors.NewServiceUnavailable(what + " failed: the history store did not answer; try again later (the operator's log says why)")
}

// parseRevision reads a resourceVersion of this API.
func parseRevision(rv string) (int64, error) {
	n, err := strconv.ParseInt(rv, 10, 64)
	if err != nil || n < 0 {
		return 0, apierrors.NewBadRequest(fmt.Sprintf("resourceVersion %q is not a revision of the history store (a decimal number)", rv))
	}
	return n, nil
}
