package dispatcher_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode"

	"github.com/docrouter/webhook-operator/dispatcher"
	"github.com/docrouter/webhook-operator/internal/testenv/testreceiver"
)

func request(url string) dispatcher.Request {
	return dispatcher.Request{
		URL: url, Body: []byte(`{"event_id":"evt-1"}`), EventID: "evt-1", EventType: "document.uploaded",
		Attempt: 1, Timeout: 5 * time.Second,
	}
}

// TestSendNeverAnswers: a receiver that accepts the request and never answers costs one
// timeout, and the attempt is classed Timeout.
func TestSendNeverAnswers(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}))
	defer srv.Close()
	defer close(release)

	m := request(srv.URL)
	m.Timeout = 300 * time.Millisecond
	start := time.Now()
	res := dispatcher.NewSender(dispatcher.SenderOptions{}).Send(context.Background(), m)
	took := time.Since(start)

	if res.Class != dispatcher.ClassTimeout {
		t.Fatalf("class = %s (%s), want Timeout", res.Class, res.Error)
	}
	if took < m.Timeout || took > m.Timeout+2*time.Second {
		t.Errorf("the attempt took %s, want about the %s timeout", took, m.Timeout)
	}
	if !strings.Contains(res.Error, "timed out") || strings.Contains(res.Error, srv.URL) {
		t.Errorf("error %q should say it timed out, without the URL", res.Error)
	}
}

// TestSendStopsReadingAtTheCap: endless response bodies, plain and gzip-compressed (a gzip bomb:
// every member of the stream inflates 16 MiB of zeros from 16 KiB), do not hold the attempt
// until its timeout: the sender reads up to MaxResponseBytes and hangs up.
func TestSendStopsReadingAtTheCap(t *testing.T) {
	plain := bytes.Repeat([]byte("A"), 32<<10)

	for _, tc := range []struct {
		name     string
		encoding string
		chunk    []byte
	}{
		{"endless plain body", "", plain},
		{"endless gzip bomb", "gzip", gzipBomb(t)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if tc.encoding != "" {
					w.Header().Set("Content-Encoding", tc.encoding)
				}
				w.WriteHeader(http.StatusOK)
				for r.Context().Err() == nil {
					if _, err := w.Write(tc.chunk); err != nil {
						return
					}
				}
			}))
			defer srv.Close()

			m := request(srv.URL)
			m.Timeout = 20 * time.Second
			start := time.Now()
			res := dispatcher.NewSender(dispatcher.SenderOptions{}).Send(context.Background(), m)
			if took := time.Since(start); took > 5*time.Second {
				t.Errorf("the attempt took %s: the body was not cut at the cap", took)
			}
			if res.Class != dispatcher.ClassSuccess || len(res.Snippet) > dispatcher.SnippetBytes {
				t.Errorf("class %s, snippet of %d bytes; want Success and at most %d bytes", res.Class, len(res.Snippet), dispatcher.SnippetBytes)
			}
		})
	}
}

// TestSendLargeBodyMemoryStaysFlat: a 10 MiB answer and a 1 GiB gzip bomb are read only up to
// the cap, stored as a short sanitised snippet, and the process allocates far less than the
// body while doing it.
func TestSendLargeBodyMemoryStaysFlat(t *testing.T) {
	body := append([]byte("\x00\x1b[31m<html>\r\n\t  error:\u202e\tbad\n"), bytes.Repeat([]byte("x"), 10<<20)...)
	wire := bytes.Repeat(gzipBomb(t), 64) // 1 GiB in about 1 MiB

	for _, tc := range []struct {
		name, encoding string
		status         int
		body           []byte
		wantSnippet    string
	}{
		{"10 MiB error page", "", http.StatusInternalServerError, body, "[31m<html> error: bad xxxx"},
		{"1 GiB gzip bomb", "gzip", http.StatusOK, wire, strings.Repeat("A", dispatcher.SnippetBytes)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if tc.encoding != "" {
					w.Header().Set("Content-Encoding", tc.encoding)
				}
				w.WriteHeader(tc.status)
				_, _ = w.Write(tc.body)
			}))
			defer srv.Close()
			sender := dispatcher.NewSender(dispatcher.SenderOptions{})

			runtime.GC()
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			res := sender.Send(context.Background(), request(srv.URL))
			runtime.ReadMemStats(&after)

			allocated := after.TotalAlloc - before.TotalAlloc
			t.Logf("allocated %d KiB while receiving %d KiB on the wire; snippet of %d bytes", allocated>>10, len(tc.body)>>10, len(res.Snippet))
			if allocated > 4<<20 {
				t.Errorf("allocated %d KiB: the body was buffered", allocated>>10)
			}
			if res.StatusCode != tc.status || len(res.Snippet) > dispatcher.SnippetBytes {
				t.Errorf("status %d, snippet of %d bytes", res.StatusCode, len(res.Snippet))
			}
			if !strings.HasPrefix(res.Snippet, tc.wantSnippet) {
				t.Errorf("snippet %q, want it to start with %q", res.Snippet, tc.wantSnippet)
			}
			for _, r := range res.Snippet + res.Error {
				if !unicode.IsPrint(r) {
					t.Fatalf("unsanitised rune %q in %q / %q", r, res.Snippet, res.Error)
				}
			}
		})
	}
}

// gzipBomb is one gzip member that inflates to 16 MiB of the letter A (printable, so the
// snippet shows that the body was inflated, and where it was cut). Members concatenate: a stream
// of n of them inflates to n*16 MiB.
func gzipBomb(t *testing.T) []byte {
	t.Helper()
	bombOnce.Do(func() {
		var b bytes.Buffer
		zw, _ := gzip.NewWriterLevel(&b, gzip.BestSpeed)
		_, _ = zw.Write(bytes.Repeat([]byte("A"), 16<<20))
		_ = zw.Close()
		bomb = b.Bytes()
	})
	t.Logf("gzip member: %d KiB inflating to 16 MiB", len(bomb)>>10)
	return bomb
}

var (
	bombOnce sync.Once
	bomb     []byte
)

// TestSendDoesNotFollowRedirects: a 3xx is recorded as a failed attempt that says why, and the
// Location target gets no request.
func TestSendDoesNotFollowRedirects(t *testing.T) {
	target := testreceiver.New(t, nil)
	for _, code := range []int{http.StatusMovedPermanently, http.StatusFound, http.StatusSeeOther, http.StatusTemporaryRedirect, http.StatusPermanentRedirect} {
		srv := httptest.NewServer(http.RedirectHandler(target.URL+"/elsewhere", code))
		res := dispatcher.NewSender(dispatcher.SenderOptions{}).Send(context.Background(), request(srv.URL))
		srv.Close()
		if res.Class != dispatcher.ClassHTTPError || res.StatusCode != code || !strings.Contains(res.Error, "redirects are not followed") {
			t.Errorf("HTTP %d: got %+v, want an HTTPError that says redirects are not followed", code, res)
		}
	}
	if n := target.Count(); n != 0 {
		t.Fatalf("the redirect target got %d requests", n)
	}
}

// TestSendRetryAfter: 429 and 503 carry the receiver's Retry-After, in seconds or as an HTTP
// date; other answers do not.
func TestSendRetryAfter(t *testing.T) {
	now := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		status int
		header string
		want   time.Duration
	}{
		{http.StatusTooManyRequests, "120", 120 * time.Second},
		{http.StatusServiceUnavailable, now.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second},
		{http.StatusTooManyRequests, "Sat, 28 Nov 2026 11:00:00 GMT", 0}, // in the past
		{http.StatusServiceUnavailable, "soon", 0},
		{http.StatusTooManyRequests, "9999999999", dispatcher.MaxRetryAfter},
		{http.StatusInternalServerError, "120", 0}, // Retry-After means nothing on a 500
		{http.StatusServiceUnavailable, "", 0},
	} {
		srv := testreceiver.New(t, nil)
		if tc.header != "" {
			srv.Script(testreceiver.RetryAfter(tc.status, tc.header))
		} else {
			srv.SetStatuses(tc.status)
		}
		res := dispatcher.NewSender(dispatcher.SenderOptions{Now: func() time.Time { return now }}).Send(context.Background(), request(srv.URL))
		if res.RetryAfter != tc.want || res.Class != dispatcher.ClassHTTPError {
			t.Errorf("HTTP %d with Retry-After %q: RetryAfter = %s (%s), want %s", tc.status, tc.header, res.RetryAfter, res.Class, tc.want)
		}
	}
}

// TestSendStaticHeadersCannotOverride: an endpoint's static auth header is sent, but a header
// the sender sets itself (framing, content type, the signature and event headers) cannot be
// replaced through it: the receiver sees the sender's values and a valid signature.
func TestSendStaticHeadersCannotOverride(t *testing.T) {
	rcv := testreceiver.New(t, nil)
	m := request(rcv.URL)
	m.Headers = http.Header{
		"Authorization":             {"Bearer token-1"},
		"Host":                      {"internal.example"},
		"content-type":              {"text/plain"},
		"Content-Length":            {"1"},
		"Transfer-Encoding":         {"chunked"},
		"X-DocRouter-Signature":     {"sha256=forged"},
		"x-docrouter-event-id":      {"evt-forged"},
		"X-DocRouter-Timestamp":     {"1"},
		"webhook-signature":         {"v1,forged"},
		dispatcher.HeaderEventType:  {"llm.completed"},
		dispatcher.HeaderAttempt:    {"99"},
		"X-Docrouter-Anything-Else": {"x"},
	}
	res := dispatcher.NewSender(dispatcher.SenderOptions{}).Send(context.Background(), m)
	if !res.Succeeded() {
		t.Fatalf("send failed: %+v", res)
	}
	reqs := rcv.Requests()
	if len(reqs) != 1 {
		t.Fatalf("%d requests", len(reqs))
	}
	h, body := reqs[0].Header, reqs[0].Body
	if got := h.Get("Authorization"); got != "Bearer token-1" {
		t.Errorf("Authorization = %q: the static header was not sent", got)
	}
	if !bytes.Equal(body, m.Body) {
		t.Errorf("body %q, want %q", body, m.Body)
	}
	for name, want := range map[string]string{
		"Content-Type": "application/json", dispatcher.HeaderEventID: "evt-1", dispatcher.HeaderEventType: "document.uploaded",
		dispatcher.HeaderAttempt: "1", dispatcher.HeaderSignature: "", "Webhook-Signature": "", "X-Docrouter-Anything-Else": "",
		"Transfer-Encoding": "",
	} {
		if got := h.Get(name); got != want {
			t.Errorf("%s = %q, want %q", name, got, want)
		}
	}
	if ts := h.Get(dispatcher.HeaderTimestamp); ts == "1" {
		t.Errorf("the timestamp was overridden")
	}
}

// TestSendTLS: certificates are verified against the system roots, or the endpoint's CA bundle
// when it has one; a server that offers only TLS 1.1 is refused.
func TestSendTLS(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer srv.Close()
	bundle := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	sender := dispatcher.NewSender(dispatcher.SenderOptions{})

	res := sender.Send(context.Background(), request(srv.URL))
	t.Logf("unknown CA: %s", res.Error)
	if res.Class != dispatcher.ClassNetwork || !strings.Contains(res.Error, "certificate") || !strings.Contains(res.Error, "spec.caBundleRef") {
		t.Errorf("unknown CA: %+v, want a NetworkError about the certificate that points at spec.caBundleRef", res)
	}

	m := request(srv.URL)
	m.CABundle = bundle
	if res := sender.Send(context.Background(), m); !res.Succeeded() {
		t.Errorf("with the server's CA bundle: %+v", res)
	}
	if res := sender.Send(context.Background(), request(srv.URL)); res.Succeeded() {
		t.Errorf("a CA bundle of one endpoint was trusted for another request: %+v", res)
	}

	m = request(srv.URL)
	m.CABundle = newCAPEM(t) // a CA that signed nothing here
	if res := sender.Send(context.Background(), m); res.Class != dispatcher.ClassNetwork {
		t.Errorf("with an unrelated CA bundle: %+v, want a NetworkError", res)
	}

	m.CABundle = []byte("not a certificate")
	if res := sender.Send(context.Background(), m); res.Class != dispatcher.ClassInvalid || !strings.Contains(res.Error, "no PEM certificate") {
		t.Errorf("with a bundle holding no certificate: %+v", res)
	}

	old := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	old.TLS = &tls.Config{MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11}
	old.StartTLS()
	defer old.Close()
	// The server does speak TLS 1.1: a client that allows it connects.
	legacy := old.Client()
	legacy.Transport.(*http.Transport).TLSClientConfig.MinVersion = tls.VersionTLS10
	if resp, err := legacy.Get(old.URL); err != nil {
		t.Fatalf("the TLS 1.1 server does not work: %v", err)
	} else {
		resp.Body.Close()
	}
	m = request(old.URL)
	m.CABundle = bundle
	res = sender.Send(context.Background(), m)
	t.Logf("TLS 1.1 only: %s", res.Error)
	if res.Class != dispatcher.ClassNetwork || !strings.Contains(res.Error, "TLS 1.2") {
		t.Errorf("TLS 1.1-only server: %+v, want a NetworkError that asks for TLS 1.2", res)
	}
}

// newCAPEM makes a self-signed CA certificate.
func newCAPEM(t *testing.T) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "unrelated test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// TestSendAddressPolicy: with the default policy, an endpoint whose name resolves to loopback
// is blocked before any connection, with a reason that names the policy and the flag; the same
// endpoint is delivered to when the operator allows 127.0.0.0/8, as the dev stack does. The
// name is resolved by a stub: nothing here leaves the host.
func TestSendAddressPolicy(t *testing.T) {
	rcv := testreceiver.New(t, nil)
	_, port, _ := net.SplitHostPort(rcv.Listener.Addr().String())
	resolver := stubResolver{"receiver.example": "127.0.0.1", "metadata.example": "169.254.169.254"}

	senderWith := func(policy *dispatcher.AddressPolicy) *dispatcher.Sender {
		d := dispatcher.NewPolicyDialer(policy)
		d.Resolver = resolver
		loopbackOnly := d.Dial
		d.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
			if ap, err := netip.ParseAddrPort(addr); err != nil || !ap.Addr().IsLoopback() {
				t.Fatalf("the test would have dialled %s", addr)
			}
			return loopbackOnly(ctx, network, addr)
		}
		return dispatcher.NewSender(dispatcher.SenderOptions{DialContext: d.DialContext})
	}

	url := "http://receiver.example:" + port + "/hook?token=secret-token"
	res := senderWith(&dispatcher.AddressPolicy{}).Send(context.Background(), request(url))
	if res.Class != dispatcher.ClassBlocked {
		t.Fatalf("default policy: %+v, want Blocked", res)
	}
	t.Logf("status.lastError: %s", res.Error)
	for _, want := range []string{"outbound address policy", "127.0.0.1", "loopback", dispatcher.FlagOutboundAllowCIDRs} {
		if !strings.Contains(res.Error, want) {
			t.Errorf("error %q does not say %q", res.Error, want)
		}
	}
	if strings.Contains(res.Error, "secret-token") || strings.Contains(res.Error, "receiver.example") {
		t.Errorf("error %q leaks the URL", res.Error)
	}
	if rcv.Count() != 0 {
		t.Fatalf("the receiver got %d requests despite the policy", rcv.Count())
	}

	allowed := &dispatcher.AddressPolicy{Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}}
	if res := senderWith(allowed).Send(context.Background(), request(url)); !res.Succeeded() {
		t.Fatalf("loopback allowed by %s: %+v", dispatcher.FlagOutboundAllowCIDRs, res)
	}
	if rcv.Count() != 1 {
		t.Fatalf("the receiver got %d requests, want 1", rcv.Count())
	}

	// Allowing loopback does not open the metadata service.
	res = senderWith(allowed).Send(context.Background(), request("http://metadata.example/latest/meta-data/"))
	if res.Class != dispatcher.ClassBlocked || !strings.Contains(res.Error, "169.254.169.254") {
		t.Fatalf("metadata: %+v, want Blocked", res)
	}

	// A redirect to a blocked address is not followed, so it reaches nothing either.
	redirector := httptest.NewServer(http.RedirectHandler("http://metadata.example/latest/meta-data/", http.StatusFound))
	defer redirector.Close()
	_, rport, _ := net.SplitHostPort(redirector.Listener.Addr().String())
	res = senderWith(allowed).Send(context.Background(), request("http://receiver.example:"+rport+"/"))
	if res.Class != dispatcher.ClassHTTPError || res.StatusCode != http.StatusFound {
		t.Fatalf("redirect to metadata: %+v, want HTTPError 302", res)
	}
}

type stubResolver map[string]string

func (r stubResolver) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	if a, ok := r[host]; ok {
		return []netip.Addr{netip.MustParseAddr(a)}, nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
}
