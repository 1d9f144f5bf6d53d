package controllers

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/fields"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
)

// unfinishedSelector selects the deliveries that still have automatic work: neither Succeeded
// nor Failed (status.phase is a selectable field of the CRD).
func unfinishedSelector() fields.Selector {
	return fields.AndSelectors(
		fields.OneTermNotEqualSelector(webhooksv1alpha1.PhaseField, string(webhooksv1alpha1.PhaseSucceeded)),
		fields.OneTermNotEqualSelector(webhooksv1alpha1.PhaseField, string(webhooksv1alpha1.PhaseFailed)))
}

// CacheOptions completes the manager's cache options so that finished deliveries cost the
// operator no memory: the informer watches only unfinished deliveries (a field selector on
// status.phase), so a delivery leaves the cache when it succeeds or fails, with no extra API
// write. Finished deliveries are still served: a manual retry is noticed by a metadata watch
// (finishedRetryWatcher), retention by a periodic sweep (retentionSweeper). Managed fields and
// kubectl's last-applied annotation are stripped from every cached object.
//
//	mgr, err := ctrl.NewManager(cfg, ctrl.Options{Cache: controllers.CacheOptions(cache.Options{})})
func CacheOptions(base cache.Options) cache.Options {
	if base.DefaultTransform == nil {
		base.DefaultTransform = stripForCache
	}
	byObject := make(map[client.Object]cache.ByObject, len(base.ByObject)+1)
	for obj, cfg := range base.ByObject {
		byObject[obj] = cfg
	}
	cfg := byObject[&webhooksv1alpha1.WebhookDelivery{}]
	cfg.Field = unfinishedSelector()
	byObject[&webhooksv1alpha1.WebhookDelivery{}] = cfg
	base.ByObject = byObject
	return base
}

// stripForCache drops what no controller reads from the cache: managed fields and kubectl's
// last-applied annotation (a second copy of the whole object).
func stripForCache(obj any) (any, error) {
	o, ok := obj.(client.Object)
	if !ok {
		return obj, nil
	}
	o.SetManagedFields(nil)
	delete(o.GetAnnotations(), corev1.LastAppliedConfigAnnotation)
	return o, nil
}
