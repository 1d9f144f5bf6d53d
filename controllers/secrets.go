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
	"github.com/docrouter/webhook-operator/dispatcher"
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
	// signing holds the scheme and keys, the current key first, then the previous one while a
	// rotation is under way.
	signing         dispatcher.Signing
	authHeaderName  string
	authHeaderValue string
	// caBundle is the PEM CA certificates of spec.caBundleRef (public, but not logged either).
	caBundle []byte
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
	entries map[objectKey]secretEntry
}

type secretEntry struct {
	data    map[string][]byte
	err     error
	fetched time.Time
}

func newSecretReader(reader client.Reader, ttl time.Duration, now func() time.Time) *secretReader {
	return &secretReader{reader: reader, ttl: ttl, now: now, entries: map[objectKey]secretEntry{}}
}

// resolve reads an endpoint's signing keys and auth header value from its own namespace. The
// previous signing key is read only while it still signs (now is before
// previousSigningSecretExpiresAt): after that, its Secret may be gone without blocking anything.
func (s *secretReader) resolve(ctx context.Context, ep *webhooksv1alpha1.WebhookEndpoint) (credentials, error) {
	var creds credentials
	scheme := dispatcher.Scheme(ep.Spec.GetSignatureScheme())
	if ref := ep.Spec.SigningSecretRef; ref != nil {
		key, err := s.signingKey(ctx, ep.Namespace, *ref, scheme, "spec.signingSecretRef")
		if err != nil {
			return creds, err
		}
		creds.signing = dispatcher.Signing{Scheme: scheme, Keys: [][]byte{key}}
		if ref := ep.Spec.PreviousSigningSecretRef; ref != nil && ep.Spec.PreviousSigningKeyActive(s.now()) {
			prev, err := s.signingKey(ctx, ep.Namespace, *ref, scheme, "spec.previousSigningSecretRef")
			if err != nil {
				return creds, err
			}
			creds.signing.Keys = append(creds.signing.Keys, prev)
		}
	}
	if h := ep.Spec.AuthHeader; h != nil {
		v, err := s.value(ctx, ep.Namespace, h.SecretKeyRef, "spec.authHeader.secretKeyRef")
		if err != nil {
			return creds, err
		}
		creds.authHeaderName, creds.authHeaderValue = h.Name, string(v)
	}
	if ref := ep.Spec.CABundleRef; ref != nil {
		v, err := s.caBundle(ctx, ep.Namespace, *ref)
		if err != nil {
			return creds, err
		}
		creds.caBundle = v
	}
	return creds, nil
}

// caBundle reads spec.caBundleRef from a Secret or a ConfigMap (data or binaryData) of the
// endpoint's namespace, through the same cache and ttl as Secrets.
func (s *secretReader) caBundle(ctx context.Context, namespace string, ref webhooksv1alpha1.CABundleRef) ([]byte, error) {
	const field = "spec.caBundleRef"
	if ref.Kind != kindConfigMap {
		return s.value(ctx, namespace, webhooksv1alpha1.SecretKeyRef{Name: ref.Name, Key: ref.Key}, field)
	}
	data, err := s.get(ctx, kindConfigMap, types.NamespacedName{Namespace: namespace, Name: ref.Name})
	if apierrors.IsNotFound(err) {
		return nil, &credentialError{reason: webhooksv1alpha1.ReasonCABundleNotFound,
			message: fmt.Sprintf("%s: ConfigMap %q not found in namespace %q", field, ref.Name, namespace)}
	}
	if err != nil {
		return nil, err
	}
	if v := data[ref.Key]; len(v) > 0 {
		return v, nil
	}
	return nil, &credentialError{reason: webhooksv1alpha1.ReasonCABundleNotFound,
		message: fmt.Sprintf("%s: ConfigMap %q has no key %q (or it is empty)", field, ref.Name, ref.Key)}
}

// signingKey reads a signing key and decodes it as scheme requires: the Secret's raw bytes for
// DocRouter, a whsec_<base64> secret for StandardWebhooks.
func (s *secretReader) signingKey(ctx context.Context, namespace string, ref webhooksv1alpha1.SecretKeyRef, scheme dispatcher.Scheme, field string) ([]byte, error) {
	v, err := s.value(ctx, namespace, ref, field)
	if err != nil || scheme != dispatcher.SchemeStandardWebhooks {
		return v, err
	}
	key, err := dispatcher.ParseStandardWebhooksSecret(v)
	if err != nil {
		// The error describes the format, never the value.
		return nil, &credentialError{reason: webhooksv1alpha1.ReasonInvalidSecret,
			message: fmt.Sprintf("%s: key %q of Secret %q: %v", field, ref.Key, ref.Name, err)}
	}
	return key, nil
}

func (s *secretReader) value(ctx context.Context, namespace string, ref webhooksv1alpha1.SecretKeyRef, field string) ([]byte, error) {
	data, err := s.get(ctx, kindSecret, types.NamespacedName{Namespace: namespace, Name: ref.Name})
	if apierrors.IsNotFound(err) {
		return nil, &credentialError{reason: webhooksv1alpha1.ReasonSecretNotFound,
			message: fmt.Sprintf("%s: Secret %q not found in namespace %q", field, ref.Name, namespace)}
	}
	if err != nil {
		return nil, err
	}
	v, ok := data[ref.Key]
	if !ok || len(v) == 0 {
		return nil, &credentialError{reason: webhooksv1alpha1.ReasonSecretKeyNotFound,
			message: fmt.Sprintf("%s: Secret %q has no key %q (or it is empty)", field, ref.Name, ref.Key)}
	}
	return v, nil
}

// The kinds of object whose data the reader serves.
const (
	kindSecret    = "Secret"
	kindConfigMap = "ConfigMap"
)

// objectKey names a Secret or a ConfigMap in the reader's cache.
type objectKey struct {
	kind string
	types.NamespacedName
}

// get returns the data of a Secret or a ConfigMap (its data and binaryData), read through the
// API reader and reused for ttl. NotFound is remembered like data; an API failure is not.
func (s *secretReader) get(ctx context.Context, kind string, key types.NamespacedName) (map[string][]byte, error) {
	now := s.now()
	ck := objectKey{kind: kind, NamespacedName: key}
	s.mu.Lock()
	e, ok := s.entries[ck]
	s.mu.Unlock()
	if ok && now.Sub(e.fetched) < s.ttl {
		return e.data, e.err
	}
	data, err := s.fetch(ctx, kind, key)
	if err != nil && !apierrors.IsNotFound(err) {
		return nil, err
	}
	e = secretEntry{data: data, err: err, fetched: now}
	s.mu.Lock()
	s.entries[ck] = e
	s.mu.Unlock()
	return e.data, e.err
}

func (s *secretReader) fetch(ctx context.Context, kind string, key types.NamespacedName) (map[string][]byte, error) {
	if kind == kindSecret {
		secret := &corev1.Secret{}
		err := s.reader.Get(ctx, key, secret)
		return secret.Data, err
	}
	cm := &corev1.ConfigMap{}
	if err := s.reader.Get(ctx, key, cm); err != nil {
		return nil, err
	}
	data := make(map[string][]byte, len(cm.Data)+len(cm.BinaryData))
	for k, v := range cm.BinaryData {
		data[k] = v
	}
	for k, v := range cm.Data {
		data[k] = []byte(v)
	}
	return data, nil
}
