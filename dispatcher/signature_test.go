package dispatcher_test

import (
	"context"
	"errors"
	"net/http"
	"sort"
	"testing"
	"time"

	"github.com/docrouter/webhook-operator/dispatcher"
)

// The product scheme is unchanged by the scheme abstraction: the same headers, and the
// X-DocRouter-Signature the product docs define, byte for byte. The expected value was computed
// independently with openssl:
//
//	printf '%s' "1700000000.$body" | openssl dgst -sha256 -hmac 'product-key' -hex
func TestDocRouterSchemeIsByteIdentical(t *testing.T) {
	const want = "sha256=82c92b5a8eb8aacdff2d93a2a1746921786b5192afff188c448f69badda53d8c"
	body := []byte(`{"event_id":"evt-1","event_type":"llm.completed"}`)
	if got := dispatcher.Sign([]byte("product-key"), 1700000000, body); got != want {
		t.Fatalf("Sign = %q, want %q", got, want)
	}
	srv := newCapturingServer(t)
	s := dispatcher.NewSender(dispatcher.SenderOptions{Now: func() time.Time { return time.Unix(1700000000, 0) }})
	for _, scheme := range []dispatcher.Scheme{"", dispatcher.SchemeDocRouter} {
		m := signedRequest(srv.URL, dispatcher.Signing{Scheme: scheme, Keys: [][]byte{[]byte("product-key")}})
		m.EventID, m.Body = "evt-1", body
		if res := s.Send(context.Background(), m); !res.Succeeded() {
			t.Fatal(res)
		}
		req := last(t, srv)
		if got := req.Header.Get(dispatcher.HeaderSignature); got != want {
			t.Errorf("scheme %q: %s = %q, want %q", scheme, dispatcher.HeaderSignature, got, want)
		}
		var names []string
		for name := range req.Header {
			if name != "Accept-Encoding" && name != "Content-Length" {
				names = append(names, name)
			}
		}
		sort.Strings(names)
		wantNames := []string{"Content-Type", "User-Agent", "X-Docrouter-Attempt", "X-Docrouter-Event-Id",
			"X-Docrouter-Event-Type", "X-Docrouter-Signature", "X-Docrouter-Timestamp"}
		if len(names) != len(wantNames) {
			t.Fatalf("scheme %q: headers %q, want %q", scheme, names, wantNames)
		}
		for i := range names {
			if names[i] != wantNames[i] {
				t.Fatalf("scheme %q: headers %q, want %q", scheme, names, wantNames)
			}
		}
	}
}

func TestUnsignedRequestCarriesNoSignature(t *testing.T) {
	srv := newCapturingServer(t)
	s := dispatcher.NewSender(dispatcher.SenderOptions{})
	for _, scheme := range []dispatcher.Scheme{dispatcher.SchemeDocRouter, dispatcher.SchemeStandardWebhooks} {
		s.Send(context.Background(), signedRequest(srv.URL, dispatcher.Signing{Scheme: scheme}))
		req := last(t, srv)
		for _, h := range []string{dispatcher.HeaderSignature, dispatcher.HeaderSignaturePrevious, dispatcher.HeaderWebhookSignature, dispatcher.HeaderWebhookID} {
			if v := req.Header.Get(h); v != "" {
				t.Errorf("scheme %q without a key sends %s: %q", scheme, h, v)
			}
		}
	}
}

// During a rotation of a DocRouter secret, X-DocRouter-Signature is signed with the new key
// (as the product docs define it) and X-DocRouter-Signature-Previous with the old one; a
// receiver that accepts either keeps working whichever key it has. After the cutoff only the
// primary header is sent.
func TestDocRouterRotation(t *testing.T) {
	newKey, oldKey := []byte("new-product-key"), []byte("old-product-key")
	srv := newCapturingServer(t)
	s := dispatcher.NewSender(dispatcher.SenderOptions{})
	// acceptEither is the receiver logic docs/signatures.md shows.
	acceptEither := func(key []byte, h http.Header, body []byte) error {
		ts := h.Get(dispatcher.HeaderTimestamp)
		err := dispatcher.Verify(key, ts, h.Get(dispatcher.HeaderSignature), body, time.Now(), dispatcher.DefaultTolerance)
		if errors.Is(err, dispatcher.ErrSignatureInvalid) && h.Get(dispatcher.HeaderSignaturePrevious) != "" {
			err = dispatcher.Verify(key, ts, h.Get(dispatcher.HeaderSignaturePrevious), body, time.Now(), dispatcher.DefaultTolerance)
		}
		return err
	}

	s.Send(context.Background(), signedRequest(srv.URL, dispatcher.Signing{Scheme: dispatcher.SchemeDocRouter, Keys: [][]byte{newKey, oldKey}}))
	during := last(t, srv)
	ts := during.Header.Get(dispatcher.HeaderTimestamp)
	if err := dispatcher.Verify(newKey, ts, during.Header.Get(dispatcher.HeaderSignature), during.Body, time.Now(), dispatcher.DefaultTolerance); err != nil {
		t.Errorf("during rotation, %s does not verify with the new key: %v", dispatcher.HeaderSignature, err)
	}
	if err := dispatcher.Verify(oldKey, ts, during.Header.Get(dispatcher.HeaderSignaturePrevious), during.Body, time.Now(), dispatcher.DefaultTolerance); err != nil {
		t.Errorf("during rotation, %s does not verify with the old key: %v", dispatcher.HeaderSignaturePrevious, err)
	}
	for name, key := range map[string][]byte{"new": newKey, "old": oldKey} {
		if err := acceptEither(key, during.Header, during.Body); err != nil {
			t.Errorf("during rotation, a receiver with the %s key rejects: %v", name, err)
		}
	}
	if err := acceptEither([]byte("stranger"), during.Header, during.Body); !errors.Is(err, dispatcher.ErrSignatureInvalid) {
		t.Errorf("during rotation, a receiver with an unrelated key: %v", err)
	}

	s.Send(context.Background(), signedRequest(srv.URL, dispatcher.Signing{Scheme: dispatcher.SchemeDocRouter, Keys: [][]byte{newKey}}))
	after := last(t, srv)
	if v := after.Header.Get(dispatcher.HeaderSignaturePrevious); v != "" {
		t.Errorf("after the cutoff %s is still sent", dispatcher.HeaderSignaturePrevious)
	}
	if err := acceptEither(newKey, after.Header, after.Body); err != nil {
		t.Errorf("after the cutoff, a receiver with the new key rejects: %v", err)
	}
	if err := acceptEither(oldKey, after.Header, after.Body); !errors.Is(err, dispatcher.ErrSignatureInvalid) {
		t.Errorf("after the cutoff, a receiver with the old key: %v, want %v", err, dispatcher.ErrSignatureInvalid)
	}
}
