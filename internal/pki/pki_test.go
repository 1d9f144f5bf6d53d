package pki

import (
	"crypto/x509"
	"net"
	"slices"
	"testing"
	"time"
)

// A client certificate carries its user's groups, and serves too when it names hosts (a
// kubelet's); a serving one only serves. Each verifies against its CA for what it is for.
func TestIssueUsages(t *testing.T) {
	now := time.Now()
	ca, err := NewCA("test-ca", now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	for _, tc := range []struct {
		name string
		leaf Leaf
		want []x509.ExtKeyUsage
	}{
		{"client", Leaf{CommonName: "system:kube-scheduler", Organization: []string{"system:masters"}, Client: true, Validity: time.Hour},
			[]x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}},
		{"client that serves", Leaf{CommonName: "system:node:n1", Organization: []string{"system:nodes"}, IPs: []net.IP{net.IPv4(10, 0, 0, 1)}, Client: true, Validity: time.Hour},
			[]x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}},
		{"serving", Leaf{CommonName: "api.example", DNSNames: []string{"api.example"}, Validity: time.Hour},
			[]x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			certPEM, _, err := ca.Issue(tc.leaf, now)
			if err != nil {
				t.Fatal(err)
			}
			cert, err := ParseCert(certPEM)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(cert.ExtKeyUsage, tc.want) {
				t.Fatalf("usages %v, want %v", cert.ExtKeyUsage, tc.want)
			}
			if !slices.Equal(cert.Subject.Organization, tc.leaf.Organization) {
				t.Fatalf("organization %v, want %v", cert.Subject.Organization, tc.leaf.Organization)
			}
			for _, u := range tc.want {
				if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{u}, CurrentTime: now}); err != nil {
					t.Fatalf("does not verify for %v: %v", u, err)
				}
			}
		})
	}
}
