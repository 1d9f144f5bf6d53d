package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// GroupName is the API group of the delivery history.
const GroupName = "history.webhooks.docrouter.ai"

var (
	// GroupVersion is the group and version of the objects in this package.
	GroupVersion = schema.GroupVersion{Group: GroupName, Version: "v1alpha1"}

	// SchemeBuilder registers the types of this package with a scheme.
	SchemeBuilder = runtime.NewSchemeBuilder(addKnownTypes)

	// AddToScheme adds the types of this package to a scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)

// Resource names, as in the URL path and RBAC rules.
const (
	RecordsResource = "webhookdeliveryrecords"
	StatsResource   = "webhookendpointstats"
)

// Resource returns a GroupResource of this group.
func Resource(resource string) schema.GroupResource {
	return GroupVersion.WithResource(resource).GroupResource()
}

func addKnownTypes(s *runtime.Scheme) error {
	s.AddKnownTypes(GroupVersion,
		&WebhookDeliveryRecord{}, &WebhookDeliveryRecordList{},
		&WebhookEndpointStats{}, &WebhookEndpointStatsList{})
	metav1.AddToGroupVersion(s, GroupVersion)
	return nil
}

// APIServiceName is the name of the APIService that registers this group and version with the
// cluster's API server (the aggregator forwards its requests to the operator).
const APIServiceName = "v1alpha1." + GroupName
