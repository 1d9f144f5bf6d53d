//go:build cluster

// Package cluster runs the operator as its users do: `kubectl apply -k` of its install into a
// real single-node cluster (etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
// kube-proxy and a kubelet on containerd, built from Go modules and Debian packages), from
// the image `make image` builds. One cluster runs both installs, one after the other
// (installs.go): config/default (one replica, the SQLite history on its volume), then, once
// that is uninstalled, config/overlays/postgres (two replicas, the history in a PostgreSQL
// server the test runs on the node). Each is checked as a user sees it: the restricted Pod
// Security level admits the pods, the replicas Ready, a read-only root file system, a
// published event delivered through the Services to an in-cluster receiver, a leader
// handover, authenticated metrics, the history API's APIService Available through its
// Service and the deliveries' records read with kubectl's credentials (and refused without a
// binding), the SQLite file on the volume and the record across a pod restart, both replicas
// on PostgreSQL and its password in no log. Then it tears the cluster down and fails if the
// machine is not as it was.
//
//	make test-cluster
//
// It needs root. Settings (environment): CLUSTER_ASSETS (the directory of
// `hack/controlplane.sh --cluster`), CLUSTER_IMAGE and CLUSTER_PAUSE_IMAGE (the tarballs of
// `make image` and of hack/image -pause), CLUSTER_DIR (its working directory,
// /var/tmp/docrouter-webhook-operator-test-cluster), CLUSTER_INSTALLS (the installs to check,
// in order: sqlite,postgres), CLUSTER_OVERLAY (a kustomization of yours to install instead,
// with the checks that apply to any install), CLUSTER_LOGS (where the components' logs are
// copied at the end, bin/test-cluster-logs), CLUSTER_HOLD=1 (keep the cluster up after the
// checks until Ctrl-C, with its kubeconfig in CLUSTER_DIR/pki/admin.kubeconfig).
package cluster

import (
	"context"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap/zapcore"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/docrouter/webhook-operator/internal/testenv"
)

func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

func env(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func TestCluster(t *testing.T) {
	assets, image, pause := os.Getenv("CLUSTER_ASSETS"), os.Getenv("CLUSTER_IMAGE"), os.Getenv("CLUSTER_PAUSE_IMAGE")
	if assets == "" || image == "" || pause == "" {
		t.Fatal("CLUSTER_ASSETS, CLUSTER_IMAGE and CLUSTER_PAUSE_IMAGE must be set: run make test-cluster")
	}
	dir := env("CLUSTER_DIR", "/var/tmp/docrouter-webhook-operator-test-cluster")
	overlay := os.Getenv("CLUSTER_OVERLAY")
	logs := env("CLUSTER_LOGS", filepath.Join(repoRoot(), "bin", "test-cluster-logs"))
	for _, p := range []*string{&overlay, &logs, &image, &pause} {
		if *p == "" {
			continue
		}
		abs, err := filepath.Abs(*p)
		if err != nil {
			t.Fatal(err)
		}
		*p = abs
	}

	// Ctrl-C (or SIGTERM) ends the checks; the teardown below still runs, and a second Ctrl-C
	// does not interrupt it.
	ctx, stopSignals := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stopSignals()
	if d, ok := t.Deadline(); ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, d.Add(-3*time.Minute)) // room for the teardown
		defer cancel()
	}

	ins, err := installs(overlay, env("CLUSTER_INSTALLS", "sqlite,postgres"))
	if err != nil {
		t.Fatal(err)
	}

	t0 := time.Now()
	n, err := newNode(dir, assets, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	var cs kubernetes.Interface
	t.Cleanup(func() {
		defer func() { _ = n.lock.Close() }()
		t1 := time.Now()
		tctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		if t.Failed() {
			for name, p := range n.procs {
				t.Logf("the end of %s's log:\n%s", name, tail(p.log, 15))
			}
		}
		// The same comparison while the cluster still runs must see it: otherwise it could not
		// see what a teardown leaves either.
		if cs != nil {
			running := leftovers(n.state.Before, snapshotHost(n.dir), n.ownership())
			kinds := summarize(running)
			t.Logf("while the cluster runs, the comparison with the machine before finds %d differences: %s", len(running), kinds)
			wants := []string{"sysctl", "iptables", "mount", "network interface", "route", "socket", "directory", "cgroup"}
			if n.procs["postgres"] != nil {
				wants = append(wants, "shared memory segment")
			}
			for _, want := range wants {
				if !strings.Contains(kinds, want) {
					t.Errorf("while the cluster runs, the comparison finds no %s that differs: it could not find one left behind either", want)
				}
			}
		}
		n.down(tctx, cs)
		_ = os.RemoveAll(logs)
		if out, err := run("cp", "-r", n.path("logs"), logs); err != nil {
			t.Logf("copying the logs: %v %s", err, out)
		} else {
			t.Logf("the components' logs are in %s", logs)
		}
		for _, err := range n.restoreHost() {
			t.Errorf("teardown: %v", err)
		}
		after := snapshotHost(n.dir)
		left := leftovers(n.state.Before, after, n.ownership())
		for _, l := range left {
			t.Errorf("the cluster left this on the machine: %s", l)
		}
		if len(left) == 0 {
			t.Logf("the machine is as it was: %d sysctls, the iptables and ip6tables rules, %d nftables tables, %d mounts, %d network interfaces, %d routes, %d listening sockets, %d directories, %d cgroups and %d System V shared memory segments compared before and after",
				len(after.Sysctls), len(after.NftTables), len(after.Mounts), len(after.Links), len(after.Routes), len(after.Listeners), len(after.Paths), len(after.Cgroups), len(after.SharedMemory))
		}
		t.Logf("teardown: %.1fs; the whole run: %.1fs", time.Since(t1).Seconds(), time.Since(t0).Seconds())
	})

	cs, err = n.up(ctx, []string{pause, image})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("cluster up: %.1fs", time.Since(t0).Seconds())

	// The client logs through controller-runtime's logger (its errors only, here): without one,
	// controller-runtime prints a warning with a stack trace once 30 s have passed.
	logf.SetLogger(zap.New(zap.WriteTo(os.Stderr), zap.Level(zapcore.ErrorLevel)))
	restCfg, err := clientcmd.BuildConfigFromFlags("", n.adminConfig)
	if err != nil {
		t.Fatal(err)
	}
	scheme := testenv.NewScheme()
	if err := apiextensionsv1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	c, err := client.New(restCfg, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	imageName, err := imageRef(image)
	if err != nil {
		t.Fatal(err)
	}
	k := &checks{t: t, n: n, cs: cs, c: c, image: imageName, installs: ins}
	t2 := time.Now()
	k.run(ctx)
	t.Logf("checks: %.1fs", time.Since(t2).Seconds())

	if os.Getenv("CLUSTER_HOLD") != "" && !t.Failed() {
		t.Logf("CLUSTER_HOLD: the cluster stays up until Ctrl-C; export KUBECONFIG=%s", n.adminConfig)
		<-ctx.Done()
	}
}

// kubectl logs `kubectl ARGS` against the cluster when kubectl is installed: the output users see.
func (k *checks) kubectl(args ...string) {
	if _, err := exec.LookPath("kubectl"); err != nil {
		return
	}
	out, err := exec.Command("kubectl", append([]string{"--kubeconfig", k.n.adminConfig}, args...)...).CombinedOutput()
	if err != nil {
		k.t.Logf("kubectl %s: %v", strings.Join(args, " "), err)
	}
	k.t.Logf("$ kubectl %s\n%s", strings.Join(args, " "), strings.TrimRight(string(out), "\n"))
}
