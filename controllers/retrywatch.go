package controllers

import (
	"context"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/metadata"
	toolscache "k8s.io/client-go/tools/cache"
	watchtools "k8s.io/client-go/tools/watch"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/event"

	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
)

// finishedRetryWatcher notices the retry annotation on finished deliveries, which the cache does
// not hold (cache.go). It watches their metadata only (no event body, no status), keeps nothing,
// and hands each finished delivery that carries a retry annotation to the delivery controller,
// which reads it through the API and compares the annotation with status.lastRetryToken. After
// a start or a broken watch it lists first, so an annotation set while it was not watching is
// not missed.
type finishedRetryWatcher struct {
	client     metadata.Interface
	namespaces []string // empty: all
	out        chan<- event.TypedGenericEvent[*webhooksv1alpha1.WebhookDelivery]
}

// NeedLeaderElection: the leader delivers.
func (w *finishedRetryWatcher) NeedLeaderElection() bool { return true }

// Start watches Succeeded and Failed deliveries in each namespace until ctx ends.
func (w *finishedRetryWatcher) Start(ctx context.Context) error {
	for _, ns := range namespacesOrAll(w.namespaces) {
		for _, phase := range []webhooksv1alpha1.DeliveryPhase{webhooksv1alpha1.PhaseSucceeded, webhooksv1alpha1.PhaseFailed} {
			go w.run(ctx, ns, fields.OneTermEqualSelector(webhooksv1alpha1.PhaseField, string(phase)).String())
		}
	}
	<-ctx.Done()
	return nil
}

var deliveriesResource = webhooksv1alpha1.GroupVersion.WithResource("webhookdeliveries")

func (w *finishedRetryWatcher) run(ctx context.Context, ns, selector string) {
	log := ctrl.LoggerFrom(ctx).WithName("finished-retry-watch").WithValues("namespace", ns, "selector", selector)
	resource := w.client.Resource(deliveriesResource).Namespace(ns)
	for backoff := time.Second; ctx.Err() == nil; {
		rv, err := w.list(ctx, resource, selector)
		if err != nil {
			log.V(1).Info("listing finished deliveries failed; trying again", "error", err.Error())
			sleep(ctx, backoff)
			backoff = min(2*backoff, time.Minute)
			continue
		}
		backoff = time.Second
		lw := &toolscache.ListWatch{WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			o.FieldSelector = selector
			return resource.Watch(ctx, o)
		}}
		rw, err := watchtools.NewRetryWatcherWithContext(ctx, rv, lw)
		if err != nil {
			log.Error(err, "watching finished deliveries failed; trying again")
			sleep(ctx, backoff)
			continue
		}
		for ev := range rw.ResultChan() {
			if ev.Type == watch.Error {
				break // the resource version expired: list again
			}
			if ev.Type == watch.Added || ev.Type == watch.Modified {
				w.handle(ctx, ev.Object)
			}
		}
		rw.Stop()
		sleep(ctx, time.Second) // a watch that keeps ending must not turn into a busy loop of lists
	}
}

// list hands over every finished delivery with a retry annotation and returns the resource
// version to watch from.
func (w *finishedRetryWatcher) list(ctx context.Context, resource metadata.ResourceInterface, selector string) (string, error) {
	rv := ""
	for cont := ""; ; {
		list, err := resource.List(ctx, metav1.ListOptions{FieldSelector: selector, Limit: sweepPageSize, Continue: cont})
		if err != nil {
			return "", err
		}
		if rv == "" {
			rv = list.ResourceVersion
		}
		for i := range list.Items {
			w.handle(ctx, &list.Items[i])
		}
		if cont = list.Continue; cont == "" {
			return rv, nil
		}
	}
}

func (w *finishedRetryWatcher) handle(ctx context.Context, obj runtime.Object) {
	m, ok := obj.(*metav1.PartialObjectMetadata)
	if !ok || m.Annotations[webhooksv1alpha1.RetryAnnotation] == "" {
		return
	}
	d := &webhooksv1alpha1.WebhookDelivery{}
	d.Namespace, d.Name = m.Namespace, m.Name
	select {
	case w.out <- event.TypedGenericEvent[*webhooksv1alpha1.WebhookDelivery]{Object: d}:
	case <-ctx.Done():
	}
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
