package receiver

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docrouter/webhook-operator/dispatcher"
)

// syncBuffer is an io.Writer safe for the server's goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

const payload = `{"event_id":"evt-42","event_type":"llm.completed","timestamp":1764345600,"organization_id":"org-1","document":{"document_id":"doc-1","document_name":"invoice.pdf","tag_ids":[],"metadata":{}}}`

// request is what a test sends: a body signed (or not) at a time, with extra headers.
type request struct {
	method    string
	path      string
	body      string
	signKey   string // empty: no signature
	signedAgo time.Duration
	tamper    bool // send a body one byte longer than the signed one
	headers   map[string]string
}

func TestReceiverAnswersAsAUserExpects(t *testing.T) {
	secret := "whsec-test"
	now := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name       string
		opts       Options
		req        request
		wantStatus int
		wantLine   []string
	}{
		{
			name:       "a correctly signed event is accepted and printed",
			opts:       Options{Secret: []byte(secret)},
			req:        request{path: "/hooks", body: payload, signKey: secret},
			wantStatus: 200,
			wantLine:   []string{"2026-11-28T12:00:00Z 200", "event=evt-42", "type=llm.completed", "attempt=3", "verified=signature", "path=/hooks"},
		},
		{
			name:       "a signature made with another secret is refused",
			opts:       Options{Secret: []byte(secret)},
			req:        request{path: "/hooks", body: payload, signKey: "another-secret"},
			wantStatus: 401,
			wantLine:   []string{" 401 ", "event=evt-42", "verified=no", `reason="signature does not match"`},
		},
		{
			name:       "a body changed after signing is refused",
			opts:       Options{Secret: []byte(secret)},
			req:        request{path: "/hooks", body: payload, signKey: secret, tamper: true},
			wantStatus: 401,
			wantLine:   []string{" 401 ", "signature does not match"},
		},
		{
			name:       "a request signed six minutes ago is refused as a possible replay",
			opts:       Options{Secret: []byte(secret)},
			req:        request{path: "/hooks", body: payload, signKey: secret, signedAgo: 6 * time.Minute},
			wantStatus: 401,
			wantLine:   []string{" 401 ", "possible replay"},
		},
		{
			name:       "a request signed four minutes ago is accepted",
			opts:       Options{Secret: []byte(secret)},
			req:        request{path: "/hooks", body: payload, signKey: secret, signedAgo: 4 * time.Minute},
			wantStatus: 200,
			wantLine:   []string{" 200 ", "verified=signature"},
		},
		{
			name:       "an unsigned request is refused when the receiver has a secret",
			opts:       Options{Secret: []byte(secret)},
			req:        request{path: "/hooks", body: payload},
			wantStatus: 401,
			wantLine:   []string{" 401 ", "unauthenticated: no X-DocRouter-Signature header"},
		},
		{
			name:       "a verified event under /fail is answered 500 so that the operator retries",
			opts:       Options{Secret: []byte(secret)},
			req:        request{path: "/fail/hooks", body: payload, signKey: secret},
			wantStatus: 500,
			wantLine:   []string{" 500 ", "verified=signature", "path=/fail/hooks", "failing on purpose"},
		},
		{
			name:       "/failure is not under /fail",
			opts:       Options{Secret: []byte(secret)},
			req:        request{path: "/failure", body: payload, signKey: secret},
			wantStatus: 200,
		},
		{
			name:       "a bad signature under /fail is still 401: authentication comes first",
			opts:       Options{Secret: []byte(secret)},
			req:        request{path: "/fail", body: payload, signKey: "wrong"},
			wantStatus: 401,
		},
		{
			name:       "the right auth header is accepted",
			opts:       Options{Secret: []byte(secret), AuthHeaderName: "X-Api-Key", AuthHeaderValue: "token-1"},
			req:        request{path: "/header-hooks", body: payload, headers: map[string]string{"X-Api-Key": "token-1"}},
			wantStatus: 200,
			wantLine:   []string{"verified=header"},
		},
		{
			name:       "a wrong auth header is refused even with a valid signature",
			opts:       Options{Secret: []byte(secret), AuthHeaderName: "X-Api-Key", AuthHeaderValue: "token-1"},
			req:        request{path: "/hooks", body: payload, signKey: secret, headers: map[string]string{"X-Api-Key": "token-2"}},
			wantStatus: 401,
			wantLine:   []string{"X-Api-Key header does not match"},
		},
		{
			name:       "signature and header both right",
			opts:       Options{Secret: []byte(secret), AuthHeaderName: "X-Api-Key", AuthHeaderValue: "token-1"},
			req:        request{path: "/hooks", body: payload, signKey: secret, headers: map[string]string{"X-Api-Key": "token-1"}},
			wantStatus: 200,
			wantLine:   []string{"verified=signature+header"},
		},
		{
			name:       "neither credential presented",
			opts:       Options{Secret: []byte(secret), AuthHeaderName: "X-Api-Key", AuthHeaderValue: "token-1"},
			req:        request{path: "/hooks", body: payload},
			wantStatus: 401,
			wantLine:   []string{"no X-DocRouter-Signature or X-Api-Key header"},
		},
		{
			name:       "a receiver without credentials accepts anything well-formed",
			opts:       Options{},
			req:        request{path: "/hooks", body: payload},
			wantStatus: 200,
			wantLine:   []string{"verified=none"},
		},
		{
			name:       "a signed body that is not a DocRouter event is a 400",
			opts:       Options{Secret: []byte(secret)},
			req:        request{path: "/hooks", body: `{"hello":"world"}`, signKey: secret},
			wantStatus: 400,
			wantLine:   []string{"not a DocRouter payload"},
		},
		{
			name:       "GET is not a webhook",
			opts:       Options{},
			req:        request{method: http.MethodGet, path: "/hooks"},
			wantStatus: 405,
		},
		{
			name:       "--fail-rate fails the drawn share",
			opts:       Options{Secret: []byte(secret), FailRate: 0.5, Rand: func() float64 { return 0.49 }},
			req:        request{path: "/hooks", body: payload, signKey: secret},
			wantStatus: 500,
			wantLine:   []string{"--fail-rate 0.5"},
		},
		{
			name:       "--fail-rate lets the rest through",
			opts:       Options{Secret: []byte(secret), FailRate: 0.5, Rand: func() float64 { return 0.5 }},
			req:        request{path: "/hooks", body: payload, signKey: secret},
			wantStatus: 200,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := &syncBuffer{}
			tt.opts.Out = out
			tt.opts.Now = func() time.Time { return now }
			srv := httptest.NewServer(New(tt.opts))
			defer srv.Close()

			status := send(t, srv.URL, tt.req, now)
			if status != tt.wantStatus {
				t.Fatalf("status %d, want %d; printed %q", status, tt.wantStatus, out.String())
			}
			line := out.String()
			if strings.Count(line, "\n") != 1 {
				t.Fatalf("want exactly one printed line, got %q", line)
			}
			for _, want := range tt.wantLine {
				if !strings.Contains(line, want) {
					t.Errorf("printed line %q lacks %q", line, want)
				}
			}
			if strings.Contains(line, "sha256=") || strings.Contains(line, "token-") || strings.Contains(line, secret) {
				t.Errorf("printed line %q shows a credential", line)
			}
		})
	}
}

// send makes one request the way the operator does (dispatcher.Sign over "<ts>.<body>") and
// returns the status code.
func send(t *testing.T, base string, r request, now time.Time) int {
	t.Helper()
	method := r.method
	if method == "" {
		method = http.MethodPost
	}
	body := []byte(r.body)
	sent := body
	if r.tamper {
		sent = append(append([]byte(nil), body...), ' ')
	}
	req, err := http.NewRequest(method, base+r.path, bytes.NewReader(sent))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(dispatcher.HeaderAttempt, "3")
	if r.signKey != "" {
		ts := now.Add(-r.signedAgo).Unix()
		req.Header.Set(dispatcher.HeaderTimestamp, strconv.FormatInt(ts, 10))
		req.Header.Set(dispatcher.HeaderSignature, dispatcher.Sign([]byte(r.signKey), ts, body))
	}
	for k, v := range r.headers {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	return resp.StatusCode
}
