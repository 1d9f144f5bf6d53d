// Package actions is what a person does with webhooks through the cluster's API server, with
// their own credentials: list endpoints with their delivery statistics, list and read
// deliveries (live ones in etcd and finished ones in the history alike), retry one or every
// failed one, send a test event, pause and resume an endpoint, create and edit one. The kubectl
// plugin (internal/plugin) and the web console (internal/console) are two faces of it.
//
// Nothing here holds a privilege of its own: every request is the user's, so Kubernetes RBAC
// decides what each person sees and may do, and an API server's refusal comes back as the
// error it answered (Sentence gives its message).
package actions

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"strconv"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/client-go/discovery"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	historyv1alpha1 "github.com/docrouter/webhook-operator/api/history/v1alpha1"
	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
)

// Client does the actions with one user's client configuration.
type Client struct {
	kube client.Client
}

// Scheme holds the kinds the actions read and write: the built-in ones (Secrets, namespaces,
// reviews), the operator's and the history API's.
func Scheme() *runtime.Scheme {
	s := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(s))
	utilruntime.Must(webhooksv1alpha1.AddToScheme(s))
	utilruntime.Must(historyv1alpha1.AddToScheme(s))
	return s
}

// New returns a Client that acts with cfg, as kubectl would with the same kubeconfig. A cfg
// without a rate limit gets kubectl's (50 requests per second, bursts of 100).
func New(cfg *rest.Config) (*Client, error) {
	cfg = rest.CopyConfig(cfg)
	if cfg.QPS == 0 {
		cfg.QPS, cfg.Burst = 50, 100
	}
	c, err := client.New(cfg, client.Options{Scheme: Scheme()})
	if err != nil {
		return nil, err
	}
	return &Client{kube: c}, nil
}

// Kube is the underlying client, for callers that read what the actions do not cover.
func (c *Client) Kube() client.Client { return c.kube }

// NewToken is a fresh value for the retry and test annotations, which act once per value. The
// source (such as "kubectl" or "console") is kept in it, so that a token read back in a
// delivery's status says where the request came from.
func NewToken(source string, now time.Time) string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return source + "-" + strconv.FormatInt(now.Unix(), 10) + "-" + hex.EncodeToString(b)
}

// Sentence is what to show a person for err: for an answer of the API server, the message it
// carries, such as `webhookdeliveries.webhooks.docrouter.ai "x" is forbidden: User "bob" cannot
// patch resource "webhookdeliveries" ...` or the CRD's validation message; otherwise err's text.
func Sentence(err error) string {
	if err == nil {
		return ""
	}
	var status apierrors.APIStatus
	if errors.As(err, &status) && status.Status().Message != "" && errors.Unwrap(err) == nil {
		return status.Status().Message
	}
	return err.Error()
}

// HistoryUnavailableError says that the history API (webhookdeliveryrecords and
// webhookendpointstats) could not be used: not installed, not answering, or not allowed. What
// could be shown without it (the deliveries still in etcd) is.
type HistoryUnavailableError struct{ Err error }

func (e *HistoryUnavailableError) Error() string {
	switch {
	case meta.IsNoMatchError(e.Err) || apierrors.IsNotFound(e.Err):
		return "the delivery history is not served by this cluster (no APIService for " + historyv1alpha1.GroupVersion.String() + "): install the operator with its history API to see deliveries that left etcd, and statistics"
	case apierrors.IsForbidden(e.Err):
		return "you may not read the delivery history: " + Sentence(e.Err)
	}
	return "the delivery history did not answer: " + Sentence(e.Err)
}

func (e *HistoryUnavailableError) Unwrap() error { return e.Err }

// historyUnavailable reports whether err, from a list of the history API, means the API cannot
// be used (as opposed to a wrong request).
func historyUnavailable(err error) bool {
	var groupFailed *discovery.ErrGroupDiscoveryFailed
	return meta.IsNoMatchError(err) || errors.As(err, &groupFailed) ||
		apierrors.IsServiceUnavailable(err) || apierrors.IsNotFound(err) || apierrors.IsForbidden(err) ||
		apierrors.IsTimeout(err) || apierrors.IsServerTimeout(err) || apierrors.IsInternalError(err)
}

// WhoAmI is the user the API server knows these credentials as (a SelfSubjectReview), shown
// by the console so that a person knows whose permissions apply.
func (c *Client) WhoAmI(ctx context.Context) (string, error) {
	review := &authenticationv1.SelfSubjectReview{}
	if err := c.kube.Create(ctx, review); err != nil {
		return "", err
	}
	return review.Status.UserInfo.Username, nil
}

// Namespaces lists the names of the namespaces the user may list (at most 500), for the
// console's namespace picker; a user who may not list them gets an error and types one.
func (c *Client) Namespaces(ctx context.Context) ([]string, error) {
	list := &metav1.PartialObjectMetadataList{}
	list.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("NamespaceList"))
	if err := c.kube.List(ctx, list, client.Limit(500)); err != nil {
		return nil, err
	}
	names := make([]string, len(list.Items))
	for i, n := range list.Items {
		names[i] = n.Name
	}
	return names, nil
}

// SecretNames lists the names of a namespace's Secrets (at most 500), for choosing an existing
// signing Secret. Only their metadata is requested: no Secret value reaches this process.
func (c *Client) SecretNames(ctx context.Context, namespace string) ([]string, error) {
	list := &metav1.PartialObjectMetadataList{}
	list.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("SecretList"))
	if err := c.kube.List(ctx, list, client.InNamespace(namespace), client.Limit(500)); err != nil {
		return nil, err
	}
	names := make([]string, 0, len(list.Items))
	for _, s := range list.Items {
		names = append(names, s.Name)
	}
	return names, nil
}

// annotate sets one annotation with a merge patch of metadata alone, which never collides with
// the controller's status writes.
func (c *Client) annotate(ctx context.Context, obj client.Object, key, value string) error {
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{key: value}}})
	if err != nil {
		return err
	}
	return c.kube.Patch(ctx, obj, client.RawPatch(types.MergePatchType, patch))
}
