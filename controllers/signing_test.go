package controllers

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
	"github.com/docrouter/webhook-operator/dispatcher"
	"github.com/docrouter/webhook-operator/internal/testenv/testreceiver"
)

// shiftedClock is the real clock moved forward by a settable offset: the controllers can be
// taken past a rotation's expiry while the sender's timestamps stay real, so that receivers
// (the official library checks the timestamp against time.Now) still accept them.
type shiftedClock struct{ offset atomic.Int64 }

func (c *shiftedClock) Now() time.Time                  { return time.Now().Add(time.Duration(c.offset.Load())) }
func (c *shiftedClock) Since(t time.Time) time.Duration { return c.Now().Sub(t) }
func (c *shiftedClock) advance(d time.Duration)         { c.offset.Add(int64(d)) }

func startOperatorWithClock(t *testing.T, ns string, clk *shiftedClock) {
	t.Helper()
	env.StartManager(t, env.ManagerOptions(ns), func(ctx context.Context, mgr ctrl.Manager) error {
		// The clock moves hours ahead: finished deliveries stay in etcd whatever their time.
		opts := testOptions()
		opts.SucceededRetention, opts.FailedRetention = 0, 0
		_, err := Setup(ctx, mgr, opts, Deps{Sender: dispatcher.NewSender(dispatcher.SenderOptions{}), Clock: clk})
		return err
	})
}

func newWhsec(t *testing.T) string {
	t.Helper()
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		t.Fatal(err)
	}
	return "whsec_" + base64.StdEncoding.EncodeToString(key)
}

// newDocRouterKey is a random key for the DocRouter scheme (raw bytes, not in whsec_ form).
func newDocRouterKey(t *testing.T) string {
	t.Helper()
	return "docrouter-" + newWhsec(t)[6:]
}

func secretWith(ns, name, value string) *corev1.Secret {
	return &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Data: map[string][]byte{"key": []byte(value)}}
}

// newKeyReceiver is a customer's receiver on loopback: it accepts a request (204) when verify
// accepts it with the receiver's current key, and answers 401 otherwise. The key can be changed,
// as a customer does during a rotation.
func newKeyReceiver(tb testing.TB, key string, verify testreceiver.VerifyFunc) *testreceiver.Receiver {
	tb.Helper()
	r := testreceiver.New(tb, []byte(key), http.StatusNoContent)
	r.SetVerifier(verify)
	return r
}

// verifyStandardWebhooks is the receiver code of docs/signatures.md: the official library.
func verifyStandardWebhooks(secret []byte, header http.Header, body []byte) error {
	wh, err := standardwebhooks.NewWebhook(string(secret))
	if err != nil {
		return err
	}
	return wh.Verify(body, header)
}

// verifyDocRouterEither is the receiver code of docs/signatures.md for the product scheme during
// a rotation: accept the primary signature or, failing that, the previous one.
func verifyDocRouterEither(key []byte, header http.Header, body []byte) error {
	ts := header.Get(dispatcher.HeaderTimestamp)
	err := dispatcher.Verify(key, ts, header.Get(dispatcher.HeaderSignature), body, time.Now(), dispatcher.DefaultTolerance)
	if errors.Is(err, dispatcher.ErrSignatureInvalid) && header.Get(dispatcher.HeaderSignaturePrevious) != "" {
		err = dispatcher.Verify(key, ts, header.Get(dispatcher.HeaderSignaturePrevious), body, time.Now(), dispatcher.DefaultTolerance)
	}
	return err
}

// An endpoint with signatureScheme StandardWebhooks is delivered to a receiver that verifies
// with the official Standard Webhooks library; webhook-id is the same on every attempt.
func TestStandardWebhooksDeliveryVerifiesWithOfficialLibrary(t *testing.T) {
	g := NewWithT(t)
	ns := env.Namespace(t)
	// A fixed, test-only secret, so that the request this test logs (and docs/signatures.md
	// shows) can be checked by a reader with the official library.
	const secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwRk5vZGVtbw=="
	create(t, secretWith(ns, "sw", secret))
	failFirst := atomic.Bool{}
	failFirst.Store(true)
	rcv := newKeyReceiver(t, secret, func(key []byte, h http.Header, body []byte) error {
		if err := verifyStandardWebhooks(key, h, body); err != nil {
			return err
		}
		if failFirst.Swap(false) {
			return errors.New("first attempt refused on purpose, to see a retry")
		}
		return nil
	})
	startOperatorWithClock(t, ns, &shiftedClock{})

	create(t, newEndpoint(ns, "sw", rcv.URL, func(ep *webhooksv1alpha1.WebhookEndpoint) {
		ep.Spec.SignatureScheme = webhooksv1alpha1.SignatureSchemeStandardWebhooks
		ep.Spec.SigningSecretRef = &webhooksv1alpha1.SecretKeyRef{Name: "sw", Key: "key"}
	}))
	d := webhooksv1alpha1.NewDelivery(ns, "sw", newEvent("evt-sw-1"))
	create(t, d)

	g.Eventually(func(g Gomega) {
		got := getDelivery(g, ns, d.Name)
		g.Expect(got.Status.Phase).To(Equal(webhooksv1alpha1.PhaseSucceeded))
		g.Expect(got.Status.Attempts).To(Equal(int32(2)))
	}).WithTimeout(15 * time.Second).Should(Succeed())

	reqs := rcv.Requests()
	g.Expect(reqs).To(HaveLen(2))
	for i, r := range reqs {
		g.Expect(verifyStandardWebhooks([]byte(secret), r.Header, r.Body)).To(Succeed(), "attempt %d", i+1)
		g.Expect(r.Header.Get("webhook-id")).To(Equal("evt-sw-1"), "webhook-id is the event id on every attempt")
		g.Expect(r.Header.Get(dispatcher.HeaderSignature)).To(BeEmpty())
	}
	t.Logf("captured Standard Webhooks request (secret %s):\n%s", secret, reqs[1].Dump())
}

// A StandardWebhooks endpoint whose Secret is not a whsec_ secret is not Ready, with a reason
// and a message that say what is wrong (and not the value); its deliveries wait and go out once
// the Secret is fixed.
func TestStandardWebhooksInvalidSecret(t *testing.T) {
	g := NewWithT(t)
	ns := env.Namespace(t)
	const raw = "a-raw-key-not-in-whsec-form-0123456789"
	create(t, secretWith(ns, "sw", raw))
	secret := newWhsec(t)
	rcv := newKeyReceiver(t, secret, verifyStandardWebhooks)
	startOperatorWithClock(t, ns, &shiftedClock{})

	create(t, newEndpoint(ns, "sw", rcv.URL, func(ep *webhooksv1alpha1.WebhookEndpoint) {
		ep.Spec.SignatureScheme = webhooksv1alpha1.SignatureSchemeStandardWebhooks
		ep.Spec.SigningSecretRef = &webhooksv1alpha1.SecretKeyRef{Name: "sw", Key: "key"}
	}))
	d := webhooksv1alpha1.NewDelivery(ns, "sw", newEvent("evt-sw-invalid"))
	create(t, d)

	g.Eventually(func(g Gomega) {
		ep := getEndpoint(g, ns, "sw")
		ready := condition(ep.Status.Conditions, "Ready")
		g.Expect(ready.Status).To(Equal(metav1.ConditionFalse))
		g.Expect(ready.Reason).To(Equal(webhooksv1alpha1.ReasonInvalidSecret))
		g.Expect(ready.Message).To(ContainSubstring(`must start with "whsec_"`))
		g.Expect(ready.Message).NotTo(ContainSubstring(raw))
	}).WithTimeout(10 * time.Second).Should(Succeed())
	g.Eventually(func(g Gomega) {
		got := getDelivery(g, ns, d.Name)
		g.Expect(got.Status.Attempts).To(BeZero())
		g.Expect(condition(got.Status.Conditions, "Ready").Reason).To(Equal(webhooksv1alpha1.ReasonInvalidSecret))
	}).WithTimeout(10 * time.Second).Should(Succeed())
	g.Expect(rcv.Count()).To(BeZero())

	s := &corev1.Secret{}
	g.Expect(env.Client.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "sw"}, s)).To(Succeed())
	s.Data["key"] = []byte(secret + "\n") // as `echo whsec_... > file` leaves it
	g.Expect(env.Client.Update(context.Background(), s)).To(Succeed())
	g.Eventually(func(g Gomega) {
		g.Expect(getDelivery(g, ns, d.Name).Status.Phase).To(Equal(webhooksv1alpha1.PhaseSucceeded))
	}).WithTimeout(10 * time.Second).Should(Succeed())
}

// A rotation as docs/signatures.md describes it, for each scheme: while the previous secret is
// valid, a receiver that still has the old key and one that has the new key both accept every
// request; after previousSigningSecretExpiresAt only the new key signs, and the deleted old
// Secret holds nothing up.
func TestSigningSecretRotation(t *testing.T) {
	schemes := []struct {
		scheme       webhooksv1alpha1.SignatureScheme
		newKey       func(*testing.T) string
		verify       testreceiver.VerifyFunc
		signatures   func(http.Header) int
		wantMismatch error
	}{
		{webhooksv1alpha1.SignatureSchemeStandardWebhooks, newWhsec, verifyStandardWebhooks,
			func(h http.Header) int { return len(strings.Fields(h.Get("webhook-signature"))) },
			standardwebhooks.ErrNoMatchingSignature},
		{webhooksv1alpha1.SignatureSchemeDocRouter, newDocRouterKey, verifyDocRouterEither,
			func(h http.Header) int {
				n := 0
				for _, v := range []string{h.Get(dispatcher.HeaderSignature), h.Get(dispatcher.HeaderSignaturePrevious)} {
					if v != "" {
						n++
					}
				}
				return n
			},
			dispatcher.ErrSignatureInvalid},
	}
	for _, tc := range schemes {
		t.Run(string(tc.scheme), func(t *testing.T) {
			g := NewWithT(t)
			ns := env.Namespace(t)
			oldKey, newKey := tc.newKey(t), tc.newKey(t)
			create(t, secretWith(ns, "signing-old", oldKey), secretWith(ns, "signing-new", newKey))
			clk := &shiftedClock{}
			oldRcv := newKeyReceiver(t, oldKey, tc.verify) // has not switched yet
			newRcv := newKeyReceiver(t, newKey, tc.verify) // already switched
			startOperatorWithClock(t, ns, clk)

			expiresAt := metav1.NewTime(time.Now().Add(time.Hour))
			rotating := func(ep *webhooksv1alpha1.WebhookEndpoint) {
				ep.Spec.SignatureScheme = tc.scheme
				ep.Spec.SigningSecretRef = &webhooksv1alpha1.SecretKeyRef{Name: "signing-new", Key: "key"}
				ep.Spec.PreviousSigningSecretRef = &webhooksv1alpha1.SecretKeyRef{Name: "signing-old", Key: "key"}
				ep.Spec.PreviousSigningSecretExpiresAt = &expiresAt
			}
			create(t, newEndpoint(ns, "old", oldRcv.URL, rotating), newEndpoint(ns, "new", newRcv.URL, rotating))

			// During the rotation: both receivers accept at the first attempt.
			during := []*webhooksv1alpha1.WebhookDelivery{
				webhooksv1alpha1.NewDelivery(ns, "old", newEvent("evt-during")),
				webhooksv1alpha1.NewDelivery(ns, "new", newEvent("evt-during")),
			}
			create(t, during[0], during[1])
			for _, d := range during {
				g.Eventually(func(g Gomega) {
					got := getDelivery(g, ns, d.Name)
					g.Expect(got.Status.Phase).To(Equal(webhooksv1alpha1.PhaseSucceeded))
					g.Expect(got.Status.Attempts).To(Equal(int32(1)))
				}).WithTimeout(10*time.Second).Should(Succeed(), "delivery to receiver %s", d.Spec.EndpointRef.Name)
			}
			during0 := oldRcv.Requests()[0]
			g.Expect(tc.signatures(during0.Header)).To(Equal(2), "a request during the rotation carries two signatures")
			g.Expect(tc.verify([]byte(newKey), during0.Header, during0.Body)).To(Succeed(), "the request to the old-key receiver also verifies with the new key")

			// The expiry passes; the old Secret is deleted, as the procedure's last step says.
			clk.advance(2 * time.Hour)
			g.Expect(env.Client.Delete(context.Background(), secretWith(ns, "signing-old", ""))).To(Succeed())
			after := []*webhooksv1alpha1.WebhookDelivery{
				webhooksv1alpha1.NewDelivery(ns, "old", newEvent("evt-after")),
				webhooksv1alpha1.NewDelivery(ns, "new", newEvent("evt-after")),
			}
			create(t, after[0], after[1])
			g.Eventually(func(g Gomega) {
				g.Expect(getDelivery(g, ns, after[1].Name).Status.Phase).To(Equal(webhooksv1alpha1.PhaseSucceeded))
			}).WithTimeout(10*time.Second).Should(Succeed(), "the new-key receiver accepts after the cutoff")
			g.Eventually(func(g Gomega) {
				got := getDelivery(g, ns, after[0].Name)
				g.Expect(got.Status.Attempts).To(BeNumerically(">=", 1))
				g.Expect(got.Status.LastStatusCode).To(Equal(int32(http.StatusUnauthorized)))
			}).WithTimeout(10*time.Second).Should(Succeed(), "the old-key receiver rejects after the cutoff")
			cutoff := oldRcv.Requests()[1]
			g.Expect(cutoff.Status).To(Equal(http.StatusUnauthorized))
			g.Expect(tc.signatures(cutoff.Header)).To(Equal(1), "after the cutoff a request carries one signature")
			g.Expect(tc.verify([]byte(oldKey), cutoff.Header, cutoff.Body)).To(MatchError(tc.wantMismatch))
			g.Expect(tc.verify([]byte(newKey), cutoff.Header, cutoff.Body)).To(Succeed())

			// The late receiver switches to the new key: the retry goes through.
			oldRcv.SetKey([]byte(newKey))
			g.Eventually(func(g Gomega) {
				g.Expect(getDelivery(g, ns, after[0].Name).Status.Phase).To(Equal(webhooksv1alpha1.PhaseSucceeded))
			}).WithTimeout(15 * time.Second).Should(Succeed())

			if tc.scheme == webhooksv1alpha1.SignatureSchemeDocRouter {
				t.Logf("captured DocRouter request during a rotation:\n%s", newRcv.Requests()[0].Dump())
			}
		})
	}
}
