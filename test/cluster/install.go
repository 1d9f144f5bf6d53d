//go:build cluster

package cluster

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// render builds the install as `kubectl apply -k` would: the overlay (config/default unless
// CLUSTER_OVERLAY names another), with only what a cluster without a registry needs on top:
// the image set by kustomize to the one imported into containerd, never pulled.
func render(overlay, image string) ([]*unstructured.Unstructured, string, error) {
	dir, err := os.MkdirTemp("", "test-cluster-install-")
	if err != nil {
		return nil, "", err
	}
	defer func() { _ = os.RemoveAll(dir) }()
	// kustomize takes bases by relative path only.
	rel, err := filepath.Rel(dir, overlay)
	if err != nil {
		return nil, "", err
	}
	name, tag, _ := strings.Cut(image, ":")
	kust := fmt.Sprintf(`apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
- %s
images:
- name: docrouter/webhook-operator
  newName: %s
  newTag: %s
patches:
# No registry is reachable: the image comes from containerd's store, or the pod fails at once.
- target: {kind: Deployment}
  patch: |-
    - op: add
      path: /spec/template/spec/containers/0/imagePullPolicy
      value: Never
`, rel, name, tag)
	if err := os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(kust), 0o600); err != nil {
		return nil, "", err
	}
	m, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		return nil, "", fmt.Errorf("kustomize build of %s: %w", overlay, err)
	}
	var objs []*unstructured.Unstructured
	for _, r := range m.Resources() {
		y, err := r.AsYAML()
		if err != nil {
			return nil, "", err
		}
		// Through JSON into Unstructured, so that integers stay int64 (not YAML's float64).
		j, err := yaml.YAMLToJSON(y)
		if err != nil {
			return nil, "", err
		}
		u := &unstructured.Unstructured{}
		if err := u.UnmarshalJSON(j); err != nil {
			return nil, "", err
		}
		objs = append(objs, u)
	}
	return objs, kust, nil
}

// apply applies the objects server-side, as `kubectl apply --server-side` does: Namespaces
// and CRDs first, the CRDs established before anything else.
func apply(ctx context.Context, c client.Client, objs []*unstructured.Unstructured) error {
	var crds, rest []*unstructured.Unstructured
	for _, o := range objs {
		switch o.GetKind() {
		case "CustomResourceDefinition", "Namespace":
			crds = append(crds, o)
		default:
			rest = append(rest, o)
		}
	}
	do := func(o *unstructured.Unstructured) error {
		if err := c.Apply(ctx, client.ApplyConfigurationFromUnstructured(o), client.FieldOwner("test-cluster"), client.ForceOwnership); err != nil {
			return fmt.Errorf("applying %s %s: %w", o.GetKind(), o.GetName(), err)
		}
		return nil
	}
	for _, o := range crds {
		if err := do(o); err != nil {
			return err
		}
	}
	for _, o := range crds {
		if o.GetKind() != "CustomResourceDefinition" {
			continue
		}
		if err := waitFor(ctx, "CRD "+o.GetName()+" established", time.Minute, func(ctx context.Context) (bool, error) {
			var crd apiextensionsv1.CustomResourceDefinition
			if err := c.Get(ctx, types.NamespacedName{Name: o.GetName()}, &crd); err != nil {
				return false, err
			}
			for _, cond := range crd.Status.Conditions {
				if cond.Type == apiextensionsv1.Established && cond.Status == apiextensionsv1.ConditionTrue {
					return true, nil
				}
			}
			return false, nil
		}); err != nil {
			return err
		}
	}
	for _, o := range rest {
		if err := do(o); err != nil {
			return err
		}
	}
	return nil
}
