package controllers

import (
	"context"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"

	"github.com/docrouter/webhook-operator/internal/history"
	"github.com/docrouter/webhook-operator/internal/metrics"
)

// Reasons of the Events about the history store, recorded on the operator's Pod.
const (
	EventReasonHistoryStoreUnavailable = "HistoryStoreUnavailable"
	EventReasonHistoryStoreAvailable   = "HistoryStoreAvailable"
)

// storeHealth says whether the history store answers: the gauge
// docrouter_webhook_history_store_up, and on each change a log line and an Event on the
// operator's Pod (when POD_NAME and POD_NAMESPACE say which it is). Every use of the store
// reports to it, and it pings the store itself every storePingInterval, on every replica.
type storeHealth struct {
	store    history.Store
	recorder events.EventRecorder
	// pod is the operator's Pod, the object of the Events; nil outside a cluster.
	pod *corev1.Pod

	mu      sync.Mutex
	known   bool
	up      bool
	lastErr string
}

const storePingInterval = 10 * time.Second

func newStoreHealth(store history.Store, recorder events.EventRecorder, pod *corev1.Pod) *storeHealth {
	return &storeHealth{store: store, recorder: recorder, pod: pod}
}

// NeedLeaderElection is false: every replica uses the store (the intake, the history API).
func (h *storeHealth) NeedLeaderElection() bool { return false }

// Start pings the store until ctx ends.
func (h *storeHealth) Start(ctx context.Context) error {
	t := time.NewTicker(storePingInterval)
	defer t.Stop()
	for {
		pingCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := h.store.Ping(pingCtx)
		cancel()
		if ctx.Err() != nil {
			return nil
		}
		h.observe(ctx, err)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// observe records the outcome of a use of the store. A nil storeHealth records nothing.
func (h *storeHealth) observe(ctx context.Context, err error) {
	if h == nil || ctx.Err() != nil {
		return
	}
	up := err == nil
	h.mu.Lock()
	changed := !h.known || h.up != up
	h.known, h.up = true, up
	if err != nil {
		h.lastErr = err.Error()
	}
	h.mu.Unlock()
	if up {
		metrics.HistoryStoreUp.Set(1)
	} else {
		metrics.HistoryStoreUp.Set(0)
	}
	if !changed {
		return
	}
	log := ctrl.LoggerFrom(ctx).WithName("history")
	if up {
		log.Info("the history store answers", "engine", h.store.Engine())
		h.event(corev1.EventTypeNormal, EventReasonHistoryStoreAvailable,
			"the history store answers: finished deliveries are archived and leave etcd, and the backlog is served")
		return
	}
	log.Error(err, "the history store does not answer: deliveries go on; finished ones stay in etcd and new events beyond the working set are refused until it answers", "engine", h.store.Engine())
	h.event(corev1.EventTypeWarning, EventReasonHistoryStoreUnavailable,
		"the history store does not answer ("+err.Error()+"): deliveries go on; finished ones stay in etcd and new events beyond the working set are refused until it answers")
}

// available reports whether the store answered the last time it was used (true before any use).
func (h *storeHealth) available() bool {
	if h == nil {
		return false
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	return !h.known || h.up
}

func (h *storeHealth) event(eventType, reason, message string) {
	if h.pod == nil || h.recorder == nil {
		return
	}
	h.recorder.Eventf(h.pod, nil, eventType, reason, "History", "%s", message)
}

func timeOf(t *metav1.Time) *time.Time {
	if t == nil {
		return nil
	}
	v := t.Time
	return &v
}
