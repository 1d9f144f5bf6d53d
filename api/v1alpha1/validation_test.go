package v1alpha1_test

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
	"github.com/docrouter/webhook-operator/internal/testenv"
)

var env *testenv.Env

func TestMain(m *testing.M) { os.Exit(testenv.Run(m, &env)) }

func validEndpoint(ns string) *webhooksv1alpha1.WebhookEndpoint {
	return &webhooksv1alpha1.WebhookEndpoint{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "ep"},
		Spec: webhooksv1alpha1.WebhookEndpointSpec{
			URL:              "https://hooks.example.com/docrouter",
			EventTypes:       []string{"document.uploaded", "llm.*"},
			SigningSecretRef: &webhooksv1alpha1.SecretKeyRef{Name: "s", Key: "k"},
		},
	}
}

// The API server refuses bad endpoints at `kubectl apply` with a sentence that says what to fix.
func TestEndpointValidation(t *testing.T) {
	ns := env.Namespace(t)
	cases := []struct {
		name   string
		mutate func(*webhooksv1alpha1.WebhookEndpoint)
		want   string // "" means accepted
	}{
		{"valid", func(*webhooksv1alpha1.WebhookEndpoint) {}, ""},
		{"relative URL", func(e *webhooksv1alpha1.WebhookEndpoint) { e.Spec.URL = "/hooks" },
			"spec.url must be an absolute http(s) URL with a host"},
		{"not a URL", func(e *webhooksv1alpha1.WebhookEndpoint) { e.Spec.URL = "hooks dot example" },
			"spec.url must be an absolute http(s) URL with a host"},
		{"ftp scheme", func(e *webhooksv1alpha1.WebhookEndpoint) { e.Spec.URL = "ftp://hooks.example.com/x" },
			"spec.url must be an absolute http(s) URL with a host"},
		{"plain http without opt-in", func(e *webhooksv1alpha1.WebhookEndpoint) { e.Spec.URL = "http://hooks.example.com/x" },
			"use an https:// URL, or set spec.allowInsecureHTTP: true"},
		{"plain http with opt-in", func(e *webhooksv1alpha1.WebhookEndpoint) {
			e.Spec.URL, e.Spec.AllowInsecureHTTP = "http://receiver.default.svc:8080/x", true
		}, ""},
		{"credentials in URL", func(e *webhooksv1alpha1.WebhookEndpoint) { e.Spec.URL = "https://user:pw@hooks.example.com/x" },
			"spec.url must not contain credentials"},
		{"unknown event type", func(e *webhooksv1alpha1.WebhookEndpoint) { e.Spec.EventTypes = []string{"document.deleted"} },
			"spec.eventTypes: each entry must be one of document.uploaded, llm.completed"},
		{"no event types", func(e *webhooksv1alpha1.WebhookEndpoint) { e.Spec.EventTypes = nil }, "spec.eventTypes"},
		{"reserved auth header", func(e *webhooksv1alpha1.WebhookEndpoint) {
			e.Spec.AuthHeader = &webhooksv1alpha1.AuthHeader{Name: "X-DocRouter-Signature", SecretKeyRef: webhooksv1alpha1.SecretKeyRef{Name: "s", Key: "k"}}
		}, "spec.authHeader.name must not be a header the operator sets itself"},
		{"auth header Host", func(e *webhooksv1alpha1.WebhookEndpoint) {
			e.Spec.AuthHeader = &webhooksv1alpha1.AuthHeader{Name: "host", SecretKeyRef: webhooksv1alpha1.SecretKeyRef{Name: "s", Key: "k"}}
		}, "spec.authHeader.name must not be a header the operator sets itself"},
		{"timeout too long", func(e *webhooksv1alpha1.WebhookEndpoint) { e.Spec.TimeoutSeconds = ptr.To[int32](600) },
			"spec.timeoutSeconds"},
		{"initial delay above cap", func(e *webhooksv1alpha1.WebhookEndpoint) {
			e.Spec.RetryPolicy = &webhooksv1alpha1.RetryPolicy{InitialDelaySeconds: ptr.To[int32](600), MaxDelaySeconds: ptr.To[int32](60)}
		}, "initialDelaySeconds must not exceed maxDelaySeconds"},
		{"maxInFlight of 0", func(e *webhooksv1alpha1.WebhookEndpoint) { e.Spec.MaxInFlight = ptr.To[int32](0) },
			"spec.maxInFlight: Invalid value: 0: spec.maxInFlight in body should be greater than or equal to 1"},
		{"maxInFlight above the operator's total", func(e *webhooksv1alpha1.WebhookEndpoint) { e.Spec.MaxInFlight = ptr.To[int32](5000) },
			"spec.maxInFlight in body should be less than or equal to 1024"},
		{"maxInFlight and a rate limit", func(e *webhooksv1alpha1.WebhookEndpoint) {
			e.Spec.MaxInFlight = ptr.To[int32](4)
			e.Spec.RateLimit = &webhooksv1alpha1.RateLimit{Requests: 100, PeriodSeconds: ptr.To[int32](60)}
		}, ""},
		{"rate limit without requests", func(e *webhooksv1alpha1.WebhookEndpoint) { e.Spec.RateLimit = &webhooksv1alpha1.RateLimit{} },
			"spec.rateLimit.requests in body should be greater than or equal to 1"},
		{"rate limit period of a week", func(e *webhooksv1alpha1.WebhookEndpoint) {
			e.Spec.RateLimit = &webhooksv1alpha1.RateLimit{Requests: 1, PeriodSeconds: ptr.To[int32](7 * 86400)}
		}, "spec.rateLimit.periodSeconds in body should be less than or equal to 86400"},
		{"filter", func(e *webhooksv1alpha1.WebhookEndpoint) {
			e.Spec.Filter = `event.organization_id == "org-1" && "invoices" in event.document.tag_ids`
		}, ""},
		{"blank filter", func(e *webhooksv1alpha1.WebhookEndpoint) { e.Spec.Filter = " \n\t " },
			"spec.filter is blank: remove it to receive every event of spec.eventTypes"},
		{"filter longer than its bound", func(e *webhooksv1alpha1.WebhookEndpoint) {
			e.Spec.Filter = strings.Repeat("true && ", webhooksv1alpha1.MaxFilterLength/8) + "true"
		}, "spec.filter: Too long: may not be more than 4096"},
		{"name too long for a label", func(e *webhooksv1alpha1.WebhookEndpoint) { e.Name = strings.Repeat("a", 64) },
			"must be at most 63 characters"},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ep := validEndpoint(ns)
			ep.Name = ep.Name + "-" + string(rune('a'+i))
			tc.mutate(ep)
			err := env.Client.Create(context.Background(), ep)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("want accepted, got %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("want rejection containing %q, got %v", tc.want, err)
			}
		})
	}
}

// The API server refuses the combinations that make no sense, with a sentence that says why.
func TestSigningFieldsValidation(t *testing.T) {
	ns := env.Namespace(t)
	expires := metav1.NewTime(time.Now().Add(time.Hour))
	tests := []struct {
		name    string
		mutate  func(*webhooksv1alpha1.WebhookEndpoint)
		wantErr string
	}{
		{"previous ref without expiry", func(ep *webhooksv1alpha1.WebhookEndpoint) {
			ep.Spec.PreviousSigningSecretRef = &webhooksv1alpha1.SecretKeyRef{Name: "old", Key: "key"}
		}, "previousSigningSecretRef and spec.previousSigningSecretExpiresAt go together"},
		{"expiry without previous ref", func(ep *webhooksv1alpha1.WebhookEndpoint) {
			ep.Spec.PreviousSigningSecretExpiresAt = &expires
		}, "previousSigningSecretRef and spec.previousSigningSecretExpiresAt go together"},
		{"previous ref without a current one", func(ep *webhooksv1alpha1.WebhookEndpoint) {
			ep.Spec.SigningSecretRef = nil
			ep.Spec.PreviousSigningSecretRef = &webhooksv1alpha1.SecretKeyRef{Name: "old", Key: "key"}
			ep.Spec.PreviousSigningSecretExpiresAt = &expires
		}, "previousSigningSecretRef needs spec.signingSecretRef"},
		{"StandardWebhooks without a secret", func(ep *webhooksv1alpha1.WebhookEndpoint) {
			ep.Spec.SigningSecretRef = nil
			ep.Spec.SignatureScheme = webhooksv1alpha1.SignatureSchemeStandardWebhooks
		}, "StandardWebhooks needs spec.signingSecretRef"},
		{"unknown scheme", func(ep *webhooksv1alpha1.WebhookEndpoint) {
			ep.Spec.SignatureScheme = "GitHub"
		}, `supported values: "DocRouter", "StandardWebhooks"`},
		{"a complete rotation", func(ep *webhooksv1alpha1.WebhookEndpoint) {
			ep.Spec.SignatureScheme = webhooksv1alpha1.SignatureSchemeStandardWebhooks
			ep.Spec.PreviousSigningSecretRef = &webhooksv1alpha1.SecretKeyRef{Name: "old", Key: "key"}
			ep.Spec.PreviousSigningSecretExpiresAt = &expires
		}, ""},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ep := validEndpoint(ns)
			ep.Name = "signing-" + string(rune('a'+i))
			tt.mutate(ep)
			err := env.Client.Create(context.Background(), ep)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("a valid endpoint was refused: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error = %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}

// A delivery is a record: its spec cannot change, and its event type must be a product type.
func TestDeliveryValidation(t *testing.T) {
	ns := env.Namespace(t)
	ctx := context.Background()
	event := webhooksv1alpha1.Event{ID: "evt-1", Type: "document.uploaded", Timestamp: 1640995200}

	bad := webhooksv1alpha1.NewDelivery(ns, "ep", webhooksv1alpha1.Event{ID: "evt-2", Type: "document.deleted", Timestamp: 1})
	if err := env.Client.Create(ctx, bad); err == nil || !strings.Contains(err.Error(), "spec.event.type must be one of") {
		t.Fatalf("unknown event type: want a clear rejection, got %v", err)
	}
	badID := webhooksv1alpha1.NewDelivery(ns, "ep", webhooksv1alpha1.Event{ID: "bad id with spaces", Type: "document.uploaded", Timestamp: 1})
	if err := env.Client.Create(ctx, badID); err == nil || !strings.Contains(err.Error(), "spec.event.id") {
		t.Fatalf("bad event id: want a rejection naming spec.event.id, got %v", err)
	}

	d := webhooksv1alpha1.NewDelivery(ns, "ep", event)
	if err := env.Client.Create(ctx, d); err != nil {
		t.Fatal(err)
	}
	patch := client.MergeFrom(d.DeepCopy())
	d.Spec.Event.Document.DocumentName = "changed.pdf"
	err := env.Client.Patch(ctx, d, patch)
	if err == nil || !strings.Contains(err.Error(), "spec of a WebhookDelivery is immutable") {
		t.Fatalf("changing the spec: want the immutability message, got %v", err)
	}
}
