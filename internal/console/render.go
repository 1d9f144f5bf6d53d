package console

import (
	"bytes"
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/duration"
)

// Page is what the layout shows around a page's content.
type Page struct {
	Title      string
	Nav        string
	Namespace  string
	Namespaces []string
	Context    string
	User       string
	CSRF       string
	Flashes    []Flash
	// Errors are the API server's answers that kept something from being shown, as sentences.
	Errors []string
	// Notices say what is shown in part, and why.
	Notices []string
	// RefreshSeconds reloads the page after this many seconds (while waiting for an attempt).
	RefreshSeconds int
	Data           any
}

// pages are the parsed templates, one set per page (the layout, the shared parts, the page).
type pages struct {
	sets map[string]*template.Template
}

var pageNames = []string{"endpoints", "endpoint", "endpoint_form", "deliveries", "delivery", "status"}

func loadPages() (*pages, error) {
	p := &pages{sets: map[string]*template.Template{}}
	for _, name := range pageNames {
		t, err := template.New("layout.html").Funcs(funcs).ParseFS(assets, "templates/layout.html", "templates/parts.html", "templates/"+name+".html")
		if err != nil {
			return nil, fmt.Errorf("parsing the console's %s page: %w", name, err)
		}
		p.sets[name] = t
	}
	return p, nil
}

// render writes a page with the session's header data and its queued results.
func (s *Server) render(w http.ResponseWriter, r *http.Request, ss *session, status int, name string, p *Page) {
	p.Namespace = r.PathValue("ns")
	if p.Namespace == "" {
		p.Namespace = s.opts.Namespace
	}
	p.Context, p.User = s.opts.Context, s.opts.User
	p.Namespaces = s.namespaces(r)
	if ss != nil {
		p.CSRF = ss.csrf
		p.Flashes = append(s.sessions.takeFlashes(ss), p.Flashes...)
	}
	s.write(w, status, name, p)
}

func (s *Server) write(w http.ResponseWriter, status int, name string, p *Page) {
	var buf bytes.Buffer
	if err := s.pages.sets[name].Execute(&buf, p); err != nil {
		s.logf("rendering the %s page failed: %v", name, err)
		http.Error(w, "The console could not render this page: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}

// renderStatus writes a page that only explains something (not signed in, refused).
func (s *Server) renderStatus(w http.ResponseWriter, status int, title, text string) {
	s.write(w, status, "status", &Page{Title: title, Namespace: s.opts.Namespace, Data: text})
}

// namespaces lists namespaces for the picker, at most once a minute; none when the user may
// not list them (the picker then takes a typed name).
func (s *Server) namespaces(r *http.Request) []string {
	s.nsMu.Lock()
	defer s.nsMu.Unlock()
	if time.Since(s.nsAt) < time.Minute {
		return s.nsNames
	}
	ctx, cancel := s.ctx(r)
	defer cancel()
	names, err := s.opts.Actions.Namespaces(ctx)
	if err != nil {
		names = nil
	}
	s.nsNames, s.nsAt = names, time.Now()
	return names
}

// flash queues a result and sends the browser to a page (post, redirect, get: a reload does
// not repeat the action).
func (s *Server) flash(w http.ResponseWriter, r *http.Request, ss *session, to string, f Flash) {
	s.sessions.addFlash(ss, f)
	http.Redirect(w, r, to, http.StatusSeeOther)
}

// back is where a form asked to return to, if it is one of the console's pages.
func back(r *http.Request, fallback string) string {
	if to := r.PostForm.Get("back"); strings.HasPrefix(to, "/ns/") && !strings.HasPrefix(to, "//") && !strings.ContainsAny(to, "\\\r\n") {
		return to
	}
	return fallback
}

// nsPath is a console path in a namespace, each part escaped.
func nsPath(ns string, parts ...string) string {
	var b strings.Builder
	b.WriteString("/ns/")
	b.WriteString(url.PathEscape(ns))
	for _, p := range parts {
		b.WriteByte('/')
		b.WriteString(url.PathEscape(p))
	}
	return b.String()
}

var funcs = template.FuncMap{
	"ago":       agoText,
	"abstime":   absTime,
	"pct":       pctText,
	"ms":        msText,
	"num":       numText,
	"code":      codeText,
	"phase":     phaseClass,
	"path":      nsPath,
	"join":      strings.Join,
	"query":     func(v url.Values) string { return v.Encode() },
	"add":       func(a, b int) int { return a + b },
	"firstLine": func(s string) string { return strings.SplitN(s, "\n", 2)[0] },
	"took":      tookText,
	"event":     eventLabel,
}

// tookText is an attempt's duration: an attempt that was made took something, if under 1 ms.
func tookText(ms int64) string {
	if ms <= 0 {
		return "< 1 ms"
	}
	return msText(ms)
}

// eventLabel names an endpoint's event type selection for a chip.
func eventLabel(t string) string {
	switch t {
	case "*":
		return "all events"
	case "document.*":
		return "document.* (all document events)"
	case "llm.*":
		return "llm.* (all LLM events)"
	}
	return t
}

// agoText is how long ago t was, in words a table reads quickly: "3m ago".
func agoText(t any) string {
	tt, ok := timeOf(t)
	if !ok {
		return "—"
	}
	d := time.Since(tt)
	if d < 0 {
		return "in " + duration.HumanDuration(-d)
	}
	if d < time.Second {
		return "just now"
	}
	return duration.HumanDuration(d) + " ago"
}

// absTime is a time in full, for a title attribute or a detail page.
func absTime(t any) string {
	tt, ok := timeOf(t)
	if !ok {
		return "—"
	}
	return tt.Local().Format("2006-01-02 15:04:05 MST")
}

func timeOf(t any) (time.Time, bool) {
	switch v := t.(type) {
	case time.Time:
		return v, !v.IsZero()
	case *time.Time:
		if v == nil {
			return time.Time{}, false
		}
		return *v, !v.IsZero()
	}
	return time.Time{}, false
}

func pctText(rate *float64) string {
	if rate == nil {
		return "—"
	}
	v := *rate * 100
	if v == 100 || v == 0 {
		return strconv.FormatFloat(v, 'f', 0, 64) + "%"
	}
	return strconv.FormatFloat(v, 'f', 1, 64) + "%"
}

func msText(ms int64) string {
	switch {
	case ms <= 0:
		return "—"
	case ms < 1000:
		return strconv.FormatInt(ms, 10) + " ms"
	}
	return strconv.FormatFloat(float64(ms)/1000, 'f', 2, 64) + " s"
}

// numText writes a count with thousands separators.
func numText(n int64) string {
	s := strconv.FormatInt(n, 10)
	if n < 0 {
		return s
	}
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

func codeText(c int32) string {
	if c == 0 {
		return "—"
	}
	return strconv.Itoa(int(c))
}

// phaseClass is the badge colour of a delivery phase or an attempt result (strings or their
// API types).
func phaseClass(p any) string {
	switch fmt.Sprint(p) {
	case "Succeeded", "Success":
		return "ok"
	case "Failed", "HTTPError", "Timeout", "NetworkError", "Blocked":
		return "bad"
	case "Retrying":
		return "warn"
	}
	return "muted"
}
