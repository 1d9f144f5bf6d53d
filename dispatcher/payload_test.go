package dispatcher

import (
	"encoding/json"
	"testing"
)

// The body has the documented shape, with [] and {} for absent tag_ids and metadata, and data
// passed through only when present.
func TestPayloadBody(t *testing.T) {
	cases := []struct {
		name string
		p    Payload
		want string
	}{
		{"minimal", Payload{EventID: "e1", EventType: "document.uploaded", Timestamp: 1640995200, OrganizationID: "org"},
			`{"event_id":"e1","event_type":"document.uploaded","timestamp":1640995200,"organization_id":"org","document":{"document_id":"","document_name":"","tag_ids":[],"metadata":{}}}`},
		{"full", Payload{EventID: "e2", EventType: "llm.completed", Timestamp: 1, OrganizationID: "o",
			Document: Document{DocumentID: "d", DocumentName: "a<b>&.pdf", TagIDs: []string{"t1"}, Metadata: json.RawMessage(`{ "k" : "v" }`)},
			Data:     json.RawMessage(`{"total": 12.5}`)},
			`{"event_id":"e2","event_type":"llm.completed","timestamp":1,"organization_id":"o","document":{"document_id":"d","document_name":"a<b>&.pdf","tag_ids":["t1"],"metadata":{"k":"v"}},"data":{"total":12.5}}`},
		{"null metadata and data", Payload{EventID: "e3", EventType: "llm.error", Document: Document{Metadata: json.RawMessage(`null`)}, Data: json.RawMessage(`null`)},
			`{"event_id":"e3","event_type":"llm.error","timestamp":0,"organization_id":"","document":{"document_id":"","document_name":"","tag_ids":[],"metadata":{}}}`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.p.Body()
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tc.want {
				t.Fatalf("body\n got %s\nwant %s", got, tc.want)
			}
		})
	}
}

func TestPayloadBodyRefusesNonObjects(t *testing.T) {
	for _, p := range []Payload{
		{Document: Document{Metadata: json.RawMessage(`[1,2]`)}},
		{Data: json.RawMessage(`"text"`)},
		{Data: json.RawMessage(`{"unterminated":`)},
	} {
		if _, err := p.Body(); err == nil {
			t.Errorf("Body() of %+v: want an error", p)
		}
	}
}
