// Package v1alpha1 contains the API types of the webhooks.docrouter.ai group: WebhookEndpoint,
// a receiver that subscribes to event types, and WebhookDelivery, one event for one endpoint.
// +kubebuilder:object:generate=true
// +groupName=webhooks.docrouter.ai
package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

var (
	// GroupVersion is the group and version of the objects in this package.
	GroupVersion = schema.GroupVersion{Group: "webhooks.docrouter.ai", Version: "v1alpha1"}

	// SchemeBuilder registers the types of this package with a scheme. It depends on
	// apimachinery only, so that publishers can import the types without controller-runtime.
	SchemeBuilder = runtime.NewSchemeBuilder(addKnownTypes)

	// AddToScheme adds the types of this package to a scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)

func addKnownTypes(s *runtime.Scheme) error {
	s.AddKnownTypes(GroupVersion,
		&WebhookEndpoint{}, &WebhookEndpointList{},
		&WebhookDelivery{}, &WebhookDeliveryList{})
	metav1.AddToGroupVersion(s, GroupVersion)
	return nil
}
