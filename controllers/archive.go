package controllers

import (
	"context"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"

	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
	"github.com/docrouter/webhook-operator/internal/history"
	"github.com/docrouter/webhook-operator/internal/metrics"
)

// archiver copies deliveries into the history store behind the controller's back. After each
// status write of a delivery, note keeps the delivery's latest snapshot, one per delivery (a
// newer one replaces an older one not yet written), and a loop writes the snapshots in
// batches, one transaction each, as soon as a batch is full or archiveInterval has passed. An
// attempt never waits for the store: a slow or unreachable store delays the history, not the
// deliveries.
//
// Every attempt reaches the store although status keeps the last 20: the store merges the
// attempts of each snapshot with those it holds, and a delivery's status is written (and
// noted) after each attempt. What is pending is bounded by maxArchivePending snapshots: beyond
// it, snapshots of unfinished deliveries are dropped (their next change is noted again) and
// finished ones are kept; a finished delivery whose snapshot was lost anyway (a restart) is
// archived by the sweeper from etcd before it leaves (retention.go), so no record is lost.
type archiver struct {
	store  history.Store
	clock  clock.PassiveClock
	health *storeHealth

	mu      sync.Mutex
	pending map[types.UID]*pendingRecord
	kick    chan struct{}
}

type pendingRecord struct {
	record history.Record
	// noted is when the snapshot was taken (the archive lag of a finished one starts there).
	noted time.Time
}

const (
	// archiveBatch is the most records of one store transaction.
	archiveBatch = 500
	// archiveInterval is the longest a snapshot waits for a batch to fill.
	archiveInterval = 250 * time.Millisecond
	// maxArchivePending bounds the snapshots waiting for the store.
	maxArchivePending = 20000
)

func newArchiver(store history.Store, clk clock.PassiveClock, health *storeHealth) *archiver {
	return &archiver{store: store, clock: clk, health: health,
		pending: map[types.UID]*pendingRecord{}, kick: make(chan struct{}, 1)}
}

// NeedLeaderElection: the leader writes deliveries, so it archives them.
func (a *archiver) NeedLeaderElection() bool { return true }

// note keeps the delivery as it is now, to be written to the store. A nil archiver (no store)
// keeps nothing.
func (a *archiver) note(d *webhooksv1alpha1.WebhookDelivery) {
	if a == nil {
		return
	}
	rec := recordOf(d)
	a.mu.Lock()
	_, known := a.pending[d.UID]
	if !known && len(a.pending) >= maxArchivePending && !rec.Phase.Finished() {
		a.mu.Unlock()
		metrics.HistoryDropped.Inc()
		return
	}
	a.pending[d.UID] = &pendingRecord{record: rec, noted: a.clock.Now()}
	full := len(a.pending) >= archiveBatch
	n := len(a.pending)
	a.mu.Unlock()
	metrics.HistoryPending.Set(float64(n))
	if full {
		select {
		case a.kick <- struct{}{}:
		default:
		}
	}
}

// Start writes pending snapshots until ctx ends, then once more.
func (a *archiver) Start(ctx context.Context) error {
	log := ctrl.LoggerFrom(ctx).WithName("archiver")
	tick := time.NewTicker(archiveInterval)
	defer tick.Stop()
	backoff := time.Duration(0)
	for {
		select {
		case <-ctx.Done():
			flushCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			for a.flush(flushCtx) > 0 {
			}
			cancel()
			return nil
		case <-tick.C:
		case <-a.kick:
		}
		if backoff > 0 {
			sleep(ctx, backoff)
		}
		for {
			n := a.flush(ctx)
			if n < 0 {
				backoff = min(max(2*backoff, time.Second), 30*time.Second)
				log.V(1).Info("the history store did not take a batch; trying again", "in", backoff)
				break
			}
			backoff = 0
			if n < archiveBatch {
				break
			}
		}
	}
}

// flush writes one batch of pending snapshots, finished ones first, and returns how many it
// wrote, or -1 when the store refused them.
func (a *archiver) flush(ctx context.Context) int {
	a.mu.Lock()
	batch := make([]*pendingRecord, 0, min(len(a.pending), archiveBatch))
	for _, finishedFirst := range []bool{true, false} {
		for _, p := range a.pending {
			if len(batch) == archiveBatch {
				break
			}
			if p.record.Phase.Finished() == finishedFirst {
				batch = append(batch, p)
			}
		}
	}
	a.mu.Unlock()
	if len(batch) == 0 {
		return 0
	}
	records := make([]history.Record, len(batch))
	for i, p := range batch {
		records[i] = p.record
	}
	err := a.store.Write(ctx, records)
	a.health.observe(ctx, err)
	if err != nil {
		metrics.HistoryWrites.WithLabelValues(metrics.ResultFailed).Inc()
		return -1
	}
	metrics.HistoryWrites.WithLabelValues(metrics.ResultSucceeded).Inc()
	now := a.clock.Now()
	a.mu.Lock()
	for _, p := range batch {
		if a.pending[p.record.UID] == p { // not replaced by a newer snapshot meanwhile
			delete(a.pending, p.record.UID)
		}
		if p.record.Phase.Finished() {
			metrics.ArchiveLag.Observe(now.Sub(p.noted).Seconds())
		}
	}
	n := len(a.pending)
	a.mu.Unlock()
	metrics.HistoryPending.Set(float64(n))
	return len(batch)
}

// recordOf is the history record of a delivery as it is now.
func recordOf(d *webhooksv1alpha1.WebhookDelivery) history.Record {
	s := &d.Status
	r := history.Record{
		Namespace: d.Namespace, Name: d.Name, UID: d.UID, ResourceVersion: d.ResourceVersion,
		Endpoint: d.Spec.EndpointRef.Name, Event: d.Spec.Event, Labels: copyLabels(d.Labels),
		Phase: s.Phase, AttemptCount: s.Attempts, LastStatusCode: s.LastStatusCode, LastError: s.LastError,
		LastRetryToken: s.LastRetryToken, CreationTime: d.CreationTimestamp.Time,
		LastAttemptTime: timeOf(s.LastAttemptTime), NextAttemptTime: timeOf(s.NextAttemptTime),
		CompletionTime: timeOf(s.CompletionTime),
		Attempts:       append([]webhooksv1alpha1.Attempt(nil), s.History...),
	}
	if c := meta.FindStatusCondition(s.Conditions, webhooksv1alpha1.ConditionReady); c != nil {
		r.Reason, r.Message = c.Reason, c.Message
	}
	return r
}

func copyLabels(in map[string]string) map[string]string {
	if in == nil {
		return nil
	}
	out := make(map[string]string, len(in))
	for k, v := range in {
		out[k] = v
	}
	return out
}
