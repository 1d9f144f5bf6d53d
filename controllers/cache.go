package controllers

import (
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
)

// CacheOptions completes the manager's cache options so that finished deliveries cost little
// memory: the operator keeps every WebhookDelivery in its informer cache (it must see a retry
// annotation or the end of a retention period on any of them), and finished ones are by far the
// most numerous. Managed fields are stripped from every object (unless base already sets a
// DefaultTransform), and finished deliveries are stored as StripFinishedDelivery leaves them.
//
//	mgr, err := ctrl.NewManager(cfg, ctrl.Options{Cache: controllers.CacheOptions(cache.Options{})})
func CacheOptions(base cache.Options) cache.Options {
	if base.DefaultTransform == nil {
		base.DefaultTransform = cache.TransformStripManagedFields()
	}
	byObject := make(map[client.Object]cache.ByObject, len(base.ByObject)+1)
	for obj, cfg := range base.ByObject {
		byObject[obj] = cfg
	}
	cfg := byObject[&webhooksv1alpha1.WebhookDelivery{}]
	cfg.Transform = StripFinishedDelivery
	byObject[&webhooksv1alpha1.WebhookDelivery{}] = cfg
	base.ByObject = byObject
	return base
}

// StripFinishedDelivery is the cache transform of WebhookDeliveries. Every delivery loses its
// managed fields and its kubectl last-applied annotation. A finished one (Succeeded or Failed)
// also loses what no controller reads from the cache once a delivery is finished: the event's
// document and data, the attempt history, the conditions and the last error. It keeps its
// identity, labels, annotations (the retry annotation among them), endpoint, event id and type,
// and the status fields that decide what happens next: phase, attempts, completionTime (for the
// retention period) and lastRetryToken (to tell a new retry request from a handled one).
//
// A cached finished delivery is therefore not the whole record: code that needs its event or
// history reads it through the API reader, as the delivery reconciler does before a manual
// retry. The transform is idempotent and never touches the API server's copy.
func StripFinishedDelivery(obj any) (any, error) {
	d, ok := obj.(*webhooksv1alpha1.WebhookDelivery)
	if !ok {
		return obj, nil
	}
	d.ManagedFields = nil
	if _, ok := d.Annotations[corev1.LastAppliedConfigAnnotation]; ok {
		delete(d.Annotations, corev1.LastAppliedConfigAnnotation)
	}
	if !d.Status.Phase.Finished() {
		return d, nil
	}
	d.Spec.Event = webhooksv1alpha1.Event{ID: d.Spec.Event.ID, Type: d.Spec.Event.Type, Timestamp: d.Spec.Event.Timestamp}
	d.Status.History = nil
	d.Status.Conditions = nil
	d.Status.LastError = ""
	return d, nil
}
