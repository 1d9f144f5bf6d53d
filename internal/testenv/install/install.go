// Package install applies the parts of config/default that the tests' operators run under:
// its namespace, ServiceAccount and RBAC, so that a test's operator or history API has exactly
// the permissions the install grants (the stack of the plugin's and console's tests, and the
// history API's tests).
package install

import (
	"context"
	"fmt"
	"path/filepath"

	authenticationv1 "k8s.io/api/authentication/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"

	"github.com/docrouter/webhook-operator/internal/testenv"
)

// The install's names, as config/default makes them.
const (
	Namespace      = "docrouter-system"
	ServiceAccount = "webhook-operator-controller-manager"
)

// RBAC applies the install's namespace, ServiceAccount and RBAC from config/default (as
// kubectl apply -k would) and returns a client configuration of the operator's ServiceAccount:
// the history API then runs with exactly the permissions the install grants.
func RBAC(ctx context.Context, admin *rest.Config) (*rest.Config, error) {
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	resmap, err := k.Run(filesys.MakeFsOnDisk(), filepath.Join(testenv.RepoRoot(), "config", "default"))
	if err != nil {
		return nil, fmt.Errorf("rendering config/default: %w", err)
	}
	dyn, err := dynamic.NewForConfig(admin)
	if err != nil {
		return nil, err
	}
	kinds := map[string]string{
		"Namespace": "namespaces", "ServiceAccount": "serviceaccounts", "ClusterRole": "clusterroles",
		"ClusterRoleBinding": "clusterrolebindings", "Role": "roles", "RoleBinding": "rolebindings",
	}
	for _, kind := range []string{"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"} {
		for _, r := range resmap.Resources() {
			if r.GetKind() != kind {
				continue
			}
			y, err := r.AsYAML()
			if err != nil {
				return nil, err
			}
			u := &unstructured.Unstructured{}
			if err := yaml.Unmarshal(y, &u.Object); err != nil {
				return nil, err
			}
			gvr := u.GroupVersionKind().GroupVersion().WithResource(kinds[kind])
			var ri dynamic.ResourceInterface = dyn.Resource(gvr)
			if ns := u.GetNamespace(); ns != "" {
				ri = dyn.Resource(gvr).Namespace(ns)
			}
			if _, err := ri.Create(ctx, u, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
				return nil, fmt.Errorf("applying %s %s: %w", kind, u.GetName(), err)
			}
		}
	}
	cs, err := kubernetes.NewForConfig(admin)
	if err != nil {
		return nil, err
	}
	tok, err := cs.CoreV1().ServiceAccounts(Namespace).CreateToken(ctx, ServiceAccount,
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr.To[int64](6 * 3600)}}, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("a token for the operator's ServiceAccount: %w", err)
	}
	cfg := &rest.Config{Host: admin.Host, BearerToken: tok.Status.Token, QPS: -1}
	cfg.CAData = admin.CAData
	return cfg, nil
}
