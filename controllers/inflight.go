package controllers

import (
	"sync"

	"k8s.io/apimachinery/pkg/types"
)

// inflightLimiter bounds the attempts in flight: to one endpoint, so that a slow or silent
// receiver holds no more than its share and cannot starve the others (no head-of-line
// blocking), and in all, so that memory stays bounded whatever the number of endpoints. A
// delivery turned away waits in a line and is woken through wake when a slot frees: it costs
// no polling. A delivery is in at most one line: its endpoint's when the endpoint is at its
// limit, the shared one when the total is.
type inflightLimiter struct {
	// total bounds the attempts in flight in all; 0: no bound.
	total int
	wake  func(delivery types.NamespacedName)

	mu      sync.Mutex
	running map[types.NamespacedName]int
	sum     int
	// waiting are the endpoints' lines; shared is the line of deliveries held by the total.
	waiting map[types.NamespacedName][]types.NamespacedName
	shared  []types.NamespacedName
	queued  map[types.NamespacedName]bool
}

func newInflightLimiter(total int, wake func(types.NamespacedName)) *inflightLimiter {
	return &inflightLimiter{
		total:   total,
		wake:    wake,
		running: map[types.NamespacedName]int{},
		waiting: map[types.NamespacedName][]types.NamespacedName{},
		queued:  map[types.NamespacedName]bool{},
	}
}

// tryAcquire takes a slot of endpoint for delivery, whose endpoint allows limit attempts in
// flight (0: no limit), or puts delivery in a line.
func (l *inflightLimiter) tryAcquire(endpoint, delivery types.NamespacedName, limit int) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case limit > 0 && l.running[endpoint] >= limit:
		l.enqueue(&l.waiting, endpoint, delivery)
		return false
	case l.total > 0 && l.sum >= l.total:
		l.enqueueShared(delivery)
		return false
	}
	l.running[endpoint]++
	l.sum++
	return true
}

func (l *inflightLimiter) enqueue(lines *map[types.NamespacedName][]types.NamespacedName, endpoint, delivery types.NamespacedName) {
	if l.queued[delivery] {
		return
	}
	l.queued[delivery] = true
	(*lines)[endpoint] = append((*lines)[endpoint], delivery)
}

func (l *inflightLimiter) enqueueShared(delivery types.NamespacedName) {
	if l.queued[delivery] {
		return
	}
	l.queued[delivery] = true
	l.shared = append(l.shared, delivery)
}

// release frees a slot of endpoint and wakes the next delivery in the endpoint's line, or else
// in the shared line.
func (l *inflightLimiter) release(endpoint types.NamespacedName) {
	l.mu.Lock()
	if l.running[endpoint] <= 0 {
		l.mu.Unlock()
		return // nothing of this endpoint in flight: a release without an acquire frees nothing
	}
	if l.running[endpoint]--; l.running[endpoint] == 0 {
		delete(l.running, endpoint)
	}
	l.sum--
	var next types.NamespacedName
	var ok bool
	if line := l.waiting[endpoint]; len(line) > 0 {
		next, ok = line[0], true
		if len(line) == 1 {
			delete(l.waiting, endpoint)
		} else {
			l.waiting[endpoint] = line[1:]
		}
	} else if len(l.shared) > 0 {
		next, ok = l.shared[0], true
		l.shared = l.shared[1:]
	}
	if ok {
		delete(l.queued, next)
	}
	l.mu.Unlock()
	if ok && l.wake != nil {
		l.wake(next)
	}
}
