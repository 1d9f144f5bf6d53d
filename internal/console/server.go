// Package console is the web console of `kubectl webhooks console`: the product's webhook
// settings page (enter a URL, select events, Test webhook, view deliveries, Retry) served on
// loopback and talking to the cluster's API server with the user's own kubeconfig, so that
// Kubernetes RBAC decides what each person sees and may do. It needs no login of its own and
// no privileged service in the cluster.
//
// Pages are Go templates rendered on the server (html/template, embedded with embed) with a
// few lines of JavaScript, and charts are SVG drawn on the server: the Go build needs no
// front-end toolchain, and every page works without scripts. session.go says how it is kept
// to its user; docs/console.md says why it is built this way.
package console

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/docrouter/webhook-operator/internal/actions"
)

//go:embed templates static
var assets embed.FS

// Options configure a console.
type Options struct {
	// Actions acts with the user's credentials.
	Actions *actions.Client
	// Namespace is the namespace shown first (the kubeconfig context's).
	Namespace string
	// Context is the kubeconfig context's name, shown in the header.
	Context string
	// User is who the API server knows the credentials as, shown in the header.
	User string
	// Log receives one line per failed request or refused request; never a credential, a
	// secret or a query string.
	Log io.Writer
	// Now is the console's clock; time.Now when nil.
	Now func() time.Time
}

// Server is the console.
type Server struct {
	opts     Options
	sessions *sessions
	pages    *pages
	// hosts are the Host values the console answers to; empty: any (an unspecified address).
	hosts map[string]bool
	// origin is the console's own origin, such as http://127.0.0.1:43123.
	origin string

	// The namespace picker's names, read at most once a minute.
	nsMu    sync.Mutex
	nsNames []string
	nsAt    time.Time
}

// New makes a console that is served at addr (the listener's address: its Host checks and the
// link it prints follow from it).
func New(opts Options, addr net.Addr) (*Server, error) {
	if opts.Actions == nil {
		return nil, errors.New("the console needs a client")
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Log == nil {
		opts.Log = io.Discard
	}
	p, err := loadPages()
	if err != nil {
		return nil, err
	}
	tcp, ok := addr.(*net.TCPAddr)
	if !ok {
		return nil, fmt.Errorf("the console serves TCP, not %s", addr.Network())
	}
	port := fmt.Sprint(tcp.Port)
	s := &Server{opts: opts, sessions: newSessions(cookiePrefix+port, opts.Now), pages: p, hosts: map[string]bool{}}
	host := tcp.IP.String()
	switch {
	case tcp.IP.IsLoopback():
		s.hosts[net.JoinHostPort(host, port)] = true
		s.hosts[net.JoinHostPort("localhost", port)] = true
	case tcp.IP.IsUnspecified():
		host = "127.0.0.1"
		s.hosts = nil
	default:
		s.hosts[net.JoinHostPort(host, port)] = true
	}
	s.origin = "http://" + net.JoinHostPort(host, port)
	return s, nil
}

// LoginURL is a sign-in link for one browser: its code is spent when it is opened.
func (s *Server) LoginURL() string {
	return s.origin + "/login?code=" + url.QueryEscape(s.sessions.newLoginCode())
}

// Origin is the console's address, such as http://127.0.0.1:43123.
func (s *Server) Origin() string { return s.origin }

// Serve serves the console on ln until ctx ends, then shuts it down.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      90 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
	}
	// Stop taking requests; those in flight get a few seconds to finish.
	shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := srv.Shutdown(shutdown)
	if served := <-done; served != nil && !errors.Is(served, http.ErrServerClosed) && err == nil {
		err = served
	}
	return err
}

// requestTimeout bounds the API requests of one page or action.
const requestTimeout = 30 * time.Second

// maxFormBytes bounds a submitted form.
const maxFormBytes = 64 << 10

// Handler is the console's HTTP handler.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	static, _ := fs.Sub(assets, "static")
	mux.Handle("GET /static/", http.StripPrefix("/static/", http.FileServerFS(static)))
	mux.HandleFunc("GET /login", s.login)

	page := func(pattern string, h func(http.ResponseWriter, *http.Request, *session)) {
		mux.Handle(pattern, s.signedIn(h))
	}
	action := func(pattern string, h func(http.ResponseWriter, *http.Request, *session)) {
		mux.Handle("POST "+pattern, s.signedIn(s.sameOrigin(h)))
	}
	page("GET /{$}", func(w http.ResponseWriter, r *http.Request, _ *session) {
		http.Redirect(w, r, "/ns/"+url.PathEscape(s.opts.Namespace)+"/endpoints", http.StatusSeeOther)
	})
	page("GET /namespace", func(w http.ResponseWriter, r *http.Request, _ *session) {
		ns := strings.TrimSpace(r.URL.Query().Get("ns"))
		if ns == "" {
			ns = s.opts.Namespace
		}
		http.Redirect(w, r, "/ns/"+url.PathEscape(ns)+"/endpoints", http.StatusSeeOther)
	})
	page("GET /ns/{ns}/endpoints", s.endpointsPage)
	page("GET /ns/{ns}/endpoints/new", s.newEndpointPage)
	page("GET /ns/{ns}/endpoints/{name}", s.endpointPage)
	page("GET /ns/{ns}/endpoints/{name}/edit", s.editEndpointPage)
	page("GET /ns/{ns}/deliveries", s.deliveriesPage)
	page("GET /ns/{ns}/deliveries/{name}", s.deliveryPage)
	action("/ns/{ns}/endpoints", s.createEndpoint)
	action("/ns/{ns}/endpoints/{name}/edit", s.updateEndpoint)
	action("/ns/{ns}/endpoints/{name}/test", s.testEndpoint)
	action("/ns/{ns}/endpoints/{name}/pause", s.pauseEndpoint(true))
	action("/ns/{ns}/endpoints/{name}/resume", s.pauseEndpoint(false))
	action("/ns/{ns}/endpoints/{name}/enable", s.enableEndpoint)
	action("/ns/{ns}/endpoints/{name}/retry-failed", s.retryFailed)
	action("/ns/{ns}/deliveries/{name}/retry", s.retryDelivery)
	return s.secured(mux)
}

// secured sets the headers every answer carries and refuses requests for another host.
func (s *Server) secured(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		// same-origin, not no-referrer: with no-referrer a browser sends "Origin: null" on form
		// posts, and the origin check needs the real one; other sites get no referrer either way.
		h.Set("Referrer-Policy", "same-origin")
		h.Set("Cross-Origin-Opener-Policy", "same-origin")
		h.Set("Cross-Origin-Resource-Policy", "same-origin")
		if !strings.HasPrefix(r.URL.Path, "/static/") {
			h.Set("Cache-Control", "no-store")
		}
		if s.hosts != nil && !s.hosts[strings.ToLower(r.Host)] {
			s.logf("refused %s %s: Host %q is not the console's", r.Method, r.URL.Path, r.Host)
			http.Error(w, "This console answers to "+s.origin+" only.", http.StatusMisdirectedRequest)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// signedIn passes requests of a signed-in browser, and tells others how to sign in.
func (s *Server) signedIn(h func(http.ResponseWriter, *http.Request, *session)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ss := s.sessions.lookup(r)
		if ss == nil {
			s.renderStatus(w, http.StatusUnauthorized, "Open the console's sign-in link",
				"This browser is not signed in to the console. Open the link that `kubectl webhooks console` printed in your terminal: each link signs in one browser, once, so that nobody else on this machine can act with your credentials. Lost it? Stop the console (Ctrl-C) and start it again for a new one.")
			return
		}
		h(w, r, ss)
	})
}

// sameOrigin refuses a state-changing request that does not come from one of the console's
// own pages: it must carry the session's CSRF token and name the console's origin.
func (s *Server) sameOrigin(h func(http.ResponseWriter, *http.Request, *session)) func(http.ResponseWriter, *http.Request, *session) {
	return func(w http.ResponseWriter, r *http.Request, ss *session) {
		r.Body = http.MaxBytesReader(w, r.Body, maxFormBytes)
		if err := r.ParseForm(); err != nil {
			s.renderStatus(w, http.StatusBadRequest, "The form could not be read", "The form was too large or malformed: "+err.Error())
			return
		}
		if reason := s.crossSite(r); reason != "" || !validCSRF(ss, r.PostForm.Get(csrfField)) {
			if reason == "" {
				reason = "its form token is missing or wrong"
			}
			s.logf("refused %s %s: %s", r.Method, r.URL.Path, reason)
			s.renderStatus(w, http.StatusForbidden, "Request refused", "The console refused this request because "+reason+". Requests that change something must come from the console's own pages; reload the page and try again.")
			return
		}
		h(w, r, ss)
	}
}

// crossSite says why a request does not come from the console's origin, or "".
func (s *Server) crossSite(r *http.Request) string {
	if site := r.Header.Get("Sec-Fetch-Site"); site != "" && site != "same-origin" {
		return "the browser says it comes from another site (Sec-Fetch-Site: " + site + ")"
	}
	self := s.selfOrigin(r)
	if origin := r.Header.Get("Origin"); origin != "" {
		if origin != self {
			return "it comes from " + origin + ", not " + self
		}
		return ""
	}
	if ref := r.Header.Get("Referer"); ref != "" {
		if ref != self && !strings.HasPrefix(ref, self+"/") {
			return "it comes from another page than the console's"
		}
		return ""
	}
	return "it says neither where it comes from (Origin) nor from which page (Referer)"
}

// selfOrigin is the origin a page of this console has, as the browser sees it.
func (s *Server) selfOrigin(r *http.Request) string { return "http://" + strings.ToLower(r.Host) }

// login spends a sign-in code and opens a session, then leaves the code's URL.
func (s *Server) login(w http.ResponseWriter, r *http.Request) {
	if s.sessions.lookup(r) != nil {
		http.Redirect(w, r, "/", http.StatusSeeOther)
		return
	}
	ss := s.sessions.redeem(r.URL.Query().Get("code"))
	if ss == nil {
		s.logf("refused a sign-in: the link's code is spent, expired or wrong")
		s.renderStatus(w, http.StatusForbidden, "This sign-in link has been used",
			"Each link the console prints signs in one browser, once, so that nobody else on this machine can act with your credentials. To sign in another browser, stop the console (Ctrl-C) and start it again for a new link.")
		return
	}
	http.SetCookie(w, &http.Cookie{Name: s.sessions.cookie, Value: ss.id, Path: "/", HttpOnly: true, SameSite: http.SameSiteStrictMode})
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

func (s *Server) logf(format string, args ...any) {
	fmt.Fprintf(s.opts.Log, "%s console: %s\n", s.opts.Now().UTC().Format(time.RFC3339), fmt.Sprintf(format, args...))
}

// ctx bounds the API requests of one page or action.
func (s *Server) ctx(r *http.Request) (context.Context, context.CancelFunc) {
	return context.WithTimeout(r.Context(), requestTimeout)
}
