// Package plugin is `kubectl webhooks`, the kubectl plugin of the webhook operator: the
// product's settings page on the command line. It is the operator's binary run under the name
// kubectl-webhooks (make install-plugin puts one on PATH), and it uses the kubeconfig and its
// credentials exactly as kubectl does (k8s.io/cli-runtime's flags: --kubeconfig, --context,
// -n, --as, ...), so RBAC decides what each person may see and do.
//
//	kubectl webhooks endpoints                      Ready, 24 h success rate, p95 latency, backlog
//	kubectl webhooks deliveries --phase Failed      live and history together, newest first
//	kubectl webhooks describe DELIVERY              the payload as sent and every attempt
//	kubectl webhooks retry DELIVERY                 one more attempt (also after it left etcd)
//	kubectl webhooks retry-failed ENDPOINT --since 2h
//	kubectl webhooks test ENDPOINT                  send a webhook.test event and wait for it
//	kubectl webhooks pause|resume ENDPOINT
//	kubectl webhooks console                        the web console on 127.0.0.1
package plugin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"

	"github.com/docrouter/webhook-operator/internal/actions"
)

// Name is the executable name kubectl looks for on PATH for `kubectl webhooks`.
const Name = "kubectl-webhooks"

// Main runs the plugin with args (without the program name) on the process's streams, stops at
// SIGINT or SIGTERM, prints an error as kubectl does, and returns the exit code.
func Main(args []string) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return Run(ctx, args, genericiooptions.IOStreams{In: os.Stdin, Out: os.Stdout, ErrOut: os.Stderr})
}

// Run runs the plugin with args and streams, and returns the exit code.
func Run(ctx context.Context, args []string, streams genericiooptions.IOStreams) int {
	cmd := NewCommand(streams)
	cmd.SetArgs(args)
	if err := cmd.ExecuteContext(ctx); err != nil {
		PrintError(streams.ErrOut, err)
		return 1
	}
	return 0
}

// PrintError prints err as kubectl does: an API server's answer as "Error from server
// (Reason): message", anything else as "error: message".
func PrintError(w io.Writer, err error) {
	var status apierrors.APIStatus
	if errors.As(err, &status) && status.Status().Message != "" {
		reason := string(status.Status().Reason)
		if reason == "" {
			reason = fmt.Sprint(status.Status().Code)
		}
		fmt.Fprintf(w, "Error from server (%s): %s\n", reason, actions.Sentence(err))
		return
	}
	fmt.Fprintf(w, "error: %s\n", err)
}

// env is what every command shares: the kubeconfig flags, the streams and the clock.
type env struct {
	flags   *genericclioptions.ConfigFlags
	streams genericiooptions.IOStreams
	now     func() time.Time
}

// client is an actions client with the kubeconfig's credentials, and the namespace of the
// kubeconfig's context or -n.
func (e *env) client() (*actions.Client, string, error) {
	cfg, err := e.flags.ToRESTConfig()
	if err != nil {
		return nil, "", err
	}
	ns, _, err := e.flags.ToRawKubeConfigLoader().Namespace()
	if err != nil {
		return nil, "", err
	}
	c, err := actions.New(cfg)
	if err != nil {
		return nil, "", err
	}
	return c, ns, nil
}

// NewCommand builds `kubectl webhooks` and its commands.
func NewCommand(streams genericiooptions.IOStreams) *cobra.Command {
	e := &env{flags: genericclioptions.NewConfigFlags(true), streams: streams, now: time.Now}
	root := &cobra.Command{
		Use:   Name,
		Short: "Manage DocRouter webhooks: endpoints, deliveries, retries, tests, and a web console",
		Long: "kubectl webhooks manages the webhooks of the DocRouter webhook operator with your kubeconfig's\n" +
			"credentials: Kubernetes RBAC decides what you see and may do. Deliveries come from the\n" +
			"delivery history (webhookdeliveryrecords), which holds live and finished deliveries alike.",
		Annotations:   map[string]string{cobra.CommandDisplayNameAnnotation: "kubectl webhooks"},
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.CompletionOptions.HiddenDefaultCmd = true
	root.SetOut(streams.Out)
	root.SetErr(streams.ErrOut)
	e.flags.AddFlags(root.PersistentFlags())
	root.AddCommand(
		endpointsCommand(e),
		deliveriesCommand(e),
		describeCommand(e),
		retryCommand(e),
		retryFailedCommand(e),
		testCommand(e),
		pauseCommand(e, true),
		pauseCommand(e, false),
		consoleCommand(e),
	)
	return root
}
