package dispatcher

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Standard Webhooks (https://www.standardwebhooks.com) headers. Go sends them canonicalised
// (Webhook-Id); header names are case-insensitive, and the official libraries read them so.
const (
	HeaderWebhookID        = "webhook-id"
	HeaderWebhookTimestamp = "webhook-timestamp"
	HeaderWebhookSignature = "webhook-signature"

	// StandardWebhooksSecretPrefix starts a Standard Webhooks symmetric secret:
	// whsec_<base64 of the key bytes>.
	StandardWebhooksSecretPrefix = "whsec_"

	// The spec's bounds of a symmetric key: at least 24 bytes (192 bits), at most 64 (512 bits).
	minStandardWebhooksKey = 24
	maxStandardWebhooksKey = 64
)

// ErrInvalidStandardWebhooksSecret is returned for a secret that is not whsec_<base64> of a
// 24 to 64 byte key. Its messages never include the secret.
var ErrInvalidStandardWebhooksSecret = errors.New("invalid Standard Webhooks secret")

// ParseStandardWebhooksSecret decodes a whsec_<base64> secret, as Svix and the Standard
// Webhooks tooling present them, into the HMAC key bytes. White space around it (a trailing
// newline from `echo` or a file) is ignored; anything else malformed is an error that says
// what is wrong without repeating the secret.
func ParseStandardWebhooksSecret(secret []byte) ([]byte, error) {
	s := bytes.TrimSpace(secret)
	encoded, ok := bytes.CutPrefix(s, []byte(StandardWebhooksSecretPrefix))
	if !ok {
		return nil, fmt.Errorf("%w: it must start with %q followed by the base64 key", ErrInvalidStandardWebhooksSecret, StandardWebhooksSecretPrefix)
	}
	key := make([]byte, base64.StdEncoding.DecodedLen(len(encoded)))
	n, err := base64.StdEncoding.Decode(key, encoded)
	if err != nil {
		return nil, fmt.Errorf("%w: the part after %q is not standard base64", ErrInvalidStandardWebhooksSecret, StandardWebhooksSecretPrefix)
	}
	key = key[:n]
	if n < minStandardWebhooksKey || n > maxStandardWebhooksKey {
		return nil, fmt.Errorf("%w: the key is %d bytes; the spec requires %d to %d (generate one with: echo \"whsec_$(openssl rand -base64 32)\")",
			ErrInvalidStandardWebhooksSecret, n, minStandardWebhooksKey, maxStandardWebhooksKey)
	}
	return key, nil
}

// StandardWebhooksID is the webhook-id of the event eventID: the same for every attempt of a
// delivery (and for every endpoint the event goes to, as a Standard Webhooks message id is),
// so receivers can use it as an idempotency key. It is the event id itself, which receivers
// also find in X-DocRouter-Event-Id and the body's event_id, unless the id contains a '.':
// the spec forbids one in a message id, because '.' delimits the signed content
// "<id>.<timestamp>.<body>". Such an id is replaced by msg_<first 32 hex digits of its
// SHA-256>, which is just as stable.
func StandardWebhooksID(eventID string) string {
	if !strings.Contains(eventID, ".") {
		return eventID
	}
	sum := sha256.Sum256([]byte(eventID))
	return "msg_" + hex.EncodeToString(sum[:16])
}

// SignStandardWebhooks returns the webhook-signature value for body sent with message id at
// Unix time ts: "v1,<base64 HMAC-SHA256(key, "<id>.<ts>.<body>")>" for each key, in order,
// separated by spaces (the spec's list, which is how a rotation sends both signatures).
func SignStandardWebhooks(keys [][]byte, id string, ts int64, body []byte) string {
	var b strings.Builder
	var tsBuf [20]byte
	var sum [sha256.Size]byte
	for _, key := range keys {
		if len(key) == 0 {
			continue
		}
		mac := hmac.New(sha256.New, key)
		mac.Write([]byte(id))
		mac.Write([]byte{'.'})
		mac.Write(strconv.AppendInt(tsBuf[:0], ts, 10))
		mac.Write([]byte{'.'})
		mac.Write(body)
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		b.WriteString("v1,")
		b.WriteString(base64.StdEncoding.EncodeToString(mac.Sum(sum[:0])))
	}
	return b.String()
}
