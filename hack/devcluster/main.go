// Command devcluster runs the local control plane of `make dev`: etcd and kube-apiserver on
// loopback, started exactly as envtest starts them for the tests (same flags, certificates,
// service-account keys and RBAC authorizer), with the operator's CRDs installed and a kubeconfig
// for an admin user (group system:masters) written to <dir>/kubeconfig. It runs until SIGINT or
// SIGTERM, then stops kube-apiserver and etcd.
//
// etcd keeps its data in <dir>/etcd, so objects survive a restart; the API server's certificates
// are made afresh at each start (in <dir>/apiserver) and the kubeconfig is rewritten.
//
// API aggregation is on, as in a cluster (the front-proxy CA and client certificate are made at
// each start, in <dir>/front-proxy), and with --history-api-port the operator's history API is
// registered: an APIService whose ExternalName Service sends kube-apiserver to
// https://localhost:PORT, where the operator serves it (its own certificate for
// webhook-operator-history-api.docrouter-system.svc, whose CA it writes into the APIService).
//
// hack/dev.sh runs it; it is not part of the operator's binary.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/docrouter/webhook-operator/internal/aggregation"
)

// The history API's Service, as config/default names it.
const (
	historyNamespace = "docrouter-system"
	historyService   = "webhook-operator-history-api"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "devcluster:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		dir, crds, assets string
		apiPort, etcdPort int
		historyPort       int
		startTimeout      time.Duration
	)
	flag.StringVar(&dir, "dir", ".dev", "Directory for etcd's data, the API server's certificates and the kubeconfig.")
	flag.StringVar(&crds, "crds", "config/crd/bases", "Directory of the CRDs to install.")
	flag.StringVar(&assets, "assets", os.Getenv("KUBEBUILDER_ASSETS"), "Directory holding kube-apiserver and etcd (hack/controlplane.sh prints it).")
	flag.IntVar(&apiPort, "apiserver-port", 16443, "Loopback port of kube-apiserver (HTTPS).")
	flag.IntVar(&etcdPort, "etcd-port", 16379, "Loopback port of etcd's client URL.")
	flag.IntVar(&historyPort, "history-api-port", 0, "Port on localhost where the operator serves the history API, to register it (an APIService); 0 registers nothing.")
	flag.DurationVar(&startTimeout, "start-timeout", 90*time.Second, "How long etcd and kube-apiserver may each take to start.")
	flag.Parse()
	if assets == "" {
		return errors.New("--assets (or KUBEBUILDER_ASSETS) is required: the directory hack/controlplane.sh prints")
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	etcdDir := filepath.Join(dir, "etcd")
	certDir := filepath.Join(dir, "apiserver")
	frontProxyDir := filepath.Join(dir, "front-proxy")
	kubeconfig := filepath.Join(dir, "kubeconfig")
	// Certificates are made at each start: envtest only makes (and remembers) its CA when the
	// directory is empty.
	for _, d := range []string{certDir, frontProxyDir} {
		if err := os.RemoveAll(d); err != nil {
			return err
		}
	}
	for _, d := range []string{etcdDir, certDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
	}
	_ = os.Remove(kubeconfig) // a stale kubeconfig would point kubectl at a server that is gone

	env := &envtest.Environment{
		CRDDirectoryPaths:        []string{crds},
		ErrorIfCRDPathMissing:    true,
		BinaryAssetsDirectory:    assets,
		ControlPlaneStartTimeout: startTimeout,
		ControlPlaneStopTimeout:  30 * time.Second,
	}
	env.ControlPlane.Etcd = &envtest.Etcd{
		DataDir: etcdDir,
		URL:     &url.URL{Scheme: "http", Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(etcdPort))},
		Out:     os.Stdout,
		Err:     os.Stderr,
	}
	api := env.ControlPlane.GetAPIServer()
	api.SecureServing.Address, api.SecureServing.Port = "127.0.0.1", strconv.Itoa(apiPort)
	api.CertDir = certDir
	api.Out, api.Err = os.Stdout, os.Stderr
	if err := aggregation.ConfigureFrontProxy(api, frontProxyDir); err != nil {
		return err
	}

	// Signals are caught from here on, so that a SIGTERM while etcd and kube-apiserver start
	// still stops them (they run in process groups of their own and would outlive this process).
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	fmt.Printf("devcluster: starting etcd (127.0.0.1:%d, data in %s) and kube-apiserver (https://127.0.0.1:%d)\n", etcdPort, etcdDir, apiPort)
	if _, err := env.Start(); err != nil {
		_ = env.Stop()
		return fmt.Errorf("starting the control plane: %w", err)
	}
	if ctx.Err() != nil {
		fmt.Println("devcluster: stopping kube-apiserver and etcd")
		return env.Stop()
	}
	user, err := env.AddUser(envtest.User{Name: "dev-admin", Groups: []string{"system:masters"}}, nil)
	if err == nil {
		err = writeKubeconfig(kubeconfig, user)
	}
	if err == nil && historyPort != 0 {
		err = aggregation.Register(ctx, user.Config(), aggregation.Registration{Namespace: historyNamespace, Service: historyService, Port: historyPort})
		if err == nil {
			fmt.Printf("devcluster: history API registered: %s -> https://localhost:%d (Service %s/%s)\n", "history.webhooks.docrouter.ai", historyPort, historyNamespace, historyService)
		}
	} else if err == nil {
		// No history API this time: an APIService left from an earlier run would make every
		// kubectl command warn.
		err = aggregation.Unregister(ctx, user.Config())
	}
	if err != nil {
		_ = env.Stop()
		return err
	}
	fmt.Printf("devcluster: ready; kubeconfig %s\n", kubeconfig)

	<-ctx.Done()
	stop()
	fmt.Println("devcluster: stopping kube-apiserver and etcd")
	_ = os.Remove(kubeconfig)
	return env.Stop()
}

// writeKubeconfig writes the admin user's kubeconfig atomically, readable by the owner only:
// it holds the user's client key.
func writeKubeconfig(path string, user *envtest.AuthenticatedUser) error {
	data, err := user.KubeConfig()
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
