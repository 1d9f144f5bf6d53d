package controllers

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
	"github.com/docrouter/webhook-operator/dispatcher"
	"github.com/docrouter/webhook-operator/internal/testenv/testreceiver"
)

// When the status write after an attempt fails (the API server is unreachable), the next
// reconcile writes the held result instead of sending the event again: an outage does not turn
// into one duplicate per attempt made during it.
func TestFailedStatusWriteIsRetriedWithoutResending(t *testing.T) {
	g := NewWithT(t)
	ns := env.Namespace(t)
	signingSecret(t, ns)
	rcv := testreceiver.New(t, testKey, http.StatusOK)
	create(t, newEndpoint(ns, "flaky-api", rcv.URL))
	d := webhooksv1alpha1.NewDelivery(ns, "flaky-api", newEvent("evt-held"))
	create(t, d)

	direct, err := client.NewWithWatch(env.Config, client.Options{Scheme: env.Scheme})
	g.Expect(err).NotTo(HaveOccurred())
	failures := 2
	c := interceptor.NewClient(direct, interceptor.Funcs{
		SubResourcePatch: func(ctx context.Context, c client.Client, sub string, obj client.Object, patch client.Patch, opts ...client.SubResourcePatchOption) error {
			if failures > 0 {
				failures--
				return errors.New("connection refused (injected)")
			}
			return c.SubResource(sub).Patch(ctx, obj, patch, opts...)
		},
	})

	opts := testOptions()
	r := &WebhookDeliveryReconciler{
		Client: c, Sender: dispatcher.NewSender(dispatcher.SenderOptions{}), Recorder: discardRecorder{},
		Clock: clock.RealClock{}, Jitter: func() float64 { return 0 }, Options: opts,
		secrets: newSecretReader(env.Client, 0, time.Now), health: newEndpointHealth(),
		attempts: newAttemptRunner(1, nil), limiter: newInflightLimiter(0, nil), expectations: newAttemptExpectations(), rates: newRateLimiter(nil),
	}
	req := ctrl.Request{NamespacedName: client.ObjectKeyFromObject(d)}

	_, err = r.Reconcile(context.Background(), req) // hands the attempt over: it sends; the status write fails
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(r.attempts.waitIdle(10 * time.Second)).To(BeTrue())
	g.Expect(rcv.Count()).To(Equal(1))
	_, err = r.Reconcile(context.Background(), req) // writes the held status; fails again
	g.Expect(err).To(HaveOccurred())
	_, err = r.Reconcile(context.Background(), req) // writes the held status
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(rcv.Count()).To(Equal(1), "the event is not sent again")

	got := getDelivery(g, ns, d.Name)
	g.Expect(got.Status.Phase).To(Equal(webhooksv1alpha1.PhaseSucceeded))
	g.Expect(got.Status.Attempts).To(Equal(int32(1)))

	// Once the API shows the write, later reconciles leave the delivery alone.
	_, err = r.Reconcile(context.Background(), req)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(rcv.Count()).To(Equal(1))
}

// discardRecorder drops Events, for reconcilers driven by hand in tests.
type discardRecorder struct{}

func (discardRecorder) Eventf(runtime.Object, runtime.Object, string, string, string, string, ...any) {
}
