package controllers

import (
	"context"
	"time"

	"golang.org/x/sync/errgroup"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
	"github.com/docrouter/webhook-operator/internal/history"
)

// sweeper takes finished deliveries out of etcd. A finished delivery leaves when its time in
// etcd is over (--succeeded-retention, --failed-retention: long enough for kubectl get, wait
// and an immediate retry annotation), or within a quarter of a second when more than
// --max-finished-deliveries wait, the oldest first: a time alone does not bound etcd at a high
// rate.
//
// With a history store, a delivery leaves only once the store holds it at exactly the version
// in etcd (UID and resourceVersion): a delivery the archiver has not written (a restart, a
// store that was down) is read from etcd and archived first, and one that changed since (a
// manual retry) waits for the next sweep. The store is told it left before it is deleted, so
// that a crash between the two leaves a record that says so and a delivery the next sweep
// deletes. Without a store, deliveries leave after their time without a record.
//
// It works from the finished index (finished.go), not from lists: one delete per delivery,
// and a GET only for a delivery that must be archived from etcd.
type sweeper struct {
	index  *finishedIndex
	reader client.Reader // the API reader: finished deliveries are not in the cache
	writer client.Writer
	store  history.Store // nil: no history
	health *storeHealth
	clock  clock.PassiveClock
	opts   Options
}

const (
	// sweepPageSize bounds one list request of the finished index and one sweep batch.
	sweepPageSize = 500
	// sweepDeletes is how many deletes run at once.
	sweepDeletes = 16
	// overLimitGather is how long deliveries that finish above --max-finished-deliveries gather
	// before a sweep takes them out.
	overLimitGather = 250 * time.Millisecond
	// pruneInterval is how often records past --history-retention are deleted.
	pruneInterval = 10 * time.Minute
	// pruneBatch bounds the records of one prune transaction.
	pruneBatch = 1000
)

// NeedLeaderElection: one replica sweeps.
func (s *sweeper) NeedLeaderElection() bool { return true }

// Start sweeps every RetentionSweepInterval, and at once when the index grows past the limit,
// until ctx ends; it prunes the history every pruneInterval.
func (s *sweeper) Start(ctx context.Context) error {
	log := ctrl.LoggerFrom(ctx).WithName("sweeper")
	ticker := time.NewTicker(s.opts.RetentionSweepInterval)
	defer ticker.Stop()
	lastPrune := time.Time{}
	for {
		deleted, err := s.sweep(ctx)
		switch {
		case err != nil && ctx.Err() == nil:
			log.Error(err, "sweep incomplete; the next sweep continues", "deleted", deleted)
		case deleted > 0:
			log.V(1).Info("finished deliveries left etcd", "deleted", deleted)
		}
		if now := s.clock.Now(); s.store != nil && s.opts.HistoryRetention > 0 && now.Sub(lastPrune) >= pruneInterval {
			lastPrune = now
			n, err := s.store.Prune(ctx, now.Add(-s.opts.HistoryRetention), pruneBatch)
			s.health.observe(ctx, err)
			if err != nil && ctx.Err() == nil {
				log.Error(err, "pruning the history failed; the next prune continues")
			} else if n > 0 {
				log.Info("deleted records past the history retention", "records", n, "retention", s.opts.HistoryRetention)
			}
		}
		if !s.wait(ctx, ticker.C) {
			return nil
		}
	}
}

// wait returns when the next sweep is due: at the next tick, or soon after a delivery finishes
// above --max-finished-deliveries. It returns false when ctx ends.
func (s *sweeper) wait(ctx context.Context, tick <-chan time.Time) bool {
	for {
		select {
		case <-ctx.Done():
			return false
		case <-tick:
			return true
		case <-s.index.changed:
			if s.opts.MaxFinishedDeliveries <= 0 || s.index.count() <= s.opts.MaxFinishedDeliveries {
				continue // nothing is over the limit: the ticker's sweep takes what is due
			}
			// Over the limit: the deliveries that finish meanwhile gather for a moment, so that
			// one sweep takes them together (one archive check, one MarkRemoved transaction)
			// rather than one sweep each.
			sleep(ctx, overLimitGather)
			return ctx.Err() == nil
		}
	}
}

// due returns the finished deliveries that should leave etcd now, the oldest first: the oldest
// beyond --max-finished-deliveries, and those whose time in etcd is over.
func (s *sweeper) due() []finishedDelivery {
	over := 0
	if s.opts.MaxFinishedDeliveries > 0 {
		over = max(s.index.count()-s.opts.MaxFinishedDeliveries, 0)
	}
	return s.index.due(s.clock.Now(), over, func(phase webhooksv1alpha1.DeliveryPhase) time.Duration {
		if phase == webhooksv1alpha1.PhaseFailed {
			return s.opts.FailedRetention
		}
		return s.opts.SucceededRetention
	})
}

// sweep deletes the due deliveries, archiving first what the store lacks, and returns how many
// it deleted.
func (s *sweeper) sweep(ctx context.Context) (int, error) {
	due := s.due()
	deleted := 0
	for start := 0; start < len(due); start += sweepPageSize {
		batch := due[start:min(start+sweepPageSize, len(due))]
		if s.store != nil {
			var err error
			if batch, err = s.archived(ctx, batch); err != nil {
				return deleted, err
			}
			keys := make([]history.Key, len(batch))
			for i, d := range batch {
				keys[i] = history.Key{Namespace: d.key.Namespace, Name: d.key.Name}
			}
			err = s.store.MarkRemoved(ctx, keys, s.clock.Now())
			s.health.observe(ctx, err)
			if err != nil {
				return deleted, err
			}
		}
		n, err := s.delete(ctx, batch)
		deleted += n
		if err != nil {
			return deleted, err
		}
	}
	return deleted, nil
}

// archived returns the deliveries of batch that the store holds at their version in etcd,
// after archiving from etcd those it lacks.
func (s *sweeper) archived(ctx context.Context, batch []finishedDelivery) ([]finishedDelivery, error) {
	checks := make([]history.ArchiveCheck, len(batch))
	for i, d := range batch {
		checks[i] = history.ArchiveCheck{Key: history.Key{Namespace: d.key.Namespace, Name: d.key.Name},
			UID: d.uid, ResourceVersion: d.resourceVersion}
	}
	ok, err := s.store.Archived(ctx, checks)
	s.health.observe(ctx, err)
	if err != nil {
		return nil, err
	}
	var ready []finishedDelivery
	var records []history.Record
	var caught []finishedDelivery
	for _, d := range batch {
		if ok[d.uid] {
			ready = append(ready, d)
			continue
		}
		obj := &webhooksv1alpha1.WebhookDelivery{}
		if err := s.reader.Get(ctx, d.key, obj); err != nil {
			if apierrors.IsNotFound(err) {
				s.index.forget(d.key, d.uid)
				continue
			}
			return nil, err
		}
		if obj.UID != d.uid || obj.ResourceVersion != d.resourceVersion || !obj.Status.Phase.Finished() {
			continue // changed since the index saw it: the next sweep has its new version
		}
		records = append(records, recordOf(obj))
		caught = append(caught, d)
	}
	if len(records) > 0 {
		err := s.store.Write(ctx, records)
		s.health.observe(ctx, err)
		if err != nil {
			return nil, err
		}
		ready = append(ready, caught...)
	}
	return ready, nil
}

// delete deletes deliveries by UID and resourceVersion, so that one retried since the index saw
// it is kept, and returns how many it deleted.
func (s *sweeper) delete(ctx context.Context, batch []finishedDelivery) (int, error) {
	deleted := make([]bool, len(batch))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(sweepDeletes)
	for i, d := range batch {
		g.Go(func() error {
			obj := &webhooksv1alpha1.WebhookDelivery{}
			obj.Namespace, obj.Name = d.key.Namespace, d.key.Name
			uid, rv := d.uid, d.resourceVersion
			err := s.writer.Delete(gctx, obj, client.Preconditions{UID: &uid, ResourceVersion: &rv})
			switch {
			case err == nil, apierrors.IsNotFound(err):
				deleted[i] = true
				s.index.forget(d.key, d.uid)
				return nil
			case apierrors.IsConflict(err):
				return nil // changed since the index saw it (a manual retry): the next sweep decides
			}
			return err
		})
	}
	err := g.Wait()
	n := 0
	for _, ok := range deleted {
		if ok {
			n++
		}
	}
	return n, err
}

// namespacesOrAll is the namespaces to list in; "" lists in all.
func namespacesOrAll(namespaces []string) []string {
	if len(namespaces) == 0 {
		return []string{""}
	}
	return namespaces
}
