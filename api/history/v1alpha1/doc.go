// Package v1alpha1 contains the types of the history.webhooks.docrouter.ai API group, which the
// operator serves itself (an aggregated API, registered with an APIService) from its history
// store, not from etcd:
//
//   - WebhookDeliveryRecord (short name whdr): one delivery, live or finished, still in etcd or
//     long gone from it, with every attempt. Read-only: list, get and watch.
//   - WebhookEndpointStats: one endpoint's deliveries, attempts, success rate and latency over the
//     last hour, day and week, and its backlog. Read-only: get (and list).
//
// The types depend on apimachinery only, so that clients (the kubectl plugin, the console) can
// import them without the server.
//
// CRDs are not generated for this package (+kubebuilder:skip): the API server does not store
// these kinds; it forwards their requests to the operator. openapi-gen gives each type its
// OpenAPI model name (zz_generated.model_name.go), which ties its schema to its kind, so that
// kubectl explain finds it.
//
// +kubebuilder:object:generate=true
// +kubebuilder:skip
// +k8s:openapi-gen=true
// +k8s:openapi-model-package=ai.docrouter.webhooks.history.v1alpha1
// +groupName=history.webhooks.docrouter.ai
package v1alpha1
