//go:build cluster

package cluster

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/docrouter/webhook-operator/internal/pki"
)

// authority is a CA that signs the cluster's certificates: the API server's and kubelet's
// serving certificates and every component's client certificate, as kubeadm makes them. It is
// the operator's internal/pki, writing each certificate and key to dir.
type authority struct {
	ca  *pki.CA
	dir string
}

// validity is how long the cluster's certificates last: longer than any run.
const validity = 24 * time.Hour

func newAuthority(dir, name string) (*authority, error) {
	ca, err := pki.NewCA(name, time.Now(), validity)
	if err != nil {
		return nil, err
	}
	a := &authority{ca: ca, dir: dir}
	return a, a.write(name, ca.CertPEM, ca.KeyPEM)
}

// certPath and keyPath are where issue and newAuthority write a certificate and its key.
func (a *authority) certPath(name string) string { return filepath.Join(a.dir, name+".crt") }
func (a *authority) keyPath(name string) string  { return filepath.Join(a.dir, name+".key") }

func (a *authority) write(name string, certPEM, keyPEM []byte) error {
	if err := os.WriteFile(a.certPath(name), certPEM, 0o644); err != nil {
		return err
	}
	return os.WriteFile(a.keyPath(name), keyPEM, 0o600)
}

// issue writes name.crt and name.key: a client certificate for user cn in groups orgs, and a
// serving certificate too when ips or dnsNames are given.
func (a *authority) issue(name, cn string, orgs []string, ips []net.IP, dnsNames []string) error {
	certPEM, keyPEM, err := a.ca.Issue(pki.Leaf{CommonName: cn, Organization: orgs, IPs: ips, DNSNames: dnsNames, Client: true, Validity: validity}, time.Now())
	if err != nil {
		return err
	}
	return a.write(name, certPEM, keyPEM)
}

// kubeconfig writes name.kubeconfig for the client certificate name, against server.
func (a *authority) kubeconfig(name, server string) (string, error) {
	path := filepath.Join(a.dir, name+".kubeconfig")
	cfg := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: test-cluster
  cluster:
    server: %s
    certificate-authority: %s
users:
- name: %s
  user:
    client-certificate: %s
    client-key: %s
contexts:
- name: test-cluster
  context: {cluster: test-cluster, user: %s}
current-context: test-cluster
`, server, a.certPath("ca"), name, a.certPath(name), a.keyPath(name), name)
	return path, os.WriteFile(path, []byte(cfg), 0o600)
}

// serviceAccountKey writes the key pair that the API server signs ServiceAccount tokens with.
func serviceAccountKey(dir string) (pub, priv string, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", err
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return "", "", err
	}
	pb, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return "", "", err
	}
	pub, priv = filepath.Join(dir, "sa.pub"), filepath.Join(dir, "sa.key")
	if err := os.WriteFile(priv, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		return "", "", err
	}
	return pub, priv, os.WriteFile(pub, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pb}), 0o644)
}
