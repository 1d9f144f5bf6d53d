package historyapi

import (
	"fmt"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"

	historyv1alpha1 "github.com/docrouter/webhook-operator/api/history/v1alpha1"
)

var (
	// Scheme holds the history API's types and the meta types its responses use.
	Scheme = newScheme()
	// Codecs serialise them.
	Codecs = serializer.NewCodecFactory(Scheme)
)

// newScheme registers the v1alpha1 types, and the same Go types as the group's internal
// version: the API has one version, served as stored, so there is nothing to convert (as in
// Kyverno's reports-server). The field selectors each kind accepts are registered as field
// label conversions, which the API server's handlers consult before the storage sees them.
func newScheme() *runtime.Scheme {
	s := runtime.NewScheme()
	utilruntime.Must(historyv1alpha1.AddToScheme(s))
	internal := schema.GroupVersion{Group: historyv1alpha1.GroupName, Version: runtime.APIVersionInternal}
	s.AddKnownTypes(internal,
		&historyv1alpha1.WebhookDeliveryRecord{}, &historyv1alpha1.WebhookDeliveryRecordList{},
		&historyv1alpha1.WebhookEndpointStats{}, &historyv1alpha1.WebhookEndpointStatsList{})
	utilruntime.Must(s.SetVersionPriority(historyv1alpha1.GroupVersion))
	metav1.AddToGroupVersion(s, schema.GroupVersion{Version: "v1"})

	utilruntime.Must(s.AddFieldLabelConversionFunc(historyv1alpha1.GroupVersion.WithKind("WebhookDeliveryRecord"),
		fieldLabels("WebhookDeliveryRecord", recordFields...)))
	utilruntime.Must(s.AddFieldLabelConversionFunc(historyv1alpha1.GroupVersion.WithKind("WebhookEndpointStats"),
		fieldLabels("WebhookEndpointStats", "metadata.name", "metadata.namespace")))
	return s
}

// recordFields are the field selectors of WebhookDeliveryRecords.
var recordFields = []string{
	"metadata.name", "metadata.namespace",
	historyv1alpha1.PhaseField, historyv1alpha1.EndpointField,
	historyv1alpha1.EventIDField, historyv1alpha1.EventTypeField,
}

// fieldLabels accepts the given field names as they are, and refuses others with a sentence
// that lists the ones it knows (the API server answers 400 with it).
func fieldLabels(kind string, known ...string) runtime.FieldLabelConversionFunc {
	return func(label, value string) (string, string, error) {
		for _, k := range known {
			if label == k {
				return label, value, nil
			}
		}
		return "", "", fmt.Errorf("field selector %q is not supported for %s: use %v", label, kind, known)
	}
}
