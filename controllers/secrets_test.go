package controllers

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
)

// countingReader reads from the real API server and counts the Secret GETs; it fails the next
// `fail` of them as an unavailable API server would.
type countingReader struct {
	client.Reader
	gets atomic.Int32
	fail atomic.Int32
}

func newCountingReader(tb testing.TB) *countingReader {
	tb.Helper()
	c, err := client.NewWithWatch(env.Config, client.Options{Scheme: env.Scheme})
	if err != nil {
		tb.Fatal(err)
	}
	r := &countingReader{}
	r.Reader = interceptor.NewClient(c, interceptor.Funcs{
		Get: func(ctx context.Context, c client.WithWatch, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
			if _, ok := obj.(*corev1.Secret); ok {
				r.gets.Add(1)
				if r.fail.Load() > 0 {
					r.fail.Add(-1)
					return apierrors.NewServiceUnavailable("the API server is restarting")
				}
			}
			return c.Get(ctx, key, obj, opts...)
		},
	})
	return r
}

// secretReaderFixture is a secretReader with a TTL of 10s on a clock the test moves, in a
// namespace of its own, and an endpoint that signs with the Secret "signing".
type secretReaderFixture struct {
	ns     string
	reader *countingReader
	now    time.Time
	s      *secretReader
	ep     *webhooksv1alpha1.WebhookEndpoint
}

const fixtureTTL = 10 * time.Second

func newSecretReaderFixture(t *testing.T) *secretReaderFixture {
	t.Helper()
	f := &secretReaderFixture{ns: env.Namespace(t), reader: newCountingReader(t), now: t0}
	f.s = newSecretReader(f.reader, fixtureTTL, func() time.Time { return f.now })
	f.ep = newEndpoint(f.ns, "ep", "https://hooks.example.com/x")
	return f
}

// key resolves the endpoint's signing key: its value, or the reason it cannot be read.
func (f *secretReaderFixture) key(t *testing.T) (string, error) {
	t.Helper()
	creds, err := f.s.resolve(context.Background(), f.ep)
	if err != nil {
		return "", err
	}
	return string(creds.signing.Keys[0]), nil
}

func (f *secretReaderFixture) writeSecret(t *testing.T, value string) {
	t.Helper()
	s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: f.ns, Name: "signing"}, Data: map[string][]byte{"key": []byte(value)}}
	err := env.Client.Create(context.Background(), s)
	if apierrors.IsAlreadyExists(err) {
		err = env.Client.Update(context.Background(), s)
	}
	if err != nil {
		t.Fatal(err)
	}
}

// expect checks what the endpoint's signing key resolves to now, and how many GETs the reader
// has made in all.
func (f *secretReaderFixture) expect(t *testing.T, when, wantKey, wantReason string, wantGets int32) {
	t.Helper()
	got, err := f.key(t)
	var cerr *credentialError
	switch {
	case wantReason != "":
		if !errors.As(err, &cerr) || cerr.reason != wantReason {
			t.Errorf("%s: key %q, error %v; want the reason %s", when, got, err, wantReason)
		}
	case err != nil || got != wantKey:
		t.Errorf("%s: key %q, error %v; want %q", when, got, err, wantKey)
	}
	if n := f.reader.gets.Load(); n != wantGets {
		t.Errorf("%s: %d Secret GETs in all, want %d", when, n, wantGets)
	}
}

// A Secret's value is read once per TTL: reused within it, so a busy endpoint costs one GET per
// TTL, and read again after it, so a changed Secret is used within the TTL.
func TestSecretReaderReusesAValueWithinTheTTL(t *testing.T) {
	f := newSecretReaderFixture(t)
	f.writeSecret(t, "key-1")
	f.expect(t, "first read", "key-1", "", 1)
	f.writeSecret(t, "key-2")
	f.expect(t, "at once", "key-1", "", 1)
	f.now = t0.Add(fixtureTTL - time.Millisecond)
	f.expect(t, "just within the TTL", "key-1", "", 1)
	f.now = t0.Add(fixtureTTL)
	f.expect(t, "at the TTL", "key-2", "", 2)
	f.now = t0.Add(fixtureTTL + time.Second)
	f.expect(t, "within the second TTL", "key-2", "", 2)
}

// A missing Secret is remembered like data: an endpoint whose Secret is not there yet costs one
// GET per TTL, not one per reconcile; the Secret is seen after the TTL.
func TestSecretReaderRemembersNotFound(t *testing.T) {
	f := newSecretReaderFixture(t)
	f.expect(t, "first read", "", webhooksv1alpha1.ReasonSecretNotFound, 1)
	f.writeSecret(t, "key-1")
	f.now = t0.Add(fixtureTTL / 2)
	f.expect(t, "within the TTL", "", webhooksv1alpha1.ReasonSecretNotFound, 1)
	f.now = t0.Add(fixtureTTL)
	f.expect(t, "after the TTL", "key-1", "", 2)
}

// An API failure is not remembered: the next resolve reads again at once, and its value is then
// kept for the TTL.
func TestSecretReaderDoesNotRememberAnAPIFailure(t *testing.T) {
	f := newSecretReaderFixture(t)
	f.writeSecret(t, "key-1")
	f.reader.fail.Store(1)
	_, err := f.key(t)
	var cerr *credentialError
	if !apierrors.IsServiceUnavailable(err) || errors.As(err, &cerr) {
		t.Fatalf("an API failure: error %v, want the API server's error, not a credential error", err)
	}
	f.expect(t, "at once after the failure", "key-1", "", 2)
	f.expect(t, "then", "key-1", "", 2)
}

// A TTL of 0 reads the Secret on every resolve.
func TestSecretReaderWithoutTTLReadsEveryTime(t *testing.T) {
	f := newSecretReaderFixture(t)
	f.s = newSecretReader(f.reader, 0, func() time.Time { return f.now })
	f.writeSecret(t, "key-1")
	f.expect(t, "first read", "key-1", "", 1)
	f.writeSecret(t, "key-2")
	f.expect(t, "second read", "key-2", "", 2)
}
