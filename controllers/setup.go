// Package controllers holds the two reconcilers: WebhookEndpoint and WebhookDelivery. They are
// thin: they read objects, call the dispatcher, and write status.
package controllers

import (
	"context"
	"math/rand/v2"
	"time"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
	"github.com/docrouter/webhook-operator/dispatcher"
	"github.com/docrouter/webhook-operator/internal/filter"
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
	// RetentionSweepInterval is how often finished deliveries past their retention are deleted.
	RetentionSweepInterval time.Duration
	// Namespaces restricts the operator to these namespaces; empty means all. It must match the
	// manager's cache (the tests run one operator per namespace).
	Namespaces []string
	// SucceededRetention and FailedRetention are how long finished deliveries are kept before
	// they are deleted; 0 keeps them forever.
	SucceededRetention time.Duration
	FailedRetention    time.Duration
}

// DefaultOptions are the documented defaults.
func DefaultOptions() Options {
	return Options{
		Workers:                64,
		MaxInFlight:            1024,
		MaxInFlightPerEndpoint: 16,
		SecretTTL:              5 * time.Second,
		WaitRetryInterval:      10 * time.Second,
		HealthUpdateInterval:   10 * time.Second,
		AutoDisableAfter:       5 * 24 * time.Hour,
		RetentionSweepInterval: time.Hour,
		SucceededRetention:     7 * 24 * time.Hour,
		FailedRetention:        30 * 24 * time.Hour,
	}
}

// Setup builds both reconcilers, sharing the Secret reader and the endpoint health, and
// registers them with the manager. clk may be nil for the real clock.
func Setup(ctx context.Context, mgr ctrl.Manager, sender *dispatcher.Sender, opts Options, clk clock.PassiveClock) error {
	if clk == nil {
		clk = clock.RealClock{}
	}
	secrets := newSecretReader(mgr.GetAPIReader(), opts.SecretTTL, clk.Now)
	health := newEndpointHealth()
	recorder := mgr.GetEventRecorder("webhook-operator")

	rates := newRateLimiter(health.touch)
	attempts := newAttemptRunner(opts.Workers)
	deliveries := &WebhookDeliveryReconciler{
		Client: mgr.GetClient(), Sender: sender, Recorder: recorder, Clock: clk, Jitter: rand.Float64, Options: opts,
		secrets: secrets, health: health, attempts: attempts, limiter: newInflightLimiter(opts.MaxInFlight, attempts.wake),
		rates:           rates,
		expectations:    newAttemptExpectations(),
		finishedRetries: make(chan event.TypedGenericEvent[*webhooksv1alpha1.WebhookDelivery]),
	}
	if err := deliveries.SetupWithManager(ctx, mgr); err != nil {
		return err
	}
	// Finished deliveries are not cached (cache.go): these two serve them.
	md, err := metadata.NewForConfig(mgr.GetConfig())
	if err != nil {
		return err
	}
	if err := mgr.Add(&finishedRetryWatcher{client: md, namespaces: opts.Namespaces, out: deliveries.finishedRetries}); err != nil {
		return err
	}
	if err := mgr.Add(&retentionSweeper{reader: mgr.GetAPIReader(), writer: mgr.GetClient(), clock: clk, opts: opts, namespaces: opts.Namespaces}); err != nil {
		return err
	}
	endpoints := &WebhookEndpointReconciler{
		Client: mgr.GetClient(), Recorder: recorder, Clock: clk, Options: opts,
		secrets: secrets, health: health, lastHealthWrite: map[types.NamespacedName]time.Time{},
		apiReader: mgr.GetAPIReader(), rates: rates, filters: filter.NewCache(filter.DefaultCacheSize),
	}
	return endpoints.SetupWithManager(mgr)
}

// failureRateLimiter spaces the retries of a reconcile that returned an error (an API failure):
// exponential from 5 ms, capped at 30 s. controller-runtime's default also caps the whole queue
// at 10 retries per second and lets one item back off to 16 minutes, which after an API-server
// outage would leave the backlog draining slowly.
func failureRateLimiter() workqueue.TypedRateLimiter[reconcile.Request] {
	return workqueue.NewTypedItemExponentialFailureRateLimiter[reconcile.Request](5*time.Millisecond, 30*time.Second)
}
