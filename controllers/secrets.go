package controllers

import (
	"context"
	"fmt"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
)

// Reasons an endpoint's credentials cannot be resolved.
const (
	ReasonSecretNotFound    = "SecretNotFound"
	ReasonSecretKeyNotFound = "SecretKeyNotFound"
)

// credentialError is a missing Secret or key: a user's mistake that the user can fix, reported
// as a condition rather than retried as an API failure.
type credentialError struct {
	reason  string
	message string
}

func (e *credentialError) Error() string { return e.message }

// credentials are what an endpoint's Secrets hold. They never reach a log, an Event or status.
type credentials struct {
	signingKey      []byte
	authHeaderName  string
	authHeaderValue string
}

// secretReader reads the Secrets that endpoints refer to, one GET each, through the API reader
// (not the cache: the operator does not watch every Secret in the cluster and needs only `get`).
// Values are kept for ttl, so a busy endpoint costs one read per ttl and a changed Secret is
// used within ttl.
type secretReader struct {
	reader client.Reader
	ttl    time.Duration
	now    func() time.Time

	mu      sync.Mutex
	entries map[types.NamespacedName]secretEntry
}

type secretEntry struct {
	data    map[string][]byte
	err     error
	fetched time.Time
}

func newSecretReader(reader client.Reader, ttl time.Duration, now func() time.Time) *secretReader {
	return &secretReader{reader: reader, ttl: ttl, now: now, entries: map[types.NamespacedName]secretEntry{}}
}

// resolve reads an endpoint's signing key and auth header value from its own namespace.
func (s *secretReader) resolve(ctx context.Context, ep *webhooksv1alpha1.WebhookEndpoint) (credentials, error) {
	var creds credentials
	if ref := ep.Spec.SigningSecretRef; ref != nil {
		v, err := s.value(ctx, ep.Namespace, *ref, "spec.signingSecretRef")
		if err != nil {
			return creds, err
		}
		creds.signingKey = v
	}
	if h := ep.Spec.AuthHeader; h != nil {
		v, err := s.value(ctx, ep.Namespace, h.SecretKeyRef, "spec.authHeader.secretKeyRef")
		if err != nil {
			return creds, err
		}
		creds.authHeaderName, creds.authHeaderValue = h.Name, string(v)
	}
	return creds, nil
}

func (s *secretReader) value(ctx context.Context, namespace string, ref webhooksv1alpha1.SecretKeyRef, field string) ([]byte, error) {
	data, err := s.get(ctx, types.NamespacedName{Namespace: namespace, Name: ref.Name})
	if apierrors.IsNotFound(err) {
		return nil, &credentialError{reason: ReasonSecretNotFound,
			message: fmt.Sprintf("%s: Secret %q not found in namespace %q", field, ref.Name, namespace)}
	}
	if err != nil {
		return nil, err
	}
	v, ok := data[ref.Key]
	if !ok || len(v) == 0 {
		return nil, &credentialError{reason: ReasonSecretKeyNotFound,
			message: fmt.Sprintf("%s: Secret %q has no key %q (or it is empty)", field, ref.Name, ref.Key)}
	}
	return v, nil
}

func (s *secretReader) get(ctx context.Context, key types.NamespacedName) (map[string][]byte, error) {
	now := s.now()
	s.mu.Lock()
	e, ok := s.entries[key]
	s.mu.Unlock()
	if ok && now.Sub(e.fetched) < s.ttl {
		return e.data, e.err
	}
	secret := &corev1.Secret{}
	err := s.reader.Get(ctx, key, secret)
	if err != nil && !apierrors.IsNotFound(err) {
		return nil, err // an API failure is not remembered
	}
	e = secretEntry{data: secret.Data, err: err, fetched: now}
	s.mu.Lock()
	s.entries[key] = e
	s.mu.Unlock()
	return e.data, e.err
}
