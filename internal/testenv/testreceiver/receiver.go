// Package testreceiver is a customer's webhook receiver for tests: a real HTTP server on
// loopback that checks each request's signature as a receiver in production would (in constant
// time, through dispatcher.Verify), answers from a script, and records every request.
//
// It imports only the standard library and the dispatcher, so that the dispatcher's own tests
// can use it without pulling in controller-runtime or the API types (the layering rule of
// .golangci.yml); the envtest harness is its parent package, internal/testenv.
package testreceiver

import (
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docrouter/webhook-operator/dispatcher"
)

// Answer is one scripted response.
type Answer struct {
	Status int
	Header http.Header // set on the response, e.g. Retry-After
	Body   string
}

// RetryAfter is an answer of status with a Retry-After header of value (seconds or an HTTP date).
func RetryAfter(status int, value string) Answer {
	return Answer{Status: status, Header: http.Header{"Retry-After": {value}}}
}

// Statuses is one answer per status code, without headers.
func Statuses(codes ...int) []Answer {
	answers := make([]Answer, len(codes))
	for i, c := range codes {
		answers[i] = Answer{Status: c}
	}
	return answers
}

// VerifyFunc checks a request against the receiver's current key; nil accepts it.
type VerifyFunc func(key []byte, header http.Header, body []byte) error

// VerifyDocRouter is the default check: X-DocRouter-Signature over the timestamp and the body,
// compared in constant time and within dispatcher.DefaultTolerance, as docs/signatures.md tells
// receivers to do.
func VerifyDocRouter(key []byte, header http.Header, body []byte) error {
	return dispatcher.Verify(key, header.Get(dispatcher.HeaderTimestamp), header.Get(dispatcher.HeaderSignature),
		body, time.Now(), dispatcher.DefaultTolerance)
}

// Request is one request the receiver got.
type Request struct {
	At     time.Time // when it arrived
	Method string
	Host   string
	URL    *url.URL // as the request line had it: path and query
	Header http.Header
	Body   []byte
	// Verified: the signature check ran and accepted the request. False when no check runs (no
	// key and no custom verifier).
	Verified  bool
	VerifyErr error // why the check refused it
	Status    int   // what the receiver answered
}

// Receiver is a running receiver. Its methods are safe for concurrent use.
type Receiver struct {
	*httptest.Server

	mu        sync.Mutex
	key       []byte
	verify    VerifyFunc
	answers   []Answer // answered in turn; the last one repeats
	respond   func(Request) Answer
	onRequest func(*http.Request)
	requests  []Request
}

// New starts a receiver on loopback that checks signatures with key (VerifyDocRouter; no check
// when key is nil) and answers statuses in turn, the last one repeating (200 when none). A
// request that fails the check is answered 401 with the reason, and does not use up an answer.
// The receiver is closed when the test ends.
func New(tb testing.TB, key []byte, statuses ...int) *Receiver {
	tb.Helper()
	r := newReceiver(key, statuses)
	r.Server = httptest.NewServer(http.HandlerFunc(r.serve))
	tb.Cleanup(r.Close)
	return r
}

// NewTLS is New serving https with httptest's self-signed certificate (Certificate()).
func NewTLS(tb testing.TB, key []byte, statuses ...int) *Receiver {
	tb.Helper()
	r := newReceiver(key, statuses)
	r.Server = httptest.NewTLSServer(http.HandlerFunc(r.serve))
	tb.Cleanup(r.Close)
	return r
}

func newReceiver(key []byte, statuses []int) *Receiver {
	return &Receiver{key: key, answers: Statuses(statuses...)}
}

// SetStatuses replaces the script with statuses, without headers.
func (r *Receiver) SetStatuses(statuses ...int) { r.Script(Statuses(statuses...)...) }

// Script replaces the answers still to come; the last one repeats (200 when none).
func (r *Receiver) Script(answers ...Answer) {
	r.mu.Lock()
	r.answers, r.respond = append([]Answer(nil), answers...), nil
	r.mu.Unlock()
}

// Respond answers every accepted request with f instead of the script, e.g. to echo what the
// request carried.
func (r *Receiver) Respond(f func(Request) Answer) {
	r.mu.Lock()
	r.respond = f
	r.mu.Unlock()
}

// SetKey changes the key the receiver checks with, as a customer does during a rotation.
func (r *Receiver) SetKey(key []byte) {
	r.mu.Lock()
	r.key = key
	r.mu.Unlock()
}

// SetVerifier replaces the DocRouter check with f, which is called with the current key on every
// request (also when the key is nil).
func (r *Receiver) SetVerifier(f VerifyFunc) {
	r.mu.Lock()
	r.verify = f
	r.mu.Unlock()
}

// OnRequest runs f on each request after it is checked and before it is answered (to hold or
// inspect it). The request is recorded once f returns.
func (r *Receiver) OnRequest(f func(*http.Request)) {
	r.mu.Lock()
	r.onRequest = f
	r.mu.Unlock()
}

func (r *Receiver) serve(w http.ResponseWriter, req *http.Request) {
	body, _ := io.ReadAll(req.Body)
	rec := Request{At: time.Now(), Method: req.Method, Host: req.Host, URL: cloneURL(req.URL),
		Header: req.Header.Clone(), Body: body}

	r.mu.Lock()
	key, verify, hook := r.key, r.verify, r.onRequest
	r.mu.Unlock()
	if verify == nil && key != nil {
		verify = VerifyDocRouter
	}
	if verify != nil {
		rec.VerifyErr = verify(key, rec.Header, body)
		rec.Verified = rec.VerifyErr == nil
	}

	answer := Answer{Status: http.StatusUnauthorized}
	if verify == nil || rec.Verified {
		answer = r.next(rec)
	} else {
		answer.Body = rec.VerifyErr.Error()
	}
	if hook != nil {
		hook(req)
	}
	rec.Status = answer.Status

	r.mu.Lock()
	r.requests = append(r.requests, rec)
	r.mu.Unlock()
	for k, v := range answer.Header {
		w.Header()[k] = v
	}
	w.WriteHeader(answer.Status)
	if answer.Body != "" {
		_, _ = io.WriteString(w, answer.Body)
	}
}

// next is the answer to an accepted request.
func (r *Receiver) next(rec Request) Answer {
	r.mu.Lock()
	respond := r.respond
	answer := Answer{Status: http.StatusOK}
	if n := len(r.answers); n > 0 {
		answer = r.answers[0]
		if n > 1 {
			r.answers = r.answers[1:]
		}
	}
	r.mu.Unlock()
	if respond != nil {
		answer = respond(rec)
	}
	if answer.Status == 0 {
		answer.Status = http.StatusOK
	}
	return answer
}

// Requests returns a copy of the requests answered so far, in the order they were answered.
func (r *Receiver) Requests() []Request {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Request(nil), r.requests...)
}

// Count is the number of requests answered so far.
func (r *Receiver) Count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.requests)
}

// Arrivals are the arrival times of the requests answered so far.
func (r *Receiver) Arrivals() []time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	at := make([]time.Time, len(r.requests))
	for i, req := range r.requests {
		at[i] = req.At
	}
	return at
}

// Dump is the request as it came on the wire (HTTP/1.1 framing), for a test's log.
func (r *Request) Dump() []byte {
	u := r.URL
	if u == nil {
		u = &url.URL{Path: "/"}
	}
	dump, err := httputil.DumpRequest(&http.Request{Method: r.Method, URL: u, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: r.Header, Host: r.Host, Body: io.NopCloser(strings.NewReader(string(r.Body)))}, true)
	if err != nil {
		return []byte(err.Error())
	}
	return dump
}

func cloneURL(u *url.URL) *url.URL {
	if u == nil {
		return nil
	}
	c := *u
	return &c
}
