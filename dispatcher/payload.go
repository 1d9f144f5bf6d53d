package dispatcher

import (
	"bytes"
	"encoding/json"
	"fmt"
)

// Payload is the JSON body of every webhook, exactly as the product documentation describes it:
//
//	{"event_id": "...", "event_type": "document.uploaded", "timestamp": 1640995200,
//	 "organization_id": "...", "document": {"document_id": "...", "document_name": "...",
//	 "tag_ids": [], "metadata": {}}}
//
// Data, the free-form object of an event such as the extraction results of llm.completed, is
// added as "data" when present.
type Payload struct {
	EventID        string          `json:"event_id"`
	EventType      string          `json:"event_type"`
	Timestamp      int64           `json:"timestamp"`
	OrganizationID string          `json:"organization_id"`
	Document       Document        `json:"document"`
	Data           json.RawMessage `json:"data,omitempty"`
}

// Document is the payload's document object.
type Document struct {
	DocumentID   string          `json:"document_id"`
	DocumentName string          `json:"document_name"`
	TagIDs       []string        `json:"tag_ids"`
	Metadata     json.RawMessage `json:"metadata"`
}

var emptyObject = json.RawMessage(`{}`)

// Body serialises the payload once; the same bytes are signed and sent. Absent tag_ids and
// metadata are written as [] and {} so that receivers always see the documented shape, and
// non-object metadata or data are refused rather than sent in a shape receivers do not expect.
func (p Payload) Body() ([]byte, error) {
	if p.Document.TagIDs == nil {
		p.Document.TagIDs = []string{}
	}
	if len(p.Document.Metadata) == 0 || bytes.Equal(p.Document.Metadata, []byte("null")) {
		p.Document.Metadata = emptyObject
	} else if !isJSONObject(p.Document.Metadata) {
		return nil, fmt.Errorf("document.metadata must be a JSON object")
	}
	if bytes.Equal(p.Data, []byte("null")) {
		p.Data = nil
	} else if len(p.Data) > 0 && !isJSONObject(p.Data) {
		return nil, fmt.Errorf("data must be a JSON object")
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(p); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

func isJSONObject(raw json.RawMessage) bool {
	raw = bytes.TrimLeft(raw, " \t\r\n")
	return len(raw) > 0 && raw[0] == '{' && json.Valid(raw)
}
