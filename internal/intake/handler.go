// Package intake is the operator's event intake: POST /v1/namespaces/{namespace}/events takes
// one event, checks the caller with the Kubernetes API (TokenReview, then SubjectAccessReview
// of create on webhookevents.webhooks.docrouter.ai in that namespace), and creates one
// WebhookDelivery for each WebhookEndpoint of the namespace that subscribes to the event's
// type and whose spec.filter, if any, selects it (filter.go). A delivery's name derives from its endpoint and the event id, so publishing the same
// event id again creates nothing new.
package intake

import (
	"context"
	"encoding/json"
	"fmt"
	"mime"
	"net/http"
	"strconv"
	"time"

	"github.com/google/uuid"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/docrouter/webhook-operator/internal/filter"
	"github.com/docrouter/webhook-operator/internal/history"
	"github.com/docrouter/webhook-operator/internal/metrics"
	"github.com/docrouter/webhook-operator/publish"
)

// The intake reads endpoints and creates deliveries.
// +kubebuilder:rbac:groups=webhooks.docrouter.ai,resources=webhookendpoints,verbs=get;list;watch
// +kubebuilder:rbac:groups=webhooks.docrouter.ai,resources=webhookdeliveries,verbs=create

// Path is the route of the intake; {namespace} is the namespace of the endpoints and deliveries.
const Path = "/v1/namespaces/{namespace}/events"

// Defaults of Options.
const (
	DefaultAuthCacheTTL         = 10 * time.Second
	DefaultAuthCacheSize        = 4096
	DefaultMaxConcurrentCreates = 16
	// fanOutTimeout bounds the creation of one event's deliveries. The fan-out is detached from
	// the request: once started it completes even when the publisher hangs up.
	fanOutTimeout = 30 * time.Second
)

// Options configure a Handler. The zero value is usable: authenticated, with the defaults.
type Options struct {
	// AllowAnonymous skips authentication and authorisation: anyone who can reach the intake
	// may publish to any namespace. For local development only.
	AllowAnonymous bool
	// Audiences, when set, are the token audiences the intake accepts (TokenReview
	// spec.audiences): publishers then use tokens made for the intake (a projected token with
	// such an audience), which the API server itself refuses, so the intake never holds a
	// token that is good elsewhere. Empty accepts the API server's own audience.
	Audiences []string
	// AuthCacheTTL is how long an allowed or denied decision for a token and namespace is
	// reused; DefaultAuthCacheTTL when 0. A revoked permission is noticed within it.
	AuthCacheTTL time.Duration
	// AuthCacheSize bounds the remembered decisions; DefaultAuthCacheSize when 0.
	AuthCacheSize int
	// MaxConcurrentCreates bounds the deliveries of one event created at once;
	// DefaultMaxConcurrentCreates when 0.
	MaxConcurrentCreates int
	// Now is the clock that timestamps events published without a timestamp; time.Now when nil.
	Now func() time.Time
	// NewEventID makes the id of an event published without one; a UUID (version 7, so ids
	// sort by time) when nil.
	NewEventID func() string
	// WorkingSet bounds the deliveries in etcd (the operator's controllers.WorkingSet); nil
	// bounds nothing.
	WorkingSet WorkingSet
	// Store is the history store: deliveries beyond the working set wait in its backlog, and an
	// event whose delivery it already holds is not taken again. nil: no store, and deliveries
	// beyond the working set are refused.
	Store history.Store
}

// WorkingSet admits deliveries into etcd.
type WorkingSet interface {
	// Admit reserves room for one delivery of an endpoint, or says why there is none.
	Admit(endpoint, delivery types.NamespacedName) (ok bool, why string)
	// Release gives back the room of an admitted delivery that was not created.
	Release(delivery types.NamespacedName)
	// HasBacklog reports whether the endpoint's earlier events wait in the store's backlog.
	HasBacklog(endpoint types.NamespacedName) bool
	// Queued notes an event of the endpoint added to the backlog.
	Queued(endpoint types.NamespacedName)
	// BacklogRoom says whether one more event of the endpoint may wait in the backlog, or why not.
	BacklogRoom(endpoint types.NamespacedName) (ok bool, why string)
}

// Handler serves the intake's routes.
type Handler struct {
	client    client.Client
	endpoints client.Reader
	reviewer  *reviewer
	filters   *filter.Cache
	opts      Options
	mux       *http.ServeMux
}

// NewHandler builds the intake. c creates deliveries and reviews tokens (the manager's client);
// endpoints lists WebhookEndpoints (the manager's cache, so a publish costs no API read).
func NewHandler(c client.Client, endpoints client.Reader, opts Options) *Handler {
	if opts.AuthCacheTTL == 0 {
		opts.AuthCacheTTL = DefaultAuthCacheTTL
	}
	if opts.AuthCacheSize == 0 {
		opts.AuthCacheSize = DefaultAuthCacheSize
	}
	if opts.MaxConcurrentCreates <= 0 {
		opts.MaxConcurrentCreates = DefaultMaxConcurrentCreates
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.NewEventID == nil {
		opts.NewEventID = newUUID
	}
	h := &Handler{client: c, endpoints: endpoints, opts: opts, mux: http.NewServeMux(), filters: filter.NewCache(filter.DefaultCacheSize)}
	if !opts.AllowAnonymous {
		h.reviewer = newReviewer(c, opts.Audiences, opts.AuthCacheTTL, opts.AuthCacheSize)
	}
	h.mux.HandleFunc(Path, h.publish)
	h.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, &requestError{status: http.StatusNotFound,
			message: fmt.Sprintf("no such route %s: publish with POST /v1/namespaces/NAMESPACE/events", r.URL.Path)}, "")
	})
	return h
}

func newUUID() string {
	if id, err := uuid.NewV7(); err == nil {
		return id.String()
	}
	return uuid.NewString()
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.mux.ServeHTTP(w, r) }

func (h *Handler) publish(w http.ResponseWriter, r *http.Request) {
	log := ctrl.LoggerFrom(r.Context()).WithName("intake")
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		writeError(w, &requestError{status: http.StatusMethodNotAllowed, message: "publish an event with POST"}, "")
		return
	}
	ns := r.PathValue("namespace")
	if errs := validation.IsDNS1123Label(ns); len(errs) > 0 {
		writeError(w, badRequest("%q is not a namespace name: %s", ns, errs[0]), "")
		return
	}
	if ct := r.Header.Get("Content-Type"); ct != "" && !isJSONContentType(ct) {
		writeError(w, &requestError{status: http.StatusUnsupportedMediaType,
			message: "Content-Type must be application/json"}, "")
		return
	}
	// Authorise before reading the body, so an unknown caller costs no parsing.
	user := "anonymous"
	if h.reviewer != nil {
		d := h.reviewer.authorize(r.Context(), r, ns)
		if d.err != nil {
			if d.err.status == http.StatusUnauthorized {
				w.Header().Set("WWW-Authenticate", `Bearer realm="webhook-operator intake"`)
			}
			if d.err.cause != nil {
				log.Error(d.err.cause, "reviewing a publisher failed", "namespace", ns, "statusCode", d.err.status)
			} else {
				log.V(1).Info("publish refused", "namespace", ns, "user", d.user, "statusCode", d.err.status)
			}
			writeError(w, d.err, "")
			return
		}
		user = d.user
	}
	event, rerr := decodeEvent(http.MaxBytesReader(w, r.Body, MaxBodyBytes), h.opts.Now().Unix(), h.opts.NewEventID)
	if rerr != nil {
		log.V(1).Info("event refused", "namespace", ns, "user", user, "statusCode", rerr.status)
		writeError(w, rerr, "")
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), fanOutTimeout)
	defer cancel()
	accepted, err := h.fanOut(ctx, ns, event)
	if err != nil {
		log.Error(err.cause, "fan-out incomplete", "namespace", ns, "eventID", event.ID, "eventType", event.Type,
			"statusCode", err.status, "answer", err.message)
		writeError(w, err, event.ID)
		return
	}
	metrics.RecordEventPublished(event.Type)
	log.V(1).Info("event accepted", "namespace", ns, "user", user, "eventID", event.ID,
		"eventType", event.Type, "deliveries", len(accepted.Deliveries))
	writeJSON(w, http.StatusAccepted, accepted)
}

func firstError(errs []error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

func isJSONContentType(ct string) bool {
	mt, _, err := mime.ParseMediaType(ct)
	return err == nil && mt == "application/json"
}

func writeError(w http.ResponseWriter, err *requestError, eventID string) {
	if err.retryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(int(err.retryAfter.Seconds())))
	}
	writeJSON(w, err.status, publish.ErrorBody{Error: err.message, EventID: eventID})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v)
}
