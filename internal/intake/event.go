package intake

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"time"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"

	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
	"github.com/docrouter/webhook-operator/publish"
)

// MaxBodyBytes is the largest event body accepted (256 KiB): a larger one is answered 413 and
// creates nothing. A delivery object holds the event, and etcd refuses objects above 1.5 MiB.
const MaxBodyBytes = publish.MaxBodyBytes

// Bounds of the event's fields, the same as the WebhookDelivery CRD's, checked here so that a
// bad event is refused before any delivery is created rather than half-way through a fan-out.
const (
	maxEventIDLength      = 128
	maxOrganizationID     = 256
	maxDocumentID         = 256
	maxDocumentName       = 1024
	maxTagIDs             = 256
	maxTagIDLength        = 256
	allowedFieldsSentence = "the event takes event_type, event_id, timestamp, organization_id, " +
		"document {document_id, document_name, tag_ids, metadata} and data"
)

var eventIDPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:-]*$`)

// requestError is a refusal: an HTTP status and a sentence that says what to fix.
type requestError struct {
	status  int
	message string
	// cause is the API error behind a 5xx, for the operator's log (never sent to the caller).
	cause error
	// retryAfter, when set, is sent as Retry-After: when to publish again.
	retryAfter time.Duration
}

func (e *requestError) Error() string { return e.message }

func badRequest(format string, args ...any) *requestError {
	return &requestError{status: http.StatusBadRequest, message: fmt.Sprintf(format, args...)}
}

// decodeEvent reads one event from body (already limited to MaxBodyBytes by the caller) and
// checks it completely. now is the timestamp of an event without one and newID makes the id of
// an event without one.
func decodeEvent(body io.Reader, now int64, newID func() string) (webhooksv1alpha1.Event, *requestError) {
	var in publish.Event
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&in); err != nil {
		return webhooksv1alpha1.Event{}, decodeError(err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		var maxErr *http.MaxBytesError
		if errors.As(err, &maxErr) {
			return webhooksv1alpha1.Event{}, tooLarge()
		}
		return webhooksv1alpha1.Event{}, badRequest("the body must hold exactly one JSON object (the event), and it holds more")
	}
	if err := validate(&in); err != nil {
		return webhooksv1alpha1.Event{}, err
	}
	ev := webhooksv1alpha1.Event{
		ID:             in.EventID,
		Type:           in.EventType,
		Timestamp:      now,
		OrganizationID: in.OrganizationID,
		Document: webhooksv1alpha1.Document{
			DocumentID:   in.Document.DocumentID,
			DocumentName: in.Document.DocumentName,
			TagIDs:       in.Document.TagIDs,
			Metadata:     jsonObject(in.Document.Metadata),
		},
		Data: jsonObject(in.Data),
	}
	if in.Timestamp != nil {
		ev.Timestamp = *in.Timestamp
	}
	if ev.ID == "" {
		ev.ID = newID()
	}
	return ev, nil
}

func tooLarge() *requestError {
	return &requestError{status: http.StatusRequestEntityTooLarge,
		message: fmt.Sprintf("the body is larger than %d bytes (256 KiB): send large data by reference, such as a document id or URL", MaxBodyBytes)}
}

// decodeError turns a JSON decoding error into a sentence a publisher can act on.
func decodeError(err error) *requestError {
	var (
		maxErr    *http.MaxBytesError
		syntaxErr *json.SyntaxError
		typeErr   *json.UnmarshalTypeError
	)
	switch {
	case errors.As(err, &maxErr):
		return tooLarge()
	case errors.Is(err, io.EOF):
		return badRequest("the body is empty: send the event as a JSON object with at least event_type")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return badRequest("the body is not valid JSON: it ends before the event object is complete")
	case errors.As(err, &syntaxErr):
		return badRequest("the body is not valid JSON: %s (at byte %d)", syntaxErr.Error(), syntaxErr.Offset)
	case errors.As(err, &typeErr):
		if typeErr.Field == "" {
			return badRequest("the body must be a JSON object (the event), not a JSON %s", typeErr.Value)
		}
		return badRequest("%s must be %s, not a JSON %s", typeErr.Field, describeType(typeErr.Field), typeErr.Value)
	}
	if field, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
		return badRequest("unknown field %s: %s", field, allowedFieldsSentence)
	}
	return badRequest("the body is not a valid event: %v", err)
}

func describeType(field string) string {
	switch field {
	case "timestamp":
		return "a whole number of Unix seconds"
	case "document":
		return "a JSON object"
	case "document.tag_ids":
		return "an array of strings"
	default:
		return "a string"
	}
}

func validate(in *publish.Event) *requestError {
	switch {
	case in.EventType == "":
		return badRequest("event_type is required: one of %s", strings.Join(webhooksv1alpha1.EventTypes, ", "))
	case !slices.Contains(webhooksv1alpha1.EventTypes, in.EventType):
		return badRequest("event_type %q is not an event type: use one of %s", in.EventType, strings.Join(webhooksv1alpha1.EventTypes, ", "))
	case len(in.EventID) > maxEventIDLength:
		return badRequest("event_id is %d characters long: at most %d are allowed", len(in.EventID), maxEventIDLength)
	case in.EventID != "" && !eventIDPattern.MatchString(in.EventID):
		return badRequest("event_id %q has characters that are not allowed: use letters, digits, '.', ':' and '-', starting with a letter or digit", in.EventID)
	case in.Timestamp != nil && *in.Timestamp < 0:
		return badRequest("timestamp must be Unix seconds (0 or more), or left out for the time of publishing")
	case len(in.OrganizationID) > maxOrganizationID:
		return badRequest("organization_id is %d characters long: at most %d are allowed", len(in.OrganizationID), maxOrganizationID)
	case len(in.Document.DocumentID) > maxDocumentID:
		return badRequest("document.document_id is %d characters long: at most %d are allowed", len(in.Document.DocumentID), maxDocumentID)
	case len(in.Document.DocumentName) > maxDocumentName:
		return badRequest("document.document_name is %d characters long: at most %d are allowed", len(in.Document.DocumentName), maxDocumentName)
	case len(in.Document.TagIDs) > maxTagIDs:
		return badRequest("document.tag_ids has %d entries: at most %d are allowed", len(in.Document.TagIDs), maxTagIDs)
	case !objectOrNull(in.Document.Metadata):
		return badRequest("document.metadata must be a JSON object, such as {\"pages\": 3}")
	case !objectOrNull(in.Data):
		return badRequest("data must be a JSON object, such as {\"invoice_total\": 42.5}")
	}
	for i, tag := range in.Document.TagIDs {
		if len(tag) > maxTagIDLength {
			return badRequest("document.tag_ids[%d] is %d characters long: at most %d are allowed", i, len(tag), maxTagIDLength)
		}
	}
	return nil
}

// objectOrNull: absent, null or a JSON object (the decoder has checked that it is valid JSON).
func objectOrNull(raw json.RawMessage) bool {
	raw = bytes.TrimSpace(raw)
	return len(raw) == 0 || bytes.Equal(raw, []byte("null")) || raw[0] == '{'
}

// jsonObject is raw as the API's free-form JSON, or nil when absent or null.
func jsonObject(raw json.RawMessage) *apiextensionsv1.JSON {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		return nil
	}
	return &apiextensionsv1.JSON{Raw: raw} // RawMessage decoding already copied it
}
