package console

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"

	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
	"github.com/docrouter/webhook-operator/internal/actions"
)

// endpointForm is the create and edit page's form. It never holds a secret's value: a typed
// value goes from the request into a new Secret and is not echoed back.
type endpointForm struct {
	Edit bool
	Name string
	// Generation is the endpoint's metadata.generation the form shows (edit only).
	Generation   string
	URL          string
	Events       map[string]bool
	Insecure     bool
	Scheme       string
	Timeout      string
	MaxRetries   string
	InitialDelay string
	Backoff      string
	MaxDelay     string
	Jitter       string
	Auth         string
	Source       string
	SecretName   string
	SecretKey    string
	HeaderName   string
	// Current describes the endpoint's present Secret, for "keep" (edit only).
	CurrentSignature string
	CurrentHeader    string
	// Choices of the page.
	EventTypes  []eventChoice
	SecretNames []string
	Defaults    map[string]string
	Action      string
	Cancel      string
	// Error is the API server's answer (or the form's own check) that refused it.
	Error string
}

type eventChoice struct {
	Value, Label, Help string
}

// eventChoices are the product's event types, as its settings page lists them.
var eventChoices = []eventChoice{
	{"document.uploaded", "document.uploaded", "Document uploaded and ready for processing"},
	{"llm.completed", "llm.completed", "LLM processing finished successfully"},
	{"llm.error", "llm.error", "LLM processing failed"},
	{"document.error", "document.error", "Document processing failed"},
	{"webhook.test", "webhook.test", "Test events (Test webhook sends one whatever is selected)"},
	{"*", "All events", "Every event type, also those added later"},
}

var formDefaults = map[string]string{
	"timeout":      fmt.Sprint(webhooksv1alpha1.DefaultTimeoutSeconds),
	"maxRetries":   fmt.Sprint(webhooksv1alpha1.DefaultMaxRetries),
	"initialDelay": fmt.Sprint(webhooksv1alpha1.DefaultInitialDelaySeconds),
	"backoff":      fmt.Sprint(webhooksv1alpha1.DefaultBackoffFactor),
	"maxDelay":     fmt.Sprint(webhooksv1alpha1.DefaultMaxDelaySeconds),
	"jitter":       fmt.Sprint(webhooksv1alpha1.DefaultJitterPercent),
}

func (s *Server) newForm(r *http.Request, f *endpointForm) *endpointForm {
	f.EventTypes, f.Defaults = eventChoices, formDefaults
	ctx, cancel := s.ctx(r)
	defer cancel()
	if names, err := s.opts.Actions.SecretNames(ctx, r.PathValue("ns")); err == nil {
		f.SecretNames = names
	}
	if f.Events == nil {
		f.Events = map[string]bool{}
	}
	return f
}

func (s *Server) newEndpointPage(w http.ResponseWriter, r *http.Request, ss *session) {
	ns := r.PathValue("ns")
	f := s.newForm(r, &endpointForm{
		Events: map[string]bool{"llm.completed": true}, Auth: string(actions.AuthSignature), Source: string(actions.SecretGenerate),
		Scheme: string(webhooksv1alpha1.SignatureSchemeDocRouter), SecretKey: actions.SigningSecretKey,
		Action: nsPath(ns, "endpoints"), Cancel: nsPath(ns, "endpoints"),
	})
	s.render(w, r, ss, http.StatusOK, "endpoint_form", &Page{Title: "Add endpoint", Nav: "endpoints", Data: f})
}

func (s *Server) editEndpointPage(w http.ResponseWriter, r *http.Request, ss *session) {
	ns, name := r.PathValue("ns"), r.PathValue("name")
	ctx, cancel := s.ctx(r)
	defer cancel()
	ep, err := s.opts.Actions.GetEndpoint(ctx, ns, name)
	if err != nil {
		p := &Page{Title: "Edit " + name, Nav: "endpoints", Errors: []string{actions.Sentence(err)}, Data: s.newForm(r, &endpointForm{Edit: true, Name: name})}
		s.render(w, r, ss, statusOf(err), "endpoint_form", p)
		return
	}
	f := formOf(&ep.WebhookEndpoint)
	f.Action, f.Cancel = nsPath(ns, "endpoints", name, "edit"), nsPath(ns, "endpoints", name)
	s.render(w, r, ss, http.StatusOK, "endpoint_form", &Page{Title: "Edit " + name, Nav: "endpoints", Data: s.newForm(r, f)})
}

// formOf fills the edit form from an endpoint.
func formOf(ep *webhooksv1alpha1.WebhookEndpoint) *endpointForm {
	f := &endpointForm{
		Edit: true, Name: ep.Name, Generation: strconv.FormatInt(ep.Generation, 10), URL: ep.Spec.URL,
		Events: map[string]bool{}, Insecure: ep.Spec.AllowInsecureHTTP, Scheme: string(ep.Spec.GetSignatureScheme()),
		Timeout: int32Text(ep.Spec.TimeoutSeconds), Auth: string(actions.AuthNone), Source: string(actions.SecretGenerate),
		SecretKey: actions.SigningSecretKey,
	}
	for _, t := range ep.Spec.EventTypes {
		f.Events[t] = true
	}
	if rp := ep.Spec.RetryPolicy; rp != nil {
		f.MaxRetries, f.InitialDelay, f.Backoff = int32Text(rp.MaxRetries), int32Text(rp.InitialDelaySeconds), int32Text(rp.BackoffFactor)
		f.MaxDelay, f.Jitter = int32Text(rp.MaxDelaySeconds), int32Text(rp.JitterPercent)
	}
	if ref := ep.Spec.SigningSecretRef; ref != nil {
		f.Auth, f.Source = string(actions.AuthSignature), string(actions.SecretKeep)
		f.CurrentSignature = "Secret " + ref.Name + ", key " + ref.Key
	}
	if h := ep.Spec.AuthHeader; h != nil {
		if ep.Spec.SigningSecretRef == nil {
			f.Auth, f.Source = string(actions.AuthHeader), string(actions.SecretKeep)
		}
		f.HeaderName = h.Name
		f.CurrentHeader = h.Name + " from Secret " + h.SecretKeyRef.Name + ", key " + h.SecretKeyRef.Key
	}
	return f
}

func int32Text(v *int32) string {
	if v == nil {
		return ""
	}
	return strconv.Itoa(int(*v))
}

// parseForm reads the submitted form into the settings and the form to show again if refused.
// Whole numbers are checked here (the API server's rules check their ranges); everything else
// is the API server's to refuse.
func parseForm(r *http.Request, edit bool) (actions.EndpointSettings, *endpointForm, error) {
	v := r.PostForm
	f := &endpointForm{
		Edit: edit, Name: strings.TrimSpace(v.Get("name")), Generation: v.Get("generation"),
		URL: strings.TrimSpace(v.Get("url")), Events: map[string]bool{}, Insecure: v.Get("insecure") == "on",
		Scheme:  v.Get("scheme"),
		Timeout: strings.TrimSpace(v.Get("timeout")), MaxRetries: strings.TrimSpace(v.Get("maxRetries")),
		InitialDelay: strings.TrimSpace(v.Get("initialDelay")), Backoff: strings.TrimSpace(v.Get("backoff")),
		MaxDelay: strings.TrimSpace(v.Get("maxDelay")), Jitter: strings.TrimSpace(v.Get("jitter")),
		Auth: v.Get("auth"), Source: v.Get("source"),
		SecretName: strings.TrimSpace(v.Get("secretName")), SecretKey: strings.TrimSpace(v.Get("secretKey")),
		HeaderName:       strings.TrimSpace(v.Get("headerName")),
		CurrentSignature: v.Get("currentSignature"), CurrentHeader: v.Get("currentHeader"),
	}
	set := actions.EndpointSettings{
		Name: f.Name, URL: f.URL, AllowInsecureHTTP: f.Insecure, SignatureScheme: f.Scheme,
		Auth: actions.AuthMode(f.Auth), Source: actions.SecretSource(f.Source),
		SecretName: f.SecretName, SecretKey: f.SecretKey, HeaderName: f.HeaderName,
	}
	for _, t := range v["events"] {
		f.Events[t] = true
		set.EventTypes = append(set.EventTypes, t)
	}
	switch set.Auth {
	case actions.AuthSignature, actions.AuthHeader, actions.AuthNone:
	default:
		return set, f, fmt.Errorf("choose how requests are authenticated: a signature, a header, or none")
	}
	switch set.Source {
	case actions.SecretGenerate, actions.SecretValue, actions.SecretExisting:
	case actions.SecretKeep:
		if !edit {
			set.Source = actions.SecretGenerate
		}
	default:
		if set.Auth != actions.AuthNone {
			return set, f, fmt.Errorf("choose where the secret comes from: generate one, enter a value, or use an existing Secret")
		}
	}
	set.Value = v.Get("secretValue")
	numbers := []struct {
		label, text string
		dst         **int32
	}{
		{"Timeout", f.Timeout, &set.TimeoutSeconds},
		{"Retries", f.MaxRetries, &set.RetryPolicy.MaxRetries},
		{"First retry after", f.InitialDelay, &set.RetryPolicy.InitialDelaySeconds},
		{"Backoff factor", f.Backoff, &set.RetryPolicy.BackoffFactor},
		{"Longest wait", f.MaxDelay, &set.RetryPolicy.MaxDelaySeconds},
		{"Jitter", f.Jitter, &set.RetryPolicy.JitterPercent},
	}
	for _, n := range numbers {
		if n.text == "" {
			continue
		}
		i, err := strconv.ParseInt(n.text, 10, 32)
		if err != nil {
			return set, f, fmt.Errorf("%s: enter a whole number, or leave it empty for the default", n.label)
		}
		v := int32(i)
		*n.dst = &v
	}
	return set, f, nil
}

func (s *Server) createEndpoint(w http.ResponseWriter, r *http.Request, ss *session) {
	ns := r.PathValue("ns")
	set, f, err := parseForm(r, false)
	f.Action, f.Cancel = nsPath(ns, "endpoints"), nsPath(ns, "endpoints")
	if err == nil {
		ctx, cancel := s.ctx(r)
		defer cancel()
		var res *actions.SaveResult
		if res, err = s.opts.Actions.CreateEndpoint(ctx, ns, set); err == nil {
			s.saved(w, r, ss, res, "created")
			return
		}
	}
	f.Error = actions.Sentence(err)
	s.render(w, r, ss, http.StatusUnprocessableEntity, "endpoint_form", &Page{Title: "Add endpoint", Nav: "endpoints", Data: s.newForm(r, f)})
}

func (s *Server) updateEndpoint(w http.ResponseWriter, r *http.Request, ss *session) {
	ns, name := r.PathValue("ns"), r.PathValue("name")
	set, f, err := parseForm(r, true)
	f.Name = name
	f.Action, f.Cancel = nsPath(ns, "endpoints", name, "edit"), nsPath(ns, "endpoints", name)
	if err == nil {
		ctx, cancel := s.ctx(r)
		defer cancel()
		var res *actions.SaveResult
		generation, _ := strconv.ParseInt(f.Generation, 10, 64)
		if res, err = s.opts.Actions.UpdateEndpoint(ctx, ns, name, generation, set); err == nil {
			s.saved(w, r, ss, res, "saved")
			return
		}
	}
	f.Error = actions.Sentence(err)
	s.render(w, r, ss, http.StatusUnprocessableEntity, "endpoint_form", &Page{Title: "Edit " + name, Nav: "endpoints", Data: s.newForm(r, f)})
}

// saved sends the browser to the endpoint's page, with the generated secret shown once.
func (s *Server) saved(w http.ResponseWriter, r *http.Request, ss *session, res *actions.SaveResult, verb string) {
	ep := res.Endpoint
	f := Flash{Kind: "success", Text: fmt.Sprintf("Endpoint %s %s.", ep.Name, verb)}
	if res.SecretCreated != "" {
		f.Text += " Its secret is in the Secret " + res.SecretCreated + ", owned by the endpoint."
	}
	if res.Generated != "" {
		f.Secret = res.Generated
		f.Text += " Copy the secret below into your receiver now: the console never shows it again."
	}
	s.flash(w, r, ss, nsPath(ep.Namespace, "endpoints", ep.Name), f)
}
