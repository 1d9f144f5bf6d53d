package browser

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	historyv1alpha1 "github.com/docrouter/webhook-operator/api/history/v1alpha1"
	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
)

// page is the browser's tab with the helpers the test reads pages with.
type page struct {
	t   *testing.T
	ctx context.Context
	dir string
}

// stepTimeout bounds one step of the test in the browser.
const stepTimeout = 25 * time.Second

func (p *page) do(what string, steps ...chromedp.Action[chromedp.Void]) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, stepTimeout)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		p.t.Fatalf("%s: %v (page: %s)", what, err, p.location())
	}
}

func (p *page) location() string {
	loc, _ := chromedp.Run(p.ctx, chromedp.Location())
	return loc
}

// text is the visible text of the first element matching sel.
func (p *page) text(sel string) string {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, stepTimeout)
	defer cancel()
	s, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel)))
	if err != nil {
		p.t.Fatalf("reading %s: %v (page: %s)", sel, err, p.location())
	}
	return strings.Join(strings.Fields(s), " ")
}

// count is how many elements match sel now.
func (p *page) count(sel string) int {
	p.t.Helper()
	n, err := chromedp.Run(p.ctx, chromedp.Evaluate[int](fmt.Sprintf(`document.querySelectorAll(%q).length`, sel)))
	if err != nil {
		p.t.Fatalf("counting %s: %v", sel, err)
	}
	return n
}

// eval runs a script on the page and returns its string value.
func (p *page) eval(js string) string {
	p.t.Helper()
	s, err := chromedp.Run(p.ctx, chromedp.Evaluate[string](js))
	if err != nil {
		p.t.Fatalf("evaluating %s: %v", js, err)
	}
	return s
}

// shot saves a full-page screenshot as name.png.
func (p *page) shot(name string) {
	p.t.Helper()
	png, err := chromedp.Run(p.ctx, chromedp.FullScreenshot(100))
	if err != nil {
		p.t.Fatalf("screenshot %s: %v", name, err)
	}
	path := filepath.Join(p.dir, name+".png")
	if err := os.WriteFile(path, png, 0o644); err != nil {
		p.t.Fatal(err)
	}
	p.t.Logf("screenshot %s", path)
}

// waitFor waits until the page (which reloads itself while it waits for an attempt) shows sel.
func (p *page) waitFor(what, sel string) {
	p.t.Helper()
	p.do("waiting for "+what, chromedp.WaitVisible(chromedp.CSS(sel)))
}

// The product's three steps in a real browser, against the whole operator: the endpoints page
// shows each endpoint's status, success-rate and latency charts and backlog; a new endpoint is
// created with a generated signing secret, shown once; Test webhook sends a webhook.test that
// the receiver verifies with that secret; Retry on a Failed delivery that left etcd makes
// exactly one more attempt. Then what the console refuses: a user whom RBAC does not allow to
// retry is told so by the API server's sentence, and forged cross-site requests change nothing.
func TestConsole(t *testing.T) {
	started := time.Now()
	ctx := browser(t, 150*time.Second)
	ns := "default"
	key := []byte("a-shared-signing-secret")
	rcv := newLineReceiver(t, key, "sample-api-key")
	now := time.Now()
	counts := seedHistory(t, ns, now)
	create(t, secret(ns, key),
		endpoint(ns, "signed", rcv.URL+"/hooks"),
		endpoint(ns, "header-auth", rcv.URL+"/header-hooks", func(ep *webhooksv1alpha1.WebhookEndpoint) {
			ep.Spec.SigningSecretRef = nil
			ep.Spec.AuthHeader = &webhooksv1alpha1.AuthHeader{Name: "X-Api-Key", SecretKeyRef: webhooksv1alpha1.SecretKeyRef{Name: "webhook-secrets", Key: "api-key"}}
			ep.Spec.EventTypes = []string{"llm.completed", "llm.error"}
		}),
		endpoint(ns, "failing", rcv.URL+"/fail/hooks", func(ep *webhooksv1alpha1.WebhookEndpoint) {
			ep.Spec.EventTypes = []string{"llm.completed"}
			ep.Spec.RetryPolicy = &webhooksv1alpha1.RetryPolicy{MaxRetries: ptr.To[int32](0)}
		}),
	)
	// Events published now, as the intake creates their deliveries.
	for i := range 3 {
		create(t, webhooksv1alpha1.NewDelivery(ns, "signed", event(fmt.Sprintf("evt-now-%d", i), "llm.completed")))
	}
	failed := webhooksv1alpha1.NewDelivery(ns, "failing", event("evt-invoice-42", "llm.completed"))
	create(t, failed)
	goneFromEtcd(t, ns, failed.Name)

	admin, err := st.NewUser("alice", t.TempDir(), "system:masters")
	if err != nil {
		t.Fatal(err)
	}
	srv := consoleFor(t, admin, ns)
	p := &page{t: t, ctx: ctx, dir: screenshots(t)}
	t.Cleanup(func() {
		if t.Failed() {
			// What the browser showed when the test failed, beside the other screenshots.
			if png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100)); err == nil {
				_ = os.WriteFile(filepath.Join(p.dir, "failed.png"), png, 0o644)
				t.Logf("the page when the test failed (%s): %s", p.location(), filepath.Join(p.dir, "failed.png"))
			}
		}
	})

	// Sign in with the console's link: it leads to the endpoints page, and is spent.
	login := srv.LoginURL()
	p.do("opening the sign-in link", chromedp.Navigate(login), chromedp.WaitVisible(chromedp.CSS(`section.endpoint[data-endpoint="signed"]`)))
	if loc := p.location(); strings.Contains(loc, "code=") || !strings.HasSuffix(loc, "/ns/default/endpoints") {
		t.Errorf("after signing in the address is %s: want the endpoints page, without the code", loc)
	}
	if resp, err := http.Get(login); err != nil || resp.StatusCode != http.StatusForbidden {
		t.Errorf("the sign-in link a second time: want 403, got %v %v", resp, err)
	}

	// Step 0: the endpoints, with their status, charts and numbers.
	eventually(t, 20*time.Second, "the endpoints page to count the deliveries of today", func(context.Context) (bool, error) {
		p.do("reloading", chromedp.Reload(), chromedp.WaitVisible(chromedp.CSS(`section.endpoint[data-endpoint="failing"] .stats`)))
		got := p.text(`section.endpoint[data-endpoint="signed"] .stats div:nth-child(2) dd`)
		return got == numText(counts["signed"][0]+3), fmt.Errorf("signed shows %s deliveries in 24 hours, want %d", got, counts["signed"][0]+3)
	})
	card := func(name, sel string) string {
		return p.text(fmt.Sprintf(`section.endpoint[data-endpoint=%q] %s`, name, sel))
	}
	if got := card("signed", ".badge"); got != "Ready" {
		t.Errorf("signed's status: %q, want Ready", got)
	}
	if got := card("failing", ".badge"); got != "Failing" {
		t.Errorf("failing's status: %q, want Failing", got)
	}
	wantRate := fmt.Sprintf("%.1f%%", 100*float64(counts["signed"][0]+3-counts["signed"][1])/float64(counts["signed"][0]+3))
	if got := card("signed", ".stats div:nth-child(1) dd"); got != wantRate {
		t.Errorf("signed's 24 h success rate shows %q, want %q", got, wantRate)
	}
	if got := card("header-auth", ".stats div:nth-child(4) dd"); got != "0" {
		t.Errorf("header-auth's backlog shows %q, want 0", got)
	}
	if got := card("failing", ".stats div:nth-child(5) dd"); !strings.HasSuffix(got, "ago") {
		t.Errorf("failing's last failure shows %q, want an age", got)
	}
	// The charts: an axis in % and one in ms, clock times, and a point per hour with numbers.
	sel := `section.endpoint[data-endpoint="signed"] figure`
	if n := p.count(sel + ` svg circle.dot.ok, ` + sel + ` svg circle.dot.bad`); n < 20 {
		t.Errorf("signed's success-rate chart has %d points, want one per hour of the day (at least 20)", n)
	}
	if got := p.eval(`[...document.querySelectorAll('section.endpoint[data-endpoint="signed"] figure:first-child .ylab')].map(e => e.textContent).join(" ")`); got != "0% 50% 100%" {
		t.Errorf("the success-rate axis reads %q", got)
	}
	if got := p.eval(`[...document.querySelectorAll('section.endpoint[data-endpoint="signed"] figure:nth-child(2) .ylab')].pop().textContent`); !strings.HasSuffix(got, " ms") {
		t.Errorf("the latency axis's top reads %q, want milliseconds", got)
	}
	if got := p.eval(`[...document.querySelectorAll('section.endpoint[data-endpoint="signed"] figure:first-child .xlab')].map(e => e.textContent).join(" ")`); !regexp.MustCompile(`^(\d\d:00 ?){4,5}(now)?$`).MatchString(got) {
		t.Errorf("the time axis reads %q, want clock times every 6 hours", got)
	}
	if got := p.eval(`[...document.querySelectorAll('section.endpoint[data-endpoint="header-auth"] figure:first-child rect.hit title')].map(e => e.textContent).find(s => s.includes(" failed)") && !s.includes("; 0 failed"))`); !strings.Contains(got, "0.0% succeeded") {
		t.Errorf("header-auth's outage is not in its chart: %q", got)
	}
	p.shot("endpoints")
	p.do("the 7-day charts", chromedp.Click(chromedp.CSS(`.segmented a[href$="window=7d"]`)), chromedp.WaitVisible(chromedp.CSS(`.segmented a.active[href$="window=7d"]`)))
	if got := p.eval(`[...document.querySelectorAll('section.endpoint[data-endpoint="signed"] figure:first-child .xlab')].map(e => e.textContent).join(" ")`); !regexp.MustCompile(`^([A-Z][a-z]{2} \d{1,2} ?){6,8}(now)?$`).MatchString(got) {
		t.Errorf("the 7-day axis reads %q, want a weekday and date per day", got)
	}

	// Step 1: create an endpoint. First one the API server refuses: its sentence is shown.
	orders := newLineReceiver(t, nil, "")
	p.do("opening Add endpoint", chromedp.Click(chromedp.CSS("#add-endpoint")), chromedp.WaitVisible(chromedp.CSS("#endpoint-form")))
	p.do("filling the form",
		chromedp.SendKeys(chromedp.CSS("#name"), "orders"),
		chromedp.SendKeys(chromedp.CSS("#url"), orders.URL+"/hooks"),
		chromedp.Click(chromedp.CSS(`input[name=events][value="document.uploaded"]`)),
	)
	p.shot("endpoint-new")
	p.do("saving without allowing http://", chromedp.Click(chromedp.CSS("#save-endpoint")), chromedp.WaitVisible(chromedp.CSS(".form-error")))
	if got := p.text(".form-error"); !strings.Contains(got, "spec.url uses plain http://: use an https:// URL, or set spec.allowInsecureHTTP: true") {
		t.Errorf("the refused form shows %q, want the CRD's sentence", got)
	}
	if v, _ := chromedp.Run(ctx, chromedp.Value(chromedp.CSS("#url"))); v != orders.URL+"/hooks" {
		t.Errorf("the refused form lost the URL: %q", v)
	}
	p.shot("endpoint-refused")
	p.do("allowing http:// and saving", chromedp.Click(chromedp.CSS(`input[name=insecure]`)), chromedp.Click(chromedp.CSS("#save-endpoint")),
		chromedp.WaitVisible(chromedp.CSS("#generated-secret")))
	generated := p.text("#generated-secret")
	if len(generated) < 40 {
		t.Fatalf("the generated secret %q is too short", generated)
	}
	ep := &webhooksv1alpha1.WebhookEndpoint{}
	if err := st.Client.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "orders"}, ep); err != nil {
		t.Fatal(err)
	}
	if events := slices.Sorted(slices.Values(ep.Spec.EventTypes)); ep.Spec.URL != orders.URL+"/hooks" || strings.Join(events, ",") != "document.uploaded,llm.completed" || ep.Spec.SigningSecretRef == nil {
		t.Errorf("the endpoint made: %+v", ep.Spec)
	}
	p.shot("endpoint-created")
	// The receiver is configured with the secret the page showed; the page shows it no more.
	orders.setKey([]byte(generated))
	p.do("reloading the endpoint page", chromedp.Reload(), chromedp.WaitVisible(chromedp.CSS("#test-webhook")))
	if n := p.count("#generated-secret"); n != 0 {
		t.Errorf("the secret is shown again after a reload")
	}
	if body := p.eval(`document.documentElement.outerHTML`); strings.Contains(body, generated) {
		t.Errorf("a page holds the signing secret after it was shown once")
	}

	// Step 2: Test webhook. The receiver verifies the signature with the shown secret.
	p.do("clicking Test webhook", chromedp.Click(chromedp.CSS("#test-webhook")))
	p.waitFor("the test delivery's first attempt", `#attempts tr[data-attempt="1"]`)
	p.waitFor("the test delivery to succeed", `.pagehead .badge.ok`)
	if got := p.text(".flash.success"); got != "Test webhook: attempt 1, Success, HTTP 200." {
		t.Errorf("the test's result reads %q", got)
	}
	testID := p.text(`.summary div:first-child dd`)
	if lines := orders.linesOf(testID); len(lines) != 1 || !regexp.MustCompile(` 200 event=`+testID+` type=webhook.test attempt=1 verified=signature path=/hooks$`).MatchString(lines[0]) {
		t.Errorf("the receiver's lines for the test event: %q, want one verified 200", lines)
	}
	if got := p.text(`#attempts tr[data-attempt="1"]`); !strings.Contains(got, "Scheduled Success 200") {
		t.Errorf("the attempt row reads %q", got)
	}
	if got := p.text("#payload"); !strings.Contains(got, `"event_type": "webhook.test"`) || !strings.Contains(got, `"event_id": "`+testID+`"`) {
		t.Errorf("the payload shown is not the test event: %s", got)
	}
	p.shot("delivery-test")

	// Step 3: the deliveries, filtered to the Failed ones; Retry on the one that left etcd.
	p.do("opening Deliveries", chromedp.Click(chromedp.CSS(`.nav a[href$="/deliveries"]`)), chromedp.WaitVisible(chromedp.CSS("#deliveries")))
	// Each filter submits itself on change, as a person choosing it sees; the page a choice leads
	// to marks it selected in its HTML (a value set by script would also match on the old page),
	// and the next choice waits for that page, so no navigation is cut short by the next one.
	p.do("filtering deliveries of failing",
		chromedp.SetValue(chromedp.CSS("#f-endpoint"), "failing"),
		chromedp.WaitReady(chromedp.CSS(`#f-endpoint option[value=failing][selected]`)))
	p.do("filtering Failed deliveries of failing",
		chromedp.SetValue(chromedp.CSS("#f-phase"), "Failed"),
		chromedp.WaitReady(chromedp.CSS(`#f-endpoint option[value=failing][selected]`)),
		chromedp.WaitReady(chromedp.CSS(`#f-phase option[value=Failed][selected]`)),
		chromedp.WaitVisible(chromedp.CSS(`tr[data-delivery=`+failed.Name+`]`)))
	if loc := p.location(); !strings.Contains(loc, "endpoint=failing") || !strings.Contains(loc, "phase=Failed") {
		t.Errorf("after choosing both filters the page is %s", loc)
	}
	if got := p.count(`#deliveries tbody tr`); got != 1 {
		t.Errorf("Failed deliveries of failing: %d rows, want 1", got)
	}
	row := p.text(`tr[data-delivery=` + failed.Name + `]`)
	if !strings.Contains(row, "Failed") || !strings.Contains(row, "history") || !strings.Contains(row, "500") {
		t.Errorf("the failed delivery's row reads %q: want Failed, 500, stored in the history", row)
	}
	p.do("showing every delivery", chromedp.Navigate(srv.Origin()+"/ns/default/deliveries"), chromedp.WaitVisible(chromedp.CSS("#deliveries")))
	p.shot("deliveries")
	p.do("filtering again", chromedp.Navigate(srv.Origin()+"/ns/default/deliveries?endpoint=failing&phase=Failed"), chromedp.WaitVisible(chromedp.CSS(`tr[data-delivery=`+failed.Name+`]`)))
	before := len(rcv.linesOf("evt-invoice-42"))
	p.do("clicking Retry", chromedp.Click(chromedp.CSS(`button[data-retry=`+failed.Name+`]`)))
	p.waitFor("the retry's attempt", `#attempts tr[data-attempt="2"]`)
	if n := p.count(`#attempts tbody tr`); n != 2 {
		t.Errorf("after Retry the delivery shows %d attempts, want 2", n)
	}
	if got := p.text(`#attempts tr[data-attempt="2"]`); !strings.Contains(got, "Manual HTTPError 500") {
		t.Errorf("the retry's attempt reads %q", got)
	}
	if got := p.text(`#attempts tr[data-attempt="1"]`); !strings.Contains(got, "Scheduled HTTPError 500") {
		t.Errorf("the first attempt is no longer shown as it was: %q", got)
	}
	time.Sleep(time.Second) // a second request, if any were sent, would have arrived
	if got := len(rcv.linesOf("evt-invoice-42")); before != 1 || got != 2 {
		t.Errorf("the receiver got %d requests for the retried event before and %d after, want 1 and 2", before, got)
	}
	if got := p.text(".flash.info"); got != "Retry (the delivery had left etcd: it was re-created from its record): attempt 2, HTTPError, HTTP 500." {
		t.Errorf("the retry's result reads %q", got)
	}
	p.shot("delivery-retried")

	// The endpoint's own page: both windows, settings (the Secret by name only), recent deliveries.
	p.do("opening signed", chromedp.Navigate(srv.Origin()+"/ns/default/endpoints/signed"), chromedp.WaitVisible(chromedp.CSS("#test-webhook")))
	if got := p.text(".settings"); !strings.Contains(got, "Secret webhook-secrets, key signing-secret") || strings.Contains(got, string(key)) {
		t.Errorf("the settings read %q: want the Secret by name and key, never its value", got)
	}
	p.shot("endpoint")
	p.do("opening Edit", chromedp.Click(chromedp.CSS("#edit-endpoint")), chromedp.WaitVisible(chromedp.CSS("#endpoint-form")))
	if got := p.text(`label:has(input[name=source][value=keep])`); !strings.Contains(got, "Keep the current one Secret webhook-secrets, key signing-secret") {
		t.Errorf("the edit form offers %q: want to keep the current Secret, by name", got)
	}
	p.do("changing the retry policy", chromedp.SendKeys(chromedp.CSS("#maxRetries"), "3"), chromedp.SendKeys(chromedp.CSS("#initialDelay"), "5"))
	p.shot("endpoint-edit")
	p.do("saving the changes", chromedp.Click(chromedp.CSS("#save-endpoint")), chromedp.WaitVisible(chromedp.CSS(".flash.success")))
	if got := p.text(".settings"); !strings.Contains(got, "Retries 3 after the first attempt") || !strings.Contains(got, "first after 5s, then ×2") || !strings.Contains(got, "Secret webhook-secrets, key signing-secret") {
		t.Errorf("after the edit the settings read %q", got)
	}
	if err := st.Client.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "signed"}, ep); err != nil {
		t.Fatal(err)
	}
	if rp := ep.Spec.RetryPolicy; rp == nil || ptr.Deref(rp.MaxRetries, -1) != 3 || ptr.Deref(rp.InitialDelaySeconds, -1) != 5 || rp.BackoffFactor != nil || ep.Spec.SigningSecretRef.Name != "webhook-secrets" {
		t.Errorf("the edited endpoint's spec: %+v %+v", ep.Spec.RetryPolicy, ep.Spec.SigningSecretRef)
	}

	refusals(t, p, srv.Origin(), ns)
	forbidden(t, p, ns, failed.Name)
	t.Logf("the browser test took %s", time.Since(started).Round(time.Second))
}

// refusals: requests that do not come from the console's own pages change nothing. A page on
// another site submits a form to the console in the same browser; forged requests with the
// session's cookie lack the token, or name another origin or host.
func refusals(t *testing.T, p *page, origin, ns string) {
	t.Helper()
	pause := origin + "/ns/" + ns + "/endpoints/signed/pause"
	attacker := newAttacker(t, pause)
	p.do("visiting a page on another site", chromedp.Navigate(attacker.URL), chromedp.WaitVisible(chromedp.CSS("body.done")))
	p.do("back to the console", chromedp.Navigate(origin+"/ns/"+ns+"/endpoints/signed"), chromedp.WaitVisible(chromedp.CSS("#pause")))
	cookies, err := chromedp.Run(p.ctx, func(ctx context.Context, tg *chromedp.Target) ([]*network.Cookie, error) {
		r, err := cdp.Call(ctx, tg, network.GetCookies, network.GetCookiesParams{URLs: []string{origin}})
		return r.Cookies, err
	})
	if err != nil || len(cookies) != 1 || !cookies[0].HTTPOnly || cookies[0].SameSite != network.CookieSameSiteStrict {
		t.Fatalf("the session cookie: %v %v, want one, HttpOnly and SameSite=Strict", cookies, err)
	}
	token := p.eval(`document.querySelector('form[action$="/pause"] input[name=csrf]').value`)
	post := func(form url.Values, header http.Header) int {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, pause, strings.NewReader(form.Encode()))
		req.Header = header
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.AddCookie(&http.Cookie{Name: cookies[0].Name, Value: cookies[0].Value})
		resp, err := (&http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	u, _ := url.Parse(origin)
	for _, c := range []struct {
		what   string
		form   url.Values
		header http.Header
		want   int
	}{
		{"without the form token", url.Values{}, http.Header{"Origin": {origin}}, http.StatusForbidden},
		{"with a wrong token", url.Values{"csrf": {token[:len(token)-2] + "xx"}}, http.Header{"Origin": {origin}}, http.StatusForbidden},
		{"from another origin", url.Values{"csrf": {token}}, http.Header{"Origin": {"http://evil.example"}}, http.StatusForbidden},
		{"from another site, says the browser", url.Values{"csrf": {token}}, http.Header{"Origin": {origin}, "Sec-Fetch-Site": {"cross-site"}}, http.StatusForbidden},
		{"saying nothing of its origin", url.Values{"csrf": {token}}, http.Header{}, http.StatusForbidden},
		{"for another host (DNS rebinding)", url.Values{"csrf": {token}}, http.Header{"Origin": {"http://rebind.example:" + u.Port()}, "Host": {"rebind.example:" + u.Port()}}, http.StatusMisdirectedRequest},
	} {
		if c.header.Get("Host") != "" {
			// net/http takes the Host from the request, not its headers.
			req := c.header.Get("Host")
			c.header.Del("Host")
			if got := postHost(t, pause, req, c.form, c.header, cookies[0]); got != c.want {
				t.Errorf("a request %s: got %d, want %d", c.what, got, c.want)
			}
			continue
		}
		if got := post(c.form, c.header); got != c.want {
			t.Errorf("a request %s: got %d, want %d", c.what, got, c.want)
		}
	}
	ep := &webhooksv1alpha1.WebhookEndpoint{}
	if err := st.Client.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "signed"}, ep); err != nil || ep.Spec.Paused {
		t.Fatalf("signed was paused by a request that did not come from the console: paused=%v, %v", ep.Spec.Paused, err)
	}
	if attacker.answers() == 0 {
		t.Errorf("the other site's page did not submit its form")
	}
	// The same request from the console's own page works.
	if got := post(url.Values{"csrf": {token}}, http.Header{"Origin": {origin}}); got != http.StatusSeeOther {
		t.Errorf("the console's own request: got %d, want 303", got)
	}
	if err := st.Client.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "signed"}, ep); err != nil || !ep.Spec.Paused {
		t.Errorf("the console's own Pause did not pause signed: %v", err)
	}
}

// forbidden: a user bound to the built-in view role may look but not retry; the console shows
// the API server's sentence and nothing is sent.
func forbidden(t *testing.T, p *page, ns, delivery string) {
	t.Helper()
	viewer, err := st.NewUser("bob", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Bind(context.Background(), ns, viewer.Name, "view"); err != nil {
		t.Fatal(err)
	}
	srv := consoleFor(t, viewer, ns)
	// The view role gets the operator's rules from kube-controller-manager's aggregation.
	p.do("signing in as bob", chromedp.Navigate(srv.LoginURL()), chromedp.WaitVisible(chromedp.CSS(".pagehead")))
	eventually(t, 60*time.Second, "bob to see the delivery", func(context.Context) (bool, error) {
		p.do("opening the delivery", chromedp.Navigate(srv.Origin()+"/ns/"+ns+"/deliveries/"+delivery), chromedp.WaitVisible(chromedp.CSS(".main")))
		return p.count("#retry") == 1 && p.count(".flash.info") == 0, nil
	})
	attempts := p.count(`#attempts tbody tr`)
	p.do("clicking Retry as bob", chromedp.Click(chromedp.CSS("#retry")), chromedp.WaitVisible(chromedp.CSS(".flash.error")))
	got := p.text(".flash.error")
	if !strings.Contains(got, `User "bob" cannot`) || !strings.Contains(got, `resource "webhookdeliveries" in API group "webhooks.docrouter.ai" in the namespace "default"`) {
		t.Errorf("bob's refused Retry reads %q: want the API server's 403 sentence", got)
	}
	if n := p.count(`#attempts tbody tr`); n != attempts {
		t.Errorf("bob's refused Retry changed the attempts: %d, then %d", attempts, n)
	}
	p.shot("forbidden")
}

func event(id, typ string) webhooksv1alpha1.Event {
	return webhooksv1alpha1.Event{ID: id, Type: typ, Timestamp: time.Now().Unix(), OrganizationID: "org-1",
		Document: webhooksv1alpha1.Document{DocumentID: "doc-" + id, DocumentName: "invoice.pdf", TagIDs: []string{"finance"}}}
}

// goneFromEtcd waits until a delivery has finished, been archived and left etcd.
func goneFromEtcd(t *testing.T, ns, name string) {
	t.Helper()
	eventually(t, 45*time.Second, name+" to leave etcd", func(ctx context.Context) (bool, error) {
		rec := &historyv1alpha1.WebhookDeliveryRecord{}
		if err := st.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, rec); err != nil {
			return false, err
		}
		return rec.Status.RemovedTime != nil, nil
	})
}

// numText writes a count as the console does, with thousands separators.
func numText(n int) string {
	s := fmt.Sprint(n)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}
