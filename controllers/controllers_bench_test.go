package controllers

import (
	"fmt"
	"testing"

	"k8s.io/apimachinery/pkg/types"

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
