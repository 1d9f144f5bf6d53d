package dispatcher

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"
)

// Class is the outcome class of one attempt.
type Class string

const (
	ClassSuccess   Class = "Success"      // the receiver answered 2xx
	ClassHTTPError Class = "HTTPError"    // the receiver answered, but not 2xx (3xx included)
	ClassTimeout   Class = "Timeout"      // no answer within the timeout
	ClassNetwork   Class = "NetworkError" // DNS, connect, TLS or transport failure
	ClassBlocked   Class = "Blocked"      // refused by the outbound address policy
	ClassInvalid   Class = "InvalidRequest"
)

const (
	// MaxResponseBytes is how much of a response body is read (then the connection is dropped).
	MaxResponseBytes = 64 << 10
	// SnippetBytes is how much of a response body is kept, sanitised, in a Result.
	SnippetBytes = 256
	// maxErrorLen bounds Result.Error, which ends up in status.
	maxErrorLen = 256

	// UserAgent identifies the sender to receivers.
	UserAgent = "DocRouter-Webhooks/1.0"
)

// Request is one attempt of one event to one URL: everything needed to put it on the wire.
type Request struct {
	URL       string
	Body      []byte
	EventID   string
	EventType string
	Attempt   int32
	// Signing signs the request: its scheme and keys (the current one first). Without a key the
	// request is not signed.
	Signing Signing
	// Headers are extra static headers, such as an endpoint's auth header. They cannot replace
	// the headers the sender sets itself.
	Headers http.Header
	// Timeout bounds the whole attempt, reading the response included.
	Timeout time.Duration
	// CABundle, when non-empty, is the PEM certificates that this request's server certificate
	// must chain to, instead of the system roots (an endpoint's spec.caBundleRef).
	CABundle []byte
}

// Result is what became of one attempt.
type Result struct {
	Class      Class
	StatusCode int
	Duration   time.Duration
	// RetryAfter is the receiver's Retry-After, zero when absent or unparsable.
	RetryAfter time.Duration
	// Error is a short, sanitised description of a failure: never a URL, header or body secret.
	Error string
	// Snippet is the start of the response body, sanitised.
	Snippet string
}

// Succeeded reports whether the receiver accepted the event.
func (r Result) Succeeded() bool { return r.Class == ClassSuccess }

// Sender sends Requests over one shared HTTP client. It makes exactly one HTTP request per Send:
// no retries, no redirects followed.
type Sender struct {
	client *http.Client
	now    func() time.Time

	// base is the shared transport; a CA bundle gets a clone of it, cached by the bundle's hash.
	base    *http.Transport
	mu      sync.Mutex
	bundles map[[sha256.Size]byte]*http.Client
}

// maxBundleClients bounds the cached per-CA-bundle clients; beyond it the cache starts again.
const maxBundleClients = 256

// SenderOptions configures a Sender. The zero value is a sensible production sender.
type SenderOptions struct {
	// DialContext replaces the transport's dialer, for an outbound address policy.
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
	// TLSConfig replaces the default (system roots, TLS 1.2 minimum).
	TLSConfig *tls.Config
	// MaxConnsPerHost bounds connections to one host; 0 means no bound.
	MaxConnsPerHost int
	// Now is the clock that timestamps signatures; time.Now when nil.
	Now func() time.Time
}

// NewSender builds a Sender with a shared, pooled transport.
func NewSender(opts SenderOptions) *Sender {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConns = 1024
	tr.MaxIdleConnsPerHost = 256
	tr.MaxConnsPerHost = opts.MaxConnsPerHost
	tr.ResponseHeaderTimeout = 0 // the per-attempt context bounds it
	// No HTTP(S)_PROXY: the outbound address policy must see the IP actually dialled, which a
	// proxy would hide.
	tr.Proxy = nil
	if opts.DialContext != nil {
		tr.DialContext = opts.DialContext
	}
	tr.TLSClientConfig = opts.TLSConfig
	if tr.TLSClientConfig == nil {
		tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	return &Sender{now: now, base: tr, client: newClient(tr), bundles: map[[sha256.Size]byte]*http.Client{}}
}

func newClient(tr http.RoundTripper) *http.Client {
	return &http.Client{
		Transport: tr,
		// A redirect is an answer, not an instruction: it is recorded as a failure.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// clientFor returns the shared client, or for a CA bundle a client whose transport trusts only
// that bundle: one per distinct bundle, so endpoints sharing a CA share connections.
func (s *Sender) clientFor(bundle []byte) (*http.Client, error) {
	if len(bundle) == 0 {
		return s.client, nil
	}
	key := sha256.Sum256(bundle)
	s.mu.Lock()
	defer s.mu.Unlock()
	if c, ok := s.bundles[key]; ok {
		return c, nil
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(bundle) {
		return nil, errors.New("the CA bundle of spec.caBundleRef holds no PEM certificate")
	}
	tr := s.base.Clone()
	tr.TLSClientConfig.RootCAs = pool
	if len(s.bundles) >= maxBundleClients {
		for k, c := range s.bundles {
			c.CloseIdleConnections()
			delete(s.bundles, k)
		}
	}
	c := newClient(tr)
	s.bundles[key] = c
	return c, nil
}

// reservedHeaders cannot be set through Request.Headers.
var reservedHeaders = map[string]bool{
	"Host": true, "Content-Type": true, "Content-Length": true, "Transfer-Encoding": true,
	"Connection": true, "User-Agent": true,
}

// Send makes one attempt. It never returns an error: every failure is a Result.
func (s *Sender) Send(ctx context.Context, r Request) Result {
	ctx, cancel := context.WithTimeout(ctx, r.Timeout)
	defer cancel()

	req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.URL, bytes.NewReader(r.Body))
	if err != nil {
		return Result{Class: ClassInvalid, Error: "invalid request: " + sanitize(unwrapURLError(err).Error(), maxErrorLen)}
	}
	for name, values := range r.Headers {
		canonical := http.CanonicalHeaderKey(name)
		if reservedHeaders[canonical] || strings.HasPrefix(canonical, "X-Docrouter-") || strings.HasPrefix(canonical, "Webhook-") {
			continue
		}
		req.Header[canonical] = values
	}
	ts := s.now().Unix()
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", UserAgent)
	req.Header.Set(HeaderEventID, r.EventID)
	req.Header.Set(HeaderEventType, r.EventType)
	req.Header.Set(HeaderAttempt, strconv.Itoa(int(r.Attempt)))
	req.Header.Set(HeaderTimestamp, strconv.FormatInt(ts, 10))
	r.Signing.apply(req.Header, r.EventID, ts, r.Body)

	client, err := s.clientFor(r.CABundle)
	if err != nil {
		return Result{Class: ClassInvalid, Error: err.Error()}
	}
	start := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		return Result{Class: classifyError(ctx, err), Duration: time.Since(start), Error: sanitize(describeError(err), maxErrorLen)}
	}
	snippet := readLimited(resp.Body, credentialsOf(r, req.Header))
	_ = resp.Body.Close()
	res := Result{
		StatusCode: resp.StatusCode,
		Duration:   time.Since(start),
		Snippet:    snippet,
	}
	if resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable {
		// Only where RFC 9110 gives Retry-After the meaning "come back later".
		res.RetryAfter = ParseRetryAfter(resp.Header.Get("Retry-After"), s.now())
	}
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		res.Class = ClassSuccess
	case resp.StatusCode >= 300 && resp.StatusCode < 400:
		res.Class = ClassHTTPError
		res.Error = "HTTP " + strconv.Itoa(resp.StatusCode) + ": redirects are not followed; point the endpoint at the final URL"
	default:
		res.Class = ClassHTTPError
		res.Error = "HTTP " + strconv.Itoa(resp.StatusCode)
		if snippet != "" {
			res.Error += ": " + snippet
		}
		res.Error = sanitize(res.Error, maxErrorLen)
	}
	return res
}

// readLimited reads at most MaxResponseBytes of a body (so that a small answer leaves the
// connection reusable, and a huge or endless one costs nothing) and returns its start, with any
// of the request's credentials that the receiver echoed replaced, sanitised. A body cut short
// changes nothing: the status code is the answer.
func readLimited(body io.Reader, credentials []string) string {
	buf := make([]byte, redactWindow)
	n, err := io.ReadFull(body, buf)
	if err == nil {
		_, _ = io.Copy(io.Discard, io.LimitReader(body, MaxResponseBytes-int64(n)))
	}
	text := string(buf[:n])
	for _, c := range credentials {
		text = strings.ReplaceAll(text, c, "[redacted]")
	}
	return sanitize(text, SnippetBytes)
}

// redactWindow is how much of a body is searched for echoed credentials: well past what is
// kept, so that a credential cut at the end of the kept part is still found whole.
const redactWindow = 4 * SnippetBytes

// credentialsOf lists what a receiver must not get us to store, should it echo the request back
// in an error answer (status, Events and logs are readable by more people than Secrets): the
// static header values, the signatures, the signing keys, and the URL's path and query, which
// often carry a token (n8n, Zapier). Longest first, so a whole value is replaced before its parts.
func credentialsOf(r Request, sent http.Header) []string {
	var out []string
	add := func(v string, minLen int) {
		if v = strings.TrimSpace(v); len(v) >= minLen {
			out = append(out, v)
		}
	}
	addWithParts := func(v string) {
		add(v, 1)
		for _, f := range strings.FieldsFunc(v, func(r rune) bool { return r == ' ' || r == ',' || r == '=' }) {
			add(f, 8)
		}
	}
	for _, values := range r.Headers {
		for _, v := range values {
			addWithParts(v)
		}
	}
	for _, name := range []string{HeaderSignature, HeaderSignaturePrevious, "Webhook-Signature"} {
		addWithParts(sent.Get(name))
	}
	for _, k := range r.Signing.Keys {
		add(string(k), 1)
	}
	if u, err := url.Parse(r.URL); err == nil {
		if u.Path != "" && u.Path != "/" {
			add(u.Path, 1)
		}
		for _, seg := range strings.Split(u.Path, "/") {
			add(seg, 8)
		}
		add(u.RawQuery, 1)
		for _, values := range u.Query() {
			for _, v := range values {
				add(v, 8)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return len(out[i]) > len(out[j]) })
	return out
}

func classifyError(ctx context.Context, err error) Class {
	var blocked *BlockedError
	switch {
	case errors.As(err, &blocked):
		return ClassBlocked
	case errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil:
		return ClassTimeout
	}
	var netErr net.Error
	if errors.As(err, &netErr) && netErr.Timeout() {
		return ClassTimeout
	}
	return ClassNetwork
}

// describeError is a transport error for a user: without the URL, and with what to change for
// the TLS failures a user can fix.
func describeError(err error) string {
	msg := unwrapURLError(err).Error()
	var verr *tls.CertificateVerificationError
	switch {
	case errors.As(err, &verr):
		msg += " (the receiver's certificate is not trusted: for a private CA, set spec.caBundleRef)"
	case strings.Contains(msg, "protocol version"):
		msg += " (the receiver must support TLS 1.2 or later)"
	}
	return msg
}

// unwrapURLError drops the URL that *url.Error carries: an endpoint URL may hold a token in its
// path or query (n8n and Zapier URLs do), and errors end up in status and logs.
func unwrapURLError(err error) error {
	var uerr *url.Error
	if errors.As(err, &uerr) {
		if errors.Is(uerr.Err, context.DeadlineExceeded) {
			return errors.New("timed out waiting for the receiver")
		}
		return uerr.Err
	}
	return err
}

// MaxRetryAfter bounds what ParseRetryAfter returns; the controller caps it further at the
// endpoint's retryPolicy.maxDelaySeconds.
const MaxRetryAfter = 24 * time.Hour

// ParseRetryAfter reads a Retry-After header: delay-seconds or an HTTP date. It returns 0 when
// the header is absent, unparsable or in the past, and at most MaxRetryAfter.
func ParseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
		if secs <= 0 {
			return 0
		}
		return time.Duration(min(secs, int64(MaxRetryAfter/time.Second))) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return min(t.Sub(now), MaxRetryAfter)
	}
	return 0
}

// sanitize keeps printable characters of s, folds white space and cuts it to at most n bytes.
func sanitize(s string, n int) string {
	var b strings.Builder
	space := false
	for _, r := range s {
		if r == utf8.RuneError {
			continue
		}
		if unicode.IsSpace(r) || !unicode.IsPrint(r) {
			space = b.Len() > 0
			continue
		}
		sep := 0
		if space {
			sep = 1
		}
		if b.Len()+sep+utf8.RuneLen(r) > n {
			break // the folded space counts too: never more than n bytes, never a trailing space
		}
		if space {
			b.WriteByte(' ')
			space = false
		}
		b.WriteRune(r)
	}
	return b.String()
}
