package testreceiver_test

import (
	"bytes"
	"errors"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/docrouter/webhook-operator/dispatcher"
	"github.com/docrouter/webhook-operator/internal/testenv/testreceiver"
)

var key = []byte("test-key")

// post sends body to url, signed with signKey (unsigned when nil), and returns the answer's
// status and Retry-After.
func post(tb testing.TB, url string, signKey []byte, body string) (int, string) {
	tb.Helper()
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewBufferString(body))
	if err != nil {
		tb.Fatal(err)
	}
	if signKey != nil {
		ts := time.Now().Unix()
		req.Header.Set(dispatcher.HeaderTimestamp, strconv.FormatInt(ts, 10))
		req.Header.Set(dispatcher.HeaderSignature, dispatcher.Sign(signKey, ts, []byte(body)))
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode, resp.Header.Get("Retry-After")
}

// The script is answered in turn and its last answer repeats; a request that fails the
// signature check is answered 401 and uses up no answer; every request is recorded with what it
// was answered.
func TestReceiverAnswersItsScriptToVerifiedRequests(t *testing.T) {
	r := testreceiver.New(t, key)
	r.Script(testreceiver.RetryAfter(http.StatusTooManyRequests, "3"), testreceiver.Answer{Status: http.StatusNoContent})

	type sent struct {
		key        []byte
		status     int
		retryAfter string
	}
	for i, s := range []sent{
		{[]byte("other-key"), http.StatusUnauthorized, ""},
		{key, http.StatusTooManyRequests, "3"},
		{nil, http.StatusUnauthorized, ""},
		{key, http.StatusNoContent, ""},
		{key, http.StatusNoContent, ""},
	} {
		status, retryAfter := post(t, r.URL+"/hooks?x=1", s.key, "body-"+strconv.Itoa(i))
		if status != s.status || retryAfter != s.retryAfter {
			t.Errorf("request %d: answered %d with Retry-After %q, want %d with %q", i, status, retryAfter, s.status, s.retryAfter)
		}
	}

	reqs := r.Requests()
	if len(reqs) != 5 || r.Count() != 5 || len(r.Arrivals()) != 5 {
		t.Fatalf("recorded %d requests, want 5", len(reqs))
	}
	if reqs[0].Verified || !errors.Is(reqs[0].VerifyErr, dispatcher.ErrSignatureInvalid) || reqs[0].Status != http.StatusUnauthorized {
		t.Errorf("a request signed with another key: %+v", reqs[0])
	}
	if !errors.Is(reqs[2].VerifyErr, dispatcher.ErrNoSignature) {
		t.Errorf("an unsigned request: VerifyErr = %v", reqs[2].VerifyErr)
	}
	if !reqs[1].Verified || reqs[1].Status != http.StatusTooManyRequests || string(reqs[1].Body) != "body-1" ||
		reqs[1].URL.RequestURI() != "/hooks?x=1" || reqs[1].Method != http.MethodPost {
		t.Errorf("a verified request: %+v", reqs[1])
	}
	if !bytes.Contains(reqs[1].Dump(), []byte("POST /hooks?x=1 HTTP/1.1")) {
		t.Errorf("dump:\n%s", reqs[1].Dump())
	}
}

// Without a key nothing is checked: every request gets the script's answer and none is
// Verified.
func TestReceiverWithoutKeyAcceptsEverything(t *testing.T) {
	r := testreceiver.New(t, nil, http.StatusInternalServerError, http.StatusOK)
	for _, want := range []int{http.StatusInternalServerError, http.StatusOK, http.StatusOK} {
		if got, _ := post(t, r.URL, nil, "x"); got != want {
			t.Errorf("answered %d, want %d", got, want)
		}
	}
	for _, req := range r.Requests() {
		if req.Verified || req.VerifyErr != nil {
			t.Errorf("no check was asked for, yet Verified=%v VerifyErr=%v", req.Verified, req.VerifyErr)
		}
	}
}

// A custom verifier replaces the DocRouter check and sees the current key, which can change
// between requests.
func TestReceiverCustomVerifierSeesTheCurrentKey(t *testing.T) {
	r := testreceiver.New(t, []byte("old"), http.StatusNoContent)
	var seen []string
	r.SetVerifier(func(k []byte, _ http.Header, _ []byte) error {
		seen = append(seen, string(k))
		if string(k) != "new" {
			return errors.New("not the new key")
		}
		return nil
	})
	if got, _ := post(t, r.URL, key, "x"); got != http.StatusUnauthorized {
		t.Errorf("the verifier refused, yet the receiver answered %d", got)
	}
	r.SetKey([]byte("new"))
	if got, _ := post(t, r.URL, nil, "x"); got != http.StatusNoContent {
		t.Errorf("the verifier accepted an unsigned request, yet the receiver answered %d", got)
	}
	if len(seen) != 2 || seen[0] != "old" || seen[1] != "new" {
		t.Errorf("the verifier saw keys %q", seen)
	}
}

// Respond computes the answer from the accepted request.
func TestReceiverRespondEchoesTheRequest(t *testing.T) {
	r := testreceiver.New(t, key)
	r.Respond(func(req testreceiver.Request) testreceiver.Answer {
		return testreceiver.Answer{Status: http.StatusInternalServerError, Body: "got " + string(req.Body)}
	})
	resp, err := http.Post(r.URL, "text/plain", bytes.NewBufferString("hello"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("an unsigned request was answered %d, want 401 before Respond", resp.StatusCode)
	}
	if got, _ := post(t, r.URL, key, "hello"); got != http.StatusInternalServerError {
		t.Errorf("answered %d, want the 500 of Respond", got)
	}
}
