package dispatcher

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strconv"
	"strings"
	"time"
)

// Headers of every request. The signature and timestamp are the product's scheme; the others
// let receivers deduplicate (event id is stable across attempts) and observe retries.
const (
	HeaderSignature = "X-DocRouter-Signature"
	HeaderTimestamp = "X-DocRouter-Timestamp"
	HeaderEventID   = "X-DocRouter-Event-Id"
	HeaderEventType = "X-DocRouter-Event-Type"
	HeaderAttempt   = "X-DocRouter-Attempt"

	signaturePrefix = "sha256="
)

// DefaultTolerance is how old a signed timestamp a receiver should accept: the product docs
// advise rejecting requests older than 5 minutes.
const DefaultTolerance = 5 * time.Minute

// Sign returns the X-DocRouter-Signature value for body sent at Unix time ts:
// "sha256=" + hex(HMAC-SHA256(key, "<ts>.<body>")).
func Sign(key []byte, ts int64, body []byte) string {
	mac := hmac.New(sha256.New, key)
	var tsBuf [20]byte
	mac.Write(strconv.AppendInt(tsBuf[:0], ts, 10))
	mac.Write([]byte{'.'})
	mac.Write(body)
	var sum [sha256.Size]byte
	out := make([]byte, len(signaturePrefix)+hex.EncodedLen(sha256.Size))
	copy(out, signaturePrefix)
	hex.Encode(out[len(signaturePrefix):], mac.Sum(sum[:0]))
	return string(out)
}

// Verification errors.
var (
	ErrNoSignature      = errors.New("missing " + HeaderSignature + " header")
	ErrBadTimestamp     = errors.New("missing or malformed " + HeaderTimestamp + " header")
	ErrTimestampTooOld  = errors.New("timestamp outside the tolerance: possible replay")
	ErrSignatureInvalid = errors.New("signature does not match")
)

// Verify checks a request the way a receiver should: the timestamp header is a Unix time within
// tolerance of now, and the signature matches HMAC-SHA256(key, "<timestamp>.<body>"), compared
// in constant time. It is what the sample receiver and the tests use.
func Verify(key []byte, timestamp, signature string, body []byte, now time.Time, tolerance time.Duration) error {
	if signature == "" {
		return ErrNoSignature
	}
	ts, err := strconv.ParseInt(strings.TrimSpace(timestamp), 10, 64)
	if err != nil {
		return ErrBadTimestamp
	}
	if d := now.Sub(time.Unix(ts, 0)); d > tolerance || d < -tolerance {
		return ErrTimestampTooOld
	}
	if !hmac.Equal([]byte(Sign(key, ts, body)), []byte(strings.TrimSpace(signature))) {
		return ErrSignatureInvalid
	}
	return nil
}
