package controllers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	kerrors "k8s.io/apimachinery/pkg/util/errors"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/source"

	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
	"github.com/docrouter/webhook-operator/internal/filter"
)

// WebhookEndpointReconciler reports whether an endpoint can be delivered to, turns the test
// annotation into a webhook.test delivery, and publishes the endpoint's delivery health.
type WebhookEndpointReconciler struct {
	client.Client
	Recorder events.EventRecorder
	Clock    clock.PassiveClock
	Options  Options

	secrets *secretReader
	health  *endpointHealth
	// rates are the delivery controller's token buckets, read for the Throttled status.
	rates *rateLimiter
	// filters compiles spec.filter once per generation, to report one that does not compile.
	filters *filter.Cache
	// apiReader lists Failed deliveries, which the cache does not hold.
	apiReader client.Reader
	// workingSet counts the endpoint's events in the history store's backlog.
	workingSet *WorkingSet

	mu               sync.Mutex
	lastHealthWrite  map[types.NamespacedName]time.Time
	lastBacklogWrite map[types.NamespacedName]time.Time
	// throttleWritten is the throttling last written to each endpoint's status, until the cache
	// shows it (see copyHealth).
	throttleWritten map[types.NamespacedName]writtenThrottle
	// retriedTokens remembers the retry-failed token handled per endpoint until the cache shows
	// it in status, so that a reconcile racing the status write does not handle it twice.
	retriedTokens map[types.UID]string
}

// +kubebuilder:rbac:groups=webhooks.docrouter.ai,resources=webhookendpoints,verbs=get;list;watch
// +kubebuilder:rbac:groups=webhooks.docrouter.ai,resources=webhookendpoints/status,verbs=get;patch
// +kubebuilder:rbac:groups=webhooks.docrouter.ai,resources=webhookdeliveries,verbs=create;list;watch;patch
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// Reconcile brings an endpoint's status up to date.
func (r *WebhookEndpointReconciler) Reconcile(ctx context.Context, req ctrl.Request) (result ctrl.Result, retErr error) {
	ep := &webhooksv1alpha1.WebhookEndpoint{}
	if err := r.Get(ctx, req.NamespacedName, ep); err != nil {
		if apierrors.IsNotFound(err) {
			r.health.forget(req.NamespacedName)
			r.rates.forgetEndpoint(req.NamespacedName)
			r.mu.Lock()
			delete(r.throttleWritten, req.NamespacedName)
			r.mu.Unlock()
		}
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	base := ep.DeepCopy()
	var wasReady *metav1.Condition // a copy: SetStatusCondition changes the slice in place
	if c := meta.FindStatusCondition(ep.Status.Conditions, webhooksv1alpha1.ConditionReady); c != nil {
		wasReady = c.DeepCopy()
	}

	defer func() {
		ep.Status.ObservedGeneration = ep.Generation
		if err := client.IgnoreNotFound(patchStatus(ctx, r.Client, base, ep)); err != nil {
			// Both errors are reported: the reconcile's own, and the write that failed.
			retErr = kerrors.NewAggregate([]error{retErr, err})
			return
		}
		r.announce(ep, wasReady)
	}()

	if err := r.sendTest(ctx, ep); err != nil {
		return ctrl.Result{}, err
	}
	if err := r.retryFailed(ctx, ep); err != nil {
		return ctrl.Result{}, err
	}
	r.enable(ep)
	requeue, gone := r.copyHealth(ep)
	requeue = minPositive(requeue, r.copyBacklog(ep))
	requeue = minPositive(requeue, r.autoDisable(ep, gone))
	setThrottled(ep)

	ready, credentialProblem, err := r.readiness(ctx, ep)
	if err != nil {
		return ctrl.Result{}, err
	}
	ready.ObservedGeneration = ep.Generation
	meta.SetStatusCondition(&ep.Status.Conditions, ready)
	if credentialProblem {
		// Secrets and ConfigMaps are read, not watched (the operator may only `get` them): look
		// again soon, so that fixing one shows here without another change to the endpoint.
		requeue = minPositive(requeue, r.Options.WaitRetryInterval)
	}
	return ctrl.Result{RequeueAfter: requeue}, nil
}

// readiness checks what the API server's validation cannot: that the URL parses and that the
// referenced Secrets (and CA bundle) exist and hold usable values. credentialProblem is true
// when one of those is the reason; err is an API failure.
func (r *WebhookEndpointReconciler) readiness(ctx context.Context, ep *webhooksv1alpha1.WebhookEndpoint) (ready metav1.Condition, credentialProblem bool, err error) {
	ready = metav1.Condition{Type: webhooksv1alpha1.ConditionReady, Status: metav1.ConditionFalse}
	u, perr := url.Parse(ep.Spec.URL)
	switch {
	case perr != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "":
		ready.Reason, ready.Message = webhooksv1alpha1.ReasonInvalidURL, "spec.url is not an absolute http(s) URL"
		return ready, false, nil
	case u.Scheme == "http" && !ep.Spec.AllowInsecureHTTP:
		ready.Reason, ready.Message = webhooksv1alpha1.ReasonInvalidURL, "spec.url uses http:// without spec.allowInsecureHTTP"
		return ready, false, nil
	}
	if _, err := r.filters.For(ep); err != nil {
		// The intake creates no delivery for this endpoint while it lasts (internal/intake).
		ready.Reason = webhooksv1alpha1.ReasonInvalidFilter
		ready.Message = "no event is delivered to this endpoint until spec.filter is fixed or removed. " + err.Error()
		return ready, false, nil
	}
	if _, err := r.secrets.resolve(ctx, ep); err != nil {
		var cerr *credentialError
		if !errors.As(err, &cerr) {
			return ready, false, err
		}
		ready.Reason, ready.Message = cerr.reason, cerr.message
		return ready, true, nil
	}
	if since := ep.Status.DisabledSince; since != nil {
		why := fmt.Sprintf("every attempt failed for %s", r.Options.AutoDisableAfter)
		ready.Reason = webhooksv1alpha1.ReasonAutoDisabled
		if ep.Status.DisabledReason == webhooksv1alpha1.DisabledReasonGone {
			why, ready.Reason = "the receiver answered 410 Gone", webhooksv1alpha1.ReasonEndpointGone
		}
		ready.Message = fmt.Sprintf("disabled at %s: %s; its deliveries are parked. Fix the receiver or spec.url "+
			"(a spec change re-enables it), or: kubectl annotate webhookendpoint %s %s=$(date +%%s) --overwrite",
			since.UTC().Format(time.RFC3339), why, ep.Name, webhooksv1alpha1.EnableAnnotation)
		return ready, false, nil
	}
	if ep.Spec.Paused {
		ready.Reason, ready.Message = webhooksv1alpha1.ReasonPaused, "spec.paused is true: deliveries wait until it is false"
		return ready, false, nil
	}
	ready.Status, ready.Reason, ready.Message = metav1.ConditionTrue, webhooksv1alpha1.ReasonValid, "the URL and Secrets are valid; deliveries are sent"
	if ep.Spec.Filter != "" {
		ready.Message = "the URL, Secrets and filter are valid; deliveries are sent for the events the filter selects"
	}
	return ready, false, nil
}

// autoDisable disables an endpoint whose attempts have all failed for Options.AutoDisableAfter,
// and returns when to look again while it is failing but not yet past that period.
// An endpoint whose receiver answered 410 Gone is disabled at once.
func (r *WebhookEndpointReconciler) autoDisable(ep *webhooksv1alpha1.WebhookEndpoint, gone bool) time.Duration {
	if ep.Status.DisabledSince != nil {
		return 0
	}
	now := r.Clock.Now()
	// The Ready condition says so, and its change is announced with a Warning Event.
	if gone {
		ep.Status.DisabledSince, ep.Status.DisabledReason = &metav1.Time{Time: now}, webhooksv1alpha1.DisabledReasonGone
		return 0
	}
	after, since := r.Options.AutoDisableAfter, ep.Status.FailingSince
	if after <= 0 || since == nil {
		return 0
	}
	if wait := since.Add(after).Sub(now); wait > 0 {
		return wait
	}
	ep.Status.DisabledSince, ep.Status.DisabledReason = &metav1.Time{Time: now}, webhooksv1alpha1.DisabledReasonAuto
	return 0
}

// enable re-enables an auto-disabled endpoint once per value of the enable annotation. The
// endpoint gets the whole auto-disable period again before it can be disabled anew.
func (r *WebhookEndpointReconciler) enable(ep *webhooksv1alpha1.WebhookEndpoint) {
	token := ep.Annotations[webhooksv1alpha1.EnableAnnotation]
	annotated := token != "" && token != ep.Status.LastEnableToken
	if annotated {
		ep.Status.LastEnableToken = token
	}
	// A spec change since the endpoint was disabled (a new URL, say) re-enables it too.
	specChanged := ep.Status.ObservedGeneration != 0 && ep.Status.ObservedGeneration != ep.Generation
	if ep.Status.DisabledSince == nil || (!annotated && !specChanged) {
		return
	}
	now := r.Clock.Now()
	ep.Status.DisabledSince, ep.Status.DisabledReason = nil, ""
	if ep.Status.FailingSince != nil {
		ep.Status.FailingSince = &metav1.Time{Time: now}
	}
	r.health.restart(types.NamespacedName{Namespace: ep.Namespace, Name: ep.Name}, now)
	r.Recorder.Eventf(ep, nil, "Normal", webhooksv1alpha1.EventReasonReEnabled, "Enable", "re-enabled; parked deliveries resume")
}

// sendTest creates one webhook.test delivery per value of the test annotation. The delivery's
// name derives from the value, so a repeated reconcile cannot create a second one.
func (r *WebhookEndpointReconciler) sendTest(ctx context.Context, ep *webhooksv1alpha1.WebhookEndpoint) error {
	token := ep.Annotations[webhooksv1alpha1.TestAnnotation]
	if token == "" || token == ep.Status.LastTestToken {
		return nil
	}
	event := webhooksv1alpha1.Event{
		ID:             webhooksv1alpha1.TestEventID(ep.UID, token),
		Type:           webhooksv1alpha1.EventWebhookTest,
		Timestamp:      r.Clock.Now().Unix(),
		OrganizationID: ep.Namespace,
		Document:       webhooksv1alpha1.Document{DocumentID: "test", DocumentName: "webhook-test.pdf"},
	}
	d := webhooksv1alpha1.NewDelivery(ep.Namespace, ep.Name, event)
	if err := r.Create(ctx, d); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	ep.Status.LastTestToken = token
	r.Recorder.Eventf(ep, d, "Normal", webhooksv1alpha1.EventReasonTestDeliveryCreated, "Test", "created test delivery %s", d.Name)
	return nil
}

// retryFailed gives every Failed delivery of the endpoint one new attempt per value of the
// retry-failed annotation, by setting the delivery's own retry annotation to the same value
// (a merge patch of metadata only, so it cannot collide with a status write). A delivery that
// already carries the value is skipped, so a reconcile repeated after a failure patches only
// the rest.
func (r *WebhookEndpointReconciler) retryFailed(ctx context.Context, ep *webhooksv1alpha1.WebhookEndpoint) error {
	token := ep.Annotations[webhooksv1alpha1.RetryFailedAnnotation]
	if token == "" || token == ep.Status.LastRetryFailedToken {
		return nil
	}
	r.mu.Lock()
	handled := r.retriedTokens[ep.UID] == token
	r.mu.Unlock()
	if handled {
		ep.Status.LastRetryFailedToken = token
		return nil
	}
	// Failed deliveries are not in the cache (cache.go): ask the API server, by field.
	var list webhooksv1alpha1.WebhookDeliveryList
	if err := r.apiReader.List(ctx, &list, client.InNamespace(ep.Namespace),
		client.MatchingFieldsSelector{Selector: fields.AndSelectors(
			fields.OneTermEqualSelector(webhooksv1alpha1.EndpointField, ep.Name),
			fields.OneTermEqualSelector(webhooksv1alpha1.PhaseField, string(webhooksv1alpha1.PhaseFailed)))}); err != nil {
		return err
	}
	retried := 0
	for i := range list.Items {
		d := &list.Items[i]
		if d.Status.Phase != webhooksv1alpha1.PhaseFailed || d.Annotations[webhooksv1alpha1.RetryAnnotation] == token {
			continue
		}
		patch := &webhooksv1alpha1.WebhookDelivery{}
		patch.Namespace, patch.Name = d.Namespace, d.Name
		data, err := json.Marshal(map[string]any{"metadata": map[string]any{
			"annotations": map[string]string{webhooksv1alpha1.RetryAnnotation: token}}})
		if err != nil {
			return err
		}
		if err := r.Patch(ctx, patch, client.RawPatch(types.MergePatchType, data)); client.IgnoreNotFound(err) != nil {
			return err
		}
		retried++
	}
	observeBulkRetried(ep.Namespace, retried)
	ep.Status.LastRetryFailedToken = token
	r.mu.Lock()
	if r.retriedTokens == nil {
		r.retriedTokens = map[types.UID]string{}
	}
	r.retriedTokens[ep.UID] = token
	r.mu.Unlock()
	ctrl.LoggerFrom(ctx).Info("retrying the endpoint's failed deliveries", "count", retried)
	r.Recorder.Eventf(ep, nil, "Normal", webhooksv1alpha1.EventReasonRetryingFailed, "RetryFailed",
		"retrying %d failed deliveries (%s=%s)", retried, webhooksv1alpha1.RetryFailedAnnotation, token)
	return nil
}

// copyHealth copies the in-memory delivery health, and the throttling under spec.rateLimit,
// into status, at most once per HealthUpdateInterval except when the endpoint starts or stops
// failing or being throttled. It returns when to look again: when a write was held back, or
// while deliveries wait for the rate limit (to keep the count current and to write its end).
func (r *WebhookEndpointReconciler) copyHealth(ep *webhooksv1alpha1.WebhookEndpoint) (requeue time.Duration, gone bool) {
	key := types.NamespacedName{Namespace: ep.Namespace, Name: ep.Name}
	now := r.Clock.Now()
	s := &ep.Status
	if r.cacheBehindThrottle(key, ep, now) {
		// Deciding from a status older than our last write could leave it wrong for good: a
		// return to 0 waiting would look like no change, and the merge patch from the cached
		// object would write nothing. The cache catches up within moments.
		return throttleCacheWait, false
	}
	h, ok := r.health.take(key)
	t := r.throttleOf(ep, now)
	healthSame := !ok || (h.ConsecutiveFailures == s.ConsecutiveFailures && h.LastSuccessTime.Equal(s.LastSuccessTime) &&
		h.LastFailureTime.Equal(s.LastFailureTime) && h.FailingSince.Equal(s.FailingSince))
	if healthSame && t.same(s) {
		return t.lookAgain(now, r.Options.HealthUpdateInterval), ok && h.Gone
	}
	transition := (ok && (h.ConsecutiveFailures == 0) != (s.ConsecutiveFailures == 0)) ||
		(t.waiting > 0) != (s.ThrottledDeliveries > 0)
	r.mu.Lock()
	defer r.mu.Unlock()
	if last, found := r.lastHealthWrite[key]; found && !transition {
		if wait := last.Add(r.Options.HealthUpdateInterval).Sub(now); wait > 0 && (!ok || !h.Gone) {
			r.health.hold(key)
			// The end of the current throttling may come before the held write: look then too
			// (this reconcile may have taken the place of a requeue that was due for it).
			return minPositive(wait, t.lookAgain(now, r.Options.HealthUpdateInterval)), false
		}
	}
	r.lastHealthWrite[key] = now
	if ok {
		s.ConsecutiveFailures, s.LastSuccessTime, s.LastFailureTime = h.ConsecutiveFailures, h.LastSuccessTime, h.LastFailureTime
		s.FailingSince = h.FailingSince
	}
	s.ThrottledDeliveries, s.ThrottledUntil = t.waiting, t.until
	if r.throttleWritten == nil {
		r.throttleWritten = map[types.NamespacedName]writtenThrottle{}
	}
	r.throttleWritten[key] = writtenThrottle{uid: ep.UID, at: now, t: t}
	return t.lookAgain(now, r.Options.HealthUpdateInterval), ok && h.Gone
}

// writtenThrottle is the throttling written to an endpoint's status, and when.
type writtenThrottle struct {
	uid types.UID
	at  time.Time
	t   throttleStatus
}

// throttleCacheWait is how soon to look again when the cache has not yet seen the last write;
// throttleCacheGiveUp is how long to wait for it at most (the write may have failed).
const (
	throttleCacheWait   = 250 * time.Millisecond
	throttleCacheGiveUp = 5 * time.Second
)

// cacheBehindThrottle reports whether the cached endpoint does not yet show the throttling
// last written to it, less than throttleCacheGiveUp ago.
func (r *WebhookEndpointReconciler) cacheBehindThrottle(key types.NamespacedName, ep *webhooksv1alpha1.WebhookEndpoint, now time.Time) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	w, ok := r.throttleWritten[key]
	switch {
	case !ok:
		return false
	case w.uid != ep.UID || w.t.same(&ep.Status) || now.Sub(w.at) > throttleCacheGiveUp:
		delete(r.throttleWritten, key)
		return false
	}
	return true
}

// throttleOf is what status shows of the endpoint's throttling at now.
func (r *WebhookEndpointReconciler) throttleOf(ep *webhooksv1alpha1.WebhookEndpoint, now time.Time) throttleStatus {
	if ep.Spec.RateLimit == nil {
		return throttleStatus{}
	}
	n, until := r.rates.throttled(types.NamespacedName{Namespace: ep.Namespace, Name: ep.Name}, now)
	if n == 0 {
		return throttleStatus{}
	}
	// Status times have whole seconds: rounded up, the time stays "not before".
	return throttleStatus{waiting: n, until: &metav1.Time{Time: until.Add(time.Second - 1).Truncate(time.Second)}}
}

// copyBacklog copies the number of the endpoint's events in the store's backlog into status:
// at once when a backlog starts or ends, else at most once per HealthUpdateInterval. It returns
// when to look again if a write was held back.
func (r *WebhookEndpointReconciler) copyBacklog(ep *webhooksv1alpha1.WebhookEndpoint) time.Duration {
	if r.workingSet == nil {
		return 0
	}
	key := types.NamespacedName{Namespace: ep.Namespace, Name: ep.Name}
	n := r.workingSet.Backlog(key)
	if n == ep.Status.Backlog {
		return 0
	}
	now := r.Clock.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if last, ok := r.lastBacklogWrite[key]; ok && (n == 0) == (ep.Status.Backlog == 0) {
		if wait := last.Add(r.Options.HealthUpdateInterval).Sub(now); wait > 0 {
			return wait
		}
	}
	if r.lastBacklogWrite == nil {
		r.lastBacklogWrite = map[types.NamespacedName]time.Time{}
	}
	r.lastBacklogWrite[key] = now
	ep.Status.Backlog = n
	return 0
}

// announce records an Event when the endpoint's readiness changed.
func (r *WebhookEndpointReconciler) announce(ep *webhooksv1alpha1.WebhookEndpoint, was *metav1.Condition) {
	now := meta.FindStatusCondition(ep.Status.Conditions, webhooksv1alpha1.ConditionReady)
	if now == nil || (was != nil && was.Status == now.Status && was.Reason == now.Reason) {
		return
	}
	switch {
	case now.Status == metav1.ConditionTrue && was != nil:
		r.Recorder.Eventf(ep, nil, "Normal", now.Reason, "Validate", "%s", now.Message)
	case now.Status == metav1.ConditionFalse && now.Reason != webhooksv1alpha1.ReasonPaused:
		r.Recorder.Eventf(ep, nil, "Warning", now.Reason, "Validate", "%s", now.Message)
	}
}

// minPositive is the earlier of two requeue delays, where 0 means none.
func minPositive(a, b time.Duration) time.Duration {
	switch {
	case a <= 0:
		return b
	case b <= 0:
		return a
	}
	return min(a, b)
}

// SetupWithManager registers the controller. The controller's own status writes do not trigger
// it; spec and annotation changes do, and so does the delivery health it is told about.
func (r *WebhookEndpointReconciler) SetupWithManager(mgr ctrl.Manager) error {
	return ctrl.NewControllerManagedBy(mgr).
		For(&webhooksv1alpha1.WebhookEndpoint{}, builder.WithPredicates(
			predicate.Or(predicate.GenerationChangedPredicate{}, predicate.AnnotationChangedPredicate{}))).
		WatchesRawSource(source.Channel(r.health.wake, &handler.TypedEnqueueRequestForObject[*webhooksv1alpha1.WebhookEndpoint]{})).
		WithOptions(controller.Options{RateLimiter: failureRateLimiter()}).
		Complete(r)
}
