package console

import (
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"

	historyv1alpha1 "github.com/docrouter/webhook-operator/api/history/v1alpha1"
	"github.com/docrouter/webhook-operator/internal/actions"
)

// The console's pages against a cluster are tested in a real browser (test/browser); these
// are the pure parts: chart geometry, wording, and the checks that keep the console to its user.

func window(name string, end time.Time, span, step time.Duration, points func(i int, start time.Time) historyv1alpha1.StatsPoint) *historyv1alpha1.StatsWindow {
	w := &historyv1alpha1.StatsWindow{Window: name, WindowSeconds: int64(span / time.Second), SeriesStepSeconds: int64(step / time.Second),
		Start: metav1.NewTime(end.Add(-span)), End: metav1.NewTime(end)}
	for i := 0; time.Duration(i)*step < span; i++ {
		start := end.Add(-span + time.Duration(i)*step)
		p := points(i, start)
		p.Start = metav1.NewTime(start)
		w.Series = append(w.Series, p)
	}
	return w
}

func labels(ticks []Tick) string {
	var out []string
	for _, t := range ticks {
		out = append(out, t.Label)
	}
	return strings.Join(out, " ")
}

// A day's axis has a label every 6 hours of the clock and "now" at its right edge; a week's
// has a weekday and date at each midnight; both say the time zone.
func TestTimeAxis(t *testing.T) {
	end := time.Date(2026, 12, 1, 15, 30, 0, 0, time.UTC)
	day := successChart(window("24h", end, 24*time.Hour, time.Hour, func(int, time.Time) historyv1alpha1.StatsPoint { return historyv1alpha1.StatsPoint{} }), time.UTC)
	if got := labels(day.XTicks); got != "18:00 00:00 06:00 12:00 now" {
		t.Errorf("24 h axis: %q", got)
	}
	if day.Sub != "last 24 hours, per hour, UTC" {
		t.Errorf("24 h subtitle: %q", day.Sub)
	}
	for i := 1; i < len(day.XTicks); i++ {
		if day.XTicks[i].Pos <= day.XTicks[i-1].Pos || day.XTicks[i].Pos > plotRight {
			t.Errorf("ticks out of order or off the plot: %+v", day.XTicks)
		}
	}
	// 18:00 is 2.5 hours into the day: 2.5/24 of the plot's width from its left.
	if want := round1(plotLeft + 2.5/24*(plotRight-plotLeft)); day.XTicks[0].Pos != want {
		t.Errorf("18:00 at x=%v, want %v", day.XTicks[0].Pos, want)
	}
	week := successChart(window("7d", end, 7*24*time.Hour, 6*time.Hour, func(int, time.Time) historyv1alpha1.StatsPoint { return historyv1alpha1.StatsPoint{} }), time.UTC)
	if got := labels(week.XTicks); got != "Wed 25 Thu 26 Fri 27 Sat 28 Sun 29 Mon 30 Tue 1 now" {
		t.Errorf("7 d axis: %q", got)
	}
	berlin, err := time.LoadLocation("Europe/Berlin")
	if err == nil {
		c := successChart(window("24h", end, 24*time.Hour, time.Hour, func(int, time.Time) historyv1alpha1.StatsPoint { return historyv1alpha1.StatsPoint{} }), berlin)
		if got := labels(c.XTicks); got != "18:00 00:00 06:00 12:00 now" || !strings.HasSuffix(c.Sub, ", CET") {
			t.Errorf("24 h axis in Berlin: %q, %q (want clock times there, and the zone)", got, c.Sub)
		}
	}
}

// The success-rate chart draws the share that succeeded on a 0 to 100% axis; a point in which
// nothing finished is a gap in the line, not a zero; each point says its numbers on hover.
func TestSuccessChart(t *testing.T) {
	end := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	w := window("24h", end, 24*time.Hour, time.Hour, func(i int, _ time.Time) historyv1alpha1.StatsPoint {
		switch i {
		case 10:
			return historyv1alpha1.StatsPoint{} // nothing finished: a gap
		case 20:
			return historyv1alpha1.StatsPoint{Succeeded: 5, Failed: 5}
		}
		return historyv1alpha1.StatsPoint{Succeeded: 10}
	})
	w.SuccessRate = ptr.To(0.98)
	c := successChart(w, time.UTC)
	if got := labels(c.YTicks); got != "0% 50% 100%" {
		t.Errorf("y axis: %q", got)
	}
	if c.Headline != "98.0%" || c.Empty != "" {
		t.Errorf("headline %q, empty %q", c.Headline, c.Empty)
	}
	if n := strings.Count(c.Lines[0].D, "M"); n != 2 {
		t.Errorf("the line has %d segments, want 2 (a gap at the point without deliveries): %s", n, c.Lines[0].D)
	}
	if len(c.Dots) != 23 || c.Dots[19].Class != "bad" || c.Dots[0].Class != "ok" {
		t.Errorf("dots: %d, the half-failed one %q", len(c.Dots), c.Dots[19].Class)
	}
	if c.Dots[19].Y != yOf(50, 100) || c.Dots[0].Y != plotTop {
		t.Errorf("50%% at y=%v and 100%% at y=%v", c.Dots[19].Y, c.Dots[0].Y)
	}
	if got := c.Hits[20].Title; got != "08:00–09:00: 50.0% succeeded (5 of 10 deliveries; 5 failed)" {
		t.Errorf("hover text of the half-failed hour: %q", got)
	}
	if got := c.Hits[10].Title; got != "22:00–23:00: no delivery finished" {
		t.Errorf("hover text of the empty hour: %q", got)
	}
	empty := successChart(window("24h", end, 24*time.Hour, time.Hour, func(int, time.Time) historyv1alpha1.StatsPoint { return historyv1alpha1.StatsPoint{} }), time.UTC)
	if empty.Empty != "No delivery finished in the last 24 hours" || empty.Headline != "" || len(empty.Lines) != 0 {
		t.Errorf("an empty day: %q %q %v", empty.Empty, empty.Headline, empty.Lines)
	}
	if none := successChart(nil, time.UTC); none.Empty == "" {
		t.Errorf("no statistics at all must say so")
	}
}

// The latency axis tops at a round number above the highest p95 and is labelled in ms; the
// lines are named at their ends.
func TestLatencyChart(t *testing.T) {
	end := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	w := window("24h", end, 24*time.Hour, time.Hour, func(i int, _ time.Time) historyv1alpha1.StatsPoint {
		return historyv1alpha1.StatsPoint{Attempts: 10, LatencyP50Milliseconds: 40, LatencyP95Milliseconds: int64(60 + i*3)}
	})
	w.Latency.P95Milliseconds = 120
	c := latencyChart(w, time.UTC)
	if got := labels(c.YTicks); got != "0 100 ms 200 ms" {
		t.Errorf("y axis: %q", got)
	}
	if c.Headline != "p95 120 ms" || len(c.Lines) != 2 || c.Lines[0].Name != "p95" || c.Lines[1].Name != "p50" {
		t.Errorf("headline %q, lines %+v", c.Headline, c.Lines)
	}
	if c.Lines[0].NameX <= c.Dots[len(c.Dots)-1].X || c.Lines[1].NameY-c.Lines[0].NameY < 11 {
		t.Errorf("the line names are not at the lines' ends, apart: %+v", c.Lines)
	}
	if got := c.Hits[0].Title; !strings.HasSuffix(got, ": p50 40 ms, p95 60 ms over 10 attempts") {
		t.Errorf("hover text: %q", got)
	}
	empty := latencyChart(window("7d", end, 7*24*time.Hour, 6*time.Hour, func(int, time.Time) historyv1alpha1.StatsPoint { return historyv1alpha1.StatsPoint{} }), time.UTC)
	if empty.Empty != "No attempt in the last 7 days" || labels(empty.YTicks) != "0" {
		t.Errorf("an empty week: %q, y axis %q", empty.Empty, labels(empty.YTicks))
	}
}

func TestAxisNumbers(t *testing.T) {
	for v, want := range map[int64]int64{1: 2, 2: 2, 3: 10, 7: 10, 11: 20, 40: 50, 137: 200, 999: 1000, 1001: 2000, 45000: 50000} {
		if got := niceCeil(v); got != want {
			t.Errorf("niceCeil(%d) = %d, want %d", v, got, want)
		}
	}
	for v, want := range map[int64]string{0: "0", 250: "250 ms", 1000: "1 s", 1500: "1.5 s"} {
		if got := axisMillis(v); got != want {
			t.Errorf("axisMillis(%d) = %q, want %q", v, got, want)
		}
	}
	for d, want := range map[time.Duration]string{30 * time.Second: "30s", 4 * time.Hour: "4h", 90 * time.Minute: "1h30m", 0: "0s", 86400 * time.Second: "24h"} {
		if got := durationText(d); got != want {
			t.Errorf("durationText(%s) = %q, want %q", d, got, want)
		}
	}
	for n, want := range map[int64]string{0: "0", 999: "999", 1000: "1,000", 1234567: "1,234,567"} {
		if got := numText(n); got != want {
			t.Errorf("numText(%d) = %q, want %q", n, got, want)
		}
	}
}

// A sign-in code opens one session, once.
func TestSignInCodeIsSpentOnFirstUse(t *testing.T) {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	s := newSessions("c", func() time.Time { return now })
	code := s.newLoginCode()
	if s.redeem("not-"+code) != nil {
		t.Error("a wrong code opened a session")
	}
	ss := s.redeem(code)
	if ss == nil || len(ss.csrf) < 40 || len(ss.id) < 40 || ss.id == ss.csrf {
		t.Fatalf("the code did not open a session with its own id and token: %+v", ss)
	}
	if s.redeem(code) != nil {
		t.Error("the code opened a second session")
	}
	late := s.newLoginCode()
	now = now.Add(loginTTL)
	if s.redeem(late) != nil {
		t.Error("an expired code opened a session")
	}
	req := httptest.NewRequest(http.MethodGet, "/", nil)
	req.AddCookie(&http.Cookie{Name: "c", Value: ss.id})
	if s.lookup(req) != ss {
		t.Error("the session's cookie does not find it")
	}
	if !validCSRF(ss, ss.csrf) || validCSRF(ss, "") || validCSRF(ss, ss.csrf[:len(ss.csrf)-1]) {
		t.Error("the form token check")
	}
}

func newTestServer(t *testing.T) *Server {
	t.Helper()
	c, err := actions.New(&rest.Config{Host: "https://127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Options{Actions: c, Namespace: "default"}, &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 4321})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// A state-changing request must say it comes from the console's own origin.
func TestCrossSiteChecks(t *testing.T) {
	s := newTestServer(t)
	for _, c := range []struct {
		header http.Header
		ok     bool
	}{
		{http.Header{"Origin": {"http://127.0.0.1:4321"}}, true},
		{http.Header{"Origin": {"http://127.0.0.1:4321"}, "Sec-Fetch-Site": {"same-origin"}}, true},
		{http.Header{"Referer": {"http://127.0.0.1:4321/ns/default/endpoints"}}, true},
		{http.Header{"Origin": {"http://127.0.0.1:9999"}}, false},
		{http.Header{"Origin": {"null"}}, false},
		{http.Header{"Origin": {"http://127.0.0.1:4321"}, "Sec-Fetch-Site": {"same-site"}}, false},
		{http.Header{"Referer": {"http://127.0.0.1:43210/"}}, false},
		{http.Header{}, false},
	} {
		r := httptest.NewRequest(http.MethodPost, "http://127.0.0.1:4321/ns/default/endpoints/x/pause", nil)
		r.Header = c.header
		if reason := s.crossSite(r); (reason == "") != c.ok {
			t.Errorf("%v: reason %q, want accepted=%v", c.header, reason, c.ok)
		}
	}
}

// The console answers to its own host only (a DNS-rebinding page names its own), tells a
// browser without a session how to sign in, and refuses a form without its token.
func TestRefusals(t *testing.T) {
	s := newTestServer(t)
	h := s.Handler()
	get := func(host, path string, cookie *http.Cookie) *httptest.ResponseRecorder {
		r := httptest.NewRequest(http.MethodGet, "http://"+host+path, nil)
		if cookie != nil {
			r.AddCookie(cookie)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w
	}
	if w := get("rebind.example:4321", "/ns/default/endpoints", nil); w.Code != http.StatusMisdirectedRequest {
		t.Errorf("another Host: %d", w.Code)
	}
	if w := get("127.0.0.1:4321", "/ns/default/endpoints", nil); w.Code != http.StatusUnauthorized || !strings.Contains(w.Body.String(), "kubectl webhooks console") {
		t.Errorf("no session: %d", w.Code)
	}
	u, _ := url.Parse(s.LoginURL())
	w := get("localhost:4321", u.RequestURI(), nil)
	if w.Code != http.StatusSeeOther || len(w.Result().Cookies()) != 1 {
		t.Fatalf("signing in: %d %v", w.Code, w.Result().Cookies())
	}
	cookie := w.Result().Cookies()[0]
	if !cookie.HttpOnly || cookie.SameSite != http.SameSiteStrictMode || cookie.Name != "webhooks_console_4321" {
		t.Errorf("the session cookie: %+v", cookie)
	}
	if w := get("localhost:4321", u.RequestURI(), nil); w.Code != http.StatusForbidden {
		t.Errorf("the link a second time: %d", w.Code)
	}
	r := httptest.NewRequest(http.MethodPost, "http://127.0.0.1:4321/ns/default/endpoints/x/pause", strings.NewReader("csrf=wrong"))
	r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	r.Header.Set("Origin", "http://127.0.0.1:4321")
	r.AddCookie(cookie)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, r)
	if rec.Code != http.StatusForbidden || !strings.Contains(rec.Body.String(), "form token is missing or wrong") {
		t.Errorf("a wrong form token: %d", rec.Code)
	}
	for _, header := range []string{"Content-Security-Policy", "X-Frame-Options", "X-Content-Type-Options", "Referrer-Policy"} {
		if rec.Header().Get(header) == "" {
			t.Errorf("the answer lacks %s", header)
		}
	}
}

// A form may send the browser back only to one of the console's pages.
func TestBackStaysOnTheConsole(t *testing.T) {
	for to, want := range map[string]string{
		"/ns/default/endpoints": "/ns/default/endpoints", "//evil.example/ns/": "/fallback",
		"https://evil.example/": "/fallback", "/ns/\r\nLocation: x": "/fallback", "": "/fallback",
	} {
		r := httptest.NewRequest(http.MethodPost, "/", strings.NewReader(url.Values{"back": {to}}.Encode()))
		r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		_ = r.ParseForm()
		if got := back(r, "/fallback"); got != want {
			t.Errorf("back %q: %q, want %q", to, got, want)
		}
	}
}
