package controllers

import (
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
)

func TestSetThrottled(t *testing.T) {
	until := metav1.NewTime(t0.Add(9 * time.Second))
	for _, tc := range []struct {
		name      string
		rate      *webhooksv1alpha1.RateLimit
		waiting   int32
		until     *metav1.Time
		want      metav1.ConditionStatus // "" for no condition
		reason    string
		inMessage []string
	}{
		{name: "no rate limit: no condition"},
		{name: "rate limit, nothing waits", rate: &webhooksv1alpha1.RateLimit{Requests: 5},
			want: metav1.ConditionFalse, reason: webhooksv1alpha1.ReasonWithinRateLimit,
			inMessage: []string{"no delivery waits for spec.rateLimit (5 requests per 1s: one request every 200ms)"}},
		{name: "deliveries wait", rate: &webhooksv1alpha1.RateLimit{Requests: 100, PeriodSeconds: ptr.To[int32](60)}, waiting: 45, until: &until,
			want: metav1.ConditionTrue, reason: webhooksv1alpha1.ReasonRateLimited,
			inMessage: []string{"45 deliveries wait for their turn", "100 requests per 1m0s: one request every 600ms", "the last of them is due at 2026-11-30T12:00:09Z", "do not fail nor use retries"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ep := &webhooksv1alpha1.WebhookEndpoint{}
			ep.Generation = 3
			ep.Spec.RateLimit = tc.rate
			ep.Status.ThrottledDeliveries, ep.Status.ThrottledUntil = tc.waiting, tc.until
			// A condition left from an earlier spec is replaced or removed.
			ep.Status.Conditions = []metav1.Condition{{Type: webhooksv1alpha1.ConditionThrottled, Status: metav1.ConditionTrue, Reason: "Old"}}
			setThrottled(ep)
			c := condition(ep.Status.Conditions, webhooksv1alpha1.ConditionThrottled)
			if tc.want == "" {
				if c.Type != "" {
					t.Fatalf("want no Throttled condition, got %+v", c)
				}
				return
			}
			if c.Status != tc.want || c.Reason != tc.reason || c.ObservedGeneration != 3 {
				t.Fatalf("condition = %+v, want %s %s", c, tc.want, tc.reason)
			}
			for _, m := range tc.inMessage {
				if !strings.Contains(c.Message, m) {
					t.Errorf("message %q does not say %q", c.Message, m)
				}
			}
		})
	}
}

func TestThrottleLookAgain(t *testing.T) {
	soon := metav1.NewTime(t0.Add(3 * time.Second))
	late := metav1.NewTime(t0.Add(time.Hour))
	past := metav1.NewTime(t0.Add(-time.Second))
	for _, tc := range []struct {
		t    throttleStatus
		want time.Duration
	}{
		{throttleStatus{}, 0},
		{throttleStatus{waiting: 4, until: &soon}, 3 * time.Second},
		{throttleStatus{waiting: 400, until: &late}, 10 * time.Second},
		{throttleStatus{waiting: 1, until: &past}, time.Millisecond},
	} {
		if got := tc.t.lookAgain(t0, 10*time.Second); got != tc.want {
			t.Errorf("%+v: look again after %s, want %s", tc.t, got, tc.want)
		}
	}
}
