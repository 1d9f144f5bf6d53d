package v1alpha1

// Annotations and labels shared by both kinds. These names are public:
// users, scripts and dashboards rely on them.
const (
	// RetryAnnotation on a WebhookDelivery asks for one immediate new attempt, once per value:
	//   kubectl annotate webhookdelivery NAME webhooks.docrouter.ai/retry=$(date +%s) --overwrite
	RetryAnnotation = "webhooks.docrouter.ai/retry"

	// RetryFailedAnnotation on a WebhookEndpoint retries every Failed delivery of the endpoint
	// once per value, by setting RetryAnnotation to the same value on each:
	//   kubectl annotate webhookendpoint NAME webhooks.docrouter.ai/retry-failed=$(date +%s) --overwrite
	RetryFailedAnnotation = "webhooks.docrouter.ai/retry-failed"

	// EnableAnnotation on a WebhookEndpoint re-enables an endpoint the operator auto-disabled
	// (status.disabledSince), once per value; its parked deliveries resume:
	//   kubectl annotate webhookendpoint NAME webhooks.docrouter.ai/enable=$(date +%s) --overwrite
	EnableAnnotation = "webhooks.docrouter.ai/enable"

	// RestoredAttemptsAnnotation on a WebhookDelivery re-created from its history record (a
	// manual retry of a delivery that had left etcd) holds the number of attempts the record
	// has: the new attempts continue its numbering, and the delivery counts as finished, so a
	// failed manual attempt leaves it Failed rather than scheduling automatic retries.
	RestoredAttemptsAnnotation = "webhooks.docrouter.ai/restored-attempts"

	// TestAnnotation on a WebhookEndpoint creates one webhook.test delivery for it, once per value.
	TestAnnotation = "webhooks.docrouter.ai/test"

	// EndpointLabel on a WebhookDelivery names its endpoint, so `kubectl get whd -l` can filter.
	EndpointLabel = "webhooks.docrouter.ai/endpoint"

	// EventTypeLabel on a WebhookDelivery holds its event type.
	EventTypeLabel = "webhooks.docrouter.ai/event-type"
)

// Event types of the product.
const (
	EventDocumentUploaded = "document.uploaded"
	EventLLMCompleted     = "llm.completed"
	EventLLMError         = "llm.error"
	EventDocumentError    = "document.error"
	EventWebhookTest      = "webhook.test"
)

// EventTypes lists every event type the product sends.
var EventTypes = []string{EventDocumentUploaded, EventLLMCompleted, EventLLMError, EventDocumentError, EventWebhookTest}

// SecretKeyRef selects a key of a Secret in the same namespace as the object that refers to it.
// There is deliberately no namespace field: an object can only use its own namespace's Secrets.
type SecretKeyRef struct {
	// name of the Secret, in the referring object's namespace.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`

	// key within the Secret's data.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[-._a-zA-Z0-9]+$`
	Key string `json:"key"`
}
