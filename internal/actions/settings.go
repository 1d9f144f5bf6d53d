package actions

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
)

// AuthMode is how requests to an endpoint are authenticated, as the product's settings page
// offers it: an HMAC signature (recommended), a static header, or nothing.
type AuthMode string

const (
	AuthSignature AuthMode = "signature"
	AuthHeader    AuthMode = "header"
	AuthNone      AuthMode = "none"
)

// SecretSource is where the signing secret or header value comes from.
type SecretSource string

const (
	// SecretKeep keeps the endpoint's current Secret reference (edit only).
	SecretKeep SecretSource = "keep"
	// SecretGenerate makes a new random secret, stored in a new Secret and shown once.
	SecretGenerate SecretSource = "generate"
	// SecretValue stores a value the user typed in a new Secret.
	SecretValue SecretSource = "value"
	// SecretExisting refers to a key of a Secret that exists in the namespace.
	SecretExisting SecretSource = "existing"
)

// EndpointSettings are what the settings page edits of an endpoint. Validation is the API
// server's: the CRD's rules answer with a sentence that says what to fix.
type EndpointSettings struct {
	// Name is the endpoint's name (create only).
	Name              string
	URL               string
	EventTypes        []string
	AllowInsecureHTTP bool
	// SignatureScheme is DocRouter (default) or StandardWebhooks.
	SignatureScheme string
	// TimeoutSeconds and the retry policy's fields: nil keeps the operator's default.
	TimeoutSeconds *int32
	RetryPolicy    webhooksv1alpha1.RetryPolicy

	Auth AuthMode
	// Source of the secret: for AuthSignature the signing key, for AuthHeader the value.
	Source SecretSource
	// Value is the secret typed in (SecretValue). It goes into a new Secret, nowhere else.
	Value string
	// SecretName and SecretKey select an existing Secret's key (SecretExisting).
	SecretName, SecretKey string
	// HeaderName is the header of AuthHeader, such as X-Api-Key.
	HeaderName string
}

// SaveResult is what CreateEndpoint and UpdateEndpoint did.
type SaveResult struct {
	Endpoint *webhooksv1alpha1.WebhookEndpoint
	// SecretCreated names the Secret made for the endpoint (owned by it), if one was.
	SecretCreated string
	// Generated is the signing secret that was generated: the one time it is available, to
	// copy into the receiver. It is never read back from the cluster.
	Generated string
}

// Keys of the Secrets made for an endpoint.
const (
	SigningSecretKey = "signing-secret"
	HeaderValueKey   = "header-value"
)

// CreateEndpoint creates an endpoint from the settings page. The endpoint is checked by the
// API server first (a dry run, so a refused one leaves nothing behind); then the Secret is made
// when the secret is generated or typed in, then the endpoint, which becomes the Secret's owner
// (deleting the endpoint deletes it).
func (c *Client) CreateEndpoint(ctx context.Context, namespace string, s EndpointSettings) (*SaveResult, error) {
	ep := &webhooksv1alpha1.WebhookEndpoint{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: s.Name}}
	if s.Source == SecretKeep {
		s.Source = SecretGenerate
	}
	return c.save(ctx, ep, s, func(obj *webhooksv1alpha1.WebhookEndpoint, dryRun bool) error {
		if dryRun {
			return c.kube.Create(ctx, obj, client.DryRunAll)
		}
		return c.kube.Create(ctx, obj)
	})
}

// UpdateEndpoint changes an endpoint from the settings page. generation is the
// metadata.generation of the endpoint the page showed (0: any): if its spec changed since, the
// edit is refused rather than overwriting someone else's change. The operator's status writes
// do not change the generation; an update that collides with one is tried again.
func (c *Client) UpdateEndpoint(ctx context.Context, namespace, name string, generation int64, s EndpointSettings) (*SaveResult, error) {
	var res *SaveResult
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		ep := &webhooksv1alpha1.WebhookEndpoint{}
		if err := c.kube.Get(ctx, client.ObjectKey{Namespace: namespace, Name: name}, ep); err != nil {
			return err
		}
		if generation != 0 && ep.Generation != generation {
			return &changedError{name: name}
		}
		var err error
		res, err = c.save(ctx, ep, s, func(obj *webhooksv1alpha1.WebhookEndpoint, dryRun bool) error {
			if dryRun {
				return c.kube.Update(ctx, obj, client.DryRunAll)
			}
			return c.kube.Update(ctx, obj)
		})
		return err
	})
	if err != nil {
		return nil, err
	}
	return res, nil
}

// changedError refuses an edit of an endpoint whose spec changed since the form was shown.
type changedError struct{ name string }

func (e *changedError) Error() string {
	return "endpoint " + e.name + " was changed since this form was shown: reload the page and make the edit again"
}

func (c *Client) save(ctx context.Context, ep *webhooksv1alpha1.WebhookEndpoint, s EndpointSettings, write func(ep *webhooksv1alpha1.WebhookEndpoint, dryRun bool) error) (*SaveResult, error) {
	if s.Source == SecretKeep && (s.Auth == AuthSignature && ep.Spec.SigningSecretRef == nil || s.Auth == AuthHeader && ep.Spec.AuthHeader == nil) {
		return nil, errors.New("the endpoint has no Secret of that kind to keep: generate one, enter a value, or choose an existing Secret")
	}
	apply(ep, s)
	res := &SaveResult{Endpoint: ep}
	var secret *corev1.Secret
	if s.Auth != AuthNone {
		switch s.Source {
		case SecretGenerate, SecretValue:
			value := s.Value
			if s.Source == SecretGenerate {
				value = generateSecret(s.Auth, ep.Spec.GetSignatureScheme())
				res.Generated = value
			} else if value == "" {
				return nil, errors.New("enter the secret's value, or choose to generate one")
			}
			key := SigningSecretKey
			if s.Auth == AuthHeader {
				key = HeaderValueKey
			}
			secret = &corev1.Secret{
				ObjectMeta: metav1.ObjectMeta{
					Namespace: ep.Namespace, GenerateName: ep.Name + "-",
					Labels: map[string]string{webhooksv1alpha1.EndpointLabel: ep.Name},
				},
				Type: corev1.SecretTypeOpaque,
				Data: map[string][]byte{key: []byte(value)},
			}
			// Checked with a name of the right shape; the Secret's own comes at its creation.
			setRef(ep, s, webhooksv1alpha1.SecretKeyRef{Name: ep.Name + "-secret", Key: key})
		case SecretExisting:
			setRef(ep, s, webhooksv1alpha1.SecretKeyRef{Name: s.SecretName, Key: s.SecretKey})
		}
	}
	if err := write(ep.DeepCopy(), true); err != nil {
		return nil, err
	}
	if secret != nil {
		if err := c.kube.Create(ctx, secret); err != nil {
			return nil, err
		}
		res.SecretCreated = secret.Name
		key := SigningSecretKey
		if s.Auth == AuthHeader {
			key = HeaderValueKey
		}
		setRef(ep, s, webhooksv1alpha1.SecretKeyRef{Name: secret.Name, Key: key})
	}
	if err := write(ep, false); err != nil {
		if secret != nil {
			_ = c.kube.Delete(context.WithoutCancel(ctx), secret)
		}
		return nil, err
	}
	if secret != nil {
		// The endpoint owns its Secret, so that deleting it deletes the Secret (best effort: a
		// user who may create Secrets but not patch them keeps an unowned one).
		owner := metav1.OwnerReference{APIVersion: webhooksv1alpha1.GroupVersion.String(), Kind: "WebhookEndpoint", Name: ep.Name, UID: ep.UID}
		patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"ownerReferences": []metav1.OwnerReference{owner}}})
		_ = c.kube.Patch(ctx, secret, client.RawPatch(types.MergePatchType, patch))
	}
	return res, nil
}

// apply writes the settings into ep's spec; references of a kept secret stay as they are.
func apply(ep *webhooksv1alpha1.WebhookEndpoint, s EndpointSettings) {
	spec := &ep.Spec
	spec.URL = s.URL
	spec.EventTypes = s.EventTypes
	spec.AllowInsecureHTTP = s.AllowInsecureHTTP
	spec.TimeoutSeconds = s.TimeoutSeconds
	spec.SignatureScheme = webhooksv1alpha1.SignatureScheme(s.SignatureScheme)
	if s.SignatureScheme == string(webhooksv1alpha1.SignatureSchemeDocRouter) {
		spec.SignatureScheme = ""
	}
	rp := s.RetryPolicy
	if rp.MaxRetries == nil && rp.InitialDelaySeconds == nil && rp.BackoffFactor == nil && rp.MaxDelaySeconds == nil && rp.JitterPercent == nil {
		spec.RetryPolicy = nil
	} else {
		spec.RetryPolicy = &rp
	}
	switch {
	case s.Auth == AuthNone:
		spec.SigningSecretRef, spec.AuthHeader = nil, nil
		spec.PreviousSigningSecretRef, spec.PreviousSigningSecretExpiresAt = nil, nil
	case s.Auth == AuthSignature && s.Source == SecretKeep:
		spec.AuthHeader = nil
	case s.Auth == AuthHeader && s.Source == SecretKeep:
		spec.SigningSecretRef = nil
		spec.PreviousSigningSecretRef, spec.PreviousSigningSecretExpiresAt = nil, nil
		if spec.AuthHeader != nil {
			spec.AuthHeader.Name = s.HeaderName
		}
	}
}

// setRef points the endpoint's signing key or header value at ref.
func setRef(ep *webhooksv1alpha1.WebhookEndpoint, s EndpointSettings, ref webhooksv1alpha1.SecretKeyRef) {
	if s.Auth == AuthHeader {
		ep.Spec.SigningSecretRef = nil
		ep.Spec.PreviousSigningSecretRef, ep.Spec.PreviousSigningSecretExpiresAt = nil, nil
		ep.Spec.AuthHeader = &webhooksv1alpha1.AuthHeader{Name: s.HeaderName, SecretKeyRef: ref}
		return
	}
	ep.Spec.AuthHeader = nil
	if old := ep.Spec.SigningSecretRef; old != nil && *old != ref {
		// A new key replaces the old one at once; a rotation in which both sign for a while
		// is spec.previousSigningSecretRef, set with kubectl (docs/signatures.md).
		ep.Spec.PreviousSigningSecretRef, ep.Spec.PreviousSigningSecretExpiresAt = nil, nil
	}
	ep.Spec.SigningSecretRef = &ref
}

// generateSecret makes 32 random bytes of key: for Standard Webhooks the whsec_ form its
// libraries read, else URL-safe base64 (the receiver uses the string's bytes as the key).
func generateSecret(mode AuthMode, scheme webhooksv1alpha1.SignatureScheme) string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	if mode == AuthSignature && scheme == webhooksv1alpha1.SignatureSchemeStandardWebhooks {
		return "whsec_" + base64.StdEncoding.EncodeToString(b)
	}
	return base64.RawURLEncoding.EncodeToString(b)
}
