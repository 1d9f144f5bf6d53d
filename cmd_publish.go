package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/docrouter/webhook-operator/publish"
)

// runPublish is the publish subcommand: it sends one event to the intake and prints its 202
// answer. It exits non-zero with the intake's error sentence when the event is refused.
//
//	webhook-operator publish -n tenant-a --type document.uploaded --document-id doc-1 --document-name a.pdf
//	webhook-operator publish -n tenant-a -f event.json
//	echo '{"event_type":"llm.completed",...}' | webhook-operator publish -n tenant-a -f -
func runPublish(args []string) error {
	fs := flag.NewFlagSet("publish", flag.ContinueOnError)
	fs.SetOutput(os.Stderr)
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "Usage: webhook-operator publish [-f FILE|-] [--intake URL] [-n NAMESPACE] [--token TOKEN | --token-file FILE] [--type T --document-id ID --document-name N --organization-id O --event-id ID]")
		fmt.Fprintln(fs.Output(), "Publishes one event to the intake and prints its answer. The event is read from -f, or built from the flags.")
		fs.PrintDefaults()
	}
	var (
		file, intakeURL, namespace, token, tokenFile string
		ev                                           publish.Event
		timeout                                      time.Duration
	)
	fs.StringVar(&file, "f", "", "Read the event as JSON from FILE, or from standard input when -; the event flags are then not used.")
	fs.StringVar(&intakeURL, "intake", envOr("DOCROUTER_INTAKE", "http://127.0.0.1:8090"), "Base URL of the intake ($DOCROUTER_INTAKE).")
	fs.StringVar(&namespace, "n", "default", "Namespace to publish to.")
	fs.StringVar(&namespace, "namespace", "default", "Namespace to publish to (same as -n).")
	fs.StringVar(&token, "token", os.Getenv("DOCROUTER_TOKEN"), "Bearer token, such as from kubectl create token NAME ($DOCROUTER_TOKEN).")
	fs.StringVar(&tokenFile, "token-file", "", "Read the bearer token from this file (a projected ServiceAccount token).")
	fs.StringVar(&ev.EventType, "type", "", "Event type: document.uploaded, llm.completed, llm.error, document.error or webhook.test.")
	fs.StringVar(&ev.EventID, "event-id", "", "Event id; the intake generates one when empty. Publishing the same id again creates nothing new.")
	fs.StringVar(&ev.OrganizationID, "organization-id", "", "Organization id of the event.")
	fs.StringVar(&ev.Document.DocumentID, "document-id", "", "Document id of the event.")
	fs.StringVar(&ev.Document.DocumentName, "document-name", "", "Document name of the event.")
	fs.DurationVar(&timeout, "timeout", 30*time.Second, "How long to wait for the intake's answer.")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q: give the event with -f or the event flags", fs.Args())
	}
	if token != "" && tokenFile != "" {
		return errors.New("give --token or --token-file, not both")
	}

	var body []byte
	switch file {
	case "":
		if ev.EventType == "" {
			return errors.New("give --type (or an event with -f FILE)")
		}
		var err error
		if body, err = json.Marshal(ev); err != nil {
			return err
		}
	case "-":
		var err error
		if body, err = io.ReadAll(io.LimitReader(os.Stdin, publish.MaxBodyBytes+1)); err != nil {
			return fmt.Errorf("reading the event from standard input: %w", err)
		}
	default:
		var err error
		if body, err = os.ReadFile(file); err != nil {
			return err
		}
	}

	c := &publish.Client{URL: intakeURL, Token: token, TokenFile: tokenFile}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	acc, err := c.PublishJSON(ctx, namespace, body)
	if err != nil {
		var perr *publish.Error
		if errors.As(err, &perr) && perr.EventID != "" {
			return fmt.Errorf("%w (publish again with --event-id %s)", err, perr.EventID)
		}
		return err
	}
	out, err := json.MarshalIndent(acc, "", "  ")
	if err != nil {
		return err
	}
	fmt.Println(string(out))
	return nil
}

func envOr(name, def string) string {
	if v := strings.TrimSpace(os.Getenv(name)); v != "" {
		return v
	}
	return def
}
