package v1alpha1

import (
	"fmt"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Defaults, in the one Go place that applies them (the CRD does not default these fields, so a
// change of default reaches existing objects and unit tests see the same values as the cluster).
const (
	DefaultTimeoutSeconds      int32 = 10
	DefaultMaxRetries          int32 = 10
	DefaultInitialDelaySeconds int32 = 30
	DefaultBackoffFactor       int32 = 2
	DefaultMaxDelaySeconds     int32 = 4 * 60 * 60
	DefaultJitterPercent       int32 = 10
	// DefaultRateLimitPeriodSeconds is spec.rateLimit.periodSeconds when unset.
	DefaultRateLimitPeriodSeconds int32 = 1
)

// MaxFilterLength bounds spec.filter, in characters (the CRD's MaxLength says the same).
const MaxFilterLength = 4096

// WebhookEndpointSpec is a receiver of webhooks and the events it subscribes to.
// +kubebuilder:validation:XValidation:rule="!self.url.startsWith('http://') || (has(self.allowInsecureHTTP) && self.allowInsecureHTTP)",message="spec.url uses plain http://: use an https:// URL, or set spec.allowInsecureHTTP: true to accept an unencrypted endpoint"
// +kubebuilder:validation:XValidation:rule="has(self.previousSigningSecretRef) == has(self.previousSigningSecretExpiresAt)",message="spec.previousSigningSecretRef and spec.previousSigningSecretExpiresAt go together: set both (the old key signs until that time) or neither"
// +kubebuilder:validation:XValidation:rule="!has(self.previousSigningSecretRef) || has(self.signingSecretRef)",message="spec.previousSigningSecretRef needs spec.signingSecretRef: the new key that replaces the previous one"
// +kubebuilder:validation:XValidation:rule="!has(self.signatureScheme) || self.signatureScheme != 'StandardWebhooks' || has(self.signingSecretRef)",message="spec.signatureScheme StandardWebhooks needs spec.signingSecretRef: a Secret holding a whsec_<base64> secret"
type WebhookEndpointSpec struct {
	// url is the absolute https:// URL that events are POSTed to. Plain http:// is accepted only
	// with allowInsecureHTTP. It must not embed credentials; use authHeader for those.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=2048
	// +kubebuilder:validation:XValidation:rule="isURL(self) && url(self).getScheme() in ['http', 'https'] && url(self).getHostname() != ''",message="spec.url must be an absolute http(s) URL with a host, such as https://hooks.example.com/docrouter"
	// +kubebuilder:validation:XValidation:rule="!self.matches('^[a-zA-Z][a-zA-Z0-9+.-]*://[^/?#]*@')",message="spec.url must not contain credentials (user:password@host); put them in a Secret and use spec.authHeader"
	URL string `json:"url"`

	// eventTypes are the event types this endpoint receives: document.uploaded, llm.completed,
	// llm.error, document.error, webhook.test, or a wildcard: "*" (all), "document.*", "llm.*".
	// webhook.test deliveries made with the webhooks.docrouter.ai/test annotation are sent
	// whatever this list holds.
	// +required
	// +listType=set
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=8
	// +kubebuilder:validation:items:MaxLength=32
	// +kubebuilder:validation:XValidation:rule="self.all(t, t in ['document.uploaded', 'llm.completed', 'llm.error', 'document.error', 'webhook.test', '*', 'document.*', 'llm.*'])",message="spec.eventTypes: each entry must be one of document.uploaded, llm.completed, llm.error, document.error, webhook.test, or a wildcard: *, document.*, llm.*"
	EventTypes []string `json:"eventTypes"`

	// signingSecretRef selects the HMAC-SHA256 key in a Secret of this namespace. When set, every
	// request is signed with the signatureScheme: for DocRouter it carries
	// X-DocRouter-Signature: sha256=<hex HMAC of "<timestamp>.<body>">, keyed by the Secret's raw
	// bytes; for StandardWebhooks the Secret holds a whsec_<base64> secret.
	// +optional
	SigningSecretRef *SecretKeyRef `json:"signingSecretRef,omitempty"`

	// signatureScheme is how requests are signed: DocRouter (the product's
	// X-DocRouter-Signature header) or StandardWebhooks (the webhook-id, webhook-timestamp and
	// webhook-signature headers of https://www.standardwebhooks.com, verifiable with its official
	// libraries). Defaults to DocRouter. StandardWebhooks requires signingSecretRef.
	// +optional
	// +kubebuilder:validation:Enum=DocRouter;StandardWebhooks
	SignatureScheme SignatureScheme `json:"signatureScheme,omitempty"`

	// previousSigningSecretRef selects the key that signingSecretRef replaces, for a rotation
	// without rejected deliveries: until previousSigningSecretExpiresAt, every request carries
	// a signature with each key, so receivers that know either key accept it. After that time it
	// is neither read nor used, and may be deleted. Requires signingSecretRef and
	// previousSigningSecretExpiresAt.
	// +optional
	PreviousSigningSecretRef *SecretKeyRef `json:"previousSigningSecretRef,omitempty"`

	// previousSigningSecretExpiresAt is when previousSigningSecretRef stops signing (RFC 3339,
	// such as 2026-12-01T00:00:00Z). Set together with previousSigningSecretRef.
	// +optional
	PreviousSigningSecretExpiresAt *metav1.Time `json:"previousSigningSecretExpiresAt,omitempty"`

	// authHeader is a static header sent with every request, for receivers such as n8n or Zapier
	// that authenticate by header rather than by signature. Its value is read from a Secret.
	// +optional
	AuthHeader *AuthHeader `json:"authHeader,omitempty"`

	// caBundleRef selects PEM-encoded CA certificates in a Secret or ConfigMap of this
	// namespace. When set, the receiver's certificate must chain to these certificates instead
	// of the operator's system roots: use it for a receiver with a private CA. TLS 1.2 is the
	// minimum either way.
	// +optional
	CABundleRef *CABundleRef `json:"caBundleRef,omitempty"`

	// allowInsecureHTTP accepts a plain http:// url. Defaults to false: the product sends over HTTPS.
	// +optional
	AllowInsecureHTTP bool `json:"allowInsecureHTTP,omitempty"`

	// timeoutSeconds bounds each attempt, from connecting to reading the response. Defaults to 10.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=60
	TimeoutSeconds *int32 `json:"timeoutSeconds,omitempty"`

	// retryPolicy says how failed attempts are retried. Defaults to 10 retries with exponential
	// backoff from 30s, doubling, capped at 4h, with up to 10% jitter (about 8 hours in all).
	// +optional
	RetryPolicy *RetryPolicy `json:"retryPolicy,omitempty"`

	// paused holds this endpoint's deliveries: none is attempted until paused is false again.
	// Nothing is dropped while paused; new deliveries are still created and wait.
	// +optional
	Paused bool `json:"paused,omitempty"`

	// maxInFlight bounds the attempts in flight to this endpoint at once: a receiver that does
	// work before it answers (an n8n workflow, a CRM) gets at most this many requests at a
	// time; the others wait for a free slot, without failing. Defaults to the operator's
	// --max-in-flight-per-endpoint (16); the operator's --max-in-flight (1024) bounds all
	// endpoints together.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1024
	MaxInFlight *int32 `json:"maxInFlight,omitempty"`

	// rateLimit bounds the requests sent to this endpoint per period, for receivers that accept
	// only so many (Zapier, n8n cloud, most CRMs). Requests are spaced evenly, one every
	// periodSeconds/requests seconds, so that no window of periodSeconds holds more than
	// requests of them. A delivery over the rate waits for its turn: it does not fail and does
	// not use a retry. Retries (and a receiver's Retry-After) wait for their turn too. Unset: no
	// rate limit.
	// +optional
	RateLimit *RateLimit `json:"rateLimit,omitempty"`

	// filter is a CEL expression over the event as the receiver gets it (the payload's field
	// names): only events for which it is true are delivered to this endpoint, such as
	// event.organization_id == "org-1" && "invoices" in event.document.tag_ids.
	// The variable event has event_id, event_type, timestamp (int), organization_id,
	// document {document_id, document_name, tag_ids (list of strings), metadata (JSON object)}
	// and data (JSON object; empty when the event has none); test a key of metadata or data
	// with has(event.data.total) or event.data.?total.orValue(0) before using it. The intake
	// applies it when an event is published, after spec.eventTypes: an event it is false for
	// creates no delivery for this endpoint. An expression that does not compile, or whose cost
	// on the largest event could exceed the limit, makes the endpoint Ready=False with reason
	// InvalidFilter, and then no event is delivered to it until it is fixed. webhook.test
	// events, and deliveries that exist already, are sent whatever it says. Unset: every event
	// of spec.eventTypes.
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=4096
	// +kubebuilder:validation:XValidation:rule="self.matches('[^[:space:]]')",message="spec.filter is blank: remove it to receive every event of spec.eventTypes, or write a CEL expression such as event.organization_id == 'org-1'"
	Filter string `json:"filter,omitempty"`
}

// RateLimit is a number of requests per period.
type RateLimit struct {
	// requests is how many requests may be sent per periodSeconds.
	// +required
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=100000
	Requests int32 `json:"requests"`

	// periodSeconds is the period, in seconds. Defaults to 1.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=86400
	PeriodSeconds *int32 `json:"periodSeconds,omitempty"`
}

// SignatureScheme is how requests to an endpoint are signed.
type SignatureScheme string

const (
	// SignatureSchemeDocRouter is the product's X-DocRouter-Signature: sha256=<hex HMAC-SHA256
	// of "<timestamp>.<body>">.
	SignatureSchemeDocRouter SignatureScheme = "DocRouter"
	// SignatureSchemeStandardWebhooks is Standard Webhooks: webhook-signature: v1,<base64
	// HMAC-SHA256 of "<webhook-id>.<webhook-timestamp>.<body>">.
	SignatureSchemeStandardWebhooks SignatureScheme = "StandardWebhooks"
)

// CABundleRef selects a key of a Secret or ConfigMap in the endpoint's own namespace. There is
// deliberately no namespace field.
type CABundleRef struct {
	// kind of the object that holds the bundle: Secret or ConfigMap.
	// +required
	// +kubebuilder:validation:Enum=Secret;ConfigMap
	Kind string `json:"kind"`

	// name of the Secret or ConfigMap, in the endpoint's namespace.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`

	// key that holds the PEM certificates, such as ca.crt.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[-._a-zA-Z0-9]+$`
	Key string `json:"key"`
}

// AuthHeader is a static HTTP header whose value comes from a Secret.
// +kubebuilder:validation:XValidation:rule="!(self.name.lowerAscii() in ['host', 'content-type', 'content-length', 'transfer-encoding', 'connection', 'user-agent']) && !self.name.lowerAscii().startsWith('x-docrouter-') && !self.name.lowerAscii().startsWith('webhook-')",message="spec.authHeader.name must not be a header the operator sets itself (Host, Content-Type, Content-Length, Transfer-Encoding, Connection, User-Agent, X-DocRouter-*, webhook-*); choose another name such as Authorization or X-Api-Key"
type AuthHeader struct {
	// name of the header, such as Authorization or X-Api-Key.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=128
	// +kubebuilder:validation:Pattern=`^[!#$%&'*+.^_|~0-9A-Za-z-]+$`
	Name string `json:"name"`

	// secretKeyRef selects the header's value in a Secret of this namespace.
	// +required
	SecretKeyRef SecretKeyRef `json:"secretKeyRef"`
}

// RetryPolicy is an exponential backoff: attempt n+1 waits
// min(initialDelaySeconds * backoffFactor^(n-1), maxDelaySeconds), plus up to jitterPercent more.
// +kubebuilder:validation:XValidation:rule="!has(self.initialDelaySeconds) || !has(self.maxDelaySeconds) || self.initialDelaySeconds <= self.maxDelaySeconds",message="spec.retryPolicy.initialDelaySeconds must not exceed maxDelaySeconds"
type RetryPolicy struct {
	// maxRetries is how many times a failed delivery is retried after its first attempt, before
	// it is marked Failed. Defaults to 10. 0 means a single attempt.
	// +optional
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=20
	MaxRetries *int32 `json:"maxRetries,omitempty"`

	// initialDelaySeconds is the wait before the first retry. Defaults to 30.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=86400
	InitialDelaySeconds *int32 `json:"initialDelaySeconds,omitempty"`

	// backoffFactor multiplies the wait after each failed retry. Defaults to 2.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=10
	BackoffFactor *int32 `json:"backoffFactor,omitempty"`

	// maxDelaySeconds caps the wait between two attempts, and the wait a receiver may ask for
	// with Retry-After. Defaults to 14400 (4 hours).
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=86400
	MaxDelaySeconds *int32 `json:"maxDelaySeconds,omitempty"`

	// jitterPercent adds a random 0 to jitterPercent% to each wait, so that retries of many
	// deliveries do not arrive together. Defaults to 10.
	// +optional
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=100
	JitterPercent *int32 `json:"jitterPercent,omitempty"`
}

// WebhookEndpointStatus is what the operator observed of an endpoint.
type WebhookEndpointStatus struct {
	// observedGeneration is the generation the conditions describe.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// conditions: Ready is True when the endpoint's URL, Secrets and filter are usable
	// (reasons: Valid, Paused, SecretNotFound, SecretKeyNotFound, InvalidSecret,
	// CABundleNotFound, InvalidURL, InvalidFilter, AutoDisabled, EndpointGone; see
	// condition_types.go). Throttled, on an endpoint with spec.rateLimit, is True while
	// deliveries wait for their turn (reason RateLimited), else False (WithinRateLimit).
	// +optional
	// +listType=map
	// +listMapKey=type
	// +patchStrategy=merge
	// +patchMergeKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty" patchStrategy:"merge" patchMergeKey:"type"`

	// lastSuccessTime is when a delivery attempt to this endpoint last succeeded.
	// +optional
	LastSuccessTime *metav1.Time `json:"lastSuccessTime,omitempty"`

	// lastFailureTime is when a delivery attempt to this endpoint last failed.
	// +optional
	LastFailureTime *metav1.Time `json:"lastFailureTime,omitempty"`

	// consecutiveFailures counts failed attempts since the last success.
	// +optional
	ConsecutiveFailures int32 `json:"consecutiveFailures,omitempty"`

	// failingSince is when the current run of failed attempts began; unset after a success.
	// +optional
	FailingSince *metav1.Time `json:"failingSince,omitempty"`

	// disabledSince is set when the operator auto-disabled the endpoint because every attempt
	// failed for the operator's --auto-disable-after period (5 days by default). Its deliveries
	// are parked, not dropped, until the endpoint is re-enabled with the
	// webhooks.docrouter.ai/enable annotation.
	// +optional
	DisabledSince *metav1.Time `json:"disabledSince,omitempty"`

	// disabledReason says why the endpoint is disabled: AutoDisabled (every attempt failed for
	// the auto-disable period) or EndpointGone (the receiver answered 410 Gone). Re-enable with
	// the webhooks.docrouter.ai/enable annotation, or by changing the spec (a new URL, say).
	// +optional
	DisabledReason DisabledReason `json:"disabledReason,omitempty"`

	// lastEnableToken is the last value of the webhooks.docrouter.ai/enable annotation handled.
	// +optional
	LastEnableToken string `json:"lastEnableToken,omitempty"`

	// lastTestToken is the last value of the webhooks.docrouter.ai/test annotation that was
	// turned into a webhook.test delivery.
	// +optional
	LastTestToken string `json:"lastTestToken,omitempty"`

	// throttledDeliveries is how many deliveries were waiting for their turn under
	// spec.rateLimit when the status was last written; 0 or unset: none. Like the delivery
	// health above, it is written at most every --health-update-interval (10 s), and at once
	// when the endpoint starts or stops being throttled. The Throttled condition says the same
	// in a sentence.
	// +optional
	ThrottledDeliveries int32 `json:"throttledDeliveries,omitempty"`

	// throttledUntil is when the last of the waiting deliveries gets its turn: without new
	// events, the endpoint is no longer throttled after it.
	// +optional
	ThrottledUntil *metav1.Time `json:"throttledUntil,omitempty"`
	// backlog counts this endpoint's events that wait in the history store's backlog: accepted,
	// kept durably in publish order, and not yet WebhookDeliveries because the endpoint's
	// unfinished deliveries in etcd reached the operator's --max-live-deliveries-per-endpoint
	// (or all endpoints' reached --max-live-deliveries). They become WebhookDeliveries, oldest
	// first, as room frees. Updated at most every --health-update-interval.
	// +optional
	Backlog int64 `json:"backlog,omitempty"`

	// lastRetryFailedToken is the last value of the webhooks.docrouter.ai/retry-failed
	// annotation whose retries were requested: every delivery of the endpoint that was Failed
	// then got the retry annotation with this value.
	// +optional
	LastRetryFailedToken string `json:"lastRetryFailedToken,omitempty"`
}

// WebhookEndpoint is a receiver of DocRouter webhooks: a URL, the event types it subscribes to,
// and how requests to it are authenticated and retried.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=whe,categories=webhooks
// +kubebuilder:printcolumn:name="URL",type=string,JSONPath=`.spec.url`
// +kubebuilder:printcolumn:name="Events",type=string,JSONPath=`.spec.eventTypes`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].reason`,priority=1
// +kubebuilder:printcolumn:name="Paused",type=boolean,JSONPath=`.spec.paused`,priority=1
// +kubebuilder:printcolumn:name="Failures",type=integer,JSONPath=`.status.consecutiveFailures`,priority=1
// +kubebuilder:printcolumn:name="Throttled",type=integer,JSONPath=`.status.throttledDeliveries`,priority=1
// +kubebuilder:printcolumn:name="Backlog",type=integer,JSONPath=`.status.backlog`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
// +kubebuilder:validation:XValidation:rule="size(self.metadata.name) <= 63",message="metadata.name of a WebhookEndpoint must be at most 63 characters, so that its deliveries can carry it as a label"
type WebhookEndpoint struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// +required
	Spec WebhookEndpointSpec `json:"spec"`

	// +optional
	Status WebhookEndpointStatus `json:"status,omitempty"`
}

// WebhookEndpointList is a list of WebhookEndpoints.
// +kubebuilder:object:root=true
type WebhookEndpointList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []WebhookEndpoint `json:"items"`
}

// GetTimeout is the per-attempt timeout, defaulted.
func (s *WebhookEndpointSpec) GetTimeout() time.Duration {
	return time.Duration(deref(s.TimeoutSeconds, DefaultTimeoutSeconds)) * time.Second
}

// GetSignatureScheme is the signature scheme, defaulted.
func (s *WebhookEndpointSpec) GetSignatureScheme() SignatureScheme {
	if s.SignatureScheme == "" {
		return SignatureSchemeDocRouter
	}
	return s.SignatureScheme
}

// PreviousSigningKeyActive reports whether the previous signing secret still signs at now.
func (s *WebhookEndpointSpec) PreviousSigningKeyActive(now time.Time) bool {
	return s.PreviousSigningSecretRef != nil && s.PreviousSigningSecretExpiresAt != nil &&
		now.Before(s.PreviousSigningSecretExpiresAt.Time)
}

// Subscribes reports whether the endpoint receives events of type eventType.
func (s *WebhookEndpointSpec) Subscribes(eventType string) bool {
	for _, t := range s.EventTypes {
		if t == "*" || t == eventType {
			return true
		}
		if prefix, ok := strings.CutSuffix(t, "*"); ok && strings.HasPrefix(eventType, prefix) {
			return true
		}
	}
	return false
}

// GetMaxInFlight is the bound on the endpoint's attempts in flight: spec.maxInFlight, or
// operatorDefault (the operator's --max-in-flight-per-endpoint; 0: no bound) when unset.
func (s *WebhookEndpointSpec) GetMaxInFlight(operatorDefault int) int {
	if s.MaxInFlight == nil {
		return operatorDefault
	}
	return int(*s.MaxInFlight)
}

// GetPeriod is the rate limit's period, defaulted.
func (r *RateLimit) GetPeriod() time.Duration {
	return time.Duration(deref(r.PeriodSeconds, DefaultRateLimitPeriodSeconds)) * time.Second
}

// Interval is the time between two requests under the rate limit: the period over requests.
func (r *RateLimit) Interval() time.Duration {
	return r.GetPeriod() / time.Duration(max(r.Requests, 1))
}

// String is the rate in words, such as "5 requests per 1s".
func (r *RateLimit) String() string {
	return fmt.Sprintf("%d requests per %s", r.Requests, r.GetPeriod())
}

// GetMaxRetries is the number of retries after the first attempt, defaulted.
func (p *RetryPolicy) GetMaxRetries() int32 {
	if p == nil {
		return DefaultMaxRetries
	}
	return deref(p.MaxRetries, DefaultMaxRetries)
}

// GetInitialDelay is the wait before the first retry, defaulted.
func (p *RetryPolicy) GetInitialDelay() time.Duration {
	if p == nil {
		return time.Duration(DefaultInitialDelaySeconds) * time.Second
	}
	return time.Duration(deref(p.InitialDelaySeconds, DefaultInitialDelaySeconds)) * time.Second
}

// GetBackoffFactor is the multiplier between two waits, defaulted.
func (p *RetryPolicy) GetBackoffFactor() int32 {
	if p == nil {
		return DefaultBackoffFactor
	}
	return deref(p.BackoffFactor, DefaultBackoffFactor)
}

// GetMaxDelay caps one wait, defaulted.
func (p *RetryPolicy) GetMaxDelay() time.Duration {
	if p == nil {
		return time.Duration(DefaultMaxDelaySeconds) * time.Second
	}
	return time.Duration(deref(p.MaxDelaySeconds, DefaultMaxDelaySeconds)) * time.Second
}

// GetJitterPercent is the largest random addition to a wait, in percent, defaulted.
func (p *RetryPolicy) GetJitterPercent() int32 {
	if p == nil {
		return DefaultJitterPercent
	}
	return deref(p.JitterPercent, DefaultJitterPercent)
}

func deref[T any](p *T, def T) T {
	if p == nil {
		return def
	}
	return *p
}
