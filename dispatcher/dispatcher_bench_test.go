package dispatcher

import (
	"encoding/json"
	"testing"
	"time"
)

// benchPayload is an llm.completed event of about 1 KB, most of it extraction results.
func benchPayload() Payload {
	return Payload{
		EventID: "evt-6f1c2b4e", EventType: "llm.completed", Timestamp: 1640995200, OrganizationID: "org-1",
		Document: Document{
			DocumentID: "doc-123", DocumentName: "invoice-2026-00042.pdf", TagIDs: []string{"invoices", "2026", "acme"},
			Metadata: json.RawMessage(`{"source":"email","mailbox":"ap@example.com","pages":3}`),
		},
		Data: json.RawMessage(`{"invoice_number":"INV-2026-00042","currency":"EUR","invoice_total":"1250.00",` +
			`"line_items":[{"description":"Consulting","quantity":8,"unit_price":"125.00"},` +
			`{"description":"Travel","quantity":1,"unit_price":"250.00"}],` +
			`"vendor":{"name":"ACME Consulting GmbH","vat_id":"DE123456789","iban":"DE89370400440532013000"}}`),
	}
}

// BenchmarkBodyAndSign is the per-attempt wire work: serialise the payload once, sign it.
func BenchmarkBodyAndSign(b *testing.B) {
	p := benchPayload()
	key := []byte("whsec-benchmark-signing-key")
	ts := time.Now().Unix()
	b.ReportAllocs()
	for b.Loop() {
		body, err := p.Body()
		if err != nil {
			b.Fatal(err)
		}
		if Sign(key, ts, body) == "" {
			b.Fatal("empty signature")
		}
	}
}

// BenchmarkBody is the serialisation alone.
func BenchmarkBody(b *testing.B) {
	p := benchPayload()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := p.Body(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDelay is the backoff function at the largest attempt number the API allows.
func BenchmarkDelay(b *testing.B) {
	p := Policy{MaxRetries: 20, InitialDelay: 30 * time.Second, Factor: 2, MaxDelay: 24 * time.Hour, JitterPercent: 20}
	b.ReportAllocs()
	var sum time.Duration
	for b.Loop() {
		sum += p.Delay(21, 0, 0.5)
	}
	if sum <= 0 {
		b.Fatal("no delay")
	}
}
