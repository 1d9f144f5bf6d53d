package plugin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/printers"

	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
	"github.com/docrouter/webhook-operator/internal/actions"
)

// endpointsChunk is how many endpoints one list request reads (kubectl's chunk size).
const endpointsChunk = 500

func endpointsCommand(e *env) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:     "endpoints [NAME...]",
		Aliases: []string{"endpoint", "whe"},
		Short:   "List endpoints: Ready, 24 h success rate, p95 latency, backlog, last failure",
		Example: "  kubectl webhooks endpoints\n  kubectl webhooks endpoints -o wide -n docs",
		RunE: func(cmd *cobra.Command, args []string) error {
			if output != "" && output != "wide" {
				return fmt.Errorf("--output %q: want wide, or nothing (use kubectl get whe -o yaml for the objects)", output)
			}
			c, ns, err := e.client()
			if err != nil {
				return err
			}
			var items []actions.Endpoint
			var statsErr error
			cont := ""
			for {
				page, err := c.ListEndpoints(cmd.Context(), ns, endpointsChunk, cont)
				if err != nil {
					return err
				}
				for _, ep := range page.Items {
					if len(args) == 0 || slices.Contains(args, ep.Name) {
						items = append(items, ep)
					}
				}
				if statsErr == nil {
					statsErr = page.StatsErr
				}
				if cont = page.Continue; cont == "" {
					break
				}
			}
			if len(args) > 0 {
				for _, name := range args {
					if !slices.ContainsFunc(items, func(ep actions.Endpoint) bool { return ep.Name == name }) {
						return fmt.Errorf("no WebhookEndpoint named %s in namespace %s", name, ns)
					}
				}
			}
			if statsErr != nil {
				fmt.Fprintf(e.streams.ErrOut, "Warning: statistics are not shown: %s\n", actions.Sentence(statsErr))
			}
			if len(items) == 0 {
				fmt.Fprintf(e.streams.ErrOut, "No endpoints found in %s namespace.\n", ns)
				return nil
			}
			return printEndpoints(e.streams.Out, e.now(), items, output == "wide")
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "", "Output format: wide adds the URL, the event types and the 24 h delivery count.")
	return cmd
}

func printEndpoints(out io.Writer, now time.Time, items []actions.Endpoint, wide bool) error {
	w := printers.GetNewTabWriter(out)
	header := "NAME\tREADY\tREASON\tSUCCESS 24H\tP95 24H\tBACKLOG\tLAST FAILURE\tAGE"
	if wide {
		header += "\tDELIVERIES 24H\tURL\tEVENTS"
	}
	fmt.Fprintln(w, header)
	for i := range items {
		ep := &items[i]
		ready := ep.Ready()
		success, p95, backlog, count := "<unknown>", "<unknown>", "<unknown>", "<unknown>"
		if ep.Stats != nil {
			backlog = fmt.Sprint(ep.Backlog())
			if win := ep.Window(actions.Window24h); win != nil {
				success, p95 = percent(win.SuccessRate), millis(win.Latency.P95Milliseconds)
				count = fmt.Sprint(win.Deliveries.Succeeded + win.Deliveries.Failed)
			}
		}
		var lastFailure *time.Time
		if t := ep.Status.LastFailureTime; t != nil {
			lastFailure = &t.Time
		}
		row := []string{ep.Name, string(ready.Status), ready.Reason, success, p95, backlog, ago(now, lastFailure), age(now, ep.CreationTimestamp.Time)}
		if wide {
			row = append(row, count, ep.Spec.URL, strings.Join(ep.Spec.EventTypes, ","))
		}
		fmt.Fprintln(w, strings.Join(row, "\t"))
	}
	return w.Flush()
}

func deliveriesCommand(e *env) *cobra.Command {
	var (
		f                   actions.DeliveryFilter
		since, output, cont string
		limit               int64
	)
	cmd := &cobra.Command{
		Use:     "deliveries",
		Aliases: []string{"delivery", "whd", "whdr"},
		Short:   "List deliveries, live and finished together, newest first",
		Long: "List deliveries from the delivery history (webhookdeliveryrecords), which holds one record per\n" +
			"delivery whether it is still in etcd (IN ETCD yes) or has left it (no). Newest first, a page at a\n" +
			"time: the command prints how to get the next page.",
		Example: "  kubectl webhooks deliveries --phase Failed --since 2h\n" +
			"  kubectl webhooks deliveries --endpoint crm --event-type llm.completed\n" +
			"  kubectl webhooks deliveries --event-id evt-invoice-42",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "" && output != "wide" {
				return fmt.Errorf("--output %q: want wide, or nothing (use kubectl get whdr -o yaml for the objects)", output)
			}
			phase, err := parsePhase(f.Phase)
			if err != nil {
				return err
			}
			f.Phase = phase
			d, err := parseSince(since)
			if err != nil {
				return err
			}
			if d > 0 {
				f.Since = e.now().Add(-d)
			}
			if limit < 1 || limit > actions.MaxDeliveryPage {
				return fmt.Errorf("--limit %d: want 1 to %d", limit, actions.MaxDeliveryPage)
			}
			c, ns, err := e.client()
			if err != nil {
				return err
			}
			page, err := c.ListDeliveries(cmd.Context(), ns, f, limit, cont)
			if err != nil {
				return err
			}
			if page.HistoryErr != nil {
				fmt.Fprintf(e.streams.ErrOut, "Warning: only the deliveries in etcd are shown: %s\n", actions.Sentence(page.HistoryErr))
			}
			if len(page.Items) == 0 {
				fmt.Fprintf(e.streams.ErrOut, "No deliveries found in %s namespace.\n", ns)
			} else if err := printDeliveries(e.streams.Out, e.now(), page.Items, output == "wide"); err != nil {
				return err
			}
			if page.Continue != "" {
				fmt.Fprintf(e.streams.ErrOut, "More deliveries: add --continue=%s\n", page.Continue)
			}
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.Endpoint, "endpoint", "", "Only deliveries to this endpoint.")
	fl.StringVar(&f.Phase, "phase", "", "Only deliveries in this phase: Pending, Retrying, Succeeded or Failed.")
	fl.StringVar(&f.EventType, "event-type", "", "Only events of this type, such as llm.completed.")
	fl.StringVar(&f.EventID, "event-id", "", "Only the deliveries of this event id.")
	fl.StringVar(&since, "since", "", "Only deliveries created within this time, such as 30m, 2h or 7d.")
	fl.Int64Var(&limit, "limit", actions.DefaultDeliveryPage, "Deliveries per page.")
	fl.StringVar(&cont, "continue", "", "The token printed after the previous page, to list the next one.")
	fl.StringVarP(&output, "output", "o", "", "Output format: wide adds the event id, the last error and the completion time.")
	return cmd
}

func parsePhase(v string) (string, error) {
	if v == "" {
		return "", nil
	}
	for _, p := range []webhooksv1alpha1.DeliveryPhase{webhooksv1alpha1.PhasePending, webhooksv1alpha1.PhaseRetrying, webhooksv1alpha1.PhaseSucceeded, webhooksv1alpha1.PhaseFailed} {
		if strings.EqualFold(v, string(p)) {
			return string(p), nil
		}
	}
	return "", fmt.Errorf("--phase %q: want Pending, Retrying, Succeeded or Failed", v)
}

func printDeliveries(out io.Writer, now time.Time, items []actions.Delivery, wide bool) error {
	w := printers.GetNewTabWriter(out)
	header := "NAME\tENDPOINT\tEVENT\tPHASE\tATTEMPTS\tCODE\tIN ETCD\tAGE"
	if wide {
		header += "\tEVENT ID\tCOMPLETED\tLAST ERROR"
	}
	fmt.Fprintln(w, header)
	for _, d := range items {
		inEtcd := "no"
		if d.Live {
			inEtcd = "yes"
		}
		row := []string{d.Name, d.Endpoint, d.EventType, d.Phase, fmt.Sprint(d.Attempts), code(d.LastStatusCode), inEtcd, age(now, d.Created)}
		if wide {
			row = append(row, d.EventID, ago(now, d.Completed), orNone(oneLine(d.LastError, 80)))
		}
		fmt.Fprintln(w, strings.Join(row, "\t"))
	}
	return w.Flush()
}

func describeCommand(e *env) *cobra.Command {
	return &cobra.Command{
		Use:     "describe DELIVERY",
		Short:   "Show a delivery: its event, the payload as sent, and every attempt",
		Example: "  kubectl webhooks describe signed-d03eddc9d5bd40eb",
		Args:    exactlyOne("DELIVERY"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, ns, err := e.client()
			if err != nil {
				return err
			}
			d, err := c.GetDelivery(cmd.Context(), ns, args[0])
			if err != nil {
				return err
			}
			if d.HistoryErr != nil {
				fmt.Fprintf(e.streams.ErrOut, "Warning: the attempts shown are those of the WebhookDelivery in etcd (its last %d): %s\n", webhooksv1alpha1.MaxAttemptHistory, actions.Sentence(d.HistoryErr))
			}
			return printDescribe(e.streams.Out, e.now(), d)
		},
	}
}

func printDescribe(out io.Writer, now time.Time, d *actions.DeliveryDetail) error {
	w := printers.GetNewTabWriter(out)
	field := func(name, value string) { fmt.Fprintf(w, "%s:\t%s\n", name, value) }
	field("Name", d.Name)
	field("Namespace", d.Namespace)
	field("Endpoint", d.Endpoint)
	field("Event", fmt.Sprintf("%s %s", d.Event.Type, d.Event.ID))
	field("Event Time", timestamp(now, ptr(time.Unix(d.Event.Timestamp, 0))))
	phase := d.Phase
	if d.Reason != "" {
		phase += " (" + d.Reason + ")"
	}
	field("Phase", phase)
	if d.Message != "" {
		field("Message", oneLine(d.Message, 200))
	}
	field("Attempts", fmt.Sprint(d.Attempts))
	field("Created", timestamp(now, &d.Created))
	if d.NextAttempt != nil {
		field("Next Attempt", timestamp(now, d.NextAttempt))
	}
	field("Completed", timestamp(now, d.Completed))
	if d.Live {
		field("In etcd", "yes (kubectl get whd "+d.Name+")")
	} else {
		field("In etcd", "no: left at "+timestamp(now, d.Removed)+"; the history keeps its record")
	}
	if err := w.Flush(); err != nil {
		return err
	}

	fmt.Fprintln(out, "Payload (as sent):")
	if d.PayloadErr != nil {
		fmt.Fprintf(out, "  <not sent: %s>\n", d.PayloadErr)
	} else {
		var pretty bytes.Buffer
		if json.Indent(&pretty, d.Payload, "  ", "  ") == nil {
			fmt.Fprintf(out, "  %s\n", pretty.String())
		} else {
			fmt.Fprintf(out, "  %s\n", d.Payload)
		}
	}
	fmt.Fprintln(out, "Attempts:")
	if len(d.History) == 0 {
		fmt.Fprintln(out, "  <none>")
		return nil
	}
	w = printers.GetNewTabWriter(out)
	fmt.Fprintln(w, "  #\tTIME\tTRIGGER\tRESULT\tCODE\tDURATION\tERROR")
	for _, a := range d.History {
		fmt.Fprintf(w, "  %d\t%s\t%s\t%s\t%s\t%s\t%s\n", a.Number, a.Time.UTC().Format(time.RFC3339), a.Trigger, a.Result,
			code(a.StatusCode), took(a.DurationMilliseconds), orNone(oneLine(a.Error, 120)))
	}
	return w.Flush()
}

func ptr[T any](v T) *T { return &v }

// exactlyOne is cobra.ExactArgs with a sentence that names the argument.
func exactlyOne(what string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != 1 {
			return fmt.Errorf("%s takes one %s, got %d arguments: see %s --help", cmd.Name(), what, len(args), cmd.CommandPath())
		}
		return nil
	}
}

// waitFlags are the flags of commands that wait for an attempt's result.
type waitFlags struct {
	wait    bool
	timeout time.Duration
}

func (w *waitFlags) add(cmd *cobra.Command, what string) {
	cmd.Flags().BoolVar(&w.wait, "wait", true, "Wait for "+what+" and print its result.")
	cmd.Flags().DurationVar(&w.timeout, "timeout", 30*time.Second, "How long --wait waits.")
}

func (w *waitFlags) context(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, w.timeout)
}

// lastAttempt describes a delivery's last attempt in one line.
func lastAttempt(d *webhooksv1alpha1.WebhookDelivery) string {
	if len(d.Status.History) == 0 {
		return fmt.Sprintf("no attempt yet (%s)", d.Status.Phase)
	}
	a := d.Status.History[len(d.Status.History)-1]
	s := fmt.Sprintf("attempt %d (%s): %s", a.Number, a.Trigger, a.Result)
	if a.StatusCode != 0 {
		s += fmt.Sprintf(", HTTP %d", a.StatusCode)
	}
	s += " in " + took(a.DurationMilliseconds)
	if a.Error != "" {
		s += ": " + oneLine(a.Error, 200)
	}
	return s + "; the delivery is " + string(d.Status.Phase)
}

// pendingReason says why a delivery has not made the awaited attempt, from its Ready condition.
func pendingReason(d *webhooksv1alpha1.WebhookDelivery) string {
	if d == nil {
		return "the operator has not created it yet (is it running?)"
	}
	for _, c := range d.Status.Conditions {
		if c.Type == webhooksv1alpha1.ConditionReady && c.Message != "" {
			return fmt.Sprintf("%s, %s: %s", orNone(string(d.Status.Phase)), c.Reason, c.Message)
		}
	}
	return fmt.Sprintf("%s, no attempt yet (is the operator running?)", orNone(string(d.Status.Phase)))
}

func retryCommand(e *env) *cobra.Command {
	var (
		token string
		wf    waitFlags
	)
	cmd := &cobra.Command{
		Use:   "retry DELIVERY",
		Short: "Make one more attempt of a delivery, also one that has left etcd",
		Long: "Retry asks the operator for one immediate attempt of a delivery, once per token. A delivery in\n" +
			"etcd gets the webhooks.docrouter.ai/retry annotation; one that has left etcd is re-created from\n" +
			"its history record, and its new attempt is added to the same record.",
		Example: "  kubectl webhooks retry failing-d03eddc9d5bd40eb",
		Args:    exactlyOne("DELIVERY"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, ns, err := e.client()
			if err != nil {
				return err
			}
			if token == "" {
				token = actions.NewToken("kubectl", e.now())
			}
			name := args[0]
			outcome, err := c.Retry(cmd.Context(), ns, name, token)
			if err != nil {
				return err
			}
			out := e.streams.Out
			switch outcome {
			case actions.RetryAlreadyHandled:
				fmt.Fprintf(out, "webhookdelivery/%s: retry %s was handled already; nothing more is sent\n", name, token)
				return nil
			case actions.RetryRestored:
				fmt.Fprintf(out, "webhookdelivery/%s had left etcd: re-created from its history record for one attempt (retry %s)\n", name, token)
			default:
				fmt.Fprintf(out, "webhookdelivery/%s: retry requested (%s)\n", name, token)
			}
			if !wf.wait {
				return nil
			}
			ctx, cancel := wf.context(cmd.Context())
			defer cancel()
			d, err := c.WaitForDelivery(ctx, ns, name, 250*time.Millisecond, func(d *webhooksv1alpha1.WebhookDelivery) bool {
				return d.Status.LastRetryToken == token
			})
			if err != nil {
				if ctx.Err() != nil && cmd.Context().Err() == nil {
					return fmt.Errorf("no attempt within %s: %s", wf.timeout, pendingReason(d))
				}
				return err
			}
			fmt.Fprintf(out, "webhookdelivery/%s: %s\n", name, lastAttempt(d))
			return nil
		},
	}
	cmd.Flags().StringVar(&token, "token", "", "The retry token: the operator makes one attempt per token, so repeating a command with the same token sends nothing more. Default: a new one.")
	wf.add(cmd, "the attempt")
	return cmd
}

func retryFailedCommand(e *env) *cobra.Command {
	var (
		since, token string
		maxCount     int
	)
	cmd := &cobra.Command{
		Use:   "retry-failed ENDPOINT",
		Short: "Retry every Failed delivery of an endpoint created within --since",
		Long: "Retry-failed gives every Failed delivery of the endpoint created within --since one more attempt,\n" +
			"those still in etcd and those that have left it alike (see retry). It retries none when more\n" +
			"than --max match.",
		Example: "  kubectl webhooks retry-failed crm --since 2h",
		Args:    exactlyOne("ENDPOINT"),
		RunE: func(cmd *cobra.Command, args []string) error {
			d, err := parseSince(since)
			if err != nil {
				return err
			}
			c, ns, err := e.client()
			if err != nil {
				return err
			}
			if token == "" {
				token = actions.NewToken("kubectl", e.now())
			}
			from := e.now().Add(-d)
			res, err := c.RetryFailed(cmd.Context(), ns, args[0], from, token, maxCount)
			if err != nil {
				return err
			}
			out := e.streams.Out
			switch {
			case res.Total() == 0 && res.AlreadyHandled == 0 && len(res.Errors) == 0:
				fmt.Fprintf(out, "webhookendpoint/%s: no Failed delivery since %s\n", args[0], from.UTC().Format(time.RFC3339))
			default:
				fmt.Fprintf(out, "webhookendpoint/%s: retried %d Failed deliveries since %s (%d in etcd, %d re-created from the history; retry %s)\n",
					args[0], res.Total(), from.UTC().Format(time.RFC3339), res.Requested, res.Restored, token)
				if res.AlreadyHandled > 0 {
					fmt.Fprintf(out, "%d had handled this retry already\n", res.AlreadyHandled)
				}
			}
			if len(res.Errors) > 0 {
				names := make([]string, 0, len(res.Errors))
				for n := range res.Errors {
					names = append(names, n)
				}
				sort.Strings(names)
				for _, n := range names {
					fmt.Fprintf(e.streams.ErrOut, "webhookdelivery/%s: %s\n", n, actions.Sentence(res.Errors[n]))
				}
				return fmt.Errorf("%d of the Failed deliveries could not be retried", len(res.Errors))
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&since, "since", "24h", "Retry the deliveries created within this time, such as 30m, 2h or 7d.")
	cmd.Flags().IntVar(&maxCount, "max", actions.DefaultRetryFailedMax, "Retry none when more than this many match (each retry may bring a delivery back into etcd).")
	cmd.Flags().StringVar(&token, "token", "", "The retry token (see retry --help). Default: a new one.")
	return cmd
}

func testCommand(e *env) *cobra.Command {
	var wf waitFlags
	cmd := &cobra.Command{
		Use:     "test ENDPOINT",
		Short:   "Send a webhook.test event to an endpoint (Test webhook) and wait for the result",
		Example: "  kubectl webhooks test signed",
		Args:    exactlyOne("ENDPOINT"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, ns, err := e.client()
			if err != nil {
				return err
			}
			name, err := c.Test(cmd.Context(), ns, args[0], actions.NewToken("kubectl", e.now()))
			if err != nil {
				return err
			}
			out := e.streams.Out
			fmt.Fprintf(out, "webhookendpoint/%s: test event requested as webhookdelivery/%s\n", args[0], name)
			if !wf.wait {
				return nil
			}
			ctx, cancel := wf.context(cmd.Context())
			defer cancel()
			d, err := c.WaitForDelivery(ctx, ns, name, 250*time.Millisecond, func(d *webhooksv1alpha1.WebhookDelivery) bool {
				return d.Status.Attempts > 0
			})
			if err != nil {
				if ctx.Err() != nil && cmd.Context().Err() == nil {
					return fmt.Errorf("the test event was not sent within %s: %s", wf.timeout, pendingReason(d))
				}
				return err
			}
			fmt.Fprintf(out, "webhookdelivery/%s: %s\n", name, lastAttempt(d))
			if d.Status.LastStatusCode/100 != 2 {
				return errors.New("the receiver did not accept the test event (see the attempt above; kubectl webhooks describe " + name + ")")
			}
			return nil
		},
	}
	wf.add(cmd, "the first attempt")
	return cmd
}

func pauseCommand(e *env, pause bool) *cobra.Command {
	use, short, done := "pause ENDPOINT", "Hold an endpoint's deliveries (nothing is dropped) until it is resumed", "paused: its deliveries wait until it is resumed"
	if !pause {
		use, short, done = "resume ENDPOINT", "Resume a paused endpoint: its waiting deliveries are sent", "resumed: its waiting deliveries are sent"
	}
	return &cobra.Command{
		Use:   use,
		Short: short,
		Args:  exactlyOne("ENDPOINT"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, ns, err := e.client()
			if err != nil {
				return err
			}
			if err := c.SetPaused(cmd.Context(), ns, args[0], pause); err != nil {
				return err
			}
			fmt.Fprintf(e.streams.Out, "webhookendpoint/%s %s\n", args[0], done)
			return nil
		},
	}
}
