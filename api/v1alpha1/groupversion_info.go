// Package v1alpha1 contains the API types of the webhooks.docrouter.ai group: WebhookEndpoint,
// a receiver that subscribes to event types, and WebhookDelivery, one event for one endpoint.
// +kubebuilder:object:generate=true
// +groupName=webhooks.docrouter.ai
package v1alpha1

import (
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/scheme"
)

var (
	// GroupVersion is the group and version of the objects in this package.
	GroupVersion = schema.GroupVersion{Group: "webhooks.docrouter.ai", Version: "v1alpha1"}

	// SchemeBuilder registers the types of this package with a scheme.
	SchemeBuilder = &scheme.Builder{GroupVersion: GroupVersion}

	// AddToScheme adds the types of this package to a scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)
