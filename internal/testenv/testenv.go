// Package testenv runs a real kube-apiserver and etcd (envtest) with the operator's CRDs
// installed, and scopes a controller-runtime manager to one namespace per test, so that tests
// run in isolation against the real API server: CEL validation, the status subresource,
// patches and watches behave as in a cluster. API aggregation is on (the front-proxy flags of
// internal/aggregation), so an aggregated API such as the history API can be registered.
//
// The binaries come from KUBEBUILDER_ASSETS, which `make test` points at the control plane that
// hack/controlplane.sh builds from Go modules.
package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap/zapcore"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
	"github.com/docrouter/webhook-operator/internal/aggregation"
)

// Env is a running control plane with the CRDs installed.
type Env struct {
	Config *rest.Config
	Client client.Client
	Scheme *k8sruntime.Scheme
	env    *envtest.Environment
	// frontProxyDir holds the front-proxy CA and client certificate (removed by Stop).
	frontProxyDir string
	// controllerManager is kube-controller-manager, when StartControllerManager ran it.
	controllerManager *exec.Cmd
	controllerDir     string
}

// Scheme returns a scheme with the built-in kinds and the operator's kinds.
func NewScheme() *k8sruntime.Scheme {
	s := k8sruntime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(s))
	utilruntime.Must(webhooksv1alpha1.AddToScheme(s))
	return s
}

// RepoRoot is the checkout's top directory.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// Start starts kube-apiserver and etcd and installs the CRDs of config/crd/bases.
func Start() (*Env, error) { return StartWith(Settings{}) }

// Settings change the control plane of StartWith.
type Settings struct {
	// APIServerCertDir keeps the API server's serving certificates in a directory of the
	// caller's (see StartRestartable).
	APIServerCertDir string
	// EtcdQuotaBytes sets etcd's --quota-backend-bytes, for tests of an etcd that is full.
	EtcdQuotaBytes int64
	// APIServerArgs set more kube-apiserver flags, by name without the dashes, such as
	// {"etcd-compaction-interval": "30s"} (the benchmark's soak).
	APIServerArgs map[string]string
}

// StartWith is Start with settings.
func StartWith(s Settings) (*Env, error) { return start(s) }

// StartRestartable is Start with the API server's serving certificates kept in certDir, so that
// Environment().ControlPlane.APIServer can be stopped and started again (an API-server outage)
// while clients keep their kubeconfig: envtest otherwise makes a new serving CA on each start.
// The caller removes certDir after Stop.
func StartRestartable(certDir string) (*Env, error) {
	return start(Settings{APIServerCertDir: certDir})
}

func start(settings Settings) (*Env, error) {
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		return nil, errors.New("KUBEBUILDER_ASSETS is not set: run `make test`, or export KUBEBUILDER_ASSETS=\"$(hack/controlplane.sh)\"")
	}
	logf.SetLogger(zap.New(zap.WriteTo(os.Stderr), zap.UseDevMode(true), zap.Level(zapLevel())))
	scheme := NewScheme()
	e := &envtest.Environment{
		Scheme:                scheme,
		CRDDirectoryPaths:     []string{filepath.Join(RepoRoot(), "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
	}
	if settings.APIServerCertDir != "" {
		e.ControlPlane.GetAPIServer().CertDir = settings.APIServerCertDir
	}
	for name, value := range settings.APIServerArgs {
		e.ControlPlane.GetAPIServer().Configure().Set(name, value)
	}
	if settings.EtcdQuotaBytes > 0 {
		etcd := &envtest.Etcd{}
		etcd.Configure().Set("quota-backend-bytes", strconv.FormatInt(settings.EtcdQuotaBytes, 10))
		e.ControlPlane.Etcd = etcd
	}
	// API aggregation on, as in a cluster: the history API is an APIService.
	frontProxyDir, err := os.MkdirTemp("", "envtest-front-proxy-")
	if err != nil {
		return nil, err
	}
	if err := aggregation.ConfigureFrontProxy(e.ControlPlane.GetAPIServer(), frontProxyDir); err != nil {
		_ = os.RemoveAll(frontProxyDir)
		return nil, err
	}
	cfg, err := e.Start()
	if err != nil {
		_ = os.RemoveAll(frontProxyDir)
		return nil, fmt.Errorf("starting envtest: %w", err)
	}
	// Unthrottled, as controller-runtime's GetConfig leaves it.
	cfg.QPS, cfg.Burst = -1, -1
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		_ = e.Stop()
		_ = os.RemoveAll(frontProxyDir)
		return nil, err
	}
	return &Env{Config: cfg, Client: c, Scheme: scheme, env: e, frontProxyDir: frontProxyDir}, nil
}

// zapLevel is quiet by default; TEST_LOG_LEVEL=debug shows the controllers' logs.
func zapLevel() zapcore.Level {
	if os.Getenv("TEST_LOG_LEVEL") == "debug" {
		return -1
	}
	return 2 // error and above
}

// StartControllerManager runs kube-controller-manager (from KUBEBUILDER_ASSETS, which
// hack/controlplane.sh fills) against the control plane with only the given controllers, such
// as clusterrole-aggregation, which fills the built-in view, edit and admin ClusterRoles from
// the ClusterRoles labelled to aggregate into them (envtest runs no controllers). Stop stops it.
func (e *Env) StartControllerManager(controllers ...string) error {
	bin := filepath.Join(os.Getenv("KUBEBUILDER_ASSETS"), "kube-controller-manager")
	if _, err := os.Stat(bin); err != nil {
		return fmt.Errorf("kube-controller-manager is not in KUBEBUILDER_ASSETS (%s): run hack/controlplane.sh, which builds it", bin)
	}
	user, err := e.env.AddUser(envtest.User{Name: "system:kube-controller-manager", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return err
	}
	kubeconfig, err := user.KubeConfig()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "envtest-kcm-")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "kubeconfig"), kubeconfig, 0o600); err != nil {
		return err
	}
	logFile, err := os.Create(filepath.Join(dir, "kube-controller-manager.log"))
	if err != nil {
		return err
	}
	defer func() { _ = logFile.Close() }() // the child process holds its own descriptor
	cmd := exec.Command(bin,
		"--kubeconfig="+filepath.Join(dir, "kubeconfig"),
		"--controllers="+strings.Join(controllers, ","),
		"--leader-elect=false",
		"--secure-port=0",
		"--use-service-account-credentials=false",
	)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		_ = os.RemoveAll(dir)
		return fmt.Errorf("starting kube-controller-manager: %w", err)
	}
	e.controllerManager, e.controllerDir = cmd, dir
	return nil
}

// Stop stops the control plane.
func (e *Env) Stop() error {
	if cmd := e.controllerManager; cmd != nil {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		_ = os.RemoveAll(e.controllerDir)
	}
	err := e.env.Stop()
	_ = os.RemoveAll(e.frontProxyDir)
	return err
}

// Environment exposes envtest's environment (for its control plane's processes).
func (e *Env) Environment() *envtest.Environment { return e.env }

// Run is a TestMain body: start the control plane, run the tests, stop it. run, when given,
// runs the tests instead of m.Run (such as historytest.Main, which also stops the PostgreSQL
// server the tests started).
//
//	func TestMain(m *testing.M) { os.Exit(testenv.Run(m, &env)) }
//	func TestMain(m *testing.M) { os.Exit(testenv.Run(m, &env, historytest.Main)) }
func Run(m *testing.M, env **Env, run ...func(*testing.M) int) int {
	e, err := Start()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	*env = e
	var code int
	if len(run) > 0 {
		code = run[0](m)
	} else {
		code = m.Run()
	}
	if err := e.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, "stopping envtest:", err)
	}
	return code
}

// Namespace creates a namespace of its own for one test.
func (e *Env) Namespace(tb testing.TB) string {
	tb.Helper()
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "t-" + hex.EncodeToString(b)}}
	if err := e.Client.Create(context.Background(), ns); err != nil {
		tb.Fatalf("creating namespace: %v", err)
	}
	return ns.Name
}

// ManagerOptions returns manager options scoped to namespace, with metrics, probes and leader
// election off, so that several managers can run in one test binary.
func (e *Env) ManagerOptions(namespace string) ctrl.Options {
	return ctrl.Options{
		Scheme:                 e.Scheme,
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
		Cache: cache.Options{
			DefaultNamespaces: map[string]cache.Config{namespace: {}},
			DefaultTransform:  cache.TransformStripManagedFields(),
		},
		Controller: config.Controller{SkipNameValidation: ptr.To(true)},
	}
}

// StartManager starts a manager with opts, after setup registers its controllers. It is stopped
// when the test ends, or earlier by calling the returned function, which waits for it to stop.
func (e *Env) StartManager(tb testing.TB, opts ctrl.Options, setup func(context.Context, ctrl.Manager) error) (stop func()) {
	tb.Helper()
	mgr, err := ctrl.NewManager(e.Config, opts)
	if err != nil {
		tb.Fatalf("creating manager: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	if err := setup(ctx, mgr); err != nil {
		cancel()
		tb.Fatalf("setting up manager: %v", err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := mgr.Start(ctx); err != nil {
			tb.Errorf("manager stopped with error: %v", err)
		}
	}()
	synced, syncCancel := context.WithTimeout(ctx, 30*time.Second)
	defer syncCancel()
	if !mgr.GetCache().WaitForCacheSync(synced) {
		cancel()
		tb.Fatalf("manager cache did not sync")
	}
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		<-done
	}
	tb.Cleanup(stop)
	return stop
}
