package controllers

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
	"github.com/docrouter/webhook-operator/dispatcher"
)

// endpointRefIndex indexes deliveries by the endpoint they are for.
const endpointRefIndex = ".spec.endpointRef.name"

// WebhookDeliveryReconciler makes one HTTP attempt per reconcile for a due delivery, and keeps
// the schedule of the next one in status.
type WebhookDeliveryReconciler struct {
	client.Client
	Sender   *dispatcher.Sender
	Recorder events.EventRecorder
	Clock    clock.PassiveClock
	// Jitter returns a number in [0, 1) that spreads retries; rand.Float64 in production.
	Jitter  func() float64
	Options Options

	secrets      *secretReader
	health       *endpointHealth
	limiter      *inflightLimiter
	rates        *rateLimiter
	attempts     *attemptRunner
	expectations *attemptExpectations
	// apiReader reads finished deliveries, which the cache does not hold (cache.go).
	apiReader client.Reader
	// archive copies deliveries into the history store after each status write; nil without a
	// store.
	archive *archiver
}

// +kubebuilder:rbac:groups=webhooks.docrouter.ai,resources=webhookdeliveries,verbs=get;list;watch;delete
// +kubebuilder:rbac:groups=webhooks.docrouter.ai,resources=webhookdeliveries/status,verbs=get;patch
// +kubebuilder:rbac:groups=webhooks.docrouter.ai,resources=webhookendpoints,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get
// +kubebuilder:rbac:groups="",resources=configmaps,verbs=get
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// Reconcile decides whether a delivery is due and, when it is, hands its attempt to the
// attempt runner (attempts.go); or it records why the delivery waits.
func (r *WebhookDeliveryReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	key := req.NamespacedName
	if r.attempts.busy(key) {
		return ctrl.Result{}, nil // the attempt under way schedules what comes next
	}
	d, err := r.get(ctx, key)
	if d == nil || err != nil {
		return ctrl.Result{}, err
	}
	if held := r.expectations.unwritten(key, d.UID, d.Status.Attempts); held != nil {
		// An attempt was made but its status write failed: write it now, do not send again.
		base := d.DeepCopy()
		d.Status = *held
		if err := patchStatus(ctx, r.Client, base, d); err != nil {
			return ctrl.Result{}, err
		}
		r.archive.note(d)
		r.expectations.expect(key, d.UID, held.Attempts)
		return ctrl.Result{RequeueAfter: time.Second}, nil
	}
	if !r.expectations.satisfied(key, d.UID, d.Status.Attempts) {
		// The cache has not yet seen our last status write: acting now could send twice.
		return ctrl.Result{RequeueAfter: time.Second}, nil
	}
	if !d.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, nil
	}

	now := r.Clock.Now()
	token := d.Annotations[webhooksv1alpha1.RetryAnnotation]
	manual := token != "" && token != d.Status.LastRetryToken
	if d.Status.Phase.Finished() && !manual {
		return ctrl.Result{}, nil // its time in etcd is the sweeper's (retention.go)
	}
	if next := d.Status.NextAttemptTime; !manual && next != nil && now.Before(next.Time) {
		return ctrl.Result{RequeueAfter: next.Sub(now)}, nil
	}

	base := d.DeepCopy()
	ep, creds, err := r.endpointFor(ctx, d)
	if wait := (*waitError)(nil); errors.As(err, &wait) {
		setWaiting(d, wait)
		if err := patchStatus(ctx, r.Client, base, d); err != nil {
			return ctrl.Result{}, err
		}
		r.archive.note(d)
		return ctrl.Result{RequeueAfter: wait.RequeueAfter}, nil
	}
	if err != nil {
		return ctrl.Result{}, err
	}

	if wait := r.rates.wait(ep, key, r.Clock.Now()); wait > 0 {
		// Over the endpoint's spec.rateLimit: the delivery's token is reserved (ratelimit.go) and
		// due after wait. No attempt, no status write, no retry used.
		return ctrl.Result{RequeueAfter: wait}, nil
	}
	epKey := types.NamespacedName{Namespace: ep.Namespace, Name: ep.Name}
	if !r.limiter.tryAcquire(epKey, key, ep.Spec.GetMaxInFlight(r.Options.MaxInFlightPerEndpoint)) {
		// The endpoint (or the operator) has as many attempts in flight as allowed; a freed slot
		// wakes this one, and this requeue is the fallback. A token of the rate limit is kept.
		return ctrl.Result{RequeueAfter: ep.Spec.GetTimeout() + time.Second}, nil
	}
	turn := r.rates.started(key)
	if !r.attempts.run(key, func(ctx context.Context) (time.Duration, bool) {
		defer r.limiter.release(epKey)
		return r.attempt(ctx, base, d, ep, creds, attemptCause{manual: manual, token: token, turn: turn})
	}) {
		r.limiter.release(epKey) // the manager stops: the next leader attempts it
	}
	return ctrl.Result{}, nil
}

// get reads a delivery: from the cache, which holds the unfinished ones, or else through the
// API reader, for a finished one (a manual retry). nil means it is gone.
func (r *WebhookDeliveryReconciler) get(ctx context.Context, key types.NamespacedName) (*webhooksv1alpha1.WebhookDelivery, error) {
	d := &webhooksv1alpha1.WebhookDelivery{}
	err := r.Get(ctx, key, d)
	if apierrors.IsNotFound(err) && r.apiReader != nil {
		err = r.apiReader.Get(ctx, key, d)
	}
	if apierrors.IsNotFound(err) {
		r.expectations.forget(key)
		r.rates.forget(key)
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return d, nil
}

// endpointFor finds the delivery's endpoint and its credentials. A *waitError says why the
// delivery cannot be attempted now; any other error is an API failure.
func (r *WebhookDeliveryReconciler) endpointFor(ctx context.Context, d *webhooksv1alpha1.WebhookDelivery) (*webhooksv1alpha1.WebhookEndpoint, credentials, error) {
	ep := &webhooksv1alpha1.WebhookEndpoint{}
	key := types.NamespacedName{Namespace: d.Namespace, Name: d.Spec.EndpointRef.Name}
	if err := r.Get(ctx, key, ep); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, credentials{}, &waitError{Reason: webhooksv1alpha1.ReasonEndpointNotFound,
				Message:      fmt.Sprintf("WebhookEndpoint %q not found in this namespace; the delivery waits for it", key.Name),
				RequeueAfter: r.Options.WaitRetryInterval}
		}
		return nil, credentials{}, err
	}
	if ep.Status.DisabledSince != nil {
		// Parked, not dropped: the endpoint watch wakes the delivery when it is re-enabled.
		return nil, credentials{}, &waitError{Reason: webhooksv1alpha1.ReasonEndpointDisabled,
			Message: fmt.Sprintf("WebhookEndpoint %q is disabled (%s); the delivery is parked until the endpoint is re-enabled with the %s annotation or a change of its spec",
				ep.Name, ep.Status.DisabledReason, webhooksv1alpha1.EnableAnnotation)}
	}
	if ep.Spec.Paused {
		// The endpoint watch wakes the delivery when the endpoint is unpaused.
		return nil, credentials{}, &waitError{Reason: webhooksv1alpha1.ReasonEndpointPaused,
			Message: fmt.Sprintf("WebhookEndpoint %q is paused; the delivery waits until spec.paused is false", ep.Name)}
	}
	creds, err := r.secrets.resolve(ctx, ep)
	if cerr := (*credentialError)(nil); errors.As(err, &cerr) {
		return nil, credentials{}, &waitError{Reason: cerr.reason, Message: cerr.message + "; the delivery waits for it",
			RequeueAfter: r.Options.WaitRetryInterval}
	}
	if err != nil {
		return nil, credentials{}, err
	}
	return ep, creds, nil
}

// attemptCause is why an attempt is made now.
type attemptCause struct {
	// manual: a retry annotation with a new token asked for it.
	manual bool
	token  string
	// turn is when the endpoint's rate limit let it go (zero: no rate limit).
	turn time.Time
}

// attempt sends the event once, records the attempt and its outcome in d's status, writes it,
// and returns when to reconcile the delivery next (failed: with the queue's backoff, for a
// status write that failed). base is d as read, for the status patch. It runs in the attempt
// runner, with its own slot of the in-flight limit.
func (r *WebhookDeliveryReconciler) attempt(ctx context.Context, base, d *webhooksv1alpha1.WebhookDelivery, ep *webhooksv1alpha1.WebhookEndpoint,
	creds credentials, why attemptCause) (after time.Duration, failed bool) {
	manual, token := why.manual, why.token
	key := types.NamespacedName{Namespace: d.Namespace, Name: d.Name}
	log := ctrl.LoggerFrom(ctx).WithValues("webhookDelivery", key, "endpoint", ep.Name, "eventID", d.Spec.Event.ID)
	previous := d.Status.Phase
	trigger := webhooksv1alpha1.TriggerScheduled
	if manual {
		trigger = webhooksv1alpha1.TriggerManual
		d.Status.LastRetryToken = token
	}
	n := d.Status.Attempts + 1
	if restored := restoredAttempts(d); restored > 0 && d.Status.Attempts == 0 {
		// Re-created from its history record: its earlier attempts continue the numbering, and
		// it is as finished as it was when it left etcd.
		n, previous = restored+1, webhooksv1alpha1.PhaseFailed
	}

	var outcome attemptOutcome
	req, err := requestFor(d, ep, creds, n)
	if err != nil {
		// The CRD schema makes this unreachable through the API; fail terminally if it happens.
		outcome = attemptOutcome{Phase: webhooksv1alpha1.PhaseFailed, Reason: webhooksv1alpha1.ReasonInvalidEvent,
			Message: "the event cannot be serialised: " + err.Error()}
	} else {
		started := r.Clock.Now()
		observed := observeAttempt(d, manual, started, why.turn)
		res := r.Sender.Send(ctx, req)
		observed(res)
		recordAttempt(&d.Status, n, trigger, started, res)
		log.V(1).Info("attempt made", "attempt", n, "trigger", trigger, "result", res.Class,
			"statusCode", res.StatusCode, "durationMs", res.Duration.Milliseconds())
		r.recordHealth(ep, res, started)
		outcome = decideOutcome(attemptDecision{
			Number: n, Result: res, Manual: manual, PreviousPhase: previous,
			ManualAttempts: countManual(d.Status.History), Policy: policyFor(ep),
			Now: r.Clock.Now(), Jitter: r.Jitter(),
		})
	}
	applyOutcome(d, outcome, r.Clock.Now())
	observeFinished(d.Namespace, previous, outcome.Phase)
	if e := outcome.Event; e != nil {
		r.Recorder.Eventf(d, ep, e.Type, e.Reason, "Deliver", "%s", e.Message)
	}
	switch outcome.Phase {
	case webhooksv1alpha1.PhaseRetrying:
		log.V(1).Info("retry scheduled", "attempt", n, "nextAttemptTime", outcome.NextAttempt)
	case webhooksv1alpha1.PhaseFailed:
		log.Info("delivery failed", "attempt", n, "reason", outcome.Reason)
	}

	if err := r.attempts.write(ctx, func(ctx context.Context) error { return patchStatus(ctx, r.Client, base, d) }); err != nil {
		log.Error(err, "writing the attempt to status failed; it is written again before anything else is done with the delivery")
		r.expectations.holdUnwritten(key, d.UID, d.Status.DeepCopy())
		return 0, true
	}
	r.expectations.expect(key, d.UID, d.Status.Attempts)
	r.archive.note(d)
	if outcome.Phase == webhooksv1alpha1.PhaseRetrying {
		return max(outcome.NextAttempt.Sub(r.Clock.Now()), time.Millisecond), false
	}
	return 0, false
}

// restoredAttempts is the number of attempts of the history record a delivery was re-created
// from (its RestoredAttemptsAnnotation), 0 for any other delivery.
func restoredAttempts(d *webhooksv1alpha1.WebhookDelivery) int32 {
	n, err := strconv.ParseInt(d.Annotations[webhooksv1alpha1.RestoredAttemptsAnnotation], 10, 32)
	if err != nil || n < 0 {
		return 0
	}
	return int32(n)
}

// recordHealth adds an attempt's result to its endpoint's health, and records an Event on the
// endpoint when it starts or stops failing.
func (r *WebhookDeliveryReconciler) recordHealth(ep *webhooksv1alpha1.WebhookEndpoint, res dispatcher.Result, at time.Time) {
	switch r.health.record(ep, res.Succeeded(), res.StatusCode == http.StatusGone, at) {
	case transitionFailing:
		r.Recorder.Eventf(ep, nil, "Warning", webhooksv1alpha1.EventReasonEndpointFailing, "Deliver",
			"an attempt to this endpoint failed (%s); deliveries are retried per the retry policy", describe(res))
	case transitionRecovered:
		r.Recorder.Eventf(ep, nil, "Normal", webhooksv1alpha1.EventReasonEndpointRecovered, "Deliver", "the endpoint accepts deliveries again")
	}
}

// deliveriesOf maps an endpoint to its unfinished deliveries, so that unpausing or fixing an
// endpoint resumes them at once.
func (r *WebhookDeliveryReconciler) deliveriesOf(ctx context.Context, ep *webhooksv1alpha1.WebhookEndpoint) []reconcile.Request {
	var list webhooksv1alpha1.WebhookDeliveryList
	if err := r.List(ctx, &list, client.InNamespace(ep.Namespace), client.MatchingFields{endpointRefIndex: ep.Name}); err != nil {
		ctrl.LoggerFrom(ctx).Error(err, "listing the deliveries of an endpoint", "endpoint", ep.Name)
		return nil
	}
	var reqs []reconcile.Request
	for i := range list.Items {
		if !list.Items[i].Status.Phase.Finished() {
			reqs = append(reqs, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&list.Items[i])})
		}
	}
	return reqs
}

// leftCache drops the delete events of the cache, which a delivery also gets when it finishes
// (it leaves the field-selected cache): nothing is left to do then, but to forget what was
// expected of it and its reservation of a rate-limit token.
func (r *WebhookDeliveryReconciler) leftCache() predicate.Funcs {
	return predicate.Funcs{DeleteFunc: func(e event.DeleteEvent) bool {
		r.expectations.forget(client.ObjectKeyFromObject(e.Object))
		r.rates.forget(client.ObjectKeyFromObject(e.Object))
		return false
	}}
}

// enabledChanged passes endpoint updates that disable or re-enable the endpoint (a status
// change), so that parked deliveries resume at once.
var enabledChanged = predicate.Funcs{
	UpdateFunc: func(e event.UpdateEvent) bool {
		o, ok1 := e.ObjectOld.(*webhooksv1alpha1.WebhookEndpoint)
		n, ok2 := e.ObjectNew.(*webhooksv1alpha1.WebhookEndpoint)
		return ok1 && ok2 && (o.Status.DisabledSince == nil) != (n.Status.DisabledSince == nil)
	},
	CreateFunc:  func(event.CreateEvent) bool { return false },
	DeleteFunc:  func(event.DeleteEvent) bool { return false },
	GenericFunc: func(event.GenericEvent) bool { return false },
}

// SetupWithManager registers the controller. Status writes of the controller itself do not
// trigger a reconcile: only creation, spec changes (none: the spec is immutable) and annotation
// changes (the retry annotation) do, besides the schedule's RequeueAfter.
func (r *WebhookDeliveryReconciler) SetupWithManager(ctx context.Context, mgr ctrl.Manager) error {
	r.apiReader = mgr.GetAPIReader()
	if err := mgr.Add(r.attempts); err != nil {
		return err
	}
	if err := mgr.Add(pendingReporter{reader: mgr.GetCache()}); err != nil {
		return err
	}
	if err := mgr.Add(throttledReporter{rates: r.rates, now: r.Clock.Now}); err != nil {
		return err
	}
	if err := mgr.GetFieldIndexer().IndexField(ctx, &webhooksv1alpha1.WebhookDelivery{}, endpointRefIndex,
		func(o client.Object) []string {
			return []string{o.(*webhooksv1alpha1.WebhookDelivery).Spec.EndpointRef.Name}
		}); err != nil {
		return err
	}
	return ctrl.NewControllerManagedBy(mgr).
		For(&webhooksv1alpha1.WebhookDelivery{}, builder.WithPredicates(
			predicate.Or(predicate.GenerationChangedPredicate{}, predicate.AnnotationChangedPredicate{}),
			r.leftCache())).
		Watches(&webhooksv1alpha1.WebhookEndpoint{},
			handler.EnqueueRequestsFromMapFunc(func(ctx context.Context, o client.Object) []reconcile.Request {
				return r.deliveriesOf(ctx, o.(*webhooksv1alpha1.WebhookEndpoint))
			}),
			builder.WithPredicates(predicate.Or[client.Object](predicate.GenerationChangedPredicate{}, enabledChanged))).
		WatchesRawSource(r.attempts.source()).
		WithOptions(controller.Options{MaxConcurrentReconciles: r.Options.Workers, RateLimiter: failureRateLimiter()}).
		Complete(r)
}
