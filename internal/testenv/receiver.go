package testenv

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/docrouter/webhook-operator/dispatcher"
)

// Request is one request a Receiver got.
type Request struct {
	At        time.Time
	Header    http.Header
	Body      []byte
	Verified  bool  // the X-DocRouter-Signature matched the receiver's key
	VerifyErr error // why not
	Status    int   // what the receiver answered
}

// Receiver is a real HTTP server on loopback that verifies each request's signature, as a
// customer's receiver would, answers with a programmable sequence of status codes, and records
// every request.
type Receiver struct {
	*httptest.Server
	Key []byte

	mu        sync.Mutex
	statuses  []int // answered in turn; the last one repeats
	requests  []Request
	onRequest func(*http.Request)
}

// NewReceiver starts a receiver that verifies signatures with key (no verification when key is
// nil) and answers statuses in turn (200 when empty).
func NewReceiver(t testing.TB, key []byte, statuses ...int) *Receiver {
	r := &Receiver{Key: key, statuses: statuses}
	r.Server = httptest.NewServer(http.HandlerFunc(r.serve))
	t.Cleanup(r.Close)
	return r
}

// SetStatuses replaces the sequence of answers.
func (r *Receiver) SetStatuses(statuses ...int) {
	r.mu.Lock()
	r.statuses = statuses
	r.mu.Unlock()
}

// OnRequest runs f on each request before it is answered (to delay or inspect it).
func (r *Receiver) OnRequest(f func(*http.Request)) {
	r.mu.Lock()
	r.onRequest = f
	r.mu.Unlock()
}

func (r *Receiver) serve(w http.ResponseWriter, req *http.Request) {
	body, _ := io.ReadAll(req.Body)
	rec := Request{At: time.Now(), Header: req.Header.Clone(), Body: body}
	if r.Key != nil {
		rec.VerifyErr = dispatcher.Verify(r.Key, req.Header.Get(dispatcher.HeaderTimestamp),
			req.Header.Get(dispatcher.HeaderSignature), body, time.Now(), dispatcher.DefaultTolerance)
		rec.Verified = rec.VerifyErr == nil
	}
	r.mu.Lock()
	hook := r.onRequest
	status := http.StatusOK
	if n := len(r.statuses); n > 0 {
		status = r.statuses[0]
		if n > 1 {
			r.statuses = r.statuses[1:]
		}
	}
	r.mu.Unlock()
	if hook != nil {
		hook(req)
	}
	if r.Key != nil && !rec.Verified {
		status = http.StatusUnauthorized
	}
	rec.Status = status
	r.mu.Lock()
	r.requests = append(r.requests, rec)
	r.mu.Unlock()
	w.Header().Set("X-Request-Number", strconv.Itoa(len(r.Requests())))
	w.WriteHeader(status)
}

// Requests returns a copy of the requests received so far.
func (r *Receiver) Requests() []Request {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Request(nil), r.requests...)
}

// Count is the number of requests received so far.
func (r *Receiver) Count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.requests)
}
