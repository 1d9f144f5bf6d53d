package dispatcher

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// A receiver that echoes the request back in an error answer cannot get our credentials stored:
// the static header value, the signature, the key and the URL's token are replaced in the
// snippet and error that end up in status, Events and logs.
func TestEchoedCredentialsAreRedacted(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.WriteHeader(http.StatusInternalServerError)
		// Echo everything, as some frameworks' debug pages do.
		_, _ = io.WriteString(w, "bad request to "+r.URL.String()+" auth="+r.Header.Get("Authorization")+
			" sig="+r.Header.Get(HeaderSignature)+" body="+string(body[:20]))
	}))
	defer srv.Close()

	key := []byte("super-secret-signing-key")
	m := Request{
		URL:     srv.URL + "/webhook/0f8e2a7c-3b1d-4c55-9e61-aa12bb34cc56?token=zapier-token-123456",
		Body:    []byte(`{"event_id":"e1","event_type":"llm.completed"}`),
		EventID: "e1", EventType: "llm.completed", Attempt: 1,
		Signing: Signing{Keys: [][]byte{key}},
		Headers: http.Header{"Authorization": {"Bearer n8n-api-token-abcdef"}},
		Timeout: 5 * time.Second,
	}
	res := NewSender(SenderOptions{}).Send(t.Context(), m)
	if res.Class != ClassHTTPError || res.StatusCode != 500 {
		t.Fatalf("want an HTTP 500 failure, got %+v", res)
	}
	for _, secret := range []string{"n8n-api-token-abcdef", "0f8e2a7c-3b1d-4c55-9e61-aa12bb34cc56", "zapier-token-123456", "sha256="} {
		for field, text := range map[string]string{"Error": res.Error, "Snippet": res.Snippet} {
			if strings.Contains(text, secret) {
				t.Errorf("%s holds %q: %s", field, secret, text)
			}
		}
	}
	if !strings.Contains(res.Error, "[redacted]") || !strings.Contains(res.Error, "HTTP 500") {
		t.Errorf("the error should still say what happened, with the credentials replaced: %s", res.Error)
	}
}
