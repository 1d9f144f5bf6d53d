package historyapi

import (
	"bytes"
	"crypto/x509"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/docrouter/webhook-operator/internal/pki"
)

// verifies reports whether the Secret's serving certificate is valid for name at now against
// the APIService's caBundle made from the same Secret, as the aggregator checks it.
func verifies(t *testing.T, data map[string][]byte, name string, now time.Time) bool {
	t.Helper()
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caBundle(data)) {
		t.Fatal("the caBundle holds no certificate")
	}
	cert, err := pki.ParseCert(data[corev1.TLSCertKey])
	if err != nil {
		t.Fatal(err)
	}
	_, err = cert.Verify(x509.VerifyOptions{DNSName: name, Roots: pool, CurrentTime: now})
	return err == nil
}

// The self-managed certificate is made once, kept while it is good, renewed with a third of
// its life left (same CA, so the caBundle does not change), made anew for a new Service name,
// and its CA is renewed with a fifth of its life left while the caBundle keeps the previous CA
// until it expires: a replica still serving a certificate of the old CA stays trusted.
func TestSelfManagedCertificateLifecycle(t *testing.T) {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	c := &selfManagedCert{dnsName: "webhook-operator-history-api.docrouter-system.svc", now: func() time.Time { return now }}

	data, why, err := c.renew(nil)
	if err != nil || data == nil || why != "new" {
		t.Fatalf("no Secret yet: want a new certificate, got %v %q %v", data != nil, why, err)
	}
	if !verifies(t, data, c.dnsName, now) {
		t.Fatal("the new certificate does not verify for the Service's name against its caBundle")
	}
	if verifies(t, data, "other.docrouter-system.svc", now) {
		t.Fatal("the certificate verifies for another name")
	}
	if again, why, err := c.renew(data); err != nil || again != nil {
		t.Fatalf("a current Secret must be kept, got a renewal (%q, %v)", why, err)
	}

	// Two thirds into the serving certificate's life: a new one from the same CA.
	now = now.Add(servingValidity*2/3 + time.Hour)
	renewed, why, err := c.renew(data)
	if err != nil || renewed == nil || why != "serving certificate due for renewal" {
		t.Fatalf("an ageing serving certificate: want a renewal, got %v %q %v", renewed != nil, why, err)
	}
	if !bytes.Equal(renewed[secretCACert], data[secretCACert]) || bytes.Equal(renewed[corev1.TLSCertKey], data[corev1.TLSCertKey]) {
		t.Fatal("the serving certificate must be renewed from the same CA")
	}
	if !verifies(t, renewed, c.dnsName, now) || !bytes.Equal(caBundle(renewed), caBundle(data)) {
		t.Fatal("the renewed certificate must verify against the unchanged caBundle")
	}
	data = renewed

	// Another Service name: a certificate for it.
	c.dnsName = "history.other-namespace.svc"
	renewed, why, err = c.renew(data)
	if err != nil || renewed == nil || !verifies(t, renewed, c.dnsName, now) {
		t.Fatalf("a new Service name: want a certificate for it, got %v %q %v", renewed != nil, why, err)
	}
	data = renewed

	// Four fifths into the CA's life: a new CA; the caBundle holds both.
	now = now.Add(caValidity*4/5 + 24*time.Hour)
	renewed, why, err = c.renew(data)
	if err != nil || renewed == nil || why != "CA due for renewal" {
		t.Fatalf("an ageing CA: want a new one, got %v %q %v", renewed != nil, why, err)
	}
	if !bytes.Equal(renewed[secretPreviousCA], data[secretCACert]) || bytes.Equal(renewed[secretCACert], data[secretCACert]) {
		t.Fatal("the new CA must replace the old one, which stays as ca-previous.crt")
	}
	old, err := pki.ParseCert(data[corev1.TLSCertKey])
	if err != nil {
		t.Fatal(err)
	}
	if !verifies(t, renewed, c.dnsName, now) || !verifies(t, map[string][]byte{
		secretCACert: renewed[secretCACert], secretPreviousCA: renewed[secretPreviousCA], corev1.TLSCertKey: data[corev1.TLSCertKey],
	}, c.dnsName, old.NotBefore.Add(time.Hour)) {
		t.Fatal("the caBundle must trust the new certificate and one the previous CA signed")
	}
	data = renewed
	if again, _, _ := c.renew(data); again != nil {
		t.Fatal("the Secret is current after a CA renewal")
	}

	// Once the previous CA has expired it leaves the bundle; the current CA stays.
	prev, err := pki.ParseCert(data[secretPreviousCA])
	if err != nil {
		t.Fatal(err)
	}
	now = prev.NotAfter.Add(24 * time.Hour)
	renewed, why, err = c.renew(data)
	if err != nil || renewed == nil || len(renewed[secretPreviousCA]) != 0 || !bytes.Equal(renewed[secretCACert], data[secretCACert]) {
		t.Fatalf("an expired previous CA must leave the caBundle, and only it: %q %v", why, err)
	}
}

type countingListener struct{ n int }

func (l *countingListener) Enqueue() { l.n++ }

// The TLS layer hears of a new certificate once, not at every check.
func TestCertProviderNotifiesOnChange(t *testing.T) {
	now := time.Now()
	c := &selfManagedCert{dnsName: "a.b.svc", now: func() time.Time { return now }}
	data, _, err := c.renew(nil)
	if err != nil {
		t.Fatal(err)
	}
	p := &certProvider{}
	l := &countingListener{}
	p.AddListener(l)
	for range 3 {
		if err := p.set(data[corev1.TLSCertKey], data[corev1.TLSPrivateKeyKey]); err != nil {
			t.Fatal(err)
		}
	}
	if l.n != 1 {
		t.Errorf("the listener was told %d times of one certificate, want once", l.n)
	}
	if err := p.set(data[corev1.TLSCertKey], data[secretCAKey]); err == nil {
		t.Error("a certificate with another key's private key must be refused")
	}
}
