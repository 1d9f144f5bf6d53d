package intake

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
)

// An llm.completed event with about 2 KB of extraction results, typical of the pipeline.
var benchEvent = []byte(fmt.Sprintf(`{"event_id": "evt-0192f0c4-7d2b-7a3e-9c41-5b7f0e2d1a68", "event_type": "llm.completed",
 "timestamp": 1764345600, "organization_id": "org-6f1d2c", "document": {"document_id": "doc-123",
 "document_name": "invoice-2026-11.pdf", "tag_ids": ["invoices", "q4"], "metadata": {"pages": 3, "source": "email"}},
 "data": {"fields": [%s]}}`, strings.TrimSuffix(strings.Repeat(`{"name": "line_item", "value": "Consulting, 12h at 95.00 EUR", "confidence": 0.97},`, 24), ",")))

// BenchmarkDecodeEvent is the intake's per-request CPU work before the API writes: decoding
// with unknown-field checks, validating every bound, and building the delivery's event.
func BenchmarkDecodeEvent(b *testing.B) {
	b.SetBytes(int64(len(benchEvent)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := decodeEvent(bytes.NewReader(benchEvent), 1764345600, func() string { return "x" }); err != nil {
			b.Fatal(err)
		}
	}
}

func TestBenchEventIsValid(t *testing.T) {
	ev, err := decodeEvent(bytes.NewReader(benchEvent), 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if ev.Data == nil || len(ev.Data.Raw) < 2000 || ev.Document.Metadata == nil || ev.ID != "evt-0192f0c4-7d2b-7a3e-9c41-5b7f0e2d1a68" {
		t.Fatalf("decoded event lost fields: %+v", ev)
	}
}
