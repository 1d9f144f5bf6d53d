package dispatcher

import (
	"net/http"
	"strconv"
)

// Scheme is how a request is signed. The values are those of the WebhookEndpoint API's
// spec.signatureScheme.
type Scheme string

const (
	// SchemeDocRouter is the product's scheme: X-DocRouter-Signature: sha256=<hex HMAC-SHA256 of
	// "<timestamp>.<body>">, with the timestamp in X-DocRouter-Timestamp.
	SchemeDocRouter Scheme = "DocRouter"
	// SchemeStandardWebhooks is Standard Webhooks (https://www.standardwebhooks.com):
	// webhook-id, webhook-timestamp and webhook-signature: v1,<base64 HMAC-SHA256 of
	// "<id>.<timestamp>.<body>">.
	SchemeStandardWebhooks Scheme = "StandardWebhooks"
)

// HeaderSignaturePrevious carries, in the product's scheme and during a secret rotation only,
// the signature made with the previous key: the same format as X-DocRouter-Signature. The
// primary header is always signed with the current key, as the product docs define it, so a
// receiver that has not heard of rotation keeps working once it has the new key.
const HeaderSignaturePrevious = "X-DocRouter-Signature-Previous"

// Signing is how a Request is signed. The zero value signs nothing.
type Signing struct {
	// Scheme is the signature scheme; empty means SchemeDocRouter.
	Scheme Scheme
	// Keys are the raw HMAC keys, the current one first. During a rotation the previous key
	// follows it and the request carries a signature with each: Standard Webhooks lists them all
	// in webhook-signature; the product scheme puts the second in X-DocRouter-Signature-Previous.
	// For Standard Webhooks these are the bytes a whsec_ secret decodes to (see
	// ParseStandardWebhooksSecret).
	Keys [][]byte
}

// signs reports whether there is a key to sign with.
func (s Signing) signs() bool { return len(s.Keys) > 0 && len(s.Keys[0]) > 0 }

// apply sets the signature headers of a request whose body is sent at Unix time ts. eventID
// is the event's id, from which the Standard Webhooks message id derives.
func (s Signing) apply(h http.Header, eventID string, ts int64, body []byte) {
	if !s.signs() {
		return
	}
	switch s.Scheme {
	case SchemeStandardWebhooks:
		id := StandardWebhooksID(eventID)
		h.Set(HeaderWebhookID, id)
		h.Set(HeaderWebhookTimestamp, strconv.FormatInt(ts, 10))
		h.Set(HeaderWebhookSignature, SignStandardWebhooks(s.Keys, id, ts, body))
	default:
		h.Set(HeaderSignature, Sign(s.Keys[0], ts, body))
		if len(s.Keys) > 1 && len(s.Keys[1]) > 0 {
			h.Set(HeaderSignaturePrevious, Sign(s.Keys[1], ts, body))
		}
	}
}
