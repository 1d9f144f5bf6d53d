package controllers

import (
	"fmt"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
)

// The pure decisions of the endpoint controller about throttling: what status shows, and when
// to look again. Table-tested in webhookendpoint_status_test.go.

// throttleStatus is the throttling part of an endpoint's status.
type throttleStatus struct {
	waiting int32
	until   *metav1.Time
}

// same reports whether status already shows t.
func (t throttleStatus) same(s *webhooksv1alpha1.WebhookEndpointStatus) bool {
	return t.waiting == s.ThrottledDeliveries && t.until.Equal(s.ThrottledUntil)
}

// lookAgain is when the endpoint's status needs another look while deliveries wait: at the
// next interval (a current count) or when the last one is due (the end of throttling),
// whichever is first. 0: nothing waits.
func (t throttleStatus) lookAgain(now time.Time, interval time.Duration) time.Duration {
	if t.waiting == 0 || t.until == nil {
		return 0
	}
	return max(min(interval, t.until.Sub(now)), time.Millisecond)
}

// setThrottled sets the Throttled condition of an endpoint with spec.rateLimit from the
// throttling fields of its status, and removes it from an endpoint without one. It depends on
// status only, so it causes no write of its own.
func setThrottled(ep *webhooksv1alpha1.WebhookEndpoint) {
	rl := ep.Spec.RateLimit
	if rl == nil {
		meta.RemoveStatusCondition(&ep.Status.Conditions, webhooksv1alpha1.ConditionThrottled)
		return
	}
	c := metav1.Condition{Type: webhooksv1alpha1.ConditionThrottled, ObservedGeneration: ep.Generation,
		Status: metav1.ConditionFalse, Reason: webhooksv1alpha1.ReasonWithinRateLimit,
		Message: fmt.Sprintf("no delivery waits for spec.rateLimit (%s: one request every %s)", rl, rl.Interval())}
	if n := ep.Status.ThrottledDeliveries; n > 0 {
		c.Status, c.Reason = metav1.ConditionTrue, webhooksv1alpha1.ReasonRateLimited
		c.Message = fmt.Sprintf("%d deliveries wait for their turn under spec.rateLimit (%s: one request every %s)", n, rl, rl.Interval())
		if u := ep.Status.ThrottledUntil; u != nil {
			c.Message += fmt.Sprintf("; the last of them is due at %s", u.UTC().Format(time.RFC3339))
		}
		c.Message += "; they do not fail nor use retries while they wait"
	}
	meta.SetStatusCondition(&ep.Status.Conditions, c)
}
