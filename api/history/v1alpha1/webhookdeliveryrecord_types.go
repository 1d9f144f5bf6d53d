package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// Field selectors of WebhookDeliveryRecords, besides metadata.name and metadata.namespace:
//
//	kubectl get whdr --field-selector status.phase=Failed,spec.endpointRef.name=signed
const (
	PhaseField     = "status.phase"
	EndpointField  = "spec.endpointRef.name"
	EventIDField   = "spec.event.id"
	EventTypeField = "spec.event.type"
)

// WebhookDeliveryRecord is the record of one WebhookDelivery, as the operator's history store
// keeps it: its event, where it is in its life, and every attempt (a WebhookDelivery's status
// keeps the last 20). There is a record for every delivery, the ones still in etcd and the ones
// that finished and left it, so one list shows everything. Its name, namespace, labels and the
// shape of spec and status are those of the WebhookDelivery, so the same jsonpath and
// selectors work on both. Records are read-only: retry a delivery on its WebhookDelivery.
// +kubebuilder:object:root=true
type WebhookDeliveryRecord struct {
	metav1.TypeMeta `json:",inline"`
	// metadata: name, namespace and labels of the delivery; uid of the WebhookDelivery that last
	// wrote the record; resourceVersion is the history store's revision of the last change.
	// +optional
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec is what was delivered: the endpoint and the event.
	// +optional
	Spec WebhookDeliveryRecordSpec `json:"spec,omitempty"`

	// status is the delivery's progress and every attempt.
	// +optional
	Status WebhookDeliveryRecordStatus `json:"status,omitempty"`
}

// WebhookDeliveryRecordSpec is the delivery's endpoint and event.
type WebhookDeliveryRecordSpec struct {
	// endpointRef names the WebhookEndpoint, in this namespace, that the event was for.
	// +optional
	EndpointRef EndpointReference `json:"endpointRef,omitempty"`

	// event is the event as it was sent.
	// +optional
	Event Event `json:"event,omitempty"`
}

// EndpointReference names a WebhookEndpoint in the same namespace.
type EndpointReference struct {
	// name of the WebhookEndpoint.
	// +optional
	Name string `json:"name,omitempty"`
}

// Event is a DocRouter event, as in a WebhookDelivery's spec.event.
type Event struct {
	// id is the event's unique id (event_id on the wire).
	// +optional
	ID string `json:"id,omitempty"`

	// type is the event type (event_type on the wire), such as llm.completed.
	// +optional
	Type string `json:"type,omitempty"`

	// timestamp is when the event happened, in Unix seconds.
	// +optional
	Timestamp int64 `json:"timestamp,omitempty"`

	// organizationID is the organization the event belongs to.
	// +optional
	OrganizationID string `json:"organizationID,omitempty"`

	// document is the document the event is about.
	// +optional
	Document Document `json:"document,omitempty"`

	// data is the event's free-form JSON object, as sent to the receiver.
	// +optional
	Data *runtime.RawExtension `json:"data,omitempty"`
}

// Document describes the document of an event.
type Document struct {
	// documentID is the document's id.
	// +optional
	DocumentID string `json:"documentID,omitempty"`

	// documentName is the document's file name.
	// +optional
	DocumentName string `json:"documentName,omitempty"`

	// tagIDs are the document's tag ids.
	// +optional
	// +listType=atomic
	TagIDs []string `json:"tagIDs,omitempty"`

	// metadata is the document's free-form JSON metadata object.
	// +optional
	Metadata *runtime.RawExtension `json:"metadata,omitempty"`
}

// WebhookDeliveryRecordStatus is the delivery's progress, with every attempt.
type WebhookDeliveryRecordStatus struct {
	// phase is Pending, Retrying, Succeeded or Failed.
	// +optional
	Phase string `json:"phase,omitempty"`

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
	LastError string `json:"lastError,omitempty"`

	// lastDurationMilliseconds is how long the last attempt took, in milliseconds.
	// +optional
	LastDurationMilliseconds int64 `json:"lastDurationMilliseconds,omitempty"`

	// history holds every attempt, oldest first (a WebhookDelivery's status.history keeps the
	// last 20; the record keeps them all, also those of earlier deliveries of the same event to
	// the same endpoint, such as a manual retry after it left etcd).
	// +optional
	// +listType=atomic
	History []Attempt `json:"history,omitempty"`

	// completionTime is when the delivery succeeded or was given up.
	// +optional
	CompletionTime *metav1.Time `json:"completionTime,omitempty"`

	// removedTime is when the WebhookDelivery left etcd; unset while it is there (kubectl get
	// whd shows it then).
	// +optional
	RemovedTime *metav1.Time `json:"removedTime,omitempty"`

	// reason is the reason of the delivery's Ready condition, such as Delivered or
	// RetriesExhausted.
	// +optional
	Reason string `json:"reason,omitempty"`

	// message is the message of the delivery's Ready condition.
	// +optional
	Message string `json:"message,omitempty"`

	// lastRetryToken is the last value of the webhooks.docrouter.ai/retry annotation that was
	// handled.
	// +optional
	LastRetryToken string `json:"lastRetryToken,omitempty"`
}

// Attempt records one HTTP attempt.
type Attempt struct {
	// number of the attempt, from 1.
	// +optional
	Number int32 `json:"number,omitempty"`

	// time the attempt started.
	// +optional
	Time metav1.Time `json:"time,omitempty"`

	// statusCode the receiver answered, 0 when no response was received.
	// +optional
	StatusCode int32 `json:"statusCode,omitempty"`

	// durationMilliseconds from sending the request to reading the response.
	// +optional
	DurationMilliseconds int64 `json:"durationMilliseconds,omitempty"`

	// result classifies the outcome: Success, HTTPError, Timeout, NetworkError, Blocked.
	// +optional
	Result string `json:"result,omitempty"`

	// error is a short, sanitised description of a failure.
	// +optional
	Error string `json:"error,omitempty"`

	// trigger is Scheduled for attempts of the retry policy, Manual for the retry annotation.
	// +optional
	Trigger string `json:"trigger,omitempty"`
}

// WebhookDeliveryRecordList is a page of WebhookDeliveryRecords, newest first.
// +kubebuilder:object:root=true
type WebhookDeliveryRecordList struct {
	metav1.TypeMeta `json:",inline"`
	// metadata: resourceVersion is the history store's revision when the page was read (a
	// watch from it sees every later change); continue fetches the next page.
	// +optional
	metav1.ListMeta `json:"metadata,omitempty"`

	// items are the records of the page, newest first.
	Items []WebhookDeliveryRecord `json:"items"`
}
