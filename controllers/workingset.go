package controllers

import (
	"fmt"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/types"
	toolscache "k8s.io/client-go/tools/cache"

	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
	"github.com/docrouter/webhook-operator/internal/metrics"
)

// WorkingSetLimits bound the WebhookDeliveries in etcd.
type WorkingSetLimits struct {
	// PerEndpoint bounds the unfinished deliveries of one endpoint.
	PerEndpoint int
	// Total bounds the unfinished deliveries of all endpoints.
	Total int
	// Finished bounds the finished deliveries that wait in etcd for their time to be over (the
	// sweeper keeps them at --max-finished-deliveries). This is the limit at which they stop
	// leaving, because they cannot be archived: no new delivery is created in etcd then.
	Finished int
	// Backlog bounds the events of one endpoint waiting in the store's backlog. The counts are
	// the store's as last read (every second) plus what this replica queued since, so several
	// replicas together may pass it by about a second's events.
	Backlog int
}

// WorkingSet counts the WebhookDeliveries in etcd and says whether one more may be created.
// Unfinished deliveries are counted from the operator's cache, on every replica (the cache runs
// on every replica, the controllers on the leader only); deliveries being created are counted
// from the moment they are admitted until the cache shows them, so that concurrent publishes
// cannot overshoot the limits by more than a replica's creations in flight; finished ones come
// from the finished index. An event beyond the limits waits in the history store's backlog
// (backlog.go), or is refused when there is none.
type WorkingSet struct {
	limits WorkingSetLimits
	now    func() time.Time

	mu           sync.Mutex
	live         map[types.NamespacedName]types.NamespacedName // delivery -> endpoint
	perEndpoint  map[types.NamespacedName]int
	reserved     map[types.NamespacedName]reservation // delivery -> its admission
	reservedBy   map[types.NamespacedName]int         // endpoint -> admissions
	finished     int
	backlogCount map[types.NamespacedName]int64
	// freed wakes the backlog's promoter when a delivery leaves the working set.
	freed chan struct{}
}

type reservation struct {
	endpoint types.NamespacedName
	at       time.Time
}

// reservationTTL forgets an admission whose delivery the cache never showed (a create that
// failed without Release, a delivery that finished before the cache saw it).
const reservationTTL = 30 * time.Second

// NewWorkingSet makes an empty working set with limits; 0 disables a limit.
func NewWorkingSet(limits WorkingSetLimits) *WorkingSet {
	return &WorkingSet{limits: limits, now: time.Now,
		live: map[types.NamespacedName]types.NamespacedName{}, perEndpoint: map[types.NamespacedName]int{},
		reserved: map[types.NamespacedName]reservation{}, reservedBy: map[types.NamespacedName]int{},
		backlogCount: map[types.NamespacedName]int64{}, freed: make(chan struct{}, 1)}
}

// Admit reserves room for the delivery named delivery of endpoint, or says why there is none.
// A caller whose create then fails calls Release.
func (w *WorkingSet) Admit(endpoint, delivery types.NamespacedName) (ok bool, why string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if _, known := w.live[delivery]; known {
		return true, "" // it exists: the create answers AlreadyExists
	}
	if _, known := w.reserved[delivery]; known {
		return true, ""
	}
	w.expireLocked()
	l := w.limits
	switch {
	case l.PerEndpoint > 0 && w.perEndpoint[endpoint]+w.reservedBy[endpoint] >= l.PerEndpoint:
		return false, fmt.Sprintf("WebhookEndpoint %q has %d unfinished deliveries in etcd, the most allowed (--max-live-deliveries-per-endpoint)",
			endpoint.Name, l.PerEndpoint)
	case l.Total > 0 && len(w.live)+len(w.reserved) >= l.Total:
		return false, fmt.Sprintf("the operator has %d unfinished deliveries in etcd, the most allowed (--max-live-deliveries)", l.Total)
	case l.Finished > 0 && w.finished >= l.Finished:
		return false, fmt.Sprintf("%d finished deliveries wait in etcd because their records cannot be archived (is the history store reachable?)", w.finished)
	}
	w.reserved[delivery] = reservation{endpoint: endpoint, at: w.now()}
	w.reservedBy[endpoint]++
	return true, ""
}

// Release gives back the room of an admitted delivery that was not created.
func (w *WorkingSet) Release(delivery types.NamespacedName) {
	w.mu.Lock()
	w.unreserveLocked(delivery)
	w.mu.Unlock()
	w.signalFreed()
}

// Room is how many more deliveries of endpoint the working set takes now.
func (w *WorkingSet) Room(endpoint types.NamespacedName) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.expireLocked()
	room := int(^uint(0) >> 1)
	l := w.limits
	if l.PerEndpoint > 0 {
		room = min(room, l.PerEndpoint-w.perEndpoint[endpoint]-w.reservedBy[endpoint])
	}
	if l.Total > 0 {
		room = min(room, l.Total-len(w.live)-len(w.reserved))
	}
	if l.Finished > 0 && w.finished >= l.Finished {
		room = 0
	}
	return max(room, 0)
}

// HasBacklog reports whether the endpoint's events wait in the store's backlog (as the
// promoter last counted them, or since this replica queued one): new events of the endpoint
// join the backlog then, behind the older ones, so that they keep publish order.
func (w *WorkingSet) HasBacklog(endpoint types.NamespacedName) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.backlogCount[endpoint] > 0
}

// Backlog is the number of events of endpoint in the store's backlog, as last counted.
func (w *WorkingSet) Backlog(endpoint types.NamespacedName) int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.backlogCount[endpoint]
}

// BacklogRoom says whether one more event of endpoint may wait in the backlog, or why not.
func (w *WorkingSet) BacklogRoom(endpoint types.NamespacedName) (ok bool, why string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if n := w.backlogCount[endpoint]; w.limits.Backlog > 0 && n >= int64(w.limits.Backlog) {
		return false, fmt.Sprintf("the backlog of WebhookEndpoint %q holds %d events, the most allowed (--max-backlog-per-endpoint): its receiver takes them slower than they are published", endpoint.Name, n)
	}
	return true, ""
}

// Queued notes that an event of endpoint was added to the backlog.
func (w *WorkingSet) Queued(endpoint types.NamespacedName) {
	w.mu.Lock()
	w.backlogCount[endpoint]++
	w.mu.Unlock()
}

// setBacklog replaces the backlog counts by the store's (a copy: the caller keeps its map).
func (w *WorkingSet) setBacklog(counts map[types.NamespacedName]int64) {
	own := make(map[types.NamespacedName]int64, len(counts))
	for k, n := range counts {
		own[k] = n
	}
	w.mu.Lock()
	w.backlogCount = own
	w.mu.Unlock()
}

// Live is the number of unfinished deliveries of endpoint in etcd, admitted ones included.
func (w *WorkingSet) Live(endpoint types.NamespacedName) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.perEndpoint[endpoint] + w.reservedBy[endpoint]
}

func (w *WorkingSet) setFinished(n int) {
	w.mu.Lock()
	was := w.finished
	w.finished = n
	w.mu.Unlock()
	metrics.WorkingSet.WithLabelValues("finished").Set(float64(n))
	if n < was {
		w.signalFreed()
	}
}

func (w *WorkingSet) unreserveLocked(delivery types.NamespacedName) {
	if r, ok := w.reserved[delivery]; ok {
		delete(w.reserved, delivery)
		if w.reservedBy[r.endpoint]--; w.reservedBy[r.endpoint] <= 0 {
			delete(w.reservedBy, r.endpoint)
		}
	}
}

func (w *WorkingSet) expireLocked() {
	cutoff := w.now().Add(-reservationTTL)
	for d, r := range w.reserved {
		if r.at.Before(cutoff) {
			w.unreserveLocked(d)
		}
	}
}

func (w *WorkingSet) signalFreed() {
	select {
	case w.freed <- struct{}{}:
	default:
	}
}

// handler keeps the counts from the cache's informer of (unfinished) deliveries.
func (w *WorkingSet) handler() toolscache.ResourceEventHandler {
	return toolscache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { w.add(obj) },
		UpdateFunc: func(_, obj any) { w.add(obj) },
		DeleteFunc: func(obj any) {
			if t, ok := obj.(toolscache.DeletedFinalStateUnknown); ok {
				obj = t.Obj
			}
			if d, ok := obj.(*webhooksv1alpha1.WebhookDelivery); ok {
				w.remove(types.NamespacedName{Namespace: d.Namespace, Name: d.Name})
			}
		},
	}
}

func (w *WorkingSet) add(obj any) {
	d, ok := obj.(*webhooksv1alpha1.WebhookDelivery)
	if !ok {
		return
	}
	key := types.NamespacedName{Namespace: d.Namespace, Name: d.Name}
	ep := types.NamespacedName{Namespace: d.Namespace, Name: d.Spec.EndpointRef.Name}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.unreserveLocked(key)
	if _, known := w.live[key]; !known {
		w.live[key] = ep
		w.perEndpoint[ep]++
		metrics.WorkingSet.WithLabelValues("unfinished").Set(float64(len(w.live)))
	}
}

func (w *WorkingSet) remove(key types.NamespacedName) {
	w.mu.Lock()
	ep, known := w.live[key]
	if known {
		delete(w.live, key)
		if w.perEndpoint[ep]--; w.perEndpoint[ep] <= 0 {
			delete(w.perEndpoint, ep)
		}
		metrics.WorkingSet.WithLabelValues("unfinished").Set(float64(len(w.live)))
	}
	w.mu.Unlock()
	if known {
		w.signalFreed()
	}
}
