package historyapi_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	authenticationv1 "k8s.io/api/authentication/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"

	historyv1alpha1 "github.com/docrouter/webhook-operator/api/history/v1alpha1"
	"github.com/docrouter/webhook-operator/internal/aggregation"
	"github.com/docrouter/webhook-operator/internal/history"
	"github.com/docrouter/webhook-operator/internal/history/historytest"
	"github.com/docrouter/webhook-operator/internal/historyapi"
	"github.com/docrouter/webhook-operator/internal/testenv"
)

var env *testenv.Env

// The tests run against a real kube-apiserver with API aggregation on and kube-controller-
// manager's ClusterRole aggregation (so the built-in view role holds the history viewer role,
// as in a cluster), and against both store engines: SQLite in process and a PostgreSQL server
// that historytest starts.
func TestMain(m *testing.M) {
	e, err := testenv.Start()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if err := e.StartControllerManager("clusterrole-aggregation"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		_ = e.Stop()
		os.Exit(1)
	}
	env = e
	code := historytest.Main(m)
	if err := e.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, "stopping envtest:", err)
	}
	os.Exit(code)
}

var engines = []struct {
	name string
	open func(testing.TB, ...history.Options) history.Store
}{
	{"sqlite", historytest.SQLite},
	{"postgres", historytest.OpenPostgres},
}

// The install's names, as config/default makes them.
const (
	installNamespace = "docrouter-system"
	operatorSA       = "webhook-operator-controller-manager"
)

var (
	installOnce sync.Once
	operatorCfg *rest.Config
	installErr  error
)

// installRBAC applies the install's namespace, ServiceAccount and RBAC from config/default (as
// kubectl apply -k would) and returns a client configuration of the operator's ServiceAccount:
// the history API then runs with exactly the permissions the install grants.
func installRBAC(t *testing.T) *rest.Config {
	t.Helper()
	installOnce.Do(func() { operatorCfg, installErr = doInstallRBAC() })
	if installErr != nil {
		t.Fatal(installErr)
	}
	return operatorCfg
}

func doInstallRBAC() (*rest.Config, error) {
	ctx := context.Background()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	resmap, err := k.Run(filesys.MakeFsOnDisk(), filepath.Join(testenv.RepoRoot(), "config", "default"))
	if err != nil {
		return nil, fmt.Errorf("rendering config/default: %w", err)
	}
	dyn, err := dynamic.NewForConfig(env.Config)
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
	cs, err := kubernetes.NewForConfig(env.Config)
	if err != nil {
		return nil, err
	}
	tok, err := cs.CoreV1().ServiceAccounts(installNamespace).CreateToken(ctx, operatorSA,
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr.To[int64](6 * 3600)}}, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("a token for the operator's ServiceAccount: %w", err)
	}
	cfg := &rest.Config{Host: env.Config.Host, BearerToken: tok.Status.Token, QPS: -1}
	cfg.CAData = env.Config.CAData
	return cfg, nil
}

// api is a history API server running against a store, registered with the API server.
type api struct {
	store history.Store
	port  int
	// cfg is the operator's ServiceAccount.
	cfg *rest.Config
}

// startAPI runs the history API as the operator does (historyapi.Server as the install's
// ServiceAccount, its own certificate in the install's Secret, the APIService's caBundle
// written by it) on a free loopback port, registers it with the API server (an ExternalName
// Service, as make dev does) and waits until requests through the API server reach it.
func startAPI(t *testing.T, store history.Store) *api {
	t.Helper()
	cfg := installRBAC(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	if err := aggregation.Register(context.Background(), env.Config, aggregation.Registration{Namespace: installNamespace, Service: historyapi.DefaultService, Port: port}); err != nil {
		t.Fatal(err)
	}
	ctx, done := runServer(t, cfg, store, ln)

	// Ready when a list through the API server answers (the APIService is Available and
	// routes to this server: an earlier test's server is gone).
	rc := recordsClient(t, env.Config)
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 90*time.Second, true, func(ctx context.Context) (bool, error) {
		select {
		case err := <-done:
			return false, fmt.Errorf("the history API exited early: %v", err)
		default:
		}
		var list historyv1alpha1.WebhookDeliveryRecordList
		return rc.Get().Namespace("default").Resource("webhookdeliveryrecords").Param("limit", "1").Do(ctx).Into(&list) == nil, nil
	})
	if err != nil {
		t.Fatalf("the history API was not reachable through the API server within 90s: %v", err)
	}
	return &api{store: store, port: port, cfg: cfg}
}

// runServer runs historyapi.Server on ln as the operator does, until the test ends.
func runServer(t *testing.T, cfg *rest.Config, store history.Store, ln net.Listener) (context.Context, <-chan error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	opts := historyapi.DefaultOptions()
	opts.BindAddress = ln.Addr().String()
	opts.Namespace = installNamespace
	opts.PollInterval = 200 * time.Millisecond
	srv := &historyapi.Server{
		Options:   opts,
		Config:    cfg,
		Store:     store,
		Endpoints: historyapi.ClientEndpoints{Reader: env.Client},
		Listener:  ln,
		Log:       testr.NewWithOptions(t, testr.Options{Verbosity: 0}),
	}
	done := make(chan error, 1)
	go func() { done <- srv.Start(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("the history API stopped with: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("the history API did not stop within 30s of its context ending")
		}
	})
	return ctx, done
}

// recordsClient is a REST client of the history group, as kubectl builds one.
func recordsClient(tb testing.TB, cfg *rest.Config) *rest.RESTClient {
	tb.Helper()
	c := rest.CopyConfig(cfg)
	c.GroupVersion = &historyv1alpha1.GroupVersion
	c.APIPath = "/apis"
	c.NegotiatedSerializer = historyapi.Codecs.WithoutConversion()
	c.QPS, c.Burst = -1, -1
	rc, err := rest.RESTClientFor(c)
	if err != nil {
		tb.Fatal(err)
	}
	return rc
}

// user is a person known to the API server by a client certificate (envtest signs it with the
// cluster's client CA): kube-apiserver authenticates them, the aggregator forwards their name.
func user(t *testing.T, name string) *testUser {
	t.Helper()
	u, err := env.Environment().AddUser(envtest.User{Name: name}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return &testUser{Name: name, AuthenticatedUser: u}
}

type testUser struct {
	Name string
	*envtest.AuthenticatedUser
}

// bindView binds the built-in view ClusterRole to a user in namespace.
func bindView(t *testing.T, ns, name string) {
	t.Helper()
	rb := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "view-" + name},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "view"},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: name}},
	}
	if err := env.Client.Create(context.Background(), rb); err != nil {
		t.Fatal(err)
	}
}

// writeAll writes records in batches, as the archiver does.
func writeAll(tb testing.TB, s history.Store, records []history.Record) {
	tb.Helper()
	for len(records) > 0 {
		n := min(len(records), 500)
		if err := s.Write(context.Background(), records[:n]); err != nil {
			tb.Fatal(err)
		}
		records = records[n:]
	}
}
