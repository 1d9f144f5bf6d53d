package plugin

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/docrouter/webhook-operator/internal/actions"
	"github.com/docrouter/webhook-operator/internal/console"
)

func consoleCommand(e *env) *cobra.Command {
	var (
		address string
		port    int
	)
	cmd := &cobra.Command{
		Use:   "console",
		Short: "Serve the web console on 127.0.0.1, acting with your kubeconfig's credentials",
		Long: "console serves the webhook settings page in your browser: endpoints with their success rate and\n" +
			"latency, create and edit an endpoint, send a test event, browse deliveries, retry. It talks to the\n" +
			"API server with your kubeconfig, so RBAC decides what you see and may do. It listens on loopback;\n" +
			"its link signs in one browser once, and every change it makes is protected against cross-site\n" +
			"requests. Ctrl-C stops it.",
		Example: "  kubectl webhooks console\n  kubectl webhooks console --port 8765 -n docs",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ip := net.ParseIP(address)
			if ip == nil {
				return fmt.Errorf("--address %q: want an IP address such as 127.0.0.1", address)
			}
			if port < 0 || port > 65535 {
				return fmt.Errorf("--port %d: want 0 (a free port) to 65535", port)
			}
			c, ns, err := e.client()
			if err != nil {
				return err
			}
			raw, err := e.flags.ToRawKubeConfigLoader().RawConfig()
			if err != nil {
				return err
			}
			contextName := raw.CurrentContext
			if e.flags.Context != nil && *e.flags.Context != "" {
				contextName = *e.flags.Context
			}
			ctx := cmd.Context()
			who, err := whoAmI(ctx, c)
			if err != nil {
				return fmt.Errorf("the API server did not answer with these credentials: %w", err)
			}
			ln, err := net.Listen("tcp", net.JoinHostPort(ip.String(), strconv.Itoa(port)))
			if err != nil {
				return fmt.Errorf("listening on %s: %w (choose another --port, or 0 for a free one)", net.JoinHostPort(ip.String(), strconv.Itoa(port)), err)
			}
			srv, err := console.New(console.Options{Actions: c, Namespace: ns, Context: contextName, User: who, Log: e.streams.ErrOut}, ln.Addr())
			if err != nil {
				_ = ln.Close()
				return err
			}
			out := e.streams.Out
			if !ip.IsLoopback() {
				fmt.Fprintf(e.streams.ErrOut, "Warning: the console listens on %s, beyond this machine, over plain HTTP: anyone who can reach it and gets the link acts as %s. Prefer the default 127.0.0.1.\n", ln.Addr(), who)
			}
			fmt.Fprintf(out, "Console for %s (context %s, namespace %s), acting with your kubeconfig's credentials.\n", who, contextName, ns)
			fmt.Fprintf(out, "Open this link (it signs in one browser, once):\n\n    %s\n\nCtrl-C stops the console.\n", srv.LoginURL())
			return srv.Serve(ctx, ln)
		},
	}
	cmd.Flags().StringVar(&address, "address", "127.0.0.1", "IP address to listen on. Loopback keeps the console on this machine.")
	cmd.Flags().IntVar(&port, "port", 0, "Port to listen on; 0 chooses a free one.")
	return cmd
}

// whoAmI asks the API server who the credentials are, so that the console can say whose
// permissions apply; an API server without SelfSubjectReview gets "you".
func whoAmI(ctx context.Context, c *actions.Client) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	who, err := c.WhoAmI(ctx)
	if err != nil {
		return "", err
	}
	if who == "" {
		who = "you"
	}
	return who, nil
}
