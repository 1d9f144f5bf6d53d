package v1alpha1

// The condition vocabulary of both kinds. Types and reasons are API values: printer columns,
// status.disabledReason, alert rules, kstatus and `kubectl wait --for=condition=...` read them,
// so they live here, next to the types, and not in the controllers that set them.

// Condition types, understood by kstatus, Flux and Argo CD health checks.
const (
	// ConditionReady is the summary: an endpoint that can be delivered to; a delivery that succeeded.
	ConditionReady = "Ready"
	// ConditionReconciling is True while a delivery still has attempts to make.
	ConditionReconciling = "Reconciling"
	// ConditionStalled is True once the controller has given up on a delivery.
	ConditionStalled = "Stalled"
	// ConditionThrottled is True while deliveries of an endpoint wait for their turn under its
	// spec.rateLimit. It is not a failure: Ready stays as it is.
	ConditionThrottled = "Throttled"
)

// Reasons of a WebhookEndpoint's Ready condition.
const (
	// ReasonValid: the URL, Secrets and CA bundle are usable; deliveries are sent.
	ReasonValid = "Valid"
	// ReasonPaused: spec.paused is true.
	ReasonPaused = "Paused"
	// ReasonInvalidURL: spec.url cannot be used (the message says why).
	ReasonInvalidURL = "InvalidURL"
	// ReasonSecretNotFound: a referenced Secret does not exist in the endpoint's namespace.
	ReasonSecretNotFound = "SecretNotFound"
	// ReasonSecretKeyNotFound: a referenced Secret lacks the referenced key.
	ReasonSecretKeyNotFound = "SecretKeyNotFound"
	// ReasonInvalidSecret: a Secret value the signature scheme cannot use, such as a
	// StandardWebhooks secret that is not whsec_<base64>.
	ReasonInvalidSecret = "InvalidSecret"
	// ReasonCABundleNotFound: the Secret or ConfigMap of spec.caBundleRef, or its key, is missing.
	ReasonCABundleNotFound = "CABundleNotFound"
	// ReasonInvalidFilter: spec.filter does not compile, or its cost could exceed the limit (the
	// message holds the compiler's). No event is delivered to the endpoint until it is fixed.
	ReasonInvalidFilter = "InvalidFilter"
	// ReasonAutoDisabled: the operator disabled the endpoint (DisabledReasonAuto).
	ReasonAutoDisabled = string(DisabledReasonAuto)
	// ReasonEndpointGone: the receiver answered 410 Gone (DisabledReasonGone). On a delivery,
	// the reason it failed at once, without retries.
	ReasonEndpointGone = string(DisabledReasonGone)
)

// Reasons of a WebhookEndpoint's Throttled condition.
const (
	// ReasonRateLimited: deliveries wait for their turn under spec.rateLimit.
	ReasonRateLimited = "RateLimited"
	// ReasonWithinRateLimit: no delivery waits for the rate limit.
	ReasonWithinRateLimit = "WithinRateLimit"
)

// DisabledReason says why the operator disabled an endpoint (status.disabledReason).
// +kubebuilder:validation:Enum=AutoDisabled;EndpointGone
type DisabledReason string

const (
	// DisabledReasonAuto: every attempt failed for the operator's --auto-disable-after period.
	DisabledReasonAuto DisabledReason = "AutoDisabled"
	// DisabledReasonGone: the receiver answered 410 Gone.
	DisabledReasonGone DisabledReason = "EndpointGone"
)

// Reasons of a WebhookDelivery's conditions. A delivery that waits for its endpoint's
// credentials carries the endpoint's reason (ReasonSecretNotFound, ...).
const (
	// ReasonDelivered: the receiver answered 2xx.
	ReasonDelivered = "Delivered"
	// ReasonAttemptFailed: an attempt failed and another is scheduled at status.nextAttemptTime.
	ReasonAttemptFailed = "AttemptFailed"
	// ReasonRetriesExhausted: every attempt of the retry policy failed; the delivery is Failed.
	ReasonRetriesExhausted = "RetriesExhausted"
	// ReasonEndpointNotFound: the WebhookEndpoint of spec.endpointRef does not exist.
	ReasonEndpointNotFound = "EndpointNotFound"
	// ReasonEndpointPaused: the endpoint is paused; the delivery waits.
	ReasonEndpointPaused = "EndpointPaused"
	// ReasonEndpointDisabled: the operator disabled the endpoint; the delivery is parked.
	ReasonEndpointDisabled = "EndpointDisabled"
	// ReasonInvalidEvent: the event cannot be serialised (the CRD schema makes this unreachable
	// through the API).
	ReasonInvalidEvent = "InvalidEvent"
)

// Reasons of Kubernetes Events that are not condition reasons. Events on transitions also use
// ReasonAttemptFailed (first failure), ReasonRetriesExhausted, ReasonDelivered (after earlier
// failures) and the endpoint's Ready reasons.
const (
	// EventReasonEndpointFailing: an attempt to a healthy endpoint failed.
	EventReasonEndpointFailing = "EndpointFailing"
	// EventReasonEndpointRecovered: an attempt to a failing endpoint succeeded.
	EventReasonEndpointRecovered = "EndpointRecovered"
	// EventReasonReEnabled: the enable annotation or a spec change re-enabled a disabled endpoint.
	EventReasonReEnabled = "ReEnabled"
	// EventReasonTestDeliveryCreated: the test annotation created a webhook.test delivery.
	EventReasonTestDeliveryCreated = "TestDeliveryCreated"
	// EventReasonRetryingFailed: the retry-failed annotation retried the endpoint's Failed deliveries.
	EventReasonRetryingFailed = "RetryingFailed"
)

// AttemptResult classifies the outcome of one attempt (status.history[].result).
// +kubebuilder:validation:Enum=Success;HTTPError;Timeout;NetworkError;Blocked;InvalidRequest
type AttemptResult string

const (
	// AttemptSuccess: the receiver answered 2xx.
	AttemptSuccess AttemptResult = "Success"
	// AttemptHTTPError: the receiver answered, but not 2xx (3xx included: redirects are not followed).
	AttemptHTTPError AttemptResult = "HTTPError"
	// AttemptTimeout: no complete answer within spec.timeoutSeconds.
	AttemptTimeout AttemptResult = "Timeout"
	// AttemptNetworkError: DNS, connect, TLS or transport failure.
	AttemptNetworkError AttemptResult = "NetworkError"
	// AttemptBlocked: the outbound address policy refused the address the URL resolves to.
	AttemptBlocked AttemptResult = "Blocked"
	// AttemptInvalidRequest: the request could not be built (an unusable URL or CA bundle).
	AttemptInvalidRequest AttemptResult = "InvalidRequest"
)
