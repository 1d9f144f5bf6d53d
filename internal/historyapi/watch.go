package historyapi

import (
	"context"
	"fmt"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metainternalversion "k8s.io/apimachinery/pkg/apis/meta/internalversion"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	genericapirequest "k8s.io/apiserver/pkg/endpoints/request"

	historyv1alpha1 "github.com/docrouter/webhook-operator/api/history/v1alpha1"
)

// Watch streams new and changed records. The history store has no push channel that works
// across replicas and engines, so each watch polls Store.Changes (by revision) every
// pollInterval, reading at most watchBatch changes at a time and handing them over one by one
// on an unbuffered channel: a slow client slows its own polling down, and no watch holds more
// than one batch. The number of watches per replica is bounded (429 beyond it).
//
//   - resourceVersion N (from a list, or the last event seen): every change after revision N.
//   - resourceVersion unset or "0" (or sendInitialEvents=true): first an ADDED event for every
//     matching record (read page by page, newest first), then, when the client allows
//     bookmarks, a bookmark marked k8s.io/initial-events-end, then the changes. With
//     sendInitialEvents=false, the changes from now on only.
//
// A change is ADDED when the record was first written after the watch's starting revision,
// and MODIFIED otherwise. Records deleted by history retention are not reported
// (no DELETED events). An idle watch that allows bookmarks gets one every bookmarkEvery.
func (s *recordStorage) Watch(ctx context.Context, opts *metainternalversion.ListOptions) (watch.Interface, error) {
	ns := genericapirequest.NamespaceValue(ctx)
	if opts == nil {
		opts = &metainternalversion.ListOptions{}
	}
	q, err := parseQuery(ns, opts)
	if err != nil {
		return nil, err
	}
	initial := opts.ResourceVersion == "" || opts.ResourceVersion == "0"
	if opts.SendInitialEvents != nil {
		initial = *opts.SendInitialEvents
	}
	var from int64 = -1 // from now
	if opts.ResourceVersion != "" && opts.ResourceVersion != "0" {
		if from, err = parseRevision(opts.ResourceVersion); err != nil {
			return nil, err
		}
	}
	select {
	case s.watches <- struct{}{}:
	default:
		return nil, apierrors.NewTooManyRequests(fmt.Sprintf("this replica already serves %d watches of webhookdeliveryrecords; retry later", cap(s.watches)), 5)
	}
	w := &recordWatch{
		s:         s,
		q:         q,
		ns:        ns,
		from:      from,
		initial:   initial,
		bookmarks: opts.AllowWatchBookmarks,
		result:    make(chan watch.Event),
		stop:      make(chan struct{}),
	}
	go w.run(ctx)
	return w, nil
}

type recordWatch struct {
	s         *recordStorage
	q         *query
	ns        string
	from      int64
	initial   bool
	bookmarks bool

	result   chan watch.Event
	stop     chan struct{}
	stopOnce sync.Once
}

func (w *recordWatch) ResultChan() <-chan watch.Event { return w.result }
func (w *recordWatch) Stop()                          { w.stopOnce.Do(func() { close(w.stop) }) }

// send hands one event to the client; false when the watch is over.
func (w *recordWatch) send(ctx context.Context, e watch.Event) bool {
	select {
	case w.result <- e:
		return true
	case <-w.stop:
	case <-ctx.Done():
	case <-w.s.done:
	}
	return false
}

// sleep waits d; false when the watch is over.
func (w *recordWatch) sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-w.stop:
	case <-ctx.Done():
	case <-w.s.done:
	}
	return false
}

// fail ends the watch with an error event, as the API server's own watches do.
func (w *recordWatch) fail(ctx context.Context, what string, err error) {
	status := w.s.storeError(ctx, what, err).(apierrors.APIStatus).Status()
	w.send(ctx, watch.Event{Type: watch.Error, Object: &status})
}

func bookmark(rev int64, initialEnd bool) watch.Event {
	obj := &historyv1alpha1.WebhookDeliveryRecord{
		TypeMeta:   metav1.TypeMeta{APIVersion: historyv1alpha1.GroupVersion.String(), Kind: "WebhookDeliveryRecord"},
		ObjectMeta: metav1.ObjectMeta{ResourceVersion: revisionString(rev)},
	}
	if initialEnd {
		obj.Annotations = map[string]string{metav1.InitialEventsAnnotationKey: "true"}
	}
	return watch.Event{Type: watch.Bookmark, Object: obj}
}

func (w *recordWatch) run(ctx context.Context) {
	defer func() { <-w.s.watches }()
	defer close(w.result)

	rev := w.from
	if w.initial {
		var ok bool
		if rev, ok = w.sendInitial(ctx); !ok {
			return
		}
		if w.bookmarks && !w.send(ctx, bookmark(rev, true)) {
			return
		}
	} else if rev < 0 {
		var err error
		if rev, err = w.s.store.Revision(ctx); err != nil {
			w.fail(ctx, "starting a watch", err)
			return
		}
	}
	// A record whose first write came after the watch's start is new to its client: ADDED.
	// (Seq is the revision of a record's first write, in both engines.)
	start := rev

	lastEvent := time.Now()
	for {
		changes, err := w.s.store.Changes(ctx, w.ns, rev, watchBatch)
		if err != nil {
			w.fail(ctx, "reading changes for a watch", err)
			return
		}
		for i := range changes {
			r := &changes[i]
			rev = r.Revision
			if !w.q.matches(r) {
				continue
			}
			typ := watch.Modified
			if r.Seq > start {
				typ = watch.Added
			}
			r.Attempts = nil // as in a list: get the record for its attempts
			if !w.send(ctx, watch.Event{Type: typ, Object: toRecord(r)}) {
				return
			}
			lastEvent = time.Now()
		}
		if len(changes) == watchBatch {
			continue // more are waiting
		}
		if w.bookmarks && time.Since(lastEvent) >= bookmarkEvery {
			if !w.send(ctx, bookmark(rev, false)) {
				return
			}
			lastEvent = time.Now()
		}
		if !w.sleep(ctx, w.s.pollInterval) {
			return
		}
	}
}

// sendInitial sends an ADDED event for every matching record, page by page, and returns the
// revision to watch from: that of the first page.
func (w *recordWatch) sendInitial(ctx context.Context) (int64, bool) {
	if w.q.none {
		r, err := w.s.store.Revision(ctx)
		if err != nil {
			w.fail(ctx, "starting a watch", err)
			return 0, false
		}
		return r, true
	}
	so := w.q.store
	rev := int64(-1)
	for {
		so.Limit = initialPage
		page, err := w.s.store.List(ctx, so)
		if err != nil {
			w.fail(ctx, "listing the initial records of a watch", err)
			return 0, false
		}
		if rev < 0 {
			rev = page.Revision
		}
		for i := range page.Records {
			if r := &page.Records[i]; w.q.matches(r) {
				if !w.send(ctx, watch.Event{Type: watch.Added, Object: toRecord(r)}) {
					return 0, false
				}
			}
		}
		if page.Continue == "" {
			return rev, true
		}
		so.Continue = page.Continue
	}
}
