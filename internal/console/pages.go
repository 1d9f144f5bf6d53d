package console

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	historyv1alpha1 "github.com/docrouter/webhook-operator/api/history/v1alpha1"
	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
	"github.com/docrouter/webhook-operator/internal/actions"
)

// endpointsPerPage and deliveriesPerPage bound a page.
const (
	endpointsPerPage  = 25
	deliveriesPerPage = 25
	recentDeliveries  = 8
)

// Status is an endpoint's badge: a word, its colour, and what it means.
type Status struct {
	Label, Class, Title string
}

func endpointStatus(ep *actions.Endpoint) Status {
	ready := ep.Ready()
	switch {
	case ep.Spec.Paused:
		return Status{"Paused", "muted", "Deliveries wait until the endpoint is resumed; nothing is dropped."}
	case ep.Status.DisabledSince != nil:
		return Status{"Disabled", "bad", fmt.Sprintf("Disabled by the operator (%s) %s; its deliveries are parked until it is re-enabled.", ep.Status.DisabledReason, agoText(ep.Status.DisabledSince.Time))}
	case ready.Status == metav1.ConditionTrue && ep.Status.FailingSince != nil:
		return Status{"Failing", "warn", fmt.Sprintf("Every attempt since %s failed (%d in a row).", absTime(ep.Status.FailingSince.Time), ep.Status.ConsecutiveFailures)}
	case ready.Status == metav1.ConditionTrue:
		return Status{"Ready", "ok", sentenceCase(ready.Message)}
	case ready.Status == metav1.ConditionFalse:
		return Status{ready.Reason, "bad", sentenceCase(ready.Message)}
	}
	return Status{"Pending", "muted", sentenceCase(ready.Message)}
}

// endpointView is an endpoint as the endpoints page and its own page show it.
type endpointView struct {
	*actions.Endpoint
	Status      Status
	Window      *historyv1alpha1.StatsWindow
	Success     *Chart
	Latency     *Chart
	LastFailure *time.Time
	Path        string
}

func (s *Server) endpointView(ep *actions.Endpoint, window string) endpointView {
	v := endpointView{Endpoint: ep, Status: endpointStatus(ep), Window: ep.Window(window), Path: nsPath(ep.Namespace, "endpoints", ep.Name)}
	v.Success = successChart(v.Window, time.Local)
	v.Latency = latencyChart(v.Window, time.Local)
	if t := ep.Status.LastFailureTime; t != nil {
		v.LastFailure = &t.Time
	}
	return v
}

// Deliveries in the window: those that finished.
func (v endpointView) Finished() int64 {
	if v.Window == nil {
		return 0
	}
	return v.Window.Deliveries.Succeeded + v.Window.Deliveries.Failed
}

func (s *Server) endpointsPage(w http.ResponseWriter, r *http.Request, ss *session) {
	ns := r.PathValue("ns")
	window := r.URL.Query().Get("window")
	if window != actions.Window7d {
		window = actions.Window24h
	}
	ctx, cancel := s.ctx(r)
	defer cancel()
	p := &Page{Title: "Endpoints", Nav: "endpoints"}
	data := struct {
		Endpoints []endpointView
		Window    string
		Next      string
		First     bool
	}{Window: window, First: r.URL.Query().Get("continue") == ""}
	page, err := s.opts.Actions.ListEndpoints(ctx, ns, endpointsPerPage, r.URL.Query().Get("continue"))
	if err != nil {
		p.Errors = append(p.Errors, actions.Sentence(err))
	} else {
		for i := range page.Items {
			data.Endpoints = append(data.Endpoints, s.endpointView(&page.Items[i], window))
		}
		if page.StatsErr != nil {
			p.Notices = append(p.Notices, "Statistics are not shown: "+actions.Sentence(page.StatsErr))
		}
		if page.Continue != "" {
			data.Next = nsPath(ns, "endpoints") + "?" + url.Values{"window": {window}, "continue": {page.Continue}}.Encode()
		}
	}
	p.Data = data
	s.render(w, r, ss, http.StatusOK, "endpoints", p)
}

func (s *Server) endpointPage(w http.ResponseWriter, r *http.Request, ss *session) {
	ns, name := r.PathValue("ns"), r.PathValue("name")
	ctx, cancel := s.ctx(r)
	defer cancel()
	p := &Page{Title: name, Nav: "endpoints"}
	ep, err := s.opts.Actions.GetEndpoint(ctx, ns, name)
	if err != nil {
		p.Errors = append(p.Errors, actions.Sentence(err))
		s.render(w, r, ss, statusOf(err), "endpoint", p)
		return
	}
	if ep.StatsErr != nil {
		p.Notices = append(p.Notices, "Statistics are not shown: "+actions.Sentence(ep.StatsErr))
	}
	data := struct {
		endpointView
		Week       endpointView
		Recent     []deliveryRow
		RecentErr  string
		AllPath    string
		FailedPath string
		Policy     []setting
		Auth       []setting
	}{endpointView: s.endpointView(ep, actions.Window24h), Week: s.endpointView(ep, actions.Window7d)}
	recent, err := s.opts.Actions.ListDeliveries(ctx, ns, actions.DeliveryFilter{Endpoint: name}, recentDeliveries, "")
	if err != nil {
		data.RecentErr = actions.Sentence(err)
	} else {
		data.Recent = s.deliveryRows(recent.Items)
	}
	data.AllPath = nsPath(ns, "deliveries") + "?" + url.Values{"endpoint": {name}}.Encode()
	data.FailedPath = nsPath(ns, "deliveries") + "?" + url.Values{"endpoint": {name}, "phase": {"Failed"}}.Encode()
	data.Policy, data.Auth = settingsOf(&ep.WebhookEndpoint)
	p.Data = data
	s.render(w, r, ss, http.StatusOK, "endpoint", p)
}

// setting is one line of an endpoint's settings.
type setting struct {
	Name, Value string
	Mono        bool
}

// settingsOf describes an endpoint's delivery settings and authentication, with the defaults
// that apply; Secrets by name and key only, never their values.
func settingsOf(ep *webhooksv1alpha1.WebhookEndpoint) (policy, auth []setting) {
	rp := ep.Spec.RetryPolicy
	policy = []setting{
		{Name: "Timeout", Value: durationText(ep.Spec.GetTimeout()) + " per attempt"},
		{Name: "Retries", Value: fmt.Sprintf("%d after the first attempt", rp.GetMaxRetries())},
		{Name: "Backoff", Value: fmt.Sprintf("first after %s, then ×%d each time, at most %s apart, +%d%% jitter", durationText(rp.GetInitialDelay()), rp.GetBackoffFactor(), durationText(rp.GetMaxDelay()), rp.GetJitterPercent())},
	}
	switch {
	case ep.Spec.SigningSecretRef != nil:
		auth = append(auth, setting{Name: "Signature", Value: string(ep.Spec.GetSignatureScheme()) + " (HMAC-SHA256)"},
			setting{Name: "Signing secret", Value: "Secret " + ep.Spec.SigningSecretRef.Name + ", key " + ep.Spec.SigningSecretRef.Key, Mono: true})
		if ep.Spec.PreviousSigningSecretRef != nil && ep.Spec.PreviousSigningSecretExpiresAt != nil {
			auth = append(auth, setting{Name: "Previous secret", Value: fmt.Sprintf("Secret %s, key %s, until %s", ep.Spec.PreviousSigningSecretRef.Name, ep.Spec.PreviousSigningSecretRef.Key, absTime(ep.Spec.PreviousSigningSecretExpiresAt.Time)), Mono: true})
		}
	case ep.Spec.AuthHeader == nil:
		auth = append(auth, setting{Name: "Authentication", Value: "none: requests are not signed"})
	}
	if h := ep.Spec.AuthHeader; h != nil {
		auth = append(auth, setting{Name: "Header", Value: h.Name + " from Secret " + h.SecretKeyRef.Name + ", key " + h.SecretKeyRef.Key, Mono: true})
	}
	return policy, auth
}

// deliveryRow is a delivery in a table, with a Retry form for a Failed one.
type deliveryRow struct {
	actions.Delivery
	Path  string
	Token string
}

func (s *Server) deliveryRows(items []actions.Delivery) []deliveryRow {
	rows := make([]deliveryRow, len(items))
	for i, d := range items {
		rows[i] = deliveryRow{Delivery: d, Path: nsPath(d.Namespace, "deliveries", d.Name)}
		if d.Phase == string(webhooksv1alpha1.PhaseFailed) {
			rows[i].Token = actions.NewToken("console", s.opts.Now())
		}
	}
	return rows
}

// sinceChoices are the console's time filters.
var sinceChoices = []struct{ Value, Label string }{
	{"1h", "Last hour"}, {"24h", "Last 24 hours"}, {"7d", "Last 7 days"}, {"", "Any time"},
}

func sinceDuration(v string) time.Duration {
	switch v {
	case "1h":
		return time.Hour
	case "2h":
		return 2 * time.Hour
	case "24h":
		return 24 * time.Hour
	case "7d":
		return 7 * 24 * time.Hour
	case "30d":
		return 30 * 24 * time.Hour
	}
	return 0
}

var phases = []string{"Pending", "Retrying", "Succeeded", "Failed"}

func (s *Server) deliveriesPage(w http.ResponseWriter, r *http.Request, ss *session) {
	ns := r.PathValue("ns")
	q := r.URL.Query()
	f := actions.DeliveryFilter{Endpoint: q.Get("endpoint"), EventType: q.Get("type"), EventID: strings.TrimSpace(q.Get("id"))}
	if slices.Contains(phases, q.Get("phase")) {
		f.Phase = q.Get("phase")
	}
	since := q.Get("since")
	if d := sinceDuration(since); d > 0 {
		f.Since = s.opts.Now().Add(-d)
	} else {
		since = ""
	}
	ctx, cancel := s.ctx(r)
	defer cancel()
	p := &Page{Title: "Deliveries", Nav: "deliveries"}
	data := struct {
		Filter     actions.DeliveryFilter
		Since      string
		Rows       []deliveryRow
		Next       string
		FirstPage  string
		Endpoints  []string
		Phases     []string
		EventTypes []string
		Sinces     []struct{ Value, Label string }
		Paged      bool
	}{Filter: f, Since: since, Phases: phases, EventTypes: webhooksv1alpha1.EventTypes, Sinces: sinceChoices, Paged: q.Get("continue") != ""}
	filters := url.Values{}
	for k, v := range map[string]string{"endpoint": f.Endpoint, "phase": f.Phase, "type": f.EventType, "id": f.EventID, "since": since} {
		if v != "" {
			filters.Set(k, v)
		}
	}
	data.FirstPage = nsPath(ns, "deliveries")
	if len(filters) > 0 {
		data.FirstPage += "?" + filters.Encode()
	}
	page, err := s.opts.Actions.ListDeliveries(ctx, ns, f, deliveriesPerPage, q.Get("continue"))
	if err != nil {
		p.Errors = append(p.Errors, actions.Sentence(err))
	} else {
		data.Rows = s.deliveryRows(page.Items)
		if page.HistoryErr != nil {
			p.Notices = append(p.Notices, "Only the deliveries in etcd are shown: "+actions.Sentence(page.HistoryErr))
		}
		if page.Continue != "" {
			next := url.Values{"continue": {page.Continue}}
			for k, v := range filters {
				next[k] = v
			}
			data.Next = nsPath(ns, "deliveries") + "?" + next.Encode()
		}
	}
	if names, err := s.opts.Actions.EndpointNames(ctx, ns); err == nil {
		data.Endpoints = names
	}
	p.Data = data
	s.render(w, r, ss, http.StatusOK, "deliveries", p)
}

// awaitFor bounds how long a delivery page reloads itself while it waits for an attempt.
const awaitFor = 60 * time.Second

var tokenPattern = regexp.MustCompile(`^console-[0-9]+-[0-9a-f]{8}$`)

func (s *Server) deliveryPage(w http.ResponseWriter, r *http.Request, ss *session) {
	ns, name := r.PathValue("ns"), r.PathValue("name")
	q := r.URL.Query()
	awaiting := q.Get("awaiting")
	requested, _ := strconv.ParseInt(q.Get("at"), 10, 64)
	waiting := awaiting != "" && s.opts.Now().Sub(time.Unix(requested, 0)) < awaitFor
	ctx, cancel := s.ctx(r)
	defer cancel()
	p := &Page{Title: name, Nav: "deliveries"}
	d, err := s.opts.Actions.GetDelivery(ctx, ns, name)
	if err != nil {
		if apierrors.IsNotFound(err) && waiting {
			p.Notices = append(p.Notices, "Waiting for the operator to create this delivery…")
			p.RefreshSeconds = 1
			p.Data = struct{ Waiting bool }{true}
			s.render(w, r, ss, http.StatusOK, "delivery", p)
			return
		}
		p.Errors = append(p.Errors, actions.Sentence(err))
		s.render(w, r, ss, statusOf(err), "delivery", p)
		return
	}
	if d.HistoryErr != nil {
		p.Notices = append(p.Notices, fmt.Sprintf("The attempts shown are the last %d the WebhookDelivery keeps: %s", webhooksv1alpha1.MaxAttemptHistory, actions.Sentence(d.HistoryErr)))
	}
	pending := false
	switch {
	case awaiting == "test":
		pending = d.Attempts == 0
	case awaiting != "":
		pending = d.LastRetryToken != awaiting
	}
	switch {
	case pending && waiting:
		p.Notices = append(p.Notices, "Waiting for the operator's attempt…")
		p.RefreshSeconds = 1
	case pending:
		p.Notices = append(p.Notices, fmt.Sprintf("No attempt within %s of the request: is the operator running? The delivery's condition says why it waits.", awaitFor))
	case awaiting != "" && len(d.History) > 0:
		// What the button did, on this page and on each reload of it until now.
		a := d.History[len(d.History)-1]
		what := "Test webhook"
		if awaiting != "test" {
			what = "Retry"
			if q.Get("restored") == "1" {
				what = "Retry (the delivery had left etcd: it was re-created from its record)"
			}
		}
		kind := "info"
		if a.Result == "Success" {
			kind = "success"
		}
		p.Flashes = append(p.Flashes, Flash{Kind: kind, Text: fmt.Sprintf("%s: attempt %d, %s%s.", what, a.Number, a.Result, codeSuffix(a.StatusCode))})
	case d.Live && d.Attempts == 0 && s.opts.Now().Sub(d.Created) < awaitFor:
		p.RefreshSeconds = 2
	}
	attempts := slices.Clone(d.History)
	slices.Reverse(attempts)
	data := struct {
		*actions.DeliveryDetail
		Pretty       string
		Rows         []webhooksv1alpha1.Attempt
		Token        string
		EndpointPath string
		Waiting      bool
	}{DeliveryDetail: d, Rows: attempts, EndpointPath: nsPath(ns, "endpoints", d.Endpoint)}
	var pretty bytes.Buffer
	if d.PayloadErr == nil && json.Indent(&pretty, d.Payload, "", "  ") == nil {
		data.Pretty = pretty.String()
	}
	data.Token = actions.NewToken("console", s.opts.Now())
	p.Data = data
	s.render(w, r, ss, http.StatusOK, "delivery", p)
}

// statusOf is the HTTP status a page answers with when the API server refused.
func statusOf(err error) int {
	var status apierrors.APIStatus
	if errors.As(err, &status) && status.Status().Code >= 400 {
		return int(status.Status().Code)
	}
	if apierrors.IsNotFound(err) {
		return http.StatusNotFound
	}
	return http.StatusBadGateway
}

// Actions: each does one thing with the user's credentials, then sends the browser to a page
// that shows the result.

func (s *Server) testEndpoint(w http.ResponseWriter, r *http.Request, ss *session) {
	ns, name := r.PathValue("ns"), r.PathValue("name")
	ctx, cancel := s.ctx(r)
	defer cancel()
	delivery, err := s.opts.Actions.Test(ctx, ns, name, actions.NewToken("console", s.opts.Now()))
	if err != nil {
		s.flash(w, r, ss, back(r, nsPath(ns, "endpoints", name)), Flash{Kind: "error", Text: refused("Test webhook", err)})
		return
	}
	// The delivery's page shows the test's result (it waits for the attempt, then says it).
	to := nsPath(ns, "deliveries", delivery) + "?" + url.Values{"awaiting": {"test"}, "at": {fmt.Sprint(s.opts.Now().Unix())}}.Encode()
	http.Redirect(w, r, to, http.StatusSeeOther)
}

func (s *Server) pauseEndpoint(pause bool) func(http.ResponseWriter, *http.Request, *session) {
	return func(w http.ResponseWriter, r *http.Request, ss *session) {
		ns, name := r.PathValue("ns"), r.PathValue("name")
		ctx, cancel := s.ctx(r)
		defer cancel()
		to := back(r, nsPath(ns, "endpoints", name))
		verb := "Resume"
		if pause {
			verb = "Pause"
		}
		if err := s.opts.Actions.SetPaused(ctx, ns, name, pause); err != nil {
			s.flash(w, r, ss, to, Flash{Kind: "error", Text: refused(verb, err)})
			return
		}
		text := name + " is paused: its deliveries wait, none is dropped, until you resume it."
		if !pause {
			text = name + " is resumed: its waiting deliveries are being sent."
		}
		s.flash(w, r, ss, to, Flash{Kind: "success", Text: text})
	}
}

func (s *Server) enableEndpoint(w http.ResponseWriter, r *http.Request, ss *session) {
	ns, name := r.PathValue("ns"), r.PathValue("name")
	ctx, cancel := s.ctx(r)
	defer cancel()
	to := back(r, nsPath(ns, "endpoints", name))
	if err := s.opts.Actions.Enable(ctx, ns, name, actions.NewToken("console", s.opts.Now())); err != nil {
		s.flash(w, r, ss, to, Flash{Kind: "error", Text: refused("Re-enable", err)})
		return
	}
	s.flash(w, r, ss, to, Flash{Kind: "success", Text: name + " is re-enabled: its parked deliveries resume."})
}

func (s *Server) retryDelivery(w http.ResponseWriter, r *http.Request, ss *session) {
	ns, name := r.PathValue("ns"), r.PathValue("name")
	// The token comes with the page: a form sent twice (a double click, a reload) asks once.
	token := r.PostForm.Get("token")
	if !tokenPattern.MatchString(token) {
		token = actions.NewToken("console", s.opts.Now())
	}
	ctx, cancel := s.ctx(r)
	defer cancel()
	page := nsPath(ns, "deliveries", name)
	outcome, err := s.opts.Actions.Retry(ctx, ns, name, token)
	if err != nil {
		s.flash(w, r, ss, back(r, page), Flash{Kind: "error", Text: refused("Retry", err)})
		return
	}
	if outcome == actions.RetryAlreadyHandled {
		s.flash(w, r, ss, page, Flash{Kind: "info", Text: "This retry was requested already (the form was sent twice): no second attempt is made for it."})
		return
	}
	// The delivery's page shows the retry's result (it waits for the attempt, then says it).
	q := url.Values{"awaiting": {token}, "at": {fmt.Sprint(s.opts.Now().Unix())}}
	if outcome == actions.RetryRestored {
		q.Set("restored", "1")
	}
	http.Redirect(w, r, page+"?"+q.Encode(), http.StatusSeeOther)
}

func (s *Server) retryFailed(w http.ResponseWriter, r *http.Request, ss *session) {
	ns, name := r.PathValue("ns"), r.PathValue("name")
	since := r.PostForm.Get("since")
	d := sinceDuration(since)
	if d == 0 {
		d, since = 24*time.Hour, "24h"
	}
	ctx, cancel := s.ctx(r)
	defer cancel()
	from := s.opts.Now().Add(-d)
	res, err := s.opts.Actions.RetryFailed(ctx, ns, name, from, actions.NewToken("console", s.opts.Now()), actions.DefaultRetryFailedMax)
	to := back(r, nsPath(ns, "endpoints", name))
	if err != nil {
		s.flash(w, r, ss, to, Flash{Kind: "error", Text: refused("Retry failed", err)})
		return
	}
	f := Flash{Kind: "success", Link: nsPath(ns, "deliveries") + "?" + url.Values{"endpoint": {name}, "since": {since}}.Encode(), LinkText: "See them"}
	switch {
	case res.Total() == 0 && len(res.Errors) == 0:
		f = Flash{Kind: "info", Text: fmt.Sprintf("No Failed delivery of %s in the last %s: nothing to retry.", name, windowWords(since))}
	default:
		f.Text = fmt.Sprintf("Retried %d Failed deliveries of %s from the last %s (%d in etcd, %d re-created from the history).", res.Total(), name, windowWords(since), res.Requested, res.Restored)
	}
	if len(res.Errors) > 0 {
		for n, e := range res.Errors {
			f.Kind, f.Text = "error", f.Text+fmt.Sprintf(" %d could not be retried; %s: %s", len(res.Errors), n, actions.Sentence(e))
			break
		}
	}
	s.flash(w, r, ss, to, f)
}

// codeSuffix is ", HTTP 200" for an answer, nothing for none.
func codeSuffix(code int32) string {
	if code == 0 {
		return ""
	}
	return fmt.Sprintf(", HTTP %d", code)
}

// refused says that an action did not happen and why: the API server's answer as it put it.
func refused(action string, err error) string {
	var status apierrors.APIStatus
	if errors.As(err, &status) {
		return action + " was refused: " + actions.Sentence(err)
	}
	return action + " did not happen: " + actions.Sentence(err)
}

// sentenceCase starts a condition's message with a capital, as a sentence on a page.
func sentenceCase(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

// durationText writes a policy's duration as people write it: 30s, 4h, 1h30m.
func durationText(d time.Duration) string {
	h, m, sec := d/time.Hour, d%time.Hour/time.Minute, d%time.Minute/time.Second
	var b strings.Builder
	if h > 0 {
		fmt.Fprintf(&b, "%dh", h)
	}
	if m > 0 {
		fmt.Fprintf(&b, "%dm", m)
	}
	if sec > 0 || b.Len() == 0 {
		fmt.Fprintf(&b, "%ds", sec)
	}
	return b.String()
}
