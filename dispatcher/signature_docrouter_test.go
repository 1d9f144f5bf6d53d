package dispatcher

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"testing"
	"time"
)

// The signature is the product docs' scheme: "sha256=" + hex HMAC-SHA256 of "<ts>.<body>",
// computed here independently of Sign.
func TestSignMatchesTheDocumentedScheme(t *testing.T) {
	key, body := []byte("secret"), []byte(`{"event_id":"e1"}`)
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte("1640995200." + string(body)))
	want := "sha256=" + hex.EncodeToString(mac.Sum(nil))
	if got := Sign(key, 1640995200, body); got != want {
		t.Fatalf("Sign = %s, want %s", got, want)
	}
}

func TestVerify(t *testing.T) {
	key, body := []byte("secret"), []byte(`{"a":1}`)
	now := time.Unix(1_700_000_000, 0)
	sig := Sign(key, now.Unix(), body)
	cases := []struct {
		name      string
		key       []byte
		ts, sig   string
		body      []byte
		at        time.Time
		wantError error
	}{
		{"valid", key, "1700000000", sig, body, now, nil},
		{"valid 4 minutes later", key, "1700000000", sig, body, now.Add(4 * time.Minute), nil},
		{"replayed 6 minutes later", key, "1700000000", sig, body, now.Add(6 * time.Minute), ErrTimestampTooOld},
		{"wrong key", []byte("other"), "1700000000", sig, body, now, ErrSignatureInvalid},
		{"body changed", key, "1700000000", sig, []byte(`{"a":2}`), now, ErrSignatureInvalid},
		{"timestamp changed", key, "1700000001", sig, body, now, ErrSignatureInvalid},
		{"no signature", key, "1700000000", "", body, now, ErrNoSignature},
		{"bad timestamp", key, "yesterday", sig, body, now, ErrBadTimestamp},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := Verify(tc.key, tc.ts, tc.sig, tc.body, tc.at, DefaultTolerance)
			if !errors.Is(err, tc.wantError) {
				t.Fatalf("Verify = %v, want %v", err, tc.wantError)
			}
		})
	}
}
