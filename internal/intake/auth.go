package intake

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"golang.org/x/sync/singleflight"
	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilcache "k8s.io/apimachinery/pkg/util/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
)

// The intake needs to review its callers' tokens and permissions.
// +kubebuilder:rbac:groups=authentication.k8s.io,resources=tokenreviews,verbs=create
// +kubebuilder:rbac:groups=authorization.k8s.io,resources=subjectaccessreviews,verbs=create

// Publishing is authorised as the verb create on the virtual resource webhookevents of the
// operator's API group, in the event's namespace. It is not a real resource: granting it lets a
// publisher publish through the intake, and does not let it write WebhookDeliveries itself.
//
//	rules:
//	- apiGroups: ["webhooks.docrouter.ai"]
//	  resources: ["webhookevents"]
//	  verbs: ["create"]
const (
	PublishVerb     = "create"
	PublishResource = "webhookevents"
)

// PublishGroup is the API group of the publish permission.
var PublishGroup = webhooksv1alpha1.GroupVersion.Group

// decision is the outcome of authenticating and authorising one token for one namespace.
// A nil *requestError is an allowed caller.
type decision struct {
	user string
	err  *requestError
}

// reviewer checks bearer tokens with TokenReview and SubjectAccessReview, and remembers each
// decision, allowed or denied, for ttl, so a busy publisher costs no review per request.
// Concurrent requests with the same token and namespace share one review.
type reviewer struct {
	client    client.Client
	audiences []string
	ttl       time.Duration
	cache     *utilcache.LRUExpireCache
	flight    singleflight.Group
}

func newReviewer(c client.Client, audiences []string, ttl time.Duration, size int) *reviewer {
	return &reviewer{client: c, audiences: audiences, ttl: ttl, cache: utilcache.NewLRUExpireCache(size)}
}

// bearerToken is the token of an "Authorization: Bearer <token>" header, or "".
func bearerToken(r *http.Request) string {
	scheme, token, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return ""
	}
	return strings.TrimSpace(token)
}

// authorize decides whether the caller of r may publish to namespace. The token itself is never
// logged nor kept: the cache is keyed by its SHA-256.
func (a *reviewer) authorize(ctx context.Context, r *http.Request, namespace string) decision {
	token := bearerToken(r)
	if token == "" {
		return decision{err: &requestError{status: http.StatusUnauthorized,
			message: "missing bearer token: send Authorization: Bearer <token> with a Kubernetes ServiceAccount token (kubectl create token NAME)"}}
	}
	sum := sha256.Sum256([]byte(token))
	key := hex.EncodeToString(sum[:]) + "/" + namespace
	if d, ok := a.cache.Get(key); ok {
		return d.(decision)
	}
	v, _, _ := a.flight.Do(key, func() (any, error) {
		// Detached from the request, whose caller may hang up while others wait on this review.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		d, cacheable := a.review(ctx, token, namespace)
		if cacheable {
			a.cache.Add(key, d, a.ttl)
		}
		return d, nil
	})
	return v.(decision)
}

// review asks the API server. cacheable is false when the API server could not answer.
func (a *reviewer) review(ctx context.Context, token, namespace string) (d decision, cacheable bool) {
	unavailable := func(what string, err error) (decision, bool) {
		return decision{err: &requestError{status: http.StatusServiceUnavailable, cause: err,
			message: fmt.Sprintf("could not %s with the Kubernetes API (%s): try again", what, reasonOf(err))}}, false
	}
	tr := &authenticationv1.TokenReview{Spec: authenticationv1.TokenReviewSpec{Token: token, Audiences: a.audiences}}
	if err := a.client.Create(ctx, tr); err != nil {
		return unavailable("review the token", err)
	}
	if !tr.Status.Authenticated {
		return decision{err: &requestError{status: http.StatusUnauthorized,
			message: "the bearer token is not valid (expired, revoked, not issued by this cluster, or for another audience): get a new one, such as with kubectl create token NAME"}}, true
	}
	u := tr.Status.User
	extra := make(map[string]authorizationv1.ExtraValue, len(u.Extra))
	for k, v := range u.Extra {
		extra[k] = authorizationv1.ExtraValue(v)
	}
	sar := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
		User: u.Username, UID: u.UID, Groups: u.Groups, Extra: extra,
		ResourceAttributes: &authorizationv1.ResourceAttributes{
			Namespace: namespace, Verb: PublishVerb, Group: PublishGroup, Resource: PublishResource,
		},
	}}
	if err := a.client.Create(ctx, sar); err != nil {
		return unavailable("check the caller's permission", err)
	}
	if !sar.Status.Allowed || sar.Status.Denied {
		return decision{user: u.Username, err: &requestError{status: http.StatusForbidden,
			message: fmt.Sprintf("%q may not publish events in namespace %q: grant it the verb %s on %s.%s in that namespace (a Role and a RoleBinding)",
				u.Username, namespace, PublishVerb, PublishResource, PublishGroup)}}, true
	}
	return decision{user: u.Username}, true
}

// reasonOf is a short, credential-free description of an API error: its reason, such as
// ServiceUnavailable or Timeout. The error's text is not used, as it may quote the request.
func reasonOf(err error) string {
	if reason := apierrors.ReasonForError(err); reason != metav1.StatusReasonUnknown {
		return string(reason)
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return "timed out"
	}
	return "request failed"
}
