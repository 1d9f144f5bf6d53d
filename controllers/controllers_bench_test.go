package controllers

import (
	"fmt"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"

	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
)

// BenchmarkFanOut builds the deliveries of one event for five subscribed endpoints, as the
// intake's fan-out does before it creates them: subscription check, name, labels.
func BenchmarkFanOut(b *testing.B) {
	var endpoints []webhooksv1alpha1.WebhookEndpoint
	for i := range 5 {
		ep := webhooksv1alpha1.WebhookEndpoint{}
		ep.Namespace, ep.Name = "ns", fmt.Sprintf("endpoint-%d", i)
		ep.Spec.EventTypes = []string{webhooksv1alpha1.EventLLMCompleted, webhooksv1alpha1.EventDocumentUploaded}
		endpoints = append(endpoints, ep)
	}
	event := heavyDelivery("").Spec.Event
	b.ReportAllocs()
	for b.Loop() {
		n := 0
		for i := range endpoints {
			if endpoints[i].Spec.Subscribes(event.Type) {
				_ = webhooksv1alpha1.NewDelivery("ns", endpoints[i].Name, event)
				n++
			}
		}
		if n != len(endpoints) {
			b.Fatalf("%d deliveries, want %d", n, len(endpoints))
		}
	}
}

// BenchmarkInflightLimiter is the per-attempt cost of the per-endpoint in-flight limit.
func BenchmarkInflightLimiter(b *testing.B) {
	l := newInflightLimiter(1024, nil)
	ep := types.NamespacedName{Namespace: "ns", Name: "crm"}
	d := types.NamespacedName{Namespace: "ns", Name: "crm-0123456789abcdef"}
	b.ReportAllocs()
	for b.Loop() {
		if !l.tryAcquire(ep, d, 16) {
			b.Fatal("no slot")
		}
		l.release(ep)
	}
}

// BenchmarkSweeperDue is the sweeper's look at a full finished index (--max-finished-deliveries
// 5,000, one over): which deliveries leave, the oldest first. Finish times come from
// managedFields, a second apart at best, so many are equal and the names decide.
func BenchmarkSweeperDue(b *testing.B) {
	const limit = 5000
	x := newFinishedIndex(nil, nil, clock.RealClock{}, nil)
	base := time.Now().Add(-time.Minute)
	for i := range limit + 1 {
		key := types.NamespacedName{Namespace: "docrouter", Name: fmt.Sprintf("crm-%016x", i*7919)}
		x.entries[key] = finishedEntry{uid: types.UID(fmt.Sprint(i)), resourceVersion: fmt.Sprint(i),
			phase: webhooksv1alpha1.PhaseSucceeded, finishedAt: base.Add(time.Duration(i/50) * time.Second)}
	}
	s := &sweeper{index: x, clock: clock.RealClock{}, opts: Options{SucceededRetention: time.Hour, MaxFinishedDeliveries: limit}}
	b.ReportAllocs()
	for b.Loop() {
		if due := s.due(); len(due) != 1 {
			b.Fatalf("%d due, want 1", len(due))
		}
	}
}
