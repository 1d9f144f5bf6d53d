package v1alpha1

import (
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// MaxAttemptHistory bounds status.history: the most recent attempts are kept.
const MaxAttemptHistory = 20

// WebhookDeliverySpec is one event for one endpoint. It is a record: immutable once created.
// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="spec of a WebhookDelivery is immutable: it records one event; publish a new event instead"
// +structType=atomic
type WebhookDeliverySpec struct {
	// endpointRef names the WebhookEndpoint, in this namespace, that receives the event.
	// +required
	EndpointRef EndpointReference `json:"endpointRef"`

	// event is what is sent.
	// +required
	Event Event `json:"event"`
}

// EndpointReference names a WebhookEndpoint in the same namespace.
type EndpointReference struct {
	// name of the WebhookEndpoint.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	Name string `json:"name"`
}

// Event is a DocRouter event. On the wire it is the product's JSON payload:
// {event_id, event_type, timestamp, organization_id, document{document_id, document_name,
// tag_ids, metadata}, data}.
type Event struct {
	// id is the event's unique id (event_id on the wire). Receivers use it to drop duplicates:
	// every attempt of a delivery carries the same id.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=128
	// +kubebuilder:validation:Pattern=`^[A-Za-z0-9][A-Za-z0-9._:-]*$`
	ID string `json:"id"`

	// type is the event type (event_type on the wire).
	// +required
	// +kubebuilder:validation:XValidation:rule="self in ['document.uploaded', 'llm.completed', 'llm.error', 'document.error', 'webhook.test']",message="spec.event.type must be one of document.uploaded, llm.completed, llm.error, document.error, webhook.test"
	Type string `json:"type"`

	// timestamp is when the event happened, in Unix seconds (timestamp on the wire).
	// +required
	// +kubebuilder:validation:Minimum=0
	Timestamp int64 `json:"timestamp"`

	// organizationID is the organization the event belongs to (organization_id on the wire).
	// +optional
	// +kubebuilder:validation:MaxLength=256
	OrganizationID string `json:"organizationID,omitempty"`

	// document is the document the event is about (document on the wire).
	// +optional
	Document Document `json:"document,omitempty"`

	// data is a free-form JSON object passed through to the receiver as data, such as the
	// extraction results of an llm.completed event. Omitted from the payload when empty.
	// +optional
	// +kubebuilder:pruning:PreserveUnknownFields
	// +kubebuilder:validation:Type=object
	// +kubebuilder:validation:Schemaless
	// +mapType=atomic
	Data *apiextensionsv1.JSON `json:"data,omitempty"`
}

// Document describes the document of an event.
type Document struct {
	// documentID is the document's id (document_id on the wire).
	// +optional
	// +kubebuilder:validation:MaxLength=256
	DocumentID string `json:"documentID,omitempty"`

	// documentName is the document's file name (document_name on the wire).
	// +optional
	// +kubebuilder:validation:MaxLength=1024
	DocumentName string `json:"documentName,omitempty"`

	// tagIDs are the document's tag ids (tag_ids on the wire).
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=256
	// +kubebuilder:validation:items:MaxLength=256
	TagIDs []string `json:"tagIDs,omitempty"`

	// metadata is the document's free-form JSON metadata object (metadata on the wire).
	// +optional
	// +kubebuilder:pruning:PreserveUnknownFields
	// +kubebuilder:validation:Type=object
	// +kubebuilder:validation:Schemaless
	// +mapType=atomic
	Metadata *apiextensionsv1.JSON `json:"metadata,omitempty"`
}

// DeliveryPhase is where a delivery is in its life.
// +kubebuilder:validation:Enum=Pending;Retrying;Succeeded;Failed
type DeliveryPhase string

const (
	// PhasePending: no attempt made yet (or waiting for a paused or unready endpoint).
	PhasePending DeliveryPhase = "Pending"
	// PhaseRetrying: an attempt failed and another is scheduled at nextAttemptTime.
	PhaseRetrying DeliveryPhase = "Retrying"
	// PhaseSucceeded: the receiver answered 2xx.
	PhaseSucceeded DeliveryPhase = "Succeeded"
	// PhaseFailed: every attempt allowed by the retry policy failed. A manual retry may still succeed.
	PhaseFailed DeliveryPhase = "Failed"
)

// PhaseField is the field selector name of status.phase: `kubectl get whd --field-selector
// status.phase=Failed` works, and the operator caches only unfinished deliveries with it.
const PhaseField = "status.phase"

// EndpointField is the field selector name of spec.endpointRef.name.
const EndpointField = "spec.endpointRef.name"

// Finished reports whether no automatic attempt is left.
func (p DeliveryPhase) Finished() bool { return p == PhaseSucceeded || p == PhaseFailed }

// AttemptTrigger says what caused an attempt.
// +kubebuilder:validation:Enum=Scheduled;Manual
type AttemptTrigger string

const (
	// TriggerScheduled: the first attempt or a retry of the policy.
	TriggerScheduled AttemptTrigger = "Scheduled"
	// TriggerManual: a webhooks.docrouter.ai/retry annotation.
	TriggerManual AttemptTrigger = "Manual"
)

// Attempt records one HTTP attempt.
type Attempt struct {
	// number of the attempt, from 1.
	// +required
	Number int32 `json:"number"`

	// time the attempt started.
	// +required
	Time metav1.Time `json:"time"`

	// statusCode the receiver answered, 0 when no response was received.
	// +optional
	StatusCode int32 `json:"statusCode,omitempty"`

	// durationMilliseconds from sending the request to reading the response.
	// +optional
	DurationMilliseconds int64 `json:"durationMilliseconds,omitempty"`

	// result classifies the outcome: Success, HTTPError, Timeout, NetworkError, Blocked,
	// InvalidRequest.
	// +required
	Result AttemptResult `json:"result"`

	// error is a short, sanitised description of a failure.
	// +optional
	// +kubebuilder:validation:MaxLength=512
	Error string `json:"error,omitempty"`

	// trigger is Scheduled for attempts of the retry policy, Manual for the retry annotation.
	// +required
	Trigger AttemptTrigger `json:"trigger"`
}

// WebhookDeliveryStatus is the delivery's progress. Backoff lives here, not in a work queue, so
// a restarted operator resumes the schedule instead of firing every retry at once.
// +structType=atomic
type WebhookDeliveryStatus struct {
	// observedGeneration is the generation the status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// phase is Pending, Retrying, Succeeded or Failed.
	// +optional
	Phase DeliveryPhase `json:"phase,omitempty"`

	// attempts is the number of HTTP attempts made, scheduled and manual.
	// +optional
	Attempts int32 `json:"attempts,omitempty"`

	// lastAttemptTime is when the last attempt started.
	// +optional
	LastAttemptTime *metav1.Time `json:"lastAttemptTime,omitempty"`

	// nextAttemptTime is when the next scheduled attempt is due; unset once finished.
	// +optional
	NextAttemptTime *metav1.Time `json:"nextAttemptTime,omitempty"`

	// lastStatusCode is the HTTP status of the last attempt, 0 when no response was received.
	// +optional
	LastStatusCode int32 `json:"lastStatusCode,omitempty"`

	// lastError is a short, sanitised description of the last failure; empty after a success.
	// +optional
	// +kubebuilder:validation:MaxLength=512
	LastError string `json:"lastError,omitempty"`

	// lastDurationMilliseconds is how long the last attempt took.
	// +optional
	LastDurationMilliseconds int64 `json:"lastDurationMilliseconds,omitempty"`

	// history holds the most recent attempts, oldest first (at most 20).
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=20
	History []Attempt `json:"history,omitempty"`

	// completionTime is when the delivery succeeded or was given up.
	// +optional
	CompletionTime *metav1.Time `json:"completionTime,omitempty"`

	// lastRetryToken is the last value of the webhooks.docrouter.ai/retry annotation that was
	// handled: a new value asks for one more attempt.
	// +optional
	LastRetryToken string `json:"lastRetryToken,omitempty"`

	// conditions: Ready (True once delivered), Reconciling (True while attempts are pending),
	// Stalled (True once given up).
	// +optional
	// +listType=map
	// +listMapKey=type
	// +patchStrategy=merge
	// +patchMergeKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty" patchStrategy:"merge" patchMergeKey:"type"`
}

// WebhookDelivery is one event for one WebhookEndpoint, and the record of every attempt to
// deliver it. Retry one with: kubectl annotate whd NAME webhooks.docrouter.ai/retry=$(date +%s) --overwrite
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=whd,categories=webhooks
// +kubebuilder:selectablefield:JSONPath=`.status.phase`
// +kubebuilder:selectablefield:JSONPath=`.spec.endpointRef.name`
// +kubebuilder:printcolumn:name="Endpoint",type=string,JSONPath=`.spec.endpointRef.name`
// +kubebuilder:printcolumn:name="Event",type=string,JSONPath=`.spec.event.type`
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Attempts",type=integer,JSONPath=`.status.attempts`
// +kubebuilder:printcolumn:name="Code",type=integer,JSONPath=`.status.lastStatusCode`
// +kubebuilder:printcolumn:name="Next Attempt",type=string,JSONPath=`.status.nextAttemptTime`
// +kubebuilder:printcolumn:name="Event ID",type=string,JSONPath=`.spec.event.id`,priority=1
// +kubebuilder:printcolumn:name="Last Error",type=string,JSONPath=`.status.lastError`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type WebhookDelivery struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// +required
	Spec WebhookDeliverySpec `json:"spec"`

	// +optional
	Status WebhookDeliveryStatus `json:"status,omitempty"`
}

// WebhookDeliveryList is a list of WebhookDeliveries.
// +kubebuilder:object:root=true
type WebhookDeliveryList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []WebhookDelivery `json:"items"`
}
