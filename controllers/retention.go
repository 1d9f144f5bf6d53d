package controllers

import (
	"context"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
)

// retentionSweeper deletes finished deliveries whose retention period is over, so that etcd does
// not grow without bound. Finished deliveries are not in the operator's cache (cache.go), so it
// lists them from the API server by phase, a page at a time, every interval: it costs reads
// once an interval and one delete per expired delivery, and no memory per delivery.
type retentionSweeper struct {
	reader     client.Reader
	writer     client.Writer
	clock      clock.PassiveClock
	opts       Options
	namespaces []string // empty: all
}

// sweepPageSize bounds one list request.
const sweepPageSize = 500

// NeedLeaderElection: one replica sweeps.
func (s *retentionSweeper) NeedLeaderElection() bool { return true }

// Start sweeps once at start and then every interval until ctx ends.
func (s *retentionSweeper) Start(ctx context.Context) error {
	if s.opts.SucceededRetention <= 0 && s.opts.FailedRetention <= 0 {
		return nil
	}
	log := ctrl.LoggerFrom(ctx).WithName("retention")
	ticker := time.NewTicker(s.opts.RetentionSweepInterval)
	defer ticker.Stop()
	for {
		deleted, err := s.sweep(ctx)
		if err != nil && ctx.Err() == nil {
			log.Error(err, "retention sweep incomplete; the next sweep continues", "deleted", deleted)
		} else if deleted > 0 {
			log.Info("deleted finished deliveries past their retention period", "deleted", deleted)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C:
		}
	}
}

// sweep deletes every expired finished delivery once and returns how many it deleted.
func (s *retentionSweeper) sweep(ctx context.Context) (int, error) {
	deleted := 0
	now := s.clock.Now()
	for phase, retention := range map[webhooksv1alpha1.DeliveryPhase]time.Duration{
		webhooksv1alpha1.PhaseSucceeded: s.opts.SucceededRetention,
		webhooksv1alpha1.PhaseFailed:    s.opts.FailedRetention,
	} {
		if retention <= 0 {
			continue
		}
		for _, ns := range namespacesOrAll(s.namespaces) {
			opts := []client.ListOption{
				client.InNamespace(ns), client.Limit(sweepPageSize),
				client.MatchingFieldsSelector{Selector: fields.OneTermEqualSelector(webhooksv1alpha1.PhaseField, string(phase))},
			}
			for cont := ""; ; {
				var list webhooksv1alpha1.WebhookDeliveryList
				if err := s.reader.List(ctx, &list, append(opts, client.Continue(cont))...); err != nil {
					return deleted, err
				}
				for i := range list.Items {
					d := &list.Items[i]
					if d.Status.CompletionTime == nil || now.Before(d.Status.CompletionTime.Add(retention)) {
						continue
					}
					err := s.writer.Delete(ctx, d, client.Preconditions{UID: &d.UID, ResourceVersion: &d.ResourceVersion})
					switch {
					case err == nil:
						deleted++
					case apierrors.IsNotFound(err) || apierrors.IsConflict(err):
						// gone, or changed since the list (a manual retry): the next sweep decides
					default:
						return deleted, err
					}
				}
				if cont = list.Continue; cont == "" {
					break
				}
			}
		}
	}
	return deleted, nil
}

// namespacesOrAll is the namespaces to list in; "" lists in all.
func namespacesOrAll(namespaces []string) []string {
	if len(namespaces) == 0 {
		return []string{""}
	}
	return namespaces
}
