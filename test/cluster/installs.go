//go:build cluster

package cluster

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/docrouter/webhook-operator/internal/history"
)

// installation is one install the checks run on. make test-cluster runs config/default
// (SQLite on its volume, one replica) and then config/overlays/postgres (a PostgreSQL server
// on the node, two replicas) in the same cluster: one bring-up and teardown for both, the
// first install removed before the second (the CRDs, and what the checks made in demo, stay).
type installation struct {
	// name: "sqlite", "postgres" (in the names of checks and events), or "overlay".
	name    string
	overlay string
	// before gives what runs once the install's Namespace exists, before the rest is applied.
	before func(*checks) func(context.Context) error
	steps  func(*checks) []step
}

// installs are the installs to run: CLUSTER_OVERLAY alone when set (with the checks that
// apply to any install), else those CLUSTER_INSTALLS names (sqlite,postgres: both).
func installs(overlay, names string) ([]*installation, error) {
	if overlay != "" {
		return []*installation{{name: "overlay", overlay: overlay, steps: func(k *checks) []step { return k.common(k.handoverSteps()...) }}}, nil
	}
	root := repoRoot()
	all := map[string]*installation{
		"sqlite": {name: "sqlite", overlay: filepath.Join(root, "config", "default"), steps: func(k *checks) []step {
			return k.common(
				step{"leader handover", k.handover},
				step{"metrics through the metrics Service", k.metrics},
				step{"pods reach nothing beyond the bridge", k.isolation},
				step{"history API through the aggregator", k.historyAPI},
				step{"SQLite history on the volume", k.sqliteVolume},
				step{"history kept across a pod restart", k.historyRestart},
			)
		}},
		"postgres": {name: "postgres", overlay: filepath.Join(root, "config", "overlays", "postgres"), before: func(k *checks) func(context.Context) error { return k.databaseSecret }, steps: func(k *checks) []step {
			return append([]step{{"PostgreSQL on the bridge", k.startPostgres}}, k.common(
				step{"history API through the aggregator", k.historyAPI},
				step{"both replicas on PostgreSQL", k.postgresClients},
				step{"the database password in no log", k.passwordNotLogged},
				step{"leader handover", k.handover},
				step{"metrics through the metrics Service", k.metrics},
				step{"history API after the handover, from both replicas", k.historyAPI},
				step{"the database password in no log after the handover", k.passwordNotLogged},
			)...)
		}},
	}
	var out []*installation
	for _, n := range strings.Split(names, ",") {
		in := all[strings.TrimSpace(n)]
		if in == nil {
			return nil, fmt.Errorf("CLUSTER_INSTALLS=%s: %q is not an install of the checks (sqlite, postgres)", names, n)
		}
		out = append(out, in)
	}
	return out, nil
}

// common are the checks of every install, followed by more.
func (k *checks) common(more ...step) []step {
	return append([]step{
		{"install", k.install},
		{"restricted Pod Security", k.podSecurity},
		{"replicas Running and Ready", k.replicasReady},
		{"read-only root file system", k.readOnlyRoot},
		{"published event delivered", k.delivery},
	}, more...)
}

func (k *checks) handoverSteps() []step {
	return []step{
		{"leader handover", k.handover},
		{"metrics through the metrics Service", k.metrics},
		{"pods reach nothing beyond the bridge", k.isolation},
	}
}

// uninstall removes the install as `kubectl delete -k` would, less the CRDs (a store switch
// keeps the endpoints and deliveries): the APIService first (discovery stops naming the
// group), the other objects, the Namespace last, waiting until it is gone with its pods; then
// the volumes the checks made for its claims.
func (k *checks) uninstall(ctx context.Context) error {
	t0 := time.Now()
	rank := func(o *unstructured.Unstructured) int {
		switch o.GetKind() {
		case "APIService":
			return 0
		case "Namespace":
			return 2
		}
		return 1
	}
	objs := slices.Clone(k.objs)
	slices.SortStableFunc(objs, func(a, b *unstructured.Unstructured) int { return rank(a) - rank(b) })
	deleted := 0
	for _, o := range objs {
		if o.GetKind() == "CustomResourceDefinition" {
			continue
		}
		if err := k.c.Delete(ctx, o.DeepCopy(), client.PropagationPolicy(metav1.DeletePropagationBackground)); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("deleting %s %s: %w", o.GetKind(), o.GetName(), err)
		}
		deleted++
	}
	if err := waitFor(ctx, "namespace "+installNS+" deleted with its pods", 2*time.Minute, func(ctx context.Context) (bool, error) {
		ns, err := k.cs.CoreV1().Namespaces().Get(ctx, installNS, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return true, nil
		}
		if err != nil {
			return false, err
		}
		var why []string
		for _, c := range ns.Status.Conditions {
			if c.Status == corev1.ConditionTrue {
				why = append(why, c.Message)
			}
		}
		return false, fmt.Errorf("%s: %s", ns.Status.Phase, strings.Join(why, "; "))
	}, k.n.procs["kube-controller-manager"]); err != nil {
		return err
	}
	for claim := range k.volumes {
		pv := &corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: "test-cluster-" + installNS + "-" + claim}}
		if err := k.c.Delete(ctx, pv); err != nil && !apierrors.IsNotFound(err) {
			return err
		}
		if err := waitFor(ctx, "PersistentVolume "+pv.Name+" deleted", time.Minute, func(ctx context.Context) (bool, error) {
			err := k.c.Get(ctx, types.NamespacedName{Name: pv.Name}, &corev1.PersistentVolume{})
			return apierrors.IsNotFound(err), err
		}); err != nil {
			return err
		}
	}
	k.logf("uninstalled %s: %d objects deleted (the CRDs kept), namespace %s gone with its pods, %d volumes deleted, in %.1fs",
		k.cur.overlay, deleted, installNS, len(k.volumes), time.Since(t0).Seconds())
	return nil
}

// startPostgres starts the PostgreSQL server that the PostgreSQL install's history goes to.
func (k *checks) startPostgres(ctx context.Context) error {
	pg, err := k.n.startPostgres(ctx)
	if err != nil {
		return err
	}
	k.pg = pg
	return nil
}

// databaseSecret creates the Secret that config/overlays/postgres reads the database's URL
// from, as its instructions say (kubectl create secret generic ... --from-literal=url=...).
func (k *checks) databaseSecret(ctx context.Context) error {
	if k.pg == nil {
		return fmt.Errorf("no PostgreSQL server for the install")
	}
	sec := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "webhook-operator-history-database", Namespace: installNS},
		StringData: map[string]string{"url": k.pg.url()},
	}
	if _, err := k.cs.CoreV1().Secrets(installNS).Create(ctx, sec, metav1.CreateOptions{}); err != nil {
		return err
	}
	k.logf("Secret %s/%s created: url=%s", installNS, sec.Name, history.RedactDSN(k.pg.url()))
	return nil
}
