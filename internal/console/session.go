package console

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"net/http"
	"sync"
	"time"
)

// The console acts with its user's credentials, so who may use it matters as much as what it
// shows. Loopback is reachable by every account on the machine, and any web page the user
// visits can make the browser send requests to it; so:
//
//   - A browser signs in once, with the one-time code in the link the console prints (the
//     code is not a Kubernetes credential: it opens one browser session of this console and is
//     spent on first use). The session is an HttpOnly, SameSite=Strict cookie.
//   - Every state-changing request carries the session's CSRF token (checked in constant
//     time) and comes from the console's own origin (Origin, or Referer, and Sec-Fetch-Site).
//   - Every request names the console's own host (a DNS-rebinding page names its own).

const (
	// cookiePrefix names the session cookie, followed by the console's port: browsers do not
	// keep cookies apart by port, so two consoles on one machine would otherwise sign each
	// other's browser out.
	cookiePrefix = "webhooks_console_"
	csrfField    = "csrf"
	// maxSessions bounds the sessions kept (each sign-in link opens one).
	maxSessions = 16
)

// session is one signed-in browser.
type session struct {
	id      string
	csrf    string
	created time.Time
	flashes []Flash
}

// Flash is a result shown once on the next page: what a button did, or why it did not.
type Flash struct {
	// Kind is success, error or info.
	Kind string
	Text string
	// Link and LinkText point at what the action made, such as a test delivery.
	Link, LinkText string
	// Secret is a generated signing secret, shown this once to be copied.
	Secret string
}

type sessions struct {
	cookie  string
	mu      sync.Mutex
	byID    map[string]*session
	pending map[string]time.Time // one-time sign-in codes
	now     func() time.Time
}

func newSessions(cookie string, now func() time.Time) *sessions {
	return &sessions{cookie: cookie, byID: map[string]*session{}, pending: map[string]time.Time{}, now: now}
}

// loginTTL bounds how long a printed sign-in link can be used.
const loginTTL = 24 * time.Hour

// newLoginCode makes a one-time sign-in code.
func (s *sessions) newLoginCode() string {
	code := randomString(24)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pending[code] = s.now()
	return code
}

// redeem spends a sign-in code and opens a session; nil when the code is not a pending one.
func (s *sessions) redeem(code string) *session {
	s.mu.Lock()
	defer s.mu.Unlock()
	var found string
	for c, at := range s.pending {
		// Compare every pending code in constant time: no early exit that times the match.
		if subtle.ConstantTimeCompare([]byte(c), []byte(code)) == 1 && s.now().Sub(at) < loginTTL {
			found = c
		}
	}
	if found == "" {
		return nil
	}
	delete(s.pending, found)
	if len(s.byID) >= maxSessions {
		var oldest *session
		for _, ss := range s.byID {
			if oldest == nil || ss.created.Before(oldest.created) {
				oldest = ss
			}
		}
		delete(s.byID, oldest.id)
	}
	ss := &session{id: randomString(32), csrf: randomString(32), created: s.now()}
	s.byID[ss.id] = ss
	return ss
}

// lookup returns the session of the request's cookie, or nil.
func (s *sessions) lookup(r *http.Request) *session {
	c, err := r.Cookie(s.cookie)
	if err != nil || c.Value == "" {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, ss := range s.byID {
		if subtle.ConstantTimeCompare([]byte(id), []byte(c.Value)) == 1 {
			return ss
		}
	}
	return nil
}

// addFlash queues a result for the session's next page.
func (s *sessions) addFlash(ss *session, f Flash) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(ss.flashes) < 8 {
		ss.flashes = append(ss.flashes, f)
	}
}

// takeFlashes returns and forgets the session's queued results.
func (s *sessions) takeFlashes(ss *session) []Flash {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := ss.flashes
	ss.flashes = nil
	return f
}

// validCSRF checks a submitted token against the session's, in constant time.
func validCSRF(ss *session, token string) bool {
	return token != "" && subtle.ConstantTimeCompare([]byte(ss.csrf), []byte(token)) == 1
}

// randomString is n random bytes, URL-safe base64.
func randomString(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}
