package controllers

import (
	"context"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
)

// An endpoint that sets no retryPolicy, as the API server stores it, is retried on the schedule
// README.md documents ("The default retry schedule"): ten retries from 30s, doubling, capped at
// 4h, 8h15m30s in all, and with the most jitter (10%) every wait 10% longer, about 9h5m in all.
// The policy comes from the API's defaults, where the dispatcher and the API types meet, so a
// changed default fails here until the README's table changes with it.
func TestDefaultRetryScheduleIsTheDocumentedOne(t *testing.T) {
	ns := env.Namespace(t)
	ep := &webhooksv1alpha1.WebhookEndpoint{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "defaults"},
		Spec: webhooksv1alpha1.WebhookEndpointSpec{
			URL:              "https://hooks.example.com/docrouter",
			EventTypes:       []string{"*"},
			SigningSecretRef: &webhooksv1alpha1.SecretKeyRef{Name: "signing", Key: "key"},
		},
	}
	create(t, ep)
	stored := &webhooksv1alpha1.WebhookEndpoint{}
	if err := env.Client.Get(context.Background(), client.ObjectKeyFromObject(ep), stored); err != nil {
		t.Fatal(err)
	}
	p := policyFor(stored)

	// The README's table: retry, wait, wait with the most jitter, time since the first attempt.
	m := time.Minute
	table := []struct{ wait, jittered, since time.Duration }{
		{30 * time.Second, 33 * time.Second, 30 * time.Second},
		{1 * m, 1*m + 6*time.Second, 1*m + 30*time.Second},
		{2 * m, 2*m + 12*time.Second, 3*m + 30*time.Second},
		{4 * m, 4*m + 24*time.Second, 7*m + 30*time.Second},
		{8 * m, 8*m + 48*time.Second, 15*m + 30*time.Second},
		{16 * m, 17*m + 36*time.Second, 31*m + 30*time.Second},
		{32 * m, 35*m + 12*time.Second, 63*m + 30*time.Second},
		{64 * m, 70*m + 24*time.Second, 127*m + 30*time.Second},
		{128 * m, 140*m + 48*time.Second, 255*m + 30*time.Second},
		{240 * m, 264 * m, 495*m + 30*time.Second},
	}
	schedule := p.Schedule()
	if len(schedule) != len(table) {
		t.Fatalf("the default policy retries %d times, the README says %d: %v", len(schedule), len(table), schedule)
	}
	var since, jittered time.Duration
	for i, row := range table {
		n := int32(i + 1)
		since += schedule[i]
		if schedule[i] != row.wait || since != row.since {
			t.Errorf("retry %d waits %v (%v since the first attempt), the README says %v (%v)", n, schedule[i], since, row.wait, row.since)
		}
		// jitter 1 is the top of [0, 1): the most a wait can grow.
		j := p.Delay(n, 0, 1)
		jittered += j
		if j != row.jittered {
			t.Errorf("retry %d waits at most %v with jitter, the README says %v", n, j, row.jittered)
		}
	}
	if attempts := int32(len(table) + 1); p.Exhausted(attempts-1) || !p.Exhausted(attempts) {
		t.Errorf("Exhausted(%d) = %v, Exhausted(%d) = %v: a delivery is given up after its first attempt and %d retries",
			attempts-1, p.Exhausted(attempts-1), attempts, p.Exhausted(attempts), len(table))
	}
	if want := 8*time.Hour + 15*m + 30*time.Second; since != want {
		t.Errorf("the retries take %v in all, the README says %v", since, want)
	}
	// The README rounds 9h5m3s to "at most 9h5m".
	if jittered.Truncate(m) != 9*time.Hour+5*m {
		t.Errorf("with the most jitter the retries take %v in all, the README says at most 9h5m", jittered)
	}
}
