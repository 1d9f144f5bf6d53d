// Package stack runs the whole operator on a test control plane, as `make dev` runs it on its
// own: kube-apiserver and etcd (envtest) with API aggregation, kube-controller-manager's
// ClusterRole aggregation (so the built-in view and edit roles hold the operator's roles, as in a
// cluster), the install's RBAC from config/default, the controllers, a real history store
// (SQLite in a temporary directory) and the history API registered through the API server. The
// kubectl plugin's and the console's tests drive it as users with their own credentials do.
//
// One stack serves a test binary: start it in TestMain, give each test a namespace of its own.
package stack

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/go-logr/logr"
	authenticationv1 "k8s.io/api/authentication/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"

	historyv1alpha1 "github.com/docrouter/webhook-operator/api/history/v1alpha1"
	"github.com/docrouter/webhook-operator/controllers"
	"github.com/docrouter/webhook-operator/internal/aggregation"
	"github.com/docrouter/webhook-operator/internal/history"
	"github.com/docrouter/webhook-operator/internal/historyapi"
	"github.com/docrouter/webhook-operator/internal/testenv"
)

// The install's names, as config/default makes them.
const (
	InstallNamespace = "docrouter-system"
	operatorSA       = "webhook-operator-controller-manager"
)

// Stack is the running operator and its control plane.
type Stack struct {
	Env *testenv.Env
	// Client is a cluster administrator's client that also knows the history API's kinds.
	Client client.Client
	Store  history.Store
	// Operator are the controllers' options the stack runs with.
	Operator controllers.Options

	dir    string
	cancel context.CancelFunc
	done   []chan error
}

// Options tune a stack.
type Options struct {
	// Operator are the controllers' options; zero: controllers.DefaultOptions with the short
	// intervals of tests.
	Operator *controllers.Options
}

// TestOptions are the controllers' defaults with intervals short enough for tests.
func TestOptions() controllers.Options {
	o := controllers.DefaultOptions()
	o.WaitRetryInterval = 500 * time.Millisecond
	o.HealthUpdateInterval = 200 * time.Millisecond
	o.SecretTTL = 0
	return o
}

// Start starts the control plane and the operator. Stop stops both.
func Start(opts Options) (*Stack, error) {
	env, err := testenv.Start()
	if err != nil {
		return nil, err
	}
	s := &Stack{Env: env, Operator: TestOptions()}
	if opts.Operator != nil {
		s.Operator = *opts.Operator
	}
	scheme := testenv.NewScheme()
	utilruntime.Must(historyv1alpha1.AddToScheme(scheme))
	if s.Client, err = client.New(env.Config, client.Options{Scheme: scheme}); err != nil {
		_ = env.Stop()
		return nil, err
	}
	if err := s.start(); err != nil {
		_ = s.Stop()
		return nil, err
	}
	return s, nil
}

func (s *Stack) start() error {
	if err := s.Env.StartControllerManager("clusterrole-aggregation"); err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "webhooks-stack-")
	if err != nil {
		return err
	}
	s.dir = dir
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	openCtx, openCancel := context.WithTimeout(ctx, time.Minute)
	defer openCancel()
	if s.Store, err = history.Open(openCtx, "sqlite://"+filepath.Join(dir, "history.db"), history.Options{}); err != nil {
		return fmt.Errorf("opening the history store: %w", err)
	}
	operatorCfg, err := installRBAC(ctx, s.Env.Config)
	if err != nil {
		return err
	}
	if err := s.startHistoryAPI(ctx, operatorCfg); err != nil {
		return err
	}
	return s.startOperator(ctx)
}

// startHistoryAPI runs the history API as the operator does (as the install's ServiceAccount,
// its own certificate in the install's Secret) on a free loopback port, registers it with the
// API server as make dev does, and waits until a list through the API server reaches it.
func (s *Stack) startHistoryAPI(ctx context.Context, operatorCfg *rest.Config) error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	port := ln.Addr().(*net.TCPAddr).Port
	if err := aggregation.Register(ctx, s.Env.Config, aggregation.Registration{Namespace: InstallNamespace, Service: historyapi.DefaultService, Port: port}); err != nil {
		_ = ln.Close()
		return err
	}
	opts := historyapi.DefaultOptions()
	opts.BindAddress = ln.Addr().String()
	opts.Namespace = InstallNamespace
	opts.PollInterval = 200 * time.Millisecond
	srv := &historyapi.Server{
		Options: opts, Config: operatorCfg, Store: s.Store,
		Endpoints: historyapi.ClientEndpoints{Reader: s.Env.Client},
		Listener:  ln, Log: logr.Discard(),
	}
	done := make(chan error, 1)
	s.done = append(s.done, done)
	go func() { done <- srv.Start(ctx) }()
	dyn, err := dynamic.NewForConfig(s.Env.Config)
	if err != nil {
		return err
	}
	records := dyn.Resource(historyv1alpha1.GroupVersion.WithResource(historyv1alpha1.RecordsResource)).Namespace("default")
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 90*time.Second, true, func(ctx context.Context) (bool, error) {
		select {
		case err := <-done:
			return false, fmt.Errorf("the history API exited early: %v", err)
		default:
		}
		_, err := records.List(ctx, metav1.ListOptions{Limit: 1})
		return err == nil, nil
	})
	if err != nil {
		return fmt.Errorf("the history API was not reachable through the API server within 90s: %w", err)
	}
	return nil
}

// startOperator runs the controllers in every namespace, as the operator binary does.
func (s *Stack) startOperator(ctx context.Context) error {
	mgr, err := ctrl.NewManager(s.Env.Config, ctrl.Options{
		Scheme:                 s.Env.Scheme,
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
		Cache:                  controllers.CacheOptions(cache.Options{DefaultTransform: cache.TransformStripManagedFields()}),
		Controller:             config.Controller{SkipNameValidation: ptr.To(true)},
	})
	if err != nil {
		return err
	}
	if err := setupOperator(ctx, mgr, s.Operator, s.Store); err != nil {
		return err
	}
	done := make(chan error, 1)
	s.done = append(s.done, done)
	go func() { done <- mgr.Start(ctx) }()
	synced, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if !mgr.GetCache().WaitForCacheSync(synced) {
		return errors.New("the operator's cache did not sync within 60s")
	}
	return nil
}

// Stop stops the operator, the history API and the control plane.
func (s *Stack) Stop() error {
	var errs []error
	if s.cancel != nil {
		s.cancel()
		for _, done := range s.done {
			select {
			case err := <-done:
				if err != nil && !errors.Is(err, context.Canceled) {
					errs = append(errs, err)
				}
			case <-time.After(30 * time.Second):
				errs = append(errs, errors.New("a part of the stack did not stop within 30s"))
			}
		}
	}
	if s.Store != nil {
		errs = append(errs, s.Store.Close())
	}
	errs = append(errs, s.Env.Stop())
	if s.dir != "" {
		_ = os.RemoveAll(s.dir)
	}
	return errors.Join(errs...)
}

// User is a person the API server knows by a client certificate (envtest signs it with the
// cluster's client CA), with a kubeconfig of their own.
type User struct {
	Name       string
	Config     *rest.Config
	Kubeconfig string
}

// NewUser makes a user in groups (system:masters: a cluster administrator) and writes their
// kubeconfig into dir.
func (s *Stack) NewUser(name, dir string, groups ...string) (*User, error) {
	u, err := s.Env.Environment().AddUser(envtest.User{Name: name, Groups: groups}, nil)
	if err != nil {
		return nil, err
	}
	kc, err := u.KubeConfig()
	if err != nil {
		return nil, err
	}
	path := filepath.Join(dir, name+".kubeconfig")
	if err := os.WriteFile(path, kc, 0o600); err != nil {
		return nil, err
	}
	return &User{Name: name, Config: u.Config(), Kubeconfig: path}, nil
}

// Bind binds a ClusterRole (such as the built-in view or edit) to a user in a namespace. The
// built-in roles get the operator's rules from kube-controller-manager a moment after the
// install, and the history API caches authorization decisions for 10 s: a test polls until
// the permission it needs applies.
func (s *Stack) Bind(ctx context.Context, namespace, user, clusterRole string) error {
	rb := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: clusterRole + "-" + user},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: clusterRole},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: user}},
	}
	if err := s.Env.Client.Create(ctx, rb); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	return nil
}

// installRBAC applies the install's namespace, ServiceAccount and RBAC from config/default (as
// kubectl apply -k would) and returns a client configuration of the operator's ServiceAccount:
// the history API then runs with exactly the permissions the install grants.
func installRBAC(ctx context.Context, admin *rest.Config) (*rest.Config, error) {
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
	tok, err := cs.CoreV1().ServiceAccounts(InstallNamespace).CreateToken(ctx, operatorSA,
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr.To[int64](6 * 3600)}}, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("a token for the operator's ServiceAccount: %w", err)
	}
	cfg := &rest.Config{Host: admin.Host, BearerToken: tok.Status.Token, QPS: -1}
	cfg.CAData = admin.CAData
	return cfg, nil
}
