// Package receiver is the sample webhook receiver behind `webhook-operator receiver`: it checks
// each request the way a customer's receiver should (the X-DocRouter-Signature HMAC with a
// timestamp tolerance, or a static auth header), prints one line per request, and fails on
// demand so that users can watch the operator retry.
//
// Answers: 401 when a request is not authenticated, 400 when the body is not a DocRouter
// payload, 500 for paths under /fail and for a FailRate share of requests, 200 otherwise.
package receiver

import (
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/docrouter/webhook-operator/dispatcher"
)

// MaxBodyBytes bounds the body the receiver reads.
const MaxBodyBytes = 1 << 20

// FailPath is the path prefix under which every request is answered 500.
const FailPath = "/fail"

// Options configure a Handler. With neither Secret nor AuthHeaderName, every request is
// accepted unauthenticated.
type Options struct {
	// Secret is the HMAC-SHA256 signing key: a request carrying X-DocRouter-Signature must match it.
	Secret []byte
	// AuthHeaderName and AuthHeaderValue are a static header: a request carrying the header
	// must carry this value.
	AuthHeaderName  string
	AuthHeaderValue string
	// FailRate is the share of authenticated requests, 0 to 1, answered 500 at random.
	FailRate float64
	// Tolerance is how far the signed timestamp may be from now; dispatcher.DefaultTolerance
	// (5 minutes, as the product docs advise) when zero.
	Tolerance time.Duration
	// Out receives one line per request.
	Out io.Writer
	// Now and Rand are the clock and the random source in [0, 1); time.Now and math/rand when nil.
	Now  func() time.Time
	Rand func() float64
}

// Handler is the receiver's http.Handler.
type Handler struct {
	opts Options
	mu   sync.Mutex // serialises lines on Out
}

// New returns a Handler.
func New(opts Options) *Handler {
	if opts.Tolerance == 0 {
		opts.Tolerance = dispatcher.DefaultTolerance
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Rand == nil {
		opts.Rand = rand.Float64
	}
	if opts.Out == nil {
		opts.Out = io.Discard
	}
	return &Handler{opts: opts}
}

// event is the part of the payload the receiver prints.
type event struct {
	EventID   string `json:"event_id"`
	EventType string `json:"event_type"`
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	now := h.opts.Now()
	line := requestLine{At: now, Path: r.URL.Path, Attempt: r.Header.Get(dispatcher.HeaderAttempt)}
	status, msg := h.handle(r, now, &line)
	line.Status = status
	h.print(line)

	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	if status == http.StatusOK {
		_, _ = io.WriteString(w, `{"received":true}`)
		return
	}
	body, _ := json.Marshal(map[string]string{"error": msg})
	_, _ = w.Write(body)
}

// handle decides the answer and fills in what the line shows.
func (h *Handler) handle(r *http.Request, now time.Time, line *requestLine) (int, string) {
	if r.Method != http.MethodPost {
		return http.StatusMethodNotAllowed, "webhooks are POSTed"
	}
	body, err := io.ReadAll(http.MaxBytesReader(nil, r.Body, MaxBodyBytes))
	if err != nil {
		return http.StatusRequestEntityTooLarge, "body too large or unreadable"
	}
	// The event id and type are shown even for a rejected request, to tell which one it was.
	var ev event
	jsonErr := json.Unmarshal(body, &ev)
	line.EventID, line.EventType = ev.EventID, ev.EventType
	if line.EventID == "" {
		line.EventID = r.Header.Get(dispatcher.HeaderEventID)
	}

	line.Verified, err = h.authenticate(r, body, now)
	if err != nil {
		line.Reason = err.Error()
		return http.StatusUnauthorized, err.Error()
	}
	if jsonErr != nil || ev.EventID == "" || ev.EventType == "" {
		line.Reason = "not a DocRouter payload"
		return http.StatusBadRequest, "body is not a DocRouter event: want JSON with event_id and event_type"
	}
	if r.URL.Path == FailPath || strings.HasPrefix(r.URL.Path, FailPath+"/") {
		line.Reason = "failing on purpose: path under " + FailPath
		return http.StatusInternalServerError, line.Reason
	}
	if h.opts.FailRate > 0 && h.opts.Rand() < h.opts.FailRate {
		line.Reason = fmt.Sprintf("failing on purpose: --fail-rate %g", h.opts.FailRate)
		return http.StatusInternalServerError, line.Reason
	}
	return http.StatusOK, ""
}

// authenticate checks what the request presents: its signature when the receiver has a secret,
// its auth header when the receiver has one. Every presented credential must be right, and at
// least one must be presented when the receiver has any. It returns how the request was
// verified: "signature", "header", "signature+header", or "none" when nothing is configured.
func (h *Handler) authenticate(r *http.Request, body []byte, now time.Time) (string, error) {
	if len(h.opts.Secret) == 0 && h.opts.AuthHeaderName == "" {
		return "none", nil
	}
	var by []string
	if sig := r.Header.Get(dispatcher.HeaderSignature); len(h.opts.Secret) > 0 && sig != "" {
		if err := dispatcher.Verify(h.opts.Secret, r.Header.Get(dispatcher.HeaderTimestamp), sig, body, now, h.opts.Tolerance); err != nil {
			return "no", err
		}
		by = append(by, "signature")
	}
	if values := r.Header.Values(h.opts.AuthHeaderName); h.opts.AuthHeaderName != "" && len(values) > 0 {
		if len(values) != 1 || subtle.ConstantTimeCompare([]byte(values[0]), []byte(h.opts.AuthHeaderValue)) != 1 {
			return "no", errors.New(h.opts.AuthHeaderName + " header does not match")
		}
		by = append(by, "header")
	}
	if len(by) == 0 {
		want := []string{}
		if len(h.opts.Secret) > 0 {
			want = append(want, dispatcher.HeaderSignature)
		}
		if h.opts.AuthHeaderName != "" {
			want = append(want, h.opts.AuthHeaderName)
		}
		return "no", errors.New("unauthenticated: no " + strings.Join(want, " or ") + " header")
	}
	return strings.Join(by, "+"), nil
}

// requestLine is what is printed of one request: never a signature, header value or body.
type requestLine struct {
	At        time.Time
	Status    int
	EventID   string
	EventType string
	Attempt   string
	Verified  string
	Path      string
	Reason    string
}

func (h *Handler) print(l requestLine) {
	s := fmt.Sprintf("%s %d event=%s type=%s attempt=%s verified=%s path=%s",
		l.At.UTC().Format(time.RFC3339), l.Status, orDash(l.EventID), orDash(l.EventType),
		orDash(l.Attempt), orDash(l.Verified), orDash(l.Path))
	if l.Reason != "" {
		s += fmt.Sprintf(" reason=%q", l.Reason)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	_, _ = fmt.Fprintln(h.opts.Out, s)
}

// orDash prints an absent or odd value as "-": the line stays one line of key=value pairs.
func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return strings.Map(func(r rune) rune {
		if r <= ' ' || r == '"' || r > '~' {
			return '_'
		}
		return r
	}, s)
}
