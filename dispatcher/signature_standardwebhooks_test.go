package dispatcher_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"

	"github.com/docrouter/webhook-operator/dispatcher"
	"github.com/docrouter/webhook-operator/internal/testenv/testreceiver"
)

// newWhsec returns a fresh Standard Webhooks secret in the whsec_ form a user puts in a Secret,
// and the key bytes it decodes to.
func newWhsec(t *testing.T) (string, []byte) {
	t.Helper()
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		t.Fatal(err)
	}
	return "whsec_" + base64.StdEncoding.EncodeToString(key), key
}

// newCapturingServer is a receiver on loopback that checks nothing, records every request and
// answers 204.
func newCapturingServer(tb testing.TB) *testreceiver.Receiver {
	tb.Helper()
	return testreceiver.New(tb, nil, http.StatusNoContent)
}

// last is the latest request srv got.
func last(tb testing.TB, srv *testreceiver.Receiver) testreceiver.Request {
	tb.Helper()
	reqs := srv.Requests()
	if len(reqs) == 0 {
		tb.Fatal("the receiver got no request")
	}
	return reqs[len(reqs)-1]
}

// officialReceiver is a receiver as a customer would write it with the official Standard
// Webhooks library: 204 when webhook-signature verifies, 401 otherwise.
func officialReceiver(tb testing.TB, secret string) *testreceiver.Receiver {
	tb.Helper()
	if _, err := standardwebhooks.NewWebhook(secret); err != nil {
		tb.Fatal(err)
	}
	r := testreceiver.New(tb, []byte(secret), http.StatusNoContent)
	r.SetVerifier(func(secret []byte, header http.Header, body []byte) error {
		wh, err := standardwebhooks.NewWebhook(string(secret))
		if err != nil {
			return err
		}
		return wh.Verify(body, header)
	})
	return r
}

func signedRequest(url string, signing dispatcher.Signing) dispatcher.Request {
	return dispatcher.Request{
		URL:       url,
		Body:      []byte(`{"event_id":"evt-7f3a","event_type":"llm.completed","timestamp":1640995200}`),
		EventID:   "evt-7f3a",
		EventType: "llm.completed",
		Attempt:   1,
		Signing:   signing,
		Timeout:   5 * time.Second,
	}
}

func TestStandardWebhooksRequestsVerifyWithTheOfficialLibrary(t *testing.T) {
	secret, key := newWhsec(t)
	good := officialReceiver(t, secret)
	otherSecret, _ := newWhsec(t)
	wrong := officialReceiver(t, otherSecret)
	s := dispatcher.NewSender(dispatcher.SenderOptions{})
	signing := dispatcher.Signing{Scheme: dispatcher.SchemeStandardWebhooks, Keys: [][]byte{key}}

	if res := s.Send(context.Background(), signedRequest(good.URL, signing)); !res.Succeeded() {
		t.Fatalf("a receiver with the endpoint's secret rejected the request: %+v", res)
	}
	if res := s.Send(context.Background(), signedRequest(wrong.URL, signing)); res.StatusCode != http.StatusUnauthorized {
		t.Fatalf("a receiver with another secret answered %d, want 401: %+v", res.StatusCode, res)
	}
}

func TestStandardWebhooksHeaders(t *testing.T) {
	secret, key := newWhsec(t)
	srv := newCapturingServer(t)
	s := dispatcher.NewSender(dispatcher.SenderOptions{})
	signing := dispatcher.Signing{Scheme: dispatcher.SchemeStandardWebhooks, Keys: [][]byte{key}}

	var ids []string
	for attempt := int32(1); attempt <= 3; attempt++ {
		m := signedRequest(srv.URL, signing)
		m.Attempt = attempt
		// A user's header cannot forge or replace the operator's signature headers.
		m.Headers = http.Header{"Webhook-Signature": {"v1,forged"}, "webhook-id": {"forged"}}
		if res := s.Send(context.Background(), m); !res.Succeeded() {
			t.Fatalf("attempt %d: %+v", attempt, res)
		}
		req := last(t, srv)
		if got := req.Header.Values(dispatcher.HeaderWebhookSignature); len(got) != 1 || !strings.HasPrefix(got[0], "v1,") {
			t.Fatalf("webhook-signature = %q, want one v1,<base64> value", got)
		}
		if req.Header.Get(dispatcher.HeaderSignature) != "" {
			t.Errorf("a StandardWebhooks request also carries %s", dispatcher.HeaderSignature)
		}
		if req.Header.Get(dispatcher.HeaderWebhookTimestamp) != req.Header.Get(dispatcher.HeaderTimestamp) {
			t.Errorf("webhook-timestamp %q differs from %s %q", req.Header.Get(dispatcher.HeaderWebhookTimestamp),
				dispatcher.HeaderTimestamp, req.Header.Get(dispatcher.HeaderTimestamp))
		}
		wh, _ := standardwebhooks.NewWebhook(secret)
		if err := wh.Verify(req.Body, req.Header); err != nil {
			t.Fatalf("attempt %d does not verify: %v", attempt, err)
		}
		ids = append(ids, req.Header.Get(dispatcher.HeaderWebhookID))
	}
	for _, id := range ids {
		if id != "evt-7f3a" {
			t.Fatalf("webhook-id of the attempts = %q, want the event id evt-7f3a on every attempt", ids)
		}
	}
}

// A request captured by an eavesdropper and replayed 6 minutes later is refused, although its
// signature is genuine: the signed timestamp is outside the 5 minutes receivers accept.
func TestReplaySixMinutesLaterFailsVerification(t *testing.T) {
	secret, key := newWhsec(t)
	productKey := []byte("product-scheme-key")
	srv := newCapturingServer(t)
	// The request was sent (and signed) 6 minutes ago; the receiver checks it now.
	sixMinutesAgo := dispatcher.NewSender(dispatcher.SenderOptions{Now: func() time.Time { return time.Now().Add(-6 * time.Minute) }})
	fresh := dispatcher.NewSender(dispatcher.SenderOptions{})
	wh, _ := standardwebhooks.NewWebhook(secret)

	t.Run("StandardWebhooks", func(t *testing.T) {
		signing := dispatcher.Signing{Scheme: dispatcher.SchemeStandardWebhooks, Keys: [][]byte{key}}
		fresh.Send(context.Background(), signedRequest(srv.URL, signing))
		if req := last(t, srv); wh.Verify(req.Body, req.Header) != nil {
			t.Fatal("a fresh request does not verify")
		}
		sixMinutesAgo.Send(context.Background(), signedRequest(srv.URL, signing))
		replayed := last(t, srv)
		if err := wh.VerifyIgnoringTimestamp(replayed.Body, replayed.Header); err != nil {
			t.Fatalf("the captured request's signature itself should be genuine: %v", err)
		}
		if err := wh.Verify(replayed.Body, replayed.Header); !errors.Is(err, standardwebhooks.ErrMessageTooOld) {
			t.Fatalf("replayed 6 minutes later: Verify = %v, want %v", err, standardwebhooks.ErrMessageTooOld)
		}
	})
	t.Run("DocRouter", func(t *testing.T) {
		signing := dispatcher.Signing{Keys: [][]byte{productKey}}
		sixMinutesAgo.Send(context.Background(), signedRequest(srv.URL, signing))
		replayed := last(t, srv)
		ts, sig := replayed.Header.Get(dispatcher.HeaderTimestamp), replayed.Header.Get(dispatcher.HeaderSignature)
		if err := dispatcher.Verify(productKey, ts, sig, replayed.Body, time.Now().Add(-6*time.Minute), dispatcher.DefaultTolerance); err != nil {
			t.Fatalf("the captured request's signature itself should be genuine: %v", err)
		}
		if err := dispatcher.Verify(productKey, ts, sig, replayed.Body, time.Now(), dispatcher.DefaultTolerance); !errors.Is(err, dispatcher.ErrTimestampTooOld) {
			t.Fatalf("replayed 6 minutes later: Verify = %v, want %v", err, dispatcher.ErrTimestampTooOld)
		}
	})
}

func TestStandardWebhooksRotation(t *testing.T) {
	newSecret, newKey := newWhsec(t)
	oldSecret, oldKey := newWhsec(t)
	strangerSecret, _ := newWhsec(t)
	srv := newCapturingServer(t)
	s := dispatcher.NewSender(dispatcher.SenderOptions{})
	verify := func(secret string, req testreceiver.Request) error {
		wh, err := standardwebhooks.NewWebhook(secret)
		if err != nil {
			t.Fatal(err)
		}
		return wh.Verify(req.Body, req.Header)
	}

	// During the rotation both keys sign: receivers that know either accept the request.
	s.Send(context.Background(), signedRequest(srv.URL, dispatcher.Signing{Scheme: dispatcher.SchemeStandardWebhooks, Keys: [][]byte{newKey, oldKey}}))
	during := last(t, srv)
	if sigs := strings.Fields(during.Header.Get(dispatcher.HeaderWebhookSignature)); len(sigs) != 2 {
		t.Fatalf("webhook-signature during rotation = %q, want two space-separated v1 signatures", sigs)
	}
	if err := verify(newSecret, during); err != nil {
		t.Errorf("during rotation, a receiver with the new secret rejects: %v", err)
	}
	if err := verify(oldSecret, during); err != nil {
		t.Errorf("during rotation, a receiver with the old secret rejects: %v", err)
	}
	if err := verify(strangerSecret, during); !errors.Is(err, standardwebhooks.ErrNoMatchingSignature) {
		t.Errorf("during rotation, a receiver with an unrelated secret: %v, want %v", err, standardwebhooks.ErrNoMatchingSignature)
	}

	// After the cutoff only the new key signs.
	s.Send(context.Background(), signedRequest(srv.URL, dispatcher.Signing{Scheme: dispatcher.SchemeStandardWebhooks, Keys: [][]byte{newKey}}))
	after := last(t, srv)
	if err := verify(newSecret, after); err != nil {
		t.Errorf("after the cutoff, a receiver with the new secret rejects: %v", err)
	}
	if err := verify(oldSecret, after); !errors.Is(err, standardwebhooks.ErrNoMatchingSignature) {
		t.Errorf("after the cutoff, a receiver with the old secret: %v, want %v", err, standardwebhooks.ErrNoMatchingSignature)
	}
}

// Known answers computed independently with openssl:
//
//	printf '%s' "evt-1.1700000000.$body" | openssl dgst -sha256 -mac HMAC -macopt key:abcdefghijklmnopqrstuvwxyz012345 -binary | base64
func TestSignStandardWebhooksKnownAnswer(t *testing.T) {
	key, err := dispatcher.ParseStandardWebhooksSecret([]byte("whsec_YWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXowMTIzNDU="))
	if err != nil {
		t.Fatal(err)
	}
	if string(key) != "abcdefghijklmnopqrstuvwxyz012345" {
		t.Fatalf("decoded key = %q", key)
	}
	body := []byte(`{"event_id":"evt-1","event_type":"llm.completed"}`)
	want := "v1,RS/1l92A9RWgzbRnxZXsolddotnb3/WlvKuXgVTMMxo="
	if got := dispatcher.SignStandardWebhooks([][]byte{key}, "evt-1", 1700000000, body); got != want {
		t.Fatalf("SignStandardWebhooks = %q, want %q", got, want)
	}
	// The official library agrees.
	wh, _ := standardwebhooks.NewWebhook("whsec_YWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXowMTIzNDU=")
	if got, _ := wh.Sign("evt-1", time.Unix(1700000000, 0), body); got != want {
		t.Fatalf("official library signs %q, want %q", got, want)
	}
}

func TestParseStandardWebhooksSecret(t *testing.T) {
	b64 := func(n int) string { return base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{0xA5}, n)) }
	tests := []struct {
		name    string
		secret  string
		wantLen int
		wantErr string
	}{
		{"24-byte key, as Svix issues", "whsec_" + b64(24), 24, ""},
		{"32-byte key", "whsec_" + b64(32), 32, ""},
		{"64-byte key", "whsec_" + b64(64), 64, ""},
		{"trailing newline from echo", "whsec_" + b64(32) + "\n", 32, ""},
		{"no whsec_ prefix", b64(32), 0, `must start with "whsec_"`},
		{"raw key in the Secret", "my-webhook-signing-key-0123456789", 0, `must start with "whsec_"`},
		{"not base64", "whsec_not*base64!", 0, "not standard base64"},
		{"URL-safe base64", "whsec_" + strings.NewReplacer("+", "-", "/", "_").Replace(base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{0xFB}, 30))), 0, "not standard base64"},
		{"empty after the prefix", "whsec_", 0, "the key is 0 bytes"},
		{"16-byte key, too short", "whsec_" + b64(16), 0, "the key is 16 bytes; the spec requires 24 to 64"},
		{"65-byte key, too long", "whsec_" + b64(65), 0, "the key is 65 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			key, err := dispatcher.ParseStandardWebhooksSecret([]byte(tt.secret))
			if tt.wantErr == "" {
				if err != nil || len(key) != tt.wantLen {
					t.Fatalf("got %d bytes, %v; want %d bytes", len(key), err, tt.wantLen)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !errors.Is(err, dispatcher.ErrInvalidStandardWebhooksSecret) {
				t.Fatalf("error = %v, want one containing %q", err, tt.wantErr)
			}
			if encoded := strings.TrimPrefix(strings.TrimSpace(tt.secret), "whsec_"); len(encoded) > 4 && strings.Contains(err.Error(), encoded) {
				t.Fatalf("the error repeats the secret: %v", err)
			}
		})
	}
}

func TestStandardWebhooksID(t *testing.T) {
	if got := dispatcher.StandardWebhooksID("3f0c2a9e-7d41-4b8a-9c55-1e2f3a4b5c6d"); got != "3f0c2a9e-7d41-4b8a-9c55-1e2f3a4b5c6d" {
		t.Errorf("an id without '.' is used as is; got %q", got)
	}
	dotted := dispatcher.StandardWebhooksID("doc-123.llm.completed")
	if strings.Contains(dotted, ".") || !strings.HasPrefix(dotted, "msg_") || len(dotted) != len("msg_")+32 {
		t.Errorf("an id with '.' becomes msg_<32 hex>; got %q", dotted)
	}
	if dispatcher.StandardWebhooksID("doc-123.llm.completed") != dotted || dispatcher.StandardWebhooksID("doc-123.llm.error") == dotted {
		t.Error("the derived id must be stable for one event and differ between events")
	}
}
