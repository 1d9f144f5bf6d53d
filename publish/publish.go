// Package publish is the Go client of the operator's event intake,
// POST /v1/namespaces/{namespace}/events, for the applications that produce events.
//
//	c := &publish.Client{URL: "https://webhook-intake.docrouter-system.svc:8090", TokenFile: "/var/run/secrets/tokens/intake"}
//	acc, err := c.Publish(ctx, "tenant-a", publish.Event{EventID: "doc-123-uploaded", EventType: "document.uploaded", ...})
//
// It holds the wire types that the intake itself decodes and answers, and imports nothing of
// controller-runtime, so publishers pull in little.
package publish

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"

	"github.com/docrouter/webhook-operator/dispatcher"
)

// MaxBodyBytes is the largest event body the intake accepts (256 KiB); a larger one is refused
// with 413 and nothing is created.
const MaxBodyBytes = 256 << 10

// Event is the body of a publish request: the product's webhook payload, with event_id and
// timestamp optional (the intake generates an id and uses the current time when absent).
type Event struct {
	// EventID identifies the event: publishing the same id again creates no new deliveries.
	// 1 to 128 characters of letters, digits, '.', ':' and '-', starting with a letter or
	// digit (^[A-Za-z0-9][A-Za-z0-9._:-]*$). Generated (a UUID) when empty.
	EventID string `json:"event_id,omitempty"`
	// EventType is one of document.uploaded, llm.completed, llm.error, document.error, webhook.test.
	EventType string `json:"event_type"`
	// Timestamp is when the event happened, in Unix seconds; the intake's clock when nil.
	Timestamp *int64 `json:"timestamp,omitempty"`
	// OrganizationID is the organization the event belongs to (at most 256 characters).
	OrganizationID string `json:"organization_id,omitempty"`
	// Document is the document the event is about.
	Document dispatcher.Document `json:"document"`
	// Data is a free-form JSON object passed through to receivers, such as extraction results.
	Data json.RawMessage `json:"data,omitempty"`
}

// Accepted is the intake's 202 answer.
type Accepted struct {
	// EventID is the event's id, the one given or the one generated.
	EventID string `json:"event_id"`
	// Deliveries are the deliveries of the event, one per subscribed endpoint.
	Deliveries []Delivery `json:"deliveries"`
	// Skipped are the endpoints that subscribe to the event's type but get no delivery of it:
	// their spec.filter did not select it, or cannot be evaluated.
	Skipped []Skipped `json:"skipped,omitempty"`
	// Message explains an empty Deliveries list.
	Message string `json:"message,omitempty"`
}

// Skipped is an endpoint that subscribes to the event's type and gets no delivery of it.
type Skipped struct {
	// Endpoint is the WebhookEndpoint.
	Endpoint string `json:"endpoint"`
	// Reason is SkippedNotMatched, SkippedInvalidFilter or SkippedFilterFailed.
	Reason string `json:"reason"`
	// Message says why, for the last two reasons.
	Message string `json:"message,omitempty"`
}

// Reasons of Skipped.
const (
	// SkippedNotMatched: the endpoint's spec.filter is false for the event.
	SkippedNotMatched = "FilterNotMatched"
	// SkippedInvalidFilter: the endpoint's spec.filter does not compile, so nothing is delivered
	// to it (the endpoint is Ready=False, reason InvalidFilter) until it is fixed. Publishing the
	// same event_id again once it is fixed creates the delivery.
	SkippedInvalidFilter = "InvalidFilter"
	// SkippedFilterFailed: the endpoint's spec.filter failed on this event (such as a key of
	// data that the event lacks, used without has()).
	SkippedFilterFailed = "FilterFailed"
)

// Delivery is one WebhookDelivery of an accepted event.
type Delivery struct {
	// Name of the WebhookDelivery object (kubectl get webhookdelivery NAME).
	Name string `json:"name"`
	// Endpoint is the WebhookEndpoint it is delivered to.
	Endpoint string `json:"endpoint"`
	// Created is false when the delivery already existed: the event id was published before.
	Created bool `json:"created"`
	// Queued is true when the delivery waits in the operator's backlog (its history store)
	// because the endpoint's deliveries in etcd are at their limit: it is accepted, kept
	// durably, and becomes a WebhookDelivery, in publish order, when there is room.
	Queued bool `json:"queued,omitempty"`
}

// ErrorBody is the intake's answer to a request it refuses or cannot complete.
type ErrorBody struct {
	// Error is a sentence that says what is wrong and what to fix.
	Error string `json:"error"`
	// EventID is set when the event's deliveries may be partly created: publish again with
	// this id to complete them without duplicates.
	EventID string `json:"event_id,omitempty"`
}

// Error is a refusal by the intake (any status other than 202).
type Error struct {
	StatusCode int
	// Message is the intake's error sentence.
	Message string
	// EventID is the id to publish again with, when the intake gave one.
	EventID string
}

func (e *Error) Error() string {
	return fmt.Sprintf("intake answered %d %s: %s", e.StatusCode, http.StatusText(e.StatusCode), e.Message)
}

// Client publishes events to one intake.
type Client struct {
	// URL is the intake's base URL, such as http://127.0.0.1:8090.
	URL string
	// Token is the bearer token (a ServiceAccount token). Empty sends none.
	Token string
	// TokenFile, when set, is read on every request instead of Token, so that a projected
	// ServiceAccount token that the kubelet rotates is always current.
	TokenFile string
	// HTTPClient is used for requests; http.DefaultClient when nil.
	HTTPClient *http.Client
}

// Publish sends ev to namespace and returns the intake's 202 answer, or an *Error.
func (c *Client) Publish(ctx context.Context, namespace string, ev Event) (*Accepted, error) {
	body, err := json.Marshal(ev)
	if err != nil {
		return nil, err
	}
	return c.PublishJSON(ctx, namespace, body)
}

// PublishJSON sends an event already encoded as JSON (as read from a file) to namespace.
func (c *Client) PublishJSON(ctx context.Context, namespace string, body []byte) (*Accepted, error) {
	if namespace == "" {
		return nil, errors.New("namespace is empty")
	}
	base := strings.TrimSuffix(c.URL, "/")
	if base == "" {
		return nil, errors.New("the intake URL is empty")
	}
	target := base + "/v1/namespaces/" + url.PathEscape(namespace) + "/events"
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, target, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	token, err := c.token()
	if err != nil {
		return nil, err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	hc := c.HTTPClient
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("reading the intake's answer: %w", err)
	}
	if resp.StatusCode != http.StatusAccepted {
		var eb ErrorBody
		if json.Unmarshal(answer, &eb) != nil || eb.Error == "" {
			eb.Error = snippet(answer)
		}
		return nil, &Error{StatusCode: resp.StatusCode, Message: eb.Error, EventID: eb.EventID}
	}
	var acc Accepted
	if err := json.Unmarshal(answer, &acc); err != nil {
		return nil, fmt.Errorf("the intake's 202 answer is not the expected JSON: %w", err)
	}
	return &acc, nil
}

func (c *Client) token() (string, error) {
	if c.TokenFile == "" {
		return c.Token, nil
	}
	b, err := os.ReadFile(c.TokenFile)
	if err != nil {
		return "", fmt.Errorf("reading the token file: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// snippet is a short, printable prefix of a non-JSON answer (from a proxy, say).
func snippet(b []byte) string {
	s := strings.TrimSpace(string(b))
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	if s == "" {
		return "(empty answer)"
	}
	return s
}
