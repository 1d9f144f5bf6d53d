// Package historyapi serves the delivery history to kubectl and every Kubernetes client: the
// aggregated API group history.webhooks.docrouter.ai/v1alpha1 (api/history/v1alpha1), whose
// storage is the history store instead of etcd, as metrics-server and Kyverno's reports-server
// serve theirs. The cluster's API server registers it with an APIService, authenticates each
// caller and forwards the request; this server trusts the caller's identity from the
// front-proxy headers (checked against the front-proxy CA the cluster publishes) or checks a
// bearer token with a TokenReview, and asks the cluster with a SubjectAccessReview whether the
// caller may do what it asks: RBAC on webhookdeliveryrecords decides, as on any resource.
//
// It runs in the operator's process on every replica (reads need no leadership), as a manager
// Runnable:
//
//	srv := &historyapi.Server{Options: opts, Config: cfg, Store: store, Endpoints: historyapi.ClientEndpoints{Reader: mgr.GetClient()}}
//	mgr.Add(srv)
package historyapi

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apiserver/pkg/apis/apiserver"
	"k8s.io/apiserver/pkg/authentication/authenticatorfactory"
	"k8s.io/apiserver/pkg/authentication/request/headerrequest"
	"k8s.io/apiserver/pkg/authorization/authorizer"
	"k8s.io/apiserver/pkg/authorization/authorizerfactory"
	"k8s.io/apiserver/pkg/authorization/path"
	"k8s.io/apiserver/pkg/authorization/union"
	openapinamer "k8s.io/apiserver/pkg/endpoints/openapi"
	"k8s.io/apiserver/pkg/registry/rest"
	genericapiserver "k8s.io/apiserver/pkg/server"
	"k8s.io/apiserver/pkg/server/dynamiccertificates"
	genericoptions "k8s.io/apiserver/pkg/server/options"
	utilcompatibility "k8s.io/apiserver/pkg/util/compatibility"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	restclient "k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/manager"

	historyopenapi "github.com/docrouter/webhook-operator/api/history/openapi"
	historyv1alpha1 "github.com/docrouter/webhook-operator/api/history/v1alpha1"
	"github.com/docrouter/webhook-operator/internal/history"
)

// Defaults of Options.
const (
	DefaultService    = "webhook-operator-history-api"
	DefaultCertSecret = "webhook-operator-history-api-tls"
	// DefaultPollInterval is how often a watch asks the store for changes.
	DefaultPollInterval = time.Second
	// DefaultMaxWatches bounds the watches one replica serves at once.
	DefaultMaxWatches = 200
)

// Options configure the history API; AddFlags binds them to the manager's flags.
type Options struct {
	// BindAddress is where the API is served (HTTPS), such as :8444; "0" (the default) turns it
	// off.
	BindAddress string
	// CertFile and KeyFile are a serving certificate to use (reloaded when they change), such
	// as one cert-manager mounts; whoever issues it keeps the APIService's caBundle. Without
	// them the operator keeps its own CA and certificate in CertSecret and writes the caBundle.
	CertFile, KeyFile string
	// Service is the name of the Service the APIService points at, in Namespace: the
	// self-managed certificate is for Service.Namespace.svc.
	Service string
	// Namespace of the Service and CertSecret; empty: the pod's own namespace.
	Namespace string
	// CertSecret is the Secret of the self-managed CA and certificate.
	CertSecret string
	// PollInterval is how often a watch asks the store for changes.
	PollInterval time.Duration
	// MaxWatches bounds the watches served at once; more are answered 429.
	MaxWatches int
}

// DefaultOptions are the options of the flags' defaults.
func DefaultOptions() Options {
	return Options{
		BindAddress:  "0",
		Service:      DefaultService,
		CertSecret:   DefaultCertSecret,
		PollInterval: DefaultPollInterval,
		MaxWatches:   DefaultMaxWatches,
	}
}

// AddFlags binds o to fs, defaulting each flag to o's value.
func (o *Options) AddFlags(fs *flag.FlagSet) {
	fs.StringVar(&o.BindAddress, "history-api-bind-address", o.BindAddress, "Address of the history API (HTTPS), the aggregated API history.webhooks.docrouter.ai that kubectl reaches through the cluster's API server (kubectl get webhookdeliveryrecords), such as :8444; 0 disables it. Needs the history store.")
	fs.StringVar(&o.CertFile, "history-api-tls-cert-file", o.CertFile, "Serving certificate of the history API, for SERVICE.NAMESPACE.svc (reloaded when it changes), such as one cert-manager issues; its issuer then keeps the APIService's caBundle. Without it the operator keeps its own CA and certificate in --history-api-cert-secret and writes the caBundle.")
	fs.StringVar(&o.KeyFile, "history-api-tls-key-file", o.KeyFile, "Private key of --history-api-tls-cert-file.")
	fs.StringVar(&o.Service, "history-api-service", o.Service, "Name of the Service that the history API's APIService points at: the self-managed certificate is made for SERVICE.NAMESPACE.svc.")
	fs.StringVar(&o.Namespace, "history-api-namespace", o.Namespace, "Namespace of the history API's Service and certificate Secret; empty: the pod's own namespace (required when running outside a cluster).")
	fs.StringVar(&o.CertSecret, "history-api-cert-secret", o.CertSecret, "Secret (in the history API's namespace) where the operator keeps the history API's CA and serving certificate, shared by every replica, when no --history-api-tls-cert-file is given.")
	fs.IntVar(&o.MaxWatches, "history-api-max-watches", o.MaxWatches, "Watches of webhookdeliveryrecords one replica serves at once (each polls the history store every second); more are answered 429.")
}

// Enabled reports whether the API is to be served.
func (o Options) Enabled() bool { return o.BindAddress != "0" && o.BindAddress != "" }

// Server is the history API, a manager Runnable that runs on every replica.
type Server struct {
	Options
	// Config is the operator's client configuration: TokenReviews, SubjectAccessReviews, the
	// front-proxy CA, the certificate Secret and the APIService are read and written with it.
	Config *restclient.Config
	// Store is the history store the API serves.
	Store history.Store
	// Endpoints lists WebhookEndpoints for a list of webhookendpointstats; without it only
	// get works.
	Endpoints EndpointLister
	// Listener, when set, is served instead of listening on BindAddress (tests pass a free
	// port's listener).
	Listener net.Listener
	// Log is the server's logger.
	Log logr.Logger
	// Now is the clock of stats windows; time.Now when nil.
	Now func() time.Time
}

// NeedLeaderElection is false: every replica serves reads.
func (s *Server) NeedLeaderElection() bool { return false }

// Start serves the API until ctx ends.
func (s *Server) Start(ctx context.Context) error {
	if s.Store == nil || s.Config == nil {
		return errors.New("the history API needs the history store and a client configuration")
	}
	if s.Now == nil {
		s.Now = time.Now
	}
	if s.PollInterval <= 0 {
		s.PollInterval = DefaultPollInterval
	}
	if s.MaxWatches <= 0 {
		s.MaxWatches = DefaultMaxWatches
	}
	log := s.Log
	client, err := kubernetes.NewForConfig(s.Config)
	if err != nil {
		return err
	}

	ln := s.Listener
	if ln == nil {
		if ln, err = net.Listen("tcp", s.BindAddress); err != nil {
			return fmt.Errorf("the history API cannot listen on %s: %w", s.BindAddress, err)
		}
	}
	defer func() { _ = ln.Close() }() // the server closes it too; a second Close fails harmlessly

	cert, err := s.servingCert(ctx, client, log)
	if err != nil {
		return err
	}
	if cert == nil {
		return nil // ctx ended before a certificate was ready
	}

	cfg := genericapiserver.NewConfig(Codecs)
	cfg.EffectiveVersion = utilcompatibility.DefaultBuildEffectiveVersion()
	cfg.SecureServing = &genericapiserver.SecureServingInfo{Listener: ln, Cert: cert, MinTLSVersion: tls.VersionTLS12}
	// The loopback configuration carries no token: no privileged loopback identity exists.
	cfg.LoopbackClientConfig = &restclient.Config{Host: "https://" + ln.Addr().String()}
	cfg.EnableMetrics = false // the operator's metrics endpoint has its own series
	cfg.EnableProfiling = false
	cfg.EnableIndex = false
	// OpenAPI, so that kubectl explain and kubectl's client-side validation know the types.
	namer := openapinamer.NewDefinitionNamer(Scheme)
	cfg.OpenAPIConfig = genericapiserver.DefaultOpenAPIConfig(historyopenapi.GetOpenAPIDefinitions, namer)
	cfg.OpenAPIConfig.Info.Title = "DocRouter webhook history"
	cfg.OpenAPIConfig.Info.Version = historyv1alpha1.GroupVersion.Version
	cfg.OpenAPIV3Config = genericapiserver.DefaultOpenAPIV3Config(historyopenapi.GetOpenAPIDefinitions, namer)
	cfg.OpenAPIV3Config.Info.Title = cfg.OpenAPIConfig.Info.Title
	cfg.OpenAPIV3Config.Info.Version = cfg.OpenAPIConfig.Info.Version
	if err := delegateAuthentication(ctx, client, cfg); err != nil {
		return err
	}
	if cfg.Authorization.Authorizer, err = delegatedAuthorizer(client); err != nil {
		return err
	}

	server, err := cfg.Complete(nil).New("webhook-history-api", genericapiserver.NewEmptyDelegate())
	if err != nil {
		return fmt.Errorf("building the history API server: %w", err)
	}
	if err := s.install(ctx, server, log); err != nil {
		return err
	}
	log.Info("serving the history API", "address", ln.Addr().String(), "group", historyv1alpha1.GroupVersion.String())
	if err := server.PrepareRun().RunWithContext(ctx); err != nil {
		return fmt.Errorf("the history API stopped: %w", err)
	}
	return nil
}

// install adds the group's resources to the server.
func (s *Server) install(ctx context.Context, server *genericapiserver.GenericAPIServer, log logr.Logger) error {
	records := &recordStorage{
		store:        s.Store,
		log:          log,
		pollInterval: s.PollInterval,
		watches:      make(chan struct{}, s.MaxWatches),
		done:         ctx.Done(),
	}
	stats := &statsStorage{store: s.Store, endpoints: s.Endpoints, now: s.Now, log: log}
	info := genericapiserver.NewDefaultAPIGroupInfo(historyv1alpha1.GroupName, Scheme, metav1.ParameterCodec, Codecs)
	info.VersionedResourcesStorageMap[historyv1alpha1.GroupVersion.Version] = map[string]rest.Storage{
		historyv1alpha1.RecordsResource: records,
		historyv1alpha1.StatsResource:   stats,
	}
	if err := server.InstallAPIGroup(&info); err != nil {
		return fmt.Errorf("installing the history API group: %w", err)
	}
	return nil
}

// servingCert returns the certificate to serve: the files given, or the self-managed one once
// it is ready (nil if ctx ends first).
func (s *Server) servingCert(ctx context.Context, client kubernetes.Interface, log logr.Logger) (dynamiccertificates.CertKeyContentProvider, error) {
	if s.CertFile != "" || s.KeyFile != "" {
		if s.CertFile == "" || s.KeyFile == "" {
			return nil, errors.New("--history-api-tls-cert-file and --history-api-tls-key-file go together")
		}
		p, err := dynamiccertificates.NewDynamicServingContentFromFiles("history-api-serving-cert", s.CertFile, s.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("reading the history API's certificate: %w", err)
		}
		return p, nil // a ControllerRunner: the serving layer reloads it when the files change
	}
	ns := s.Namespace
	if ns == "" {
		b, err := os.ReadFile("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
		if err != nil {
			return nil, errors.New("the history API needs --history-api-namespace outside a cluster: the namespace of its Service and certificate Secret")
		}
		ns = strings.TrimSpace(string(b))
	}
	dyn, err := dynamic.NewForConfig(s.Config)
	if err != nil {
		return nil, err
	}
	c := &selfManagedCert{
		client:    client,
		dynamic:   dyn,
		namespace: ns,
		secret:    s.CertSecret,
		dnsName:   s.Service + "." + ns + ".svc",
		now:       s.Now,
		log:       log,
		provider:  &certProvider{},
	}
	ready := make(chan struct{})
	go c.run(ctx, ready)
	select {
	case <-ready:
		return c.provider, nil
	case <-ctx.Done():
		return nil, nil
	}
}

// The cluster publishes its front-proxy and client CAs here (kube-apiserver writes it).
const (
	authConfigMapNamespace = metav1.NamespaceSystem
	authConfigMapName      = "extension-apiserver-authentication"
)

// delegateAuthentication sets up what k8s.io/apiserver's DelegatingAuthenticationOptions.ApplyTo
// sets up, with the operator's own client instead of a kubeconfig file (a pod's filesystem is
// read-only, and the operator's configuration may come from anywhere controller-runtime finds
// one): callers forwarded by the aggregator are known by the front-proxy headers, whose client
// certificate must be signed by the front-proxy CA and carry an allowed name; direct callers by
// a client certificate of the cluster's client CA, or a bearer token checked with a
// TokenReview. The CAs and header names are read from kube-system/extension-apiserver-
// authentication and followed as they change.
//
// Unlike ApplyTo, it runs the controllers that follow that ConfigMap itself and waits until
// they hold the front-proxy CA before the server serves: their first load comes from an
// informer, and the aggregator's first requests (discovery, OpenAPI, availability) would
// otherwise be refused for a moment.
func delegateAuthentication(ctx context.Context, client kubernetes.Interface, cfg *genericapiserver.Config) error {
	requestHeaderCA, err := dynamiccertificates.NewDynamicCAFromConfigMapController("request-header", authConfigMapNamespace, authConfigMapName, "requestheader-client-ca-file", client)
	if err != nil {
		return err
	}
	requestHeader := &genericoptions.DynamicRequestHeaderController{
		ConfigMapCAController: requestHeaderCA,
		RequestHeaderAuthRequestController: headerrequest.NewRequestHeaderAuthRequestController(authConfigMapName, authConfigMapNamespace, client,
			"requestheader-username-headers", "requestheader-uid-headers", "requestheader-group-headers", "requestheader-extra-headers-prefix", "requestheader-allowed-names"),
	}
	clientCA, err := dynamiccertificates.NewDynamicCAFromConfigMapController("client-ca", authConfigMapNamespace, authConfigMapName, "client-ca-file", client)
	if err != nil {
		return err
	}
	if err := requestHeader.RunOnce(ctx); err != nil {
		return fmt.Errorf("the history API cannot read the cluster's front-proxy configuration in %s/%s: %w; the operator needs the extension-apiserver-authentication-reader Role there", authConfigMapNamespace, authConfigMapName, err)
	}
	// The serving layer runs the controllers of the providers it is given: hand it views that
	// are not controllers, since they run already. Listeners are added before the controllers
	// run (their AddListener is not safe while they do); the views pass changes on.
	requestHeaderView := newCAView(requestHeader)
	clientCAView := newCAView(clientCA)
	go requestHeader.Run(ctx, 1)
	go clientCA.Run(ctx, 1)
	loaded := func(context.Context) (bool, error) {
		return len(requestHeader.CurrentCABundleContent()) > 0 && len(requestHeader.UsernameHeaders()) > 0, nil
	}
	if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, loaded); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("the cluster publishes no front-proxy CA (requestheader-client-ca-file and requestheader-username-headers in %s/%s): kube-apiserver must run with --requestheader-client-ca-file and --requestheader-username-headers for aggregated APIs such as the history API", authConfigMapNamespace, authConfigMapName)
	}
	// The client CA is optional (a cluster may authenticate people by tokens only).
	_ = wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 5*time.Second, true, func(context.Context) (bool, error) {
		return len(clientCA.CurrentCABundleContent()) > 0, nil
	})

	headerConfig := &authenticatorfactory.RequestHeaderConfig{
		CAContentProvider:   requestHeaderView,
		UsernameHeaders:     headerrequest.StringSliceProviderFunc(requestHeader.UsernameHeaders),
		UIDHeaders:          headerrequest.StringSliceProviderFunc(requestHeader.UIDHeaders),
		GroupHeaders:        headerrequest.StringSliceProviderFunc(requestHeader.GroupHeaders),
		ExtraHeaderPrefixes: headerrequest.StringSliceProviderFunc(requestHeader.ExtraHeaderPrefixes),
		AllowedClientNames:  headerrequest.StringSliceProviderFunc(requestHeader.AllowedClientNames),
	}
	auth := &cfg.Authentication
	if err := auth.ApplyClientCert(clientCAView, cfg.SecureServing); err != nil {
		return err
	}
	if err := auth.ApplyClientCert(requestHeaderView, cfg.SecureServing); err != nil {
		return err
	}
	auth.RequestHeaderConfig = headerConfig
	authn, security, err := authenticatorfactory.DelegatingAuthenticatorConfig{
		Anonymous:                          &apiserver.AnonymousAuthConfig{Enabled: true}, // as system:anonymous, which RBAC then refuses
		TokenAccessReviewClient:            client.AuthenticationV1(),
		TokenAccessReviewTimeout:           10 * time.Second,
		WebhookRetryBackoff:                genericoptions.DefaultAuthWebhookRetryBackoff(),
		CacheTTL:                           10 * time.Second,
		ClientCertificateCAContentProvider: clientCAView,
		RequestHeaderConfig:                headerConfig,
	}.New()
	if err != nil {
		return err
	}
	auth.Authenticator = authn
	cfg.OpenAPIConfig.SecurityDefinitions = security
	return nil
}

// caView is a CA provider without its controller's Run and RunOnce, whose listeners may be
// added while the controller runs.
type caView struct {
	dynamiccertificates.CAContentProvider
	mu        sync.Mutex
	listeners []dynamiccertificates.Listener
}

// newCAView listens to p; call it before p's controller runs.
func newCAView(p dynamiccertificates.CAContentProvider) *caView {
	v := &caView{CAContentProvider: p}
	p.AddListener(v)
	return v
}

func (v *caView) AddListener(l dynamiccertificates.Listener) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.listeners = append(v.listeners, l)
}

// Enqueue passes a change of the CA on.
func (v *caView) Enqueue() {
	v.mu.Lock()
	listeners := slices.Clone(v.listeners)
	v.mu.Unlock()
	for _, l := range listeners {
		l.Enqueue()
	}
}

// delegatedAuthorizer is DelegatingAuthorizationOptions' authorizer with the operator's client:
// system:masters may do anything (as in the cluster), probes of /healthz, /readyz and /livez need
// no permission, and everything else is a SubjectAccessReview (decisions cached 10 s).
func delegatedAuthorizer(client kubernetes.Interface) (authorizer.Authorizer, error) {
	paths, err := path.NewAuthorizer([]string{"/healthz", "/readyz", "/livez"})
	if err != nil {
		return nil, err
	}
	sar, err := authorizerfactory.DelegatingAuthorizerConfig{
		SubjectAccessReviewClient: client.AuthorizationV1(),
		AllowCacheTTL:             10 * time.Second,
		DenyCacheTTL:              10 * time.Second,
		WebhookRetryBackoff:       genericoptions.DefaultAuthWebhookRetryBackoff(),
	}.New()
	if err != nil {
		return nil, err
	}
	return union.New(
		union.NamedAuthorizer{AuthorizerName: "kubernetes.io/always-allow-groups", Authorizer: authorizerfactory.NewPrivilegedGroups("system:masters")},
		union.NamedAuthorizer{AuthorizerName: "kubernetes.io/always-allow-paths", Authorizer: paths},
		union.NamedAuthorizer{AuthorizerName: "kubernetes.io/webhook", Authorizer: sar},
	)
}

// AddToManager adds the history API to mgr when o enables it, serving store with the manager's
// client configuration and listing endpoints from its cache. It refuses to start without a
// store: an APIService whose server is missing makes every kubectl discovery warn.
func AddToManager(mgr manager.Manager, o Options, store history.Store) error {
	if !o.Enabled() {
		return nil
	}
	if store == nil {
		return errors.New("the history API (--history-api-bind-address) serves the history store, and there is none: set --history-database, or turn the API off with --history-api-bind-address=0 and delete its APIService")
	}
	return mgr.Add(&Server{
		Options:   o,
		Config:    mgr.GetConfig(),
		Store:     store,
		Endpoints: ClientEndpoints{Reader: mgr.GetClient()},
		Log:       mgr.GetLogger().WithName("history-api"),
	})
}
