package dispatcher

// Fuzz targets. `go test` runs each target's seeds (f.Add and testdata/fuzz/FuzzX/) as
// regression tests; `go test -fuzz=FuzzX -fuzztime=30s ./dispatcher/` explores further.

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"
)

// FuzzPayloadBody: whatever the event holds, Body either refuses it (non-object metadata or
// data) or returns valid JSON with exactly the documented keys, the same bytes every time.
func FuzzPayloadBody(f *testing.F) {
	f.Add("evt-1", "llm.completed", int64(1640995200), "org-1", "doc-123", "invoice.pdf", "tag1", []byte(`{"source":"email"}`), []byte(`{"total":"1250.00"}`))
	f.Add("", "", int64(0), "", "", "", "", []byte(nil), []byte(nil))
	f.Add("<\u2028>\"", "x", int64(-1), "\xff", "a\x00b", "\\", "", []byte(`null`), []byte(`null`))
	f.Add("e", "t", int64(1), "o", "d", "n", "t", []byte(`[1]`), []byte(`"s"`))
	f.Add("e", "t", int64(1), "o", "d", "n", "t", []byte(` {"a":{"b":[1,2,{}]}} `), []byte(`{"a":1`))
	f.Fuzz(func(t *testing.T, id, typ string, ts int64, org, docID, docName, tag string, metadata, data []byte) {
		p := Payload{EventID: id, EventType: typ, Timestamp: ts, OrganizationID: org,
			Document: Document{DocumentID: docID, DocumentName: docName, Metadata: metadata}, Data: data}
		if tag != "" {
			p.Document.TagIDs = []string{tag}
		}
		body, err := p.Body()
		objectOrAbsent := func(raw []byte) bool {
			return len(raw) == 0 || bytes.Equal(raw, []byte("null")) || isJSONObject(raw)
		}
		if err != nil {
			if objectOrAbsent(metadata) && objectOrAbsent(data) {
				t.Fatalf("refused a valid event: %v", err)
			}
			return
		}
		if !objectOrAbsent(metadata) || !objectOrAbsent(data) {
			t.Fatalf("accepted non-object metadata %q or data %q", metadata, data)
		}
		if !json.Valid(body) {
			t.Fatalf("invalid JSON: %s", body)
		}
		again, _ := p.Body()
		if !bytes.Equal(body, again) {
			t.Fatalf("two serialisations differ")
		}
		var got map[string]json.RawMessage
		if err := json.Unmarshal(body, &got); err != nil {
			t.Fatal(err)
		}
		want := []string{"document", "event_id", "event_type", "organization_id", "timestamp"}
		if len(data) > 0 && !bytes.Equal(data, []byte("null")) {
			want = append(want, "data")
		}
		if len(got) != len(want) {
			t.Fatalf("keys %v, want %v", keysOf(got), want)
		}
		for _, k := range want {
			if _, ok := got[k]; !ok {
				t.Fatalf("key %q missing: %s", k, body)
			}
		}
		var doc struct {
			DocumentID   *string         `json:"document_id"`
			DocumentName *string         `json:"document_name"`
			TagIDs       []string        `json:"tag_ids"`
			Metadata     json.RawMessage `json:"metadata"`
		}
		if err := json.Unmarshal(got["document"], &doc); err != nil || doc.DocumentID == nil || doc.DocumentName == nil || doc.TagIDs == nil || !isJSONObject(doc.Metadata) {
			t.Fatalf("document has not the documented shape: %s (%v)", got["document"], err)
		}
		var gotTS int64
		if err := json.Unmarshal(got["timestamp"], &gotTS); err != nil || gotTS != ts {
			t.Fatalf("timestamp %s, want %d", got["timestamp"], ts)
		}
		var gotID string
		_ = json.Unmarshal(got["event_id"], &gotID)
		if utf8.ValidString(id) && gotID != id {
			t.Fatalf("event_id %q, want %q", gotID, id)
		}
	})
}

func keysOf(m map[string]json.RawMessage) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// FuzzSignVerify: a signature made by Sign verifies with the same key, body and timestamp, and
// with nothing else; Verify never panics on whatever headers a request carries.
func FuzzSignVerify(f *testing.F) {
	f.Add([]byte("whsec-key"), []byte(`{"event_id":"e"}`), int64(1640995200), "sha256=00", "1640995200")
	f.Add([]byte{}, []byte{}, int64(0), "", "")
	f.Add([]byte("k"), []byte("b"), int64(-62135596800), "sha256=", " 12 ")
	f.Add([]byte("k"), []byte("b"), int64(9223372036854775807), "SHA256=ZZ", "9223372036854775807")
	f.Fuzz(func(t *testing.T, key, body []byte, ts int64, sig, tsHeader string) {
		now := time.Unix(ts, 0)
		good := Sign(key, ts, body)
		if !strings.HasPrefix(good, "sha256=") || len(good) != len("sha256=")+64 {
			t.Fatalf("malformed signature %q", good)
		}
		if err := Verify(key, strconv.FormatInt(ts, 10), good, body, now, DefaultTolerance); err != nil {
			t.Fatalf("round trip failed: %v", err)
		}
		tampered := append(append([]byte(nil), body...), '!')
		if err := Verify(key, strconv.FormatInt(ts, 10), good, tampered, now, DefaultTolerance); !errors.Is(err, ErrSignatureInvalid) {
			t.Fatalf("a tampered body gave %v", err)
		}
		if err := Verify(append(append([]byte(nil), key...), 'x'), strconv.FormatInt(ts, 10), good, body, now, DefaultTolerance); !errors.Is(err, ErrSignatureInvalid) {
			t.Fatalf("another key gave %v", err)
		}
		// Arbitrary headers: no panic, and only the right signature passes.
		err := Verify(key, tsHeader, sig, body, now, DefaultTolerance)
		if err == nil {
			hts, _ := strconv.ParseInt(strings.TrimSpace(tsHeader), 10, 64)
			if strings.TrimSpace(sig) != Sign(key, hts, body) {
				t.Fatalf("accepted signature %q for timestamp %q", sig, tsHeader)
			}
		}
	})
}

// FuzzParseRetryAfter: any header value gives a wait between 0 and MaxRetryAfter, and
// delay-seconds are taken as they are.
func FuzzParseRetryAfter(f *testing.F) {
	now := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC).Unix()
	for _, v := range []string{"120", "0", "-5", " 30 ", "99999999999999999999", "Sat, 28 Nov 2026 12:01:30 GMT",
		"Sunday, 06-Nov-94 08:49:37 GMT", "Sun Nov  6 08:49:37 1994", "Fri, 31 Dec 9999 23:59:59 GMT", "1.5", "", "\x00"} {
		f.Add(v, now)
	}
	f.Fuzz(func(t *testing.T, v string, nowUnix int64) {
		d := ParseRetryAfter(v, time.Unix(nowUnix, 0))
		if d < 0 || d > MaxRetryAfter {
			t.Fatalf("ParseRetryAfter(%q) = %s, outside [0, %s]", v, d, MaxRetryAfter)
		}
		if n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64); err == nil && n > 0 && n <= int64(MaxRetryAfter/time.Second) && d != time.Duration(n)*time.Second {
			t.Fatalf("ParseRetryAfter(%q) = %s, want %ds", v, d, n)
		}
	})
}

// FuzzSanitize: what goes into status and logs from a receiver is printable, valid UTF-8, has
// no line breaks or control characters, fits the bound, and is stable.
func FuzzSanitize(f *testing.F) {
	f.Add("HTTP 500: <html>\r\n\tInternal Server Error</html>", 256)
	f.Add("\x1b[31mred\x1b[0m \u202eevil\u2028line", 16)
	f.Add("abcde \tf", 5)
	f.Add("\xff\xfe€€€", 4)
	f.Add("", 0)
	f.Fuzz(func(t *testing.T, s string, n int) {
		n = min(max(n, 0), 4096)
		out := sanitize(s, n)
		if len(out) > n {
			t.Fatalf("sanitize(%q, %d) = %q: %d bytes", s, n, out, len(out))
		}
		if !utf8.ValidString(out) {
			t.Fatalf("invalid UTF-8: %q", out)
		}
		for _, r := range out {
			if r != ' ' && (unicode.IsSpace(r) || !unicode.IsPrint(r)) {
				t.Fatalf("sanitize(%q) kept %q", s, r)
			}
		}
		if strings.HasPrefix(out, " ") || strings.HasSuffix(out, " ") || strings.Contains(out, "  ") {
			t.Fatalf("sanitize(%q) = %q: spaces not folded", s, out)
		}
		if again := sanitize(out, n); again != out {
			t.Fatalf("not stable: %q then %q", out, again)
		}
	})
}

// FuzzAddressPolicy: the default policy agrees with the standard library on what is loopback,
// link-local, multicast or unspecified, and an IPv4 address is judged the same whether it is
// dialled as itself, IPv4-mapped, NAT64 or 6to4.
func FuzzAddressPolicy(f *testing.F) {
	for _, a := range []string{"127.0.0.1", "169.254.169.254", "10.0.0.1", "8.8.8.8", "100.64.0.1", "::1", "fe80::1", "ff02::1", "fd00:ec2::254", "2002:7f00:1::", "64:ff9b::a9fe:a9fe"} {
		f.Add(netip.MustParseAddr(a).AsSlice())
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		ip, ok := netip.AddrFromSlice(raw)
		if !ok {
			return
		}
		var p AddressPolicy
		blocked := p.Check(ip) != nil
		if (ip.IsLoopback() || ip.IsLinkLocalUnicast() || ip.IsMulticast() || ip.IsUnspecified()) && !blocked {
			t.Fatalf("%s is allowed", ip)
		}
		if !ip.Is4() {
			return
		}
		b := ip.As4()
		for _, form := range []netip.Addr{
			netip.AddrFrom16([16]byte{10: 0xff, 11: 0xff, 12: b[0], 13: b[1], 14: b[2], 15: b[3]}),
			netip.AddrFrom16([16]byte{0: 0x00, 1: 0x64, 2: 0xff, 3: 0x9b, 12: b[0], 13: b[1], 14: b[2], 15: b[3]}),
			netip.AddrFrom16([16]byte{0: 0x20, 1: 0x02, 2: b[0], 3: b[1], 4: b[2], 5: b[3]}),
		} {
			if got := p.Check(form) != nil; got != blocked {
				t.Fatalf("%s blocked=%v but %s blocked=%v", ip, blocked, form, got)
			}
		}
	})
}
