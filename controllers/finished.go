package controllers

import (
	"container/heap"
	"context"
	"slices"
	"strings"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/metadata"
	toolscache "k8s.io/client-go/tools/cache"
	watchtools "k8s.io/client-go/tools/watch"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"

	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
)

// finishedIndex knows the finished (Succeeded or Failed) deliveries that are still in etcd,
// which the operator's cache does not hold (cache.go). It watches their metadata only (no event,
// no status), on every replica, and keeps per delivery what three users need:
//   - the sweeper (leader): which deliveries are past their time in etcd, or the oldest beyond
//     --max-finished-deliveries, with the UID and resourceVersion to delete them by (retention.go);
//   - the working set (every replica, for the intake): how many finished deliveries etcd holds;
//   - the delivery controller (leader): finished deliveries that carry a retry annotation, for a
//     manual retry.
//
// After a start or a broken watch it lists first, so nothing that happened meanwhile is missed.
// Its memory is an entry per finished delivery in etcd, which the sweeper bounds.
type finishedIndex struct {
	client     metadata.Interface
	namespaces []string // empty: all
	clock      clock.PassiveClock
	// onCount is told the number of finished deliveries after each change.
	onCount func(int)

	mu      sync.Mutex
	entries map[types.NamespacedName]finishedEntry
	// retries, when set, is told of every finished delivery with a retry annotation.
	retries func(types.NamespacedName)
	// changed wakes the sweeper when the index grows.
	changed chan struct{}
}

// finishedEntry is what the index keeps of one finished delivery.
type finishedEntry struct {
	uid             types.UID
	resourceVersion string
	phase           webhooksv1alpha1.DeliveryPhase
	// finishedAt is when its status was last written (its managedFields), or when the index first
	// saw it finished.
	finishedAt time.Time
	retryToken string
}

func newFinishedIndex(c metadata.Interface, namespaces []string, clk clock.PassiveClock, onCount func(int)) *finishedIndex {
	return &finishedIndex{client: c, namespaces: namespaces, clock: clk, onCount: onCount,
		entries: map[types.NamespacedName]finishedEntry{}, changed: make(chan struct{}, 1)}
}

// NeedLeaderElection is false: every replica's intake needs the count.
func (x *finishedIndex) NeedLeaderElection() bool { return false }

// Start watches Succeeded and Failed deliveries in each namespace until ctx ends.
func (x *finishedIndex) Start(ctx context.Context) error {
	for _, ns := range namespacesOrAll(x.namespaces) {
		for _, phase := range []webhooksv1alpha1.DeliveryPhase{webhooksv1alpha1.PhaseSucceeded, webhooksv1alpha1.PhaseFailed} {
			go x.run(ctx, ns, phase)
		}
	}
	<-ctx.Done()
	return nil
}

// subscribeRetries hands every finished delivery with a retry annotation to f: those known now,
// then each one seen from now on. The delivery controller subscribes when it starts leading.
func (x *finishedIndex) subscribeRetries(f func(types.NamespacedName)) {
	x.mu.Lock()
	x.retries = f
	var annotated []types.NamespacedName
	for k, e := range x.entries {
		if e.retryToken != "" {
			annotated = append(annotated, k)
		}
	}
	x.mu.Unlock()
	for _, k := range annotated {
		f(k)
	}
}

// count is the number of finished deliveries in etcd.
func (x *finishedIndex) count() int {
	x.mu.Lock()
	defer x.mu.Unlock()
	return len(x.entries)
}

// finishedDelivery is one entry of a snapshot.
type finishedDelivery struct {
	key types.NamespacedName
	finishedEntry
}

// due returns the deliveries that should leave etcd at now, the earliest finished first: the
// over earliest of the index, whatever their time, and every one whose time in etcd is over
// (retention of its phase; 0: no time). The sweeper asks after each delivery that finishes
// above --max-finished-deliveries, so it orders only those, not the whole index: the over
// earliest are kept in a heap while the index is walked once.
func (x *finishedIndex) due(now time.Time, over int, retention func(webhooksv1alpha1.DeliveryPhase) time.Duration) []finishedDelivery {
	var out []finishedDelivery
	earliest := &latestOnTop{}
	x.mu.Lock()
	for k, e := range x.entries {
		d := finishedDelivery{key: k, finishedEntry: e}
		switch {
		case earliest.Len() < over:
			heap.Push(earliest, d)
			continue
		case over > 0 && finishedBefore(d, (*earliest)[0]):
			d, (*earliest)[0] = (*earliest)[0], d
			heap.Fix(earliest, 0)
		}
		if r := retention(d.phase); r > 0 && !now.Before(d.finishedAt.Add(r)) {
			out = append(out, d)
		}
	}
	x.mu.Unlock()
	out = append(out, *earliest...)
	slices.SortFunc(out, compareFinished)
	return out
}

// compareFinished orders deliveries by finish time, then by key. Finish times have a
// resolution of a second (managedFields), so many are equal and the key decides: compared
// field by field, not as key.String(), which builds two strings per comparison.
func compareFinished(a, b finishedDelivery) int {
	if c := a.finishedAt.Compare(b.finishedAt); c != 0 {
		return c
	}
	if c := strings.Compare(a.key.Namespace, b.key.Namespace); c != 0 {
		return c
	}
	return strings.Compare(a.key.Name, b.key.Name)
}

func finishedBefore(a, b finishedDelivery) bool { return compareFinished(a, b) < 0 }

// latestOnTop is a heap of deliveries whose top is the latest finished.
type latestOnTop []finishedDelivery

func (h latestOnTop) Len() int           { return len(h) }
func (h latestOnTop) Less(i, j int) bool { return finishedBefore(h[j], h[i]) }
func (h latestOnTop) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *latestOnTop) Push(x any)        { *h = append(*h, x.(finishedDelivery)) }
func (h *latestOnTop) Pop() any {
	old := *h
	d := old[len(old)-1]
	*h = old[:len(old)-1]
	return d
}

// forget drops a delivery the sweeper deleted (its watch event follows).
func (x *finishedIndex) forget(key types.NamespacedName, uid types.UID) {
	x.mu.Lock()
	if e, ok := x.entries[key]; ok && e.uid == uid {
		delete(x.entries, key)
	}
	n := len(x.entries)
	x.mu.Unlock()
	x.report(n)
}

func (x *finishedIndex) report(n int) {
	if x.onCount != nil {
		x.onCount(n)
	}
}

func (x *finishedIndex) run(ctx context.Context, ns string, phase webhooksv1alpha1.DeliveryPhase) {
	selector := fields.OneTermEqualSelector(webhooksv1alpha1.PhaseField, string(phase)).String()
	log := ctrl.LoggerFrom(ctx).WithName("finished-index").WithValues("namespace", ns, "phase", phase)
	resource := x.client.Resource(deliveriesResource).Namespace(ns)
	for backoff := time.Second; ctx.Err() == nil; {
		rv, err := x.list(ctx, resource, ns, phase, selector)
		if err != nil {
			log.V(1).Info("listing finished deliveries failed; trying again", "error", err.Error())
			sleep(ctx, backoff)
			backoff = min(2*backoff, time.Minute)
			continue
		}
		backoff = time.Second
		lw := &toolscache.ListWatch{WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			o.FieldSelector = selector
			return resource.Watch(ctx, o)
		}}
		rw, err := watchtools.NewRetryWatcherWithContext(ctx, rv, lw)
		if err != nil {
			log.Error(err, "watching finished deliveries failed; trying again")
			sleep(ctx, backoff)
			continue
		}
		for ev := range rw.ResultChan() {
			if ev.Type == watch.Error {
				break // the resource version expired: list again
			}
			m, ok := ev.Object.(*metav1.PartialObjectMetadata)
			if !ok {
				continue
			}
			if ev.Type == watch.Deleted {
				// Deleted, or no longer in this phase (a manual retry made it Retrying, or a
				// Failed delivery Succeeded: the other phase's watch adds it again).
				x.remove(types.NamespacedName{Namespace: m.Namespace, Name: m.Name}, m.UID, phase)
				continue
			}
			x.put(m, phase)
		}
		rw.Stop()
		sleep(ctx, time.Second) // a watch that keeps ending must not turn into a busy loop of lists
	}
}

// list replaces the index's entries of (ns, phase) by what the API server holds, and returns
// the resource version to watch from.
func (x *finishedIndex) list(ctx context.Context, resource metadata.ResourceInterface, ns string, phase webhooksv1alpha1.DeliveryPhase, selector string) (string, error) {
	rv := ""
	seen := map[types.NamespacedName]bool{}
	for cont := ""; ; {
		list, err := resource.List(ctx, metav1.ListOptions{FieldSelector: selector, Limit: sweepPageSize, Continue: cont})
		if err != nil {
			return "", err
		}
		if rv == "" {
			rv = list.ResourceVersion
		}
		for i := range list.Items {
			m := &list.Items[i]
			seen[types.NamespacedName{Namespace: m.Namespace, Name: m.Name}] = true
			x.put(m, phase)
		}
		if cont = list.Continue; cont == "" {
			break
		}
	}
	x.mu.Lock()
	for k, e := range x.entries {
		if e.phase == phase && (ns == "" || k.Namespace == ns) && !seen[k] {
			delete(x.entries, k) // gone while the index was not watching
		}
	}
	n := len(x.entries)
	x.mu.Unlock()
	x.report(n)
	return rv, nil
}

func (x *finishedIndex) put(m *metav1.PartialObjectMetadata, phase webhooksv1alpha1.DeliveryPhase) {
	key := types.NamespacedName{Namespace: m.Namespace, Name: m.Name}
	e := finishedEntry{uid: m.UID, resourceVersion: m.ResourceVersion, phase: phase,
		retryToken: m.Annotations[webhooksv1alpha1.RetryAnnotation]}
	x.mu.Lock()
	old, known := x.entries[key]
	switch {
	case statusWritten(m) != nil:
		e.finishedAt = *statusWritten(m)
	case known && old.uid == m.UID:
		e.finishedAt = old.finishedAt
	default:
		e.finishedAt = x.clock.Now()
	}
	x.entries[key] = e
	n := len(x.entries)
	retries := x.retries
	x.mu.Unlock()
	x.report(n)
	if !known {
		select {
		case x.changed <- struct{}{}:
		default:
		}
	}
	if retries != nil && e.retryToken != "" && (!known || old.retryToken != e.retryToken) {
		retries(key)
	}
}

func (x *finishedIndex) remove(key types.NamespacedName, uid types.UID, phase webhooksv1alpha1.DeliveryPhase) {
	x.mu.Lock()
	if e, ok := x.entries[key]; ok && e.uid == uid && e.phase == phase {
		delete(x.entries, key)
	}
	n := len(x.entries)
	x.mu.Unlock()
	x.report(n)
}

// statusWritten is when the delivery's status was last written, from its managedFields: the
// API server's own record of each writer's last update, so it survives an operator restart.
func statusWritten(m *metav1.PartialObjectMetadata) *time.Time {
	var latest *time.Time
	for _, f := range m.ManagedFields {
		if f.Subresource == "status" && f.Time != nil && (latest == nil || f.Time.After(*latest)) {
			t := f.Time.Time
			latest = &t
		}
	}
	return latest
}

var deliveriesResource = webhooksv1alpha1.GroupVersion.WithResource("webhookdeliveries")

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
