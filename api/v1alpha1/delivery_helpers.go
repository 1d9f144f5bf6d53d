package v1alpha1

import (
	"crypto/sha256"
	"encoding/hex"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// DeliveryName is the name of the delivery of event eventID to endpoint: the same pair always
// gives the same name, so publishing an event twice creates its deliveries once.
func DeliveryName(endpoint, eventID string) string {
	sum := sha256.Sum256([]byte(eventID))
	return endpoint + "-" + hex.EncodeToString(sum[:8])
}

// NewDelivery builds the delivery of event to the endpoint named endpoint in namespace, named
// by DeliveryName and labelled with its endpoint and event type for `kubectl get -l`.
func NewDelivery(namespace, endpoint string, event Event) *WebhookDelivery {
	return &WebhookDelivery{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: namespace,
			Name:      DeliveryName(endpoint, event.ID),
			Labels: map[string]string{
				EndpointLabel:  endpoint,
				EventTypeLabel: event.Type,
			},
		},
		Spec: WebhookDeliverySpec{
			EndpointRef: EndpointReference{Name: endpoint},
			Event:       event,
		},
	}
}

// TestEventID is the event id of the webhook.test delivery that the test annotation's value
// token makes for the endpoint of this UID: the same pair always gives the same id, so a
// repeated reconcile creates one delivery, and a client that set the annotation knows the name
// of the delivery to watch: DeliveryName(endpoint, TestEventID(uid, token)).
func TestEventID(endpointUID types.UID, token string) string {
	sum := sha256.Sum256([]byte(string(endpointUID) + "/" + token))
	return "test-" + hex.EncodeToString(sum[:12])
}
