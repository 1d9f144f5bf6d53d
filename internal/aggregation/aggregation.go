// Package aggregation sets up API aggregation on a kube-apiserver that envtest runs, for the
// tests (internal/testenv) and the local stack (hack/devcluster) alike, so both run the history
// API the way a cluster does: kube-apiserver authenticates the caller, then forwards the request
// to the operator over TLS with its front-proxy client certificate and the caller's identity in
// X-Remote-User and X-Remote-Group; the operator trusts those headers because the certificate is
// signed by the front-proxy CA that kube-apiserver publishes in
// kube-system/extension-apiserver-authentication.
//
// The operator runs on the host, outside any cluster network, so its Service is of type
// ExternalName with externalName localhost: the aggregator then dials https://localhost:PORT
// and checks the certificate for SERVICE.NAMESPACE.svc against the APIService's caBundle.
// (kube-apiserver refuses loopback addresses in EndpointSlices, so a Service with endpoints on
// 127.0.0.1 cannot work.)
package aggregation

import (
	"context"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	historyv1alpha1 "github.com/docrouter/webhook-operator/api/history/v1alpha1"
	"github.com/docrouter/webhook-operator/internal/pki"
)

// ProxyClientName is the common name of the front-proxy client certificate, the one name
// --requestheader-allowed-names allows.
const ProxyClientName = "front-proxy-client"

// ConfigureFrontProxy makes a front-proxy CA and the client certificate that kube-apiserver
// presents to aggregated APIs, in dir (made if missing; the key files are readable by the owner
// only), and sets the flags of api that use them. Call it before the API server starts; the
// certificates are new at each call, as envtest's own are.
func ConfigureFrontProxy(api *envtest.APIServer, dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("making the front-proxy directory: %w", err)
	}
	now := time.Now()
	ca, err := pki.NewCA("front-proxy-ca", now, 7*24*time.Hour)
	if err != nil {
		return err
	}
	cert, key, err := ca.Issue(pki.Leaf{CommonName: ProxyClientName, Client: true, Validity: 7 * 24 * time.Hour}, now)
	if err != nil {
		return err
	}
	files := map[string][]byte{"front-proxy-ca.crt": ca.CertPEM, "front-proxy-client.crt": cert, "front-proxy-client.key": key}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			return fmt.Errorf("writing %s: %w", name, err)
		}
	}
	args := api.Configure()
	args.Set("requestheader-client-ca-file", filepath.Join(dir, "front-proxy-ca.crt"))
	args.Set("requestheader-allowed-names", ProxyClientName)
	args.Set("requestheader-username-headers", "X-Remote-User")
	args.Set("requestheader-group-headers", "X-Remote-Group")
	args.Set("requestheader-extra-headers-prefix", "X-Remote-Extra-")
	args.Set("proxy-client-cert-file", filepath.Join(dir, "front-proxy-client.crt"))
	args.Set("proxy-client-key-file", filepath.Join(dir, "front-proxy-client.key"))
	return nil
}

// Registration is where the history API of an operator on this host is served.
type Registration struct {
	// Namespace and Service name the ExternalName Service that the APIService points at; the
	// operator's serving certificate must be for Service.Namespace.svc.
	Namespace, Service string
	// Port on localhost where the operator serves the history API.
	Port int
	// CABundle verifies the operator's serving certificate; empty leaves the APIService's
	// caBundle as it is (the operator patches it when it manages its own certificate).
	CABundle []byte
}

// APIServiceGVR is the resource of APIServices.
var APIServiceGVR = schema.GroupVersionResource{Group: "apiregistration.k8s.io", Version: "v1", Resource: "apiservices"}

// Register creates or updates the namespace, the ExternalName Service and the APIService of the
// history API, so that kube-apiserver forwards history.webhooks.docrouter.ai to
// https://localhost:PORT.
func Register(ctx context.Context, cfg *rest.Config, r Registration) error {
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return err
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: r.Namespace}}
	if _, err := cs.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating namespace %s: %w", r.Namespace, err)
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: r.Namespace, Name: r.Service},
		Spec: corev1.ServiceSpec{
			Type:         corev1.ServiceTypeExternalName,
			ExternalName: "localhost",
			Ports:        []corev1.ServicePort{{Name: "https", Port: int32(r.Port), TargetPort: intstr.FromInt(r.Port)}},
		},
	}
	services := cs.CoreV1().Services(r.Namespace)
	if old, err := services.Get(ctx, r.Service, metav1.GetOptions{}); err == nil {
		old.Spec.Type, old.Spec.ExternalName, old.Spec.Ports = svc.Spec.Type, svc.Spec.ExternalName, svc.Spec.Ports
		old.Spec.ClusterIP, old.Spec.ClusterIPs, old.Spec.Selector = "", nil, nil
		if _, err := services.Update(ctx, old, metav1.UpdateOptions{}); err != nil {
			return fmt.Errorf("updating Service %s/%s: %w", r.Namespace, r.Service, err)
		}
	} else if !apierrors.IsNotFound(err) {
		return err
	} else if _, err := services.Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("creating Service %s/%s: %w", r.Namespace, r.Service, err)
	}

	client := dyn.Resource(APIServiceGVR)
	// The aggregator writes the APIService's status meanwhile: retry on a conflict.
	err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
		apiService := APIService(r.Namespace, r.Service, int32(r.Port), r.CABundle)
		old, err := client.Get(ctx, apiService.GetName(), metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			_, err = client.Create(ctx, apiService, metav1.CreateOptions{})
		case err == nil:
			if len(r.CABundle) == 0 {
				// Keep the caBundle that the operator wrote.
				if ca, ok, _ := unstructured.NestedString(old.Object, "spec", "caBundle"); ok {
					_ = unstructured.SetNestedField(apiService.Object, ca, "spec", "caBundle")
				}
			}
			apiService.SetResourceVersion(old.GetResourceVersion())
			_, err = client.Update(ctx, apiService, metav1.UpdateOptions{})
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("registering APIService %s: %w", historyv1alpha1.APIServiceName, err)
	}
	return nil
}

// APIService is the history API's APIService for a Service, as config/history-api declares it.
func APIService(namespace, service string, port int32, caBundle []byte) *unstructured.Unstructured {
	spec := map[string]any{
		"group":                historyv1alpha1.GroupName,
		"version":              historyv1alpha1.GroupVersion.Version,
		"groupPriorityMinimum": int64(1000),
		"versionPriority":      int64(15),
		"service":              map[string]any{"namespace": namespace, "name": service, "port": int64(port)},
	}
	if len(caBundle) > 0 {
		spec["caBundle"] = base64.StdEncoding.EncodeToString(caBundle)
	}
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "apiregistration.k8s.io/v1",
		"kind":       "APIService",
		"metadata":   map[string]any{"name": historyv1alpha1.APIServiceName},
		"spec":       spec,
	}}
	return u
}

// Unregister deletes the history API's APIService, if there is one: an APIService whose server
// is gone makes every kubectl command warn (the local stack keeps etcd's data across runs).
func Unregister(ctx context.Context, cfg *rest.Config) error {
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return err
	}
	err = dyn.Resource(APIServiceGVR).Delete(ctx, historyv1alpha1.APIServiceName, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("deleting APIService %s: %w", historyv1alpha1.APIServiceName, err)
	}
	return nil
}
