// Command webhook-operator delivers DocRouter webhooks from Kubernetes objects.
//
//	webhook-operator [manager] [flags]   run the controllers (the default)
//	webhook-operator receiver [flags]    a sample receiver that verifies and prints webhooks
//	webhook-operator publish [flags]     publish one event to the intake (see docs/publishing.md)
//	webhook-operator webhooks ...        the kubectl plugin, as `kubectl webhooks ...`
//
// Run under the name kubectl-webhooks (make install-plugin), the binary is the kubectl plugin
// `kubectl webhooks` (internal/plugin).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/discovery"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	"sigs.k8s.io/controller-runtime/pkg/metrics/filters"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
	"github.com/docrouter/webhook-operator/controllers"
	"github.com/docrouter/webhook-operator/dispatcher"
	"github.com/docrouter/webhook-operator/internal/history"
	"github.com/docrouter/webhook-operator/internal/historyapi"
	"github.com/docrouter/webhook-operator/internal/intake"
	"github.com/docrouter/webhook-operator/internal/plugin"
)

var scheme = runtime.NewScheme()

func init() {
	utilruntime.Must(clientgoscheme.AddToScheme(scheme))
	utilruntime.Must(webhooksv1alpha1.AddToScheme(scheme))
}

func main() {
	// Under the plugin's name, kubectl runs it as `kubectl webhooks ARGS`.
	if strings.TrimSuffix(filepath.Base(os.Args[0]), ".exe") == plugin.Name {
		os.Exit(plugin.Main(os.Args[1:]))
	}
	args := os.Args[1:]
	cmd := "manager"
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		cmd, args = args[0], args[1:]
	}
	var err error
	switch cmd {
	case "manager":
		err = runManager(args)
	case "receiver":
		err = runReceiver(args)
	case "publish":
		err = runPublish(args)
	case "webhooks":
		os.Exit(plugin.Main(args))
	default:
		err = fmt.Errorf("unknown command %q: want manager, receiver, publish or webhooks", cmd)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}

func runManager(args []string) error {
	fs := flag.NewFlagSet("manager", flag.ExitOnError)
	var (
		metricsAddr, probeAddr string
		leaderElect            bool
		qps                    float64
		burst                  int
	)
	opts := controllers.DefaultOptions()
	fs.StringVar(&metricsAddr, "metrics-bind-address", "0", "Address of the metrics endpoint, such as :8443; 0 disables it.")
	fs.StringVar(&probeAddr, "health-probe-bind-address", ":8081", "Address of the liveness and readiness probes.")
	fs.BoolVar(&leaderElect, "leader-elect", false, "Elect a leader, so that only one replica delivers (on in the deployed manifests).")
	var leaseNamespace string
	var leaseDuration, renewDeadline, retryPeriod time.Duration
	fs.StringVar(&leaseNamespace, "leader-elect-namespace", "", "Namespace of the leader election Lease; empty: the pod's own namespace (required when running outside a cluster).")
	fs.DurationVar(&leaseDuration, "leader-elect-lease-duration", 15*time.Second, "How long a Lease holds without renewal before another replica may take over.")
	fs.DurationVar(&renewDeadline, "leader-elect-renew-deadline", 10*time.Second, "How long the leader retries renewing its Lease before it gives up leading (and exits).")
	fs.DurationVar(&retryPeriod, "leader-elect-retry-period", 2*time.Second, "How often replicas try to acquire or renew the Lease.")
	fs.Float64Var(&qps, "kube-api-qps", 2000, "Requests per second to the API server (client-side limit). A first-try delivery costs three writes (create, status, delete), and kube-apiserver's memory for deliveries follows their rate (docs/operations.md, sizing).")
	fs.IntVar(&burst, "kube-api-burst", 4000, "Burst of requests to the API server above kube-api-qps.")
	fs.IntVar(&opts.Workers, "workers", opts.Workers, "Deliveries reconciled at once, and attempts writing their status at once (attempts to slow receivers end in waves; this keeps their writes to the API server bounded). An attempt waiting for its receiver holds neither: --max-in-flight bounds those.")
	fs.IntVar(&opts.MaxInFlight, "max-in-flight", opts.MaxInFlight, "Attempts in flight at most, to all endpoints together (each holds a goroutine and its request and response buffers until the receiver answers or times out). 0: no limit.")
	fs.IntVar(&opts.MaxInFlightPerEndpoint, "max-in-flight-per-endpoint", opts.MaxInFlightPerEndpoint, "Attempts in flight to one endpoint at most, so that a slow or silent receiver cannot take the slots of the others; an endpoint's spec.maxInFlight overrides it. 0: no limit.")
	fs.DurationVar(&opts.SecretTTL, "secret-ttl", opts.SecretTTL, "How long a Secret read is reused; a changed Secret is used within this time.")
	fs.DurationVar(&opts.WaitRetryInterval, "wait-retry-interval", opts.WaitRetryInterval, "How often a delivery waiting for a missing endpoint or Secret looks again.")
	fs.DurationVar(&opts.HealthUpdateInterval, "health-update-interval", opts.HealthUpdateInterval, "Least time between two writes of an endpoint's delivery health to its status.")
	fs.DurationVar(&opts.AutoDisableAfter, "auto-disable-after", opts.AutoDisableAfter, "Disable an endpoint whose attempts have all failed for this long; its deliveries are parked until it is re-enabled with the webhooks.docrouter.ai/enable annotation. 0 turns the policy off.")
	fs.DurationVar(&opts.SucceededRetention, "succeeded-retention", opts.SucceededRetention, "How long a Succeeded delivery stays in etcd once it is archived (for kubectl get, wait and a retry annotation); 0: until --max-finished-deliveries pushes it out.")
	fs.DurationVar(&opts.FailedRetention, "failed-retention", opts.FailedRetention, "How long a Failed delivery stays in etcd once it is archived; 0: until --max-finished-deliveries pushes it out.")
	fs.IntVar(&opts.MaxFinishedDeliveries, "max-finished-deliveries", opts.MaxFinishedDeliveries, "Finished deliveries in etcd at most: above it the oldest leave first (once archived), whatever their time. 0: no bound.")
	fs.DurationVar(&opts.RetentionSweepInterval, "retention-sweep-interval", opts.RetentionSweepInterval, "How often finished deliveries are looked at for leaving etcd.")
	fs.IntVar(&opts.MaxLiveDeliveriesPerEndpoint, "max-live-deliveries-per-endpoint", opts.MaxLiveDeliveriesPerEndpoint, "Unfinished deliveries of one endpoint in etcd at most; its further events wait in the history store's backlog, in publish order. 0: no bound.")
	fs.IntVar(&opts.MaxLiveDeliveries, "max-live-deliveries", opts.MaxLiveDeliveries, "Unfinished deliveries of all endpoints in etcd at most; further events wait in the history store's backlog. 0: no bound.")
	fs.IntVar(&opts.MaxBacklogPerEndpoint, "max-backlog-per-endpoint", opts.MaxBacklogPerEndpoint, "Events of one endpoint waiting in the history store's backlog at most; beyond it the intake refuses them with 429 and Retry-After. 0: no bound.")
	fs.DurationVar(&opts.HistoryRetention, "history-retention", opts.HistoryRetention, "How long a delivery's record stays in the history store after it left etcd; older records are deleted in batches. 0 keeps them.")
	historyDSN := defaultHistoryDatabase
	var historyDSNFile string
	fs.StringVar(&historyDSN, "history-database", historyDSN, "The history store: sqlite:///path/to/history.db (embedded, one replica) or a postgres:// URL (several replicas); empty keeps no history (finished deliveries leave etcd without a record, events beyond the working set are refused). $"+historyDatabaseEnv+" (filled from a Secret) overrides it.")
	fs.StringVar(&historyDSNFile, "history-database-file", "", "Read the history store's URL from this file (a mounted Secret), instead of --history-database.")
	var allowCIDRs, denyCIDRs string
	fs.StringVar(&allowCIDRs, "outbound-allow-cidrs", "", "Comma-separated CIDRs that webhooks may be sent to although the outbound address policy denies them by default (loopback, link-local, CGNAT...), such as 127.0.0.0/8,::1/128 for a local dev stack. See docs/security.md.")
	fs.StringVar(&denyCIDRs, "outbound-deny-cidrs", "", "Comma-separated CIDRs that webhooks are never sent to, such as 10.0.0.0/8; wins over --outbound-allow-cidrs.")
	intakeSrv := intake.Server{}
	var intakeOpts intake.Options
	fs.StringVar(&intakeSrv.Addr, "intake-bind-address", intake.DefaultBindAddress, "Address of the event intake (POST /v1/namespaces/NS/events), such as :8090; 0 disables it.")
	fs.StringVar(&intakeSrv.CertFile, "intake-tls-cert-file", "", "TLS certificate of the intake; with --intake-tls-key-file it serves HTTPS (TLS 1.2+), else plain HTTP.")
	fs.StringVar(&intakeSrv.KeyFile, "intake-tls-key-file", "", "TLS private key of the intake.")
	fs.BoolVar(&intakeOpts.AllowAnonymous, "intake-allow-anonymous", false, "Accept events without a token or permission check. Local development only.")
	fs.Func("intake-token-audience", "Accept only publisher tokens made for this audience (repeatable), such as projected tokens with audience docrouter-intake; default: the API server's audience.", func(v string) error {
		intakeOpts.Audiences = append(intakeOpts.Audiences, v)
		return nil
	})
	historyAPI := historyapi.DefaultOptions()
	historyAPI.AddFlags(fs)
	zapOpts := zap.Options{}
	zapOpts.BindFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&zapOpts)))
	policy, err := outboundPolicy(allowCIDRs, denyCIDRs)
	if err != nil {
		return err
	}

	dsn, err := historyDatabase(historyDSN, historyDSNFile)
	if err != nil {
		return err
	}

	cfg, err := ctrl.GetConfig()
	if err != nil {
		return err
	}
	cfg.QPS, cfg.Burst = float32(qps), burst

	// Wait for the API server instead of exiting: a replica (re)started during an API-server
	// outage would otherwise crash-loop, and the kubelet's back-off would delay deliveries by up
	// to five minutes after the API server is back.
	ctx := ctrl.SetupSignalHandler()
	if err := waitForAPIServer(ctx, cfg); err != nil {
		return err
	}

	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                  scheme,
		Metrics:                 metricsOptions(metricsAddr),
		HealthProbeBindAddress:  probeAddr,
		LeaderElection:          leaderElect,
		LeaderElectionID:        "webhook-operator.webhooks.docrouter.ai",
		LeaderElectionNamespace: leaseNamespace,
		// The leader gives the Lease up when it stops (after its controllers have stopped), so
		// that a deleted or rolled pod hands over within a retry period instead of the whole
		// Lease duration. Safe because the process exits as soon as the manager returns.
		LeaderElectionReleaseOnCancel: true,
		LeaseDuration:                 &leaseDuration,
		RenewDeadline:                 &renewDeadline,
		RetryPeriod:                   &retryPeriod,
		Cache:                         controllers.CacheOptions(cache.Options{}), // finished deliveries stripped in the cache
	})
	if err != nil {
		return err
	}
	var store history.Store
	if dsn != "" {
		if store, err = history.Open(ctx, dsn, history.Options{}); err != nil {
			return fmt.Errorf("--history-database %s: %w", history.RedactDSN(dsn), err)
		}
		defer func() { _ = store.Close() }() // on the way out: nothing is left to write
		ctrl.Log.Info("history store opened", "database", history.RedactDSN(dsn), "engine", store.Engine())
	} else {
		ctrl.Log.Info("no history store (--history-database is empty): finished deliveries leave etcd without a record, and events beyond the working set are refused")
	}
	op, err := controllers.Setup(ctx, mgr, opts, controllers.Deps{
		Sender: dispatcher.NewSender(dispatcher.SenderOptions{DialContext: dispatcher.NewPolicyDialer(policy).DialContext}),
		Store:  store,
		Pod:    ownPod(),
	})
	if err != nil {
		return err
	}
	if intakeSrv.Addr != "0" {
		intakeOpts.WorkingSet, intakeOpts.Store = op.WorkingSet, store
		intakeSrv.Handler = intake.NewHandler(mgr.GetClient(), mgr.GetCache(), intakeOpts)
		intakeSrv.Log = ctrl.Log.WithName("intake")
		if err := mgr.Add(&intakeSrv); err != nil {
			return err
		}
	}
	// The history API (kubectl get webhookdeliveryrecords), on every replica.
	if err := historyapi.AddToManager(mgr, historyAPI, store); err != nil {
		return err
	}
	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		return err
	}
	if err := mgr.AddReadyzCheck("readyz", healthz.Ping); err != nil {
		return err
	}
	ctrl.Log.Info("starting the webhook operator", "workers", opts.Workers, "maxInFlight", opts.MaxInFlight, "maxInFlightPerEndpoint", opts.MaxInFlightPerEndpoint)
	return mgr.Start(ctx)
}

// The history store's defaults: SQLite on the volume of config/default.
const (
	defaultHistoryDatabase = "sqlite:///var/lib/webhook-operator/history.db"
	historyDatabaseEnv     = "WEBHOOK_OPERATOR_HISTORY_DATABASE"
)

// historyDatabase is the history store's URL: from --history-database-file when given, else
// from $WEBHOOK_OPERATOR_HISTORY_DATABASE when set, else the flag. A URL with a password belongs
// in a Secret, mounted as a file or put into the environment; it is never logged.
func historyDatabase(flagValue, file string) (string, error) {
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return "", fmt.Errorf("--history-database-file: %w", err)
		}
		return strings.TrimSpace(string(b)), nil
	}
	if v, ok := os.LookupEnv(historyDatabaseEnv); ok {
		return strings.TrimSpace(v), nil
	}
	return flagValue, nil
}

// ownPod is the operator's Pod, from the downward API's POD_NAME and POD_NAMESPACE, for Events
// about the history store; nil outside a cluster.
func ownPod() *corev1.Pod {
	name, ns := os.Getenv("POD_NAME"), os.Getenv("POD_NAMESPACE")
	if name == "" || ns == "" {
		return nil
	}
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, UID: types.UID(os.Getenv("POD_UID"))}}
}

// metricsOptions serves the metrics over HTTPS, as kubebuilder projects do: each scrape is
// authenticated (TokenReview) and authorized (SubjectAccessReview for GET /metrics), so only a
// scraper bound to the metrics-reader ClusterRole reads them. The certificate is self-signed
// unless one is mounted; Prometheus scrapes it with insecure_skip_verify or the mounted CA.
func metricsOptions(addr string) metricsserver.Options {
	if addr == "0" {
		return metricsserver.Options{BindAddress: "0"}
	}
	return metricsserver.Options{BindAddress: addr, SecureServing: true, FilterProvider: filters.WithAuthenticationAndAuthorization}
}

// outboundPolicy is the outbound address policy of the manager flags: every connection a webhook
// makes is checked against it on the IP actually dialled.
func outboundPolicy(allow, deny string) (*dispatcher.AddressPolicy, error) {
	a, err := dispatcher.ParseCIDRs(allow)
	if err != nil {
		return nil, fmt.Errorf("--outbound-allow-cidrs: %w", err)
	}
	d, err := dispatcher.ParseCIDRs(deny)
	if err != nil {
		return nil, fmt.Errorf("--outbound-deny-cidrs: %w", err)
	}
	ctrl.Log.Info("outbound address policy", "allowCIDRs", a, "denyCIDRs", d)
	return &dispatcher.AddressPolicy{Allow: a, Deny: d}, nil
}

// waitForAPIServer polls until the API server serves the operator's API group (its CRDs are
// established), logging once while it waits.
func waitForAPIServer(ctx context.Context, cfg *rest.Config) error {
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return err
	}
	logged := false
	return wait.PollUntilContextCancel(ctx, time.Second, true, func(context.Context) (bool, error) {
		_, err := dc.ServerResourcesForGroupVersion(webhooksv1alpha1.GroupVersion.String())
		if err != nil && !logged {
			ctrl.Log.Info("waiting for the API server to serve the webhook kinds", "error", err.Error())
			logged = true
		}
		return err == nil, nil
	})
}
