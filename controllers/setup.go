// Package controllers holds the two reconcilers: WebhookEndpoint and WebhookDelivery. They are
// thin: they read objects, call the dispatcher, and write status.
package controllers

import (
	"context"
	"math/rand/v2"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
	"github.com/docrouter/webhook-operator/dispatcher"
	"github.com/docrouter/webhook-operator/internal/filter"
	"github.com/docrouter/webhook-operator/internal/history"
)

// Options are the operator's tunables; main.go exposes each as a flag.
type Options struct {
	// Workers is how many deliveries are reconciled at once, and how many attempts write their
	// status at once. Attempts do not hold a worker while they wait for the receiver
	// (attempts.go): MaxInFlight bounds those; their status writes, which end in waves when the
	// receivers are slow, are bounded like the workers' so that the API server is not flooded.
	Workers int
	// MaxInFlight bounds the attempts in flight in all, so that memory stays bounded.
	MaxInFlight int
	// MaxInFlightPerEndpoint bounds the attempts in flight to one endpoint, so that a slow or
	// silent receiver cannot take the slots of the others. An endpoint's spec.maxInFlight
	// overrides it for that endpoint.
	MaxInFlightPerEndpoint int
	// SecretTTL is how long a Secret read is reused: a changed Secret is used within it.
	SecretTTL time.Duration
	// WaitRetryInterval is how often a delivery or endpoint waiting for a missing Secret or
	// endpoint looks again.
	WaitRetryInterval time.Duration
	// HealthUpdateInterval bounds how often an endpoint's status is written with delivery health.
	HealthUpdateInterval time.Duration
	// AutoDisableAfter disables an endpoint whose attempts have all failed for this long; its
	// deliveries are parked until it is re-enabled. 0 turns the policy off.
	AutoDisableAfter time.Duration
	// RetentionSweepInterval is how often finished deliveries are looked at for leaving etcd.
	RetentionSweepInterval time.Duration
	// Namespaces restricts the operator to these namespaces; empty means all. It must match the
	// manager's cache (the tests run one operator per namespace).
	Namespaces []string
	// SucceededRetention and FailedRetention are how long finished deliveries stay in etcd
	// (after they are archived, with a history store); 0: until MaxFinishedDeliveries pushes
	// them out.
	SucceededRetention time.Duration
	FailedRetention    time.Duration
	// MaxFinishedDeliveries bounds the finished deliveries in etcd: above it the oldest leave
	// first, whatever their time. 0: no bound.
	MaxFinishedDeliveries int
	// MaxLiveDeliveriesPerEndpoint and MaxLiveDeliveries bound the unfinished deliveries in
	// etcd, of one endpoint and in all; events beyond wait in the history store's backlog.
	// 0: no bound.
	MaxLiveDeliveriesPerEndpoint int
	MaxLiveDeliveries            int
	// MaxBacklogPerEndpoint bounds the events of one endpoint waiting in the history store's
	// backlog; beyond it the intake refuses them (429). 0: no bound (the store's disk).
	MaxBacklogPerEndpoint int
	// HistoryRetention is how long records stay in the history store after they left etcd.
	HistoryRetention time.Duration
}

// DefaultOptions are the documented defaults.
func DefaultOptions() Options {
	return Options{
		Workers:                      64,
		MaxInFlight:                  1024,
		MaxInFlightPerEndpoint:       16,
		SecretTTL:                    5 * time.Second,
		WaitRetryInterval:            10 * time.Second,
		HealthUpdateInterval:         10 * time.Second,
		AutoDisableAfter:             5 * 24 * time.Hour,
		RetentionSweepInterval:       2 * time.Second,
		SucceededRetention:           10 * time.Minute,
		FailedRetention:              time.Hour,
		MaxFinishedDeliveries:        5000,
		MaxLiveDeliveriesPerEndpoint: 1000,
		MaxLiveDeliveries:            10000,
		MaxBacklogPerEndpoint:        100000,
		HistoryRetention:             30 * 24 * time.Hour,
	}
}

// Deps are the operator's collaborators.
type Deps struct {
	// Sender makes the attempts.
	Sender *dispatcher.Sender
	// Store is the history store; nil keeps no history (finished deliveries leave etcd after
	// their time without a record, and events beyond the working set are refused).
	Store history.Store
	// Clock is the controllers' clock; nil for the real one.
	Clock clock.PassiveClock
	// Pod is the operator's own Pod, the object of Events about the history store; nil outside
	// a cluster.
	Pod *corev1.Pod
}

// Operator is what Setup built that the rest of the process uses.
type Operator struct {
	// WorkingSet admits the intake's deliveries into etcd.
	WorkingSet *WorkingSet
	// StoreHealth says whether the history store answers (nil without a store).
	StoreHealth *storeHealth
}

// StoreAvailable reports whether the history store answered when it was last used.
func (o *Operator) StoreAvailable() bool { return o.StoreHealth.available() }

// Setup builds both reconcilers and their machinery (the attempt runner, the finished index,
// the sweeper, and with a store the archiver and the backlog's promoter), and registers them
// with the manager.
func Setup(ctx context.Context, mgr ctrl.Manager, opts Options, deps Deps) (*Operator, error) {
	clk := deps.Clock
	if clk == nil {
		clk = clock.RealClock{}
	}
	secrets := newSecretReader(mgr.GetAPIReader(), opts.SecretTTL, clk.Now)
	health := newEndpointHealth()
	recorder := mgr.GetEventRecorder("webhook-operator")

	finishedLimit := 0
	if opts.MaxFinishedDeliveries > 0 {
		// Twice the sweeper's bound: reached only when finished deliveries cannot leave.
		finishedLimit = 2 * opts.MaxFinishedDeliveries
	}
	set := NewWorkingSet(WorkingSetLimits{PerEndpoint: opts.MaxLiveDeliveriesPerEndpoint, Total: opts.MaxLiveDeliveries, Finished: finishedLimit, Backlog: opts.MaxBacklogPerEndpoint})
	op := &Operator{WorkingSet: set}
	var arch *archiver
	if deps.Store != nil {
		op.StoreHealth = newStoreHealth(deps.Store, recorder, deps.Pod)
		arch = newArchiver(deps.Store, clk, op.StoreHealth)
		for _, r := range []manager.Runnable{op.StoreHealth, arch, &promoter{store: deps.Store, health: op.StoreHealth, set: set, client: mgr.GetClient(), wake: health.wake},
			&backlogCounter{store: deps.Store, set: set, elected: mgr.Elected()}} {
			if err := mgr.Add(r); err != nil {
				return nil, err
			}
		}
	}
	informer, err := mgr.GetCache().GetInformer(ctx, &webhooksv1alpha1.WebhookDelivery{})
	if err != nil {
		return nil, err
	}
	if _, err := informer.AddEventHandler(set.handler()); err != nil {
		return nil, err
	}

	// Finished deliveries are not cached (cache.go): the index knows them, by their metadata.
	md, err := metadata.NewForConfig(mgr.GetConfig())
	if err != nil {
		return nil, err
	}
	index := newFinishedIndex(md, opts.Namespaces, clk, set.setFinished)
	if err := mgr.Add(index); err != nil {
		return nil, err
	}
	rates := newRateLimiter(health.touch)
	attempts := newAttemptRunner(opts.Workers, index)
	deliveries := &WebhookDeliveryReconciler{
		Client: mgr.GetClient(), Sender: deps.Sender, Recorder: recorder, Clock: clk, Jitter: rand.Float64, Options: opts,
		secrets: secrets, health: health, attempts: attempts, limiter: newInflightLimiter(opts.MaxInFlight, attempts.wake),
		rates: rates, expectations: newAttemptExpectations(), archive: arch,
	}
	if err := deliveries.SetupWithManager(ctx, mgr); err != nil {
		return nil, err
	}
	if err := mgr.Add(&sweeper{index: index, reader: mgr.GetAPIReader(), writer: mgr.GetClient(), store: deps.Store,
		health: op.StoreHealth, clock: clk, opts: opts}); err != nil {
		return nil, err
	}
	endpoints := &WebhookEndpointReconciler{
		Client: mgr.GetClient(), Recorder: recorder, Clock: clk, Options: opts,
		secrets: secrets, health: health, lastHealthWrite: map[types.NamespacedName]time.Time{},
		apiReader: mgr.GetAPIReader(), workingSet: set, rates: rates, filters: filter.NewCache(filter.DefaultCacheSize),
	}
	return op, endpoints.SetupWithManager(mgr)
}

// failureRateLimiter spaces the retries of a reconcile that returned an error (an API failure):
// exponential from 5 ms, capped at 30 s. controller-runtime's default also caps the whole queue
// at 10 retries per second and lets one item back off to 16 minutes, which after an API-server
// outage would leave the backlog draining slowly.
func failureRateLimiter() workqueue.TypedRateLimiter[reconcile.Request] {
	return workqueue.NewTypedItemExponentialFailureRateLimiter[reconcile.Request](5*time.Millisecond, 30*time.Second)
}
