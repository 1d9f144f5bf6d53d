package historyapi

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apiserver/pkg/server/dynamiccertificates"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	historyv1alpha1 "github.com/docrouter/webhook-operator/api/history/v1alpha1"
	"github.com/docrouter/webhook-operator/internal/pki"
)

// The self-managed certificate (used when no certificate files are given): a CA and a serving
// certificate for SERVICE.NAMESPACE.svc, kept in one Secret of the operator's namespace so that
// every replica serves the same certificate, and the CA written into the APIService's caBundle.
// Whichever replica finds the Secret missing or due for renewal writes it (create, or update at
// the resourceVersion it read: one writer wins, the others read the winner's); every replica
// then serves it and keeps the caBundle in step. This is what Kyverno does for its webhooks and
// reports-server's APIServices.
const (
	caValidity      = 10 * 365 * 24 * time.Hour
	servingValidity = 365 * 24 * time.Hour
	// A serving certificate is renewed with a third of its life left; the CA with a fifth.
	// Until the previous CA expires, the caBundle carries it too, so that replicas still
	// serving a certificate it signed keep working while they pick up the new one.
	servingRenewFraction = 3
	caRenewFraction      = 5
	// How often each replica looks at the Secret and the APIService again (a rotation by
	// another replica is picked up within this time), and how soon after a failure.
	certRecheck      = 10 * time.Minute
	certRetryInitial = 2 * time.Second
	certRetryMax     = time.Minute
)

// Keys of the certificate Secret.
const (
	secretCACert     = "ca.crt"
	secretCAKey      = "ca.key"
	secretPreviousCA = "ca-previous.crt"
)

// certProvider serves the current certificate and tells the TLS layer when it changes.
type certProvider struct {
	mu        sync.Mutex
	cert, key []byte
	listeners []dynamiccertificates.Listener
}

var _ dynamiccertificates.CertKeyContentProvider = &certProvider{}

func (p *certProvider) Name() string { return "history-api-serving-cert" }

func (p *certProvider) CurrentCertKeyContent() ([]byte, []byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cert, p.key
}

func (p *certProvider) AddListener(l dynamiccertificates.Listener) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.listeners = append(p.listeners, l)
}

func (p *certProvider) set(cert, key []byte) error {
	if _, err := tls.X509KeyPair(cert, key); err != nil {
		return fmt.Errorf("the serving certificate and key do not match: %w", err)
	}
	p.mu.Lock()
	changed := !bytes.Equal(cert, p.cert) || !bytes.Equal(key, p.key)
	p.cert, p.key = cert, key
	listeners := slices.Clone(p.listeners)
	p.mu.Unlock()
	if changed {
		for _, l := range listeners {
			l.Enqueue()
		}
	}
	return nil
}

var apiServicesGVR = schema.GroupVersionResource{Group: "apiregistration.k8s.io", Version: "v1", Resource: "apiservices"}

// selfManagedCert keeps the certificate Secret and the APIService's caBundle.
type selfManagedCert struct {
	client    kubernetes.Interface
	dynamic   dynamic.Interface
	namespace string
	secret    string
	// dnsName is SERVICE.NAMESPACE.svc, the name the aggregator checks.
	dnsName  string
	now      func() time.Time
	log      logr.Logger
	provider *certProvider
	// loggedMissing avoids logging a missing APIService at every check.
	loggedMissing bool
}

// run keeps the certificate current until ctx ends; ready is closed once a certificate is
// served.
func (c *selfManagedCert) run(ctx context.Context, ready chan<- struct{}) {
	wait := certRetryInitial
	served := false
	for {
		err := c.ensure(ctx)
		next := certRecheck
		if err != nil {
			c.log.Error(err, "keeping the history API's serving certificate failed; retrying", "secret", c.namespace+"/"+c.secret, "retryIn", wait.String())
			next = wait
			wait = min(wait*2, certRetryMax)
		} else {
			wait = certRetryInitial
		}
		if !served {
			if cert, _ := c.provider.CurrentCertKeyContent(); cert != nil {
				close(ready)
				served = true
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(next):
		}
	}
}

// ensure reads the Secret (writing it when missing or due), serves its certificate, and keeps
// the APIService's caBundle equal to its CA bundle.
func (c *selfManagedCert) ensure(ctx context.Context) error {
	secrets := c.client.CoreV1().Secrets(c.namespace)
	var bundle []byte
	for attempt := 0; ; attempt++ {
		if attempt == 5 {
			return fmt.Errorf("the Secret %s/%s kept changing while it was renewed", c.namespace, c.secret)
		}
		sec, err := secrets.Get(ctx, c.secret, metav1.GetOptions{})
		notFound := apierrors.IsNotFound(err)
		if err != nil && !notFound {
			return fmt.Errorf("reading Secret %s/%s: %w", c.namespace, c.secret, err)
		}
		var data map[string][]byte
		if sec != nil {
			data = sec.Data
		}
		renewed, why, err := c.renew(data)
		if err != nil {
			return err
		}
		if renewed == nil { // current
			if err := c.provider.set(data[corev1.TLSCertKey], data[corev1.TLSPrivateKeyKey]); err != nil {
				return fmt.Errorf("secret %s/%s: %w", c.namespace, c.secret, err)
			}
			bundle = caBundle(data)
			break
		}
		if notFound {
			sec = &corev1.Secret{
				ObjectMeta: metav1.ObjectMeta{Namespace: c.namespace, Name: c.secret, Labels: map[string]string{
					"app.kubernetes.io/name":       "webhook-operator",
					"app.kubernetes.io/component":  "history-api",
					"app.kubernetes.io/managed-by": "webhook-operator",
				}},
				Type: corev1.SecretTypeTLS,
				Data: renewed,
			}
			_, err = secrets.Create(ctx, sec, metav1.CreateOptions{})
		} else {
			sec.Data = renewed
			sec.Type = corev1.SecretTypeTLS
			_, err = secrets.Update(ctx, sec, metav1.UpdateOptions{})
		}
		if apierrors.IsAlreadyExists(err) || apierrors.IsConflict(err) {
			continue // another replica wrote it: use theirs
		}
		if err != nil {
			return fmt.Errorf("writing Secret %s/%s: %w", c.namespace, c.secret, err)
		}
		c.log.Info("wrote the history API's serving certificate", "secret", c.namespace+"/"+c.secret, "reason", why, "dnsName", c.dnsName)
	}
	return c.patchCABundle(ctx, bundle)
}

// renew returns the Secret's new data when it must change (and why), or nil when it is
// current.
func (c *selfManagedCert) renew(data map[string][]byte) (map[string][]byte, string, error) {
	now := c.now()
	ca, err := pki.ParseCA(data[secretCACert], data[secretCAKey])
	out := map[string][]byte{}
	why := ""
	switch {
	case err != nil:
		why = "no valid CA"
		if len(data) == 0 {
			why = "new"
		}
	case now.After(ca.Cert.NotAfter.Add(-caValidity / caRenewFraction)):
		why = "CA due for renewal"
		out[secretPreviousCA] = ca.CertPEM
	}
	if why != "" {
		if ca, err = pki.NewCA("webhook-operator-history-api-ca", now, caValidity); err != nil {
			return nil, "", err
		}
	} else {
		if prev, err := pki.ParseCert(data[secretPreviousCA]); err == nil && now.Before(prev.NotAfter) {
			out[secretPreviousCA] = data[secretPreviousCA]
		} else if len(data[secretPreviousCA]) > 0 {
			why = "previous CA expired"
		}
		why = firstNonEmpty(why, c.servingProblem(ca, data, now))
		if why == "" {
			return nil, "", nil
		}
	}
	cert, key, err := ca.Issue(pki.Leaf{CommonName: c.dnsName, DNSNames: []string{c.dnsName}, Validity: servingValidity}, now)
	if err != nil {
		return nil, "", err
	}
	out[secretCACert], out[secretCAKey] = ca.CertPEM, ca.KeyPEM
	out[corev1.TLSCertKey], out[corev1.TLSPrivateKeyKey] = cert, key
	return out, why, nil
}

// servingProblem says why the Secret's serving certificate cannot be kept, or "".
func (c *selfManagedCert) servingProblem(ca *pki.CA, data map[string][]byte, now time.Time) string {
	if _, err := tls.X509KeyPair(data[corev1.TLSCertKey], data[corev1.TLSPrivateKeyKey]); err != nil {
		return "no valid serving certificate"
	}
	cert, err := pki.ParseCert(data[corev1.TLSCertKey])
	if err != nil {
		return "no valid serving certificate"
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	if _, err := cert.Verify(x509.VerifyOptions{DNSName: c.dnsName, Roots: pool, CurrentTime: now}); err != nil {
		return "serving certificate not valid for " + c.dnsName
	}
	life := cert.NotAfter.Sub(cert.NotBefore)
	if now.After(cert.NotAfter.Add(-life / servingRenewFraction)) {
		return "serving certificate due for renewal"
	}
	return ""
}

func firstNonEmpty(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

func caBundle(data map[string][]byte) []byte {
	b := bytes.TrimSpace(data[secretCACert])
	if prev := bytes.TrimSpace(data[secretPreviousCA]); len(prev) > 0 {
		b = append(append(append([]byte{}, b...), '\n'), prev...)
	}
	return append(b, '\n')
}

// patchCABundle writes bundle into the APIService's caBundle when it differs.
func (c *selfManagedCert) patchCABundle(ctx context.Context, bundle []byte) error {
	apiServices := c.dynamic.Resource(apiServicesGVR)
	svc, err := apiServices.Get(ctx, historyv1alpha1.APIServiceName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		if !c.loggedMissing {
			c.log.Info("APIService " + historyv1alpha1.APIServiceName + " does not exist: kubectl cannot reach the history API until it is applied (config/default has it)")
			c.loggedMissing = true
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading APIService %s: %w", historyv1alpha1.APIServiceName, err)
	}
	c.loggedMissing = false
	current, _, _ := unstructured.NestedString(svc.Object, "spec", "caBundle")
	want := base64.StdEncoding.EncodeToString(bundle)
	if current == want {
		return nil
	}
	patch, _ := json.Marshal(map[string]any{"spec": map[string]any{"caBundle": want}})
	if _, err := apiServices.Patch(ctx, historyv1alpha1.APIServiceName, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		return fmt.Errorf("writing the caBundle of APIService %s: %w", historyv1alpha1.APIServiceName, err)
	}
	c.log.Info("wrote the caBundle of APIService " + historyv1alpha1.APIServiceName)
	return nil
}
