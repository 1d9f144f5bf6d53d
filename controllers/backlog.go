package controllers

import (
	"context"
	"sort"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"

	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
	"github.com/docrouter/webhook-operator/internal/history"
	"github.com/docrouter/webhook-operator/internal/metrics"
)

// promoter turns the history store's backlog into WebhookDeliveries as the working set has
// room: per endpoint, oldest first, in chunks of creates in flight at once, so that an
// endpoint's events become deliveries in the order they were published, chunk by chunk. It
// counts the backlog for the working set (so that new events of an endpoint with a backlog
// queue behind it), for the endpoints' status.backlog and for the metrics. It runs on the
// leader; the intake on every replica adds to the backlog.
type promoter struct {
	store  history.Store
	health *storeHealth
	set    *WorkingSet
	client client.Client
	// wake tells the endpoint controller that an endpoint's backlog changed (status.backlog).
	wake chan<- event.TypedGenericEvent[*webhooksv1alpha1.WebhookEndpoint]
}

const (
	// promoteInterval is how often the backlog is looked at when nothing wakes the promoter.
	promoteInterval = time.Second
	// promoteBatch bounds the items of one endpoint taken from the store at once.
	promoteBatch = 500
	// promoteEndpoints is how many endpoints' backlogs are promoted at once.
	promoteEndpoints = 8
	// promoteChunk is how many creates of one endpoint are in flight at once.
	promoteChunk = 16
)

// NeedLeaderElection: the leader creates deliveries from the backlog.
func (p *promoter) NeedLeaderElection() bool { return true }

// Start promotes until ctx ends: every promoteInterval, and when a delivery leaves the working
// set while there is a backlog.
func (p *promoter) Start(ctx context.Context) error {
	log := ctrl.LoggerFrom(ctx).WithName("backlog")
	t := time.NewTicker(promoteInterval)
	defer t.Stop()
	counts := map[types.NamespacedName]int64{}
	for {
		next, err := p.promote(ctx, counts)
		if err != nil && ctx.Err() == nil {
			log.V(1).Info("promoting the backlog did not complete; trying again", "error", err.Error())
		}
		if next != nil {
			counts = next
		}
		// Room that frees matters only to a backlog. Without one the ticker is enough (an item
		// queued meanwhile waits a tick at most), and a wake for every delivery that leaves the
		// working set would cost a count of the backlog each: 1.4 store queries per delivery.
		var freed <-chan struct{}
		if len(counts) > 0 {
			freed = p.set.freed
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-freed:
		}
	}
}

// promote counts the backlog and creates deliveries for the endpoints that have room; it
// returns the counts it read.
func (p *promoter) promote(ctx context.Context, was map[types.NamespacedName]int64) (map[types.NamespacedName]int64, error) {
	counts, err := backlogCounts(ctx, p.store)
	p.health.observe(ctx, err)
	if err != nil {
		return nil, err
	}
	p.set.setBacklog(counts)
	p.report(was, counts)

	endpoints := make([]types.NamespacedName, 0, len(counts))
	for ep := range counts {
		if p.set.Room(ep) > 0 {
			endpoints = append(endpoints, ep)
		}
	}
	sort.Slice(endpoints, func(i, j int) bool { return endpoints[i].String() < endpoints[j].String() })
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(promoteEndpoints)
	for _, ep := range endpoints {
		g.Go(func() error { return p.promoteEndpoint(gctx, ep) })
	}
	return counts, g.Wait()
}

// promoteEndpoint creates deliveries from the oldest items of one endpoint's backlog while the
// working set has room for them, then removes the items it created. The creates of a chunk of
// promoteChunk items are in flight at once, and the next chunk starts once all of them are
// answered: an endpoint's deliveries are created in publish order chunk by chunk, and within a
// chunk in the order the API server answers. (One create after the other, a round trip each,
// drained one endpoint's backlog at 65 to 88 deliveries/s in the soak, half the pipeline's rate.)
func (p *promoter) promoteEndpoint(ctx context.Context, ep types.NamespacedName) error {
	room := p.set.Room(ep)
	if room <= 0 {
		return nil
	}
	items, err := p.store.NextBacklog(ctx, history.EndpointKey{Namespace: ep.Namespace, Name: ep.Name}, min(room, promoteBatch))
	p.health.observe(ctx, err)
	if err != nil {
		return err
	}
	var done []int64
	var createErr error
	for len(items) > 0 && createErr == nil {
		chunk := items[:min(len(items), promoteChunk)]
		items = items[len(chunk):]
		admitted := 0
		for _, item := range chunk {
			if ok, _ := p.set.Admit(ep, types.NamespacedName{Namespace: item.Namespace, Name: item.Name}); !ok {
				break
			}
			admitted++
		}
		if admitted < len(chunk) {
			chunk, items = chunk[:admitted], nil // the working set is full: the rest waits
		}
		errs := make([]error, len(chunk))
		var wg sync.WaitGroup
		for i, item := range chunk {
			wg.Go(func() {
				errs[i] = p.client.Create(ctx, webhooksv1alpha1.NewDelivery(item.Namespace, item.Endpoint, item.Event))
				if errs[i] != nil {
					p.set.Release(types.NamespacedName{Namespace: item.Namespace, Name: item.Name})
				}
			})
		}
		wg.Wait()
		for i, item := range chunk {
			switch err := errs[i]; {
			case err == nil || apierrors.IsAlreadyExists(err):
				done = append(done, item.ID)
			case createErr == nil:
				createErr = err // an API failure, or etcd out of space: the item stays for the next round
			}
		}
	}
	if len(done) > 0 {
		err := p.store.DeleteBacklog(ctx, done)
		p.health.observe(ctx, err)
		if err != nil {
			return err // the next round finds the deliveries (AlreadyExists) and removes the items
		}
	}
	return createErr
}

// report publishes the backlog counts: the gauge per namespace, and a wake for each endpoint
// whose count changed, so that its status.backlog follows.
func (p *promoter) report(was, now map[types.NamespacedName]int64) {
	perNamespace := map[string]int64{}
	for ep, n := range now {
		perNamespace[ep.Namespace] += n
	}
	for ep := range was {
		if _, ok := perNamespace[ep.Namespace]; !ok {
			perNamespace[ep.Namespace] = 0
		}
	}
	for ns, n := range perNamespace {
		metrics.Backlog.WithLabelValues(ns).Set(float64(n))
	}
	changed := func(ep types.NamespacedName) {
		obj := &webhooksv1alpha1.WebhookEndpoint{}
		obj.Namespace, obj.Name = ep.Namespace, ep.Name
		select {
		case p.wake <- event.TypedGenericEvent[*webhooksv1alpha1.WebhookEndpoint]{Object: obj}:
		default: // full: the endpoint's next reconcile copies the count
		}
	}
	for ep, n := range now {
		if was[ep] != n {
			changed(ep)
		}
	}
	for ep := range was {
		if _, ok := now[ep]; !ok {
			changed(ep)
		}
	}
}

// backlogCounts is the store's backlog, counted per endpoint.
func backlogCounts(ctx context.Context, store history.Store) (map[types.NamespacedName]int64, error) {
	raw, err := store.BacklogCounts(ctx)
	if err != nil {
		return nil, err
	}
	counts := make(map[types.NamespacedName]int64, len(raw))
	for k, n := range raw {
		counts[types.NamespacedName{Namespace: k.Namespace, Name: k.Name}] = n
	}
	return counts, nil
}

// backlogCounter copies the backlog's counts into the working set of a replica that is not the
// leader, every promoteInterval, until it becomes the leader (the promoter counts from then on).
// Without it such a replica's intake would only ever count up: WorkingSet.Queued notes each event
// it queues, and only the promoter, on the leader, sees the backlog drain, so once the replica had
// queued one event of an endpoint it would send all that endpoint's later events through the
// backlog, whatever room the working set had.
type backlogCounter struct {
	store   history.Store
	set     *WorkingSet
	elected <-chan struct{}
}

// NeedLeaderElection: the counter serves the intake, which runs on every replica.
func (c *backlogCounter) NeedLeaderElection() bool { return false }

// Start counts until ctx ends or this replica is elected. A store that does not answer leaves
// the counts as they were (the store's health is reported by the components that write to it).
func (c *backlogCounter) Start(ctx context.Context) error {
	t := time.NewTicker(promoteInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-c.elected:
			return nil
		case <-t.C:
		}
		if counts, err := backlogCounts(ctx, c.store); err == nil {
			c.set.setBacklog(counts)
		}
	}
}
