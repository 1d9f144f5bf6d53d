package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/docrouter/webhook-operator/dispatcher"
	"github.com/docrouter/webhook-operator/internal/receiver"
)

// runReceiver is `webhook-operator receiver`: a sample webhook receiver for trying the operator
// out. It verifies each request, prints one line per event, and answers 500 for paths under
// /fail (and for a --fail-rate share) so that retries can be watched.
func runReceiver(args []string) error {
	fs := flag.NewFlagSet("receiver", flag.ExitOnError)
	var (
		listen, secret, secretFile, authHeader string
		failRate                               float64
		tolerance                              time.Duration
	)
	fs.StringVar(&listen, "listen", "127.0.0.1:9000", "Address to listen on.")
	fs.StringVar(&secretFile, "secret-file", "", "File holding the HMAC signing secret (surrounding whitespace is trimmed). Requests that carry "+dispatcher.HeaderSignature+" must match it.")
	fs.StringVar(&secret, "secret", "", "The HMAC signing secret itself (visible in the process list: prefer --secret-file).")
	fs.StringVar(&authHeader, "auth-header", "", "A static auth header as Name:Value, such as X-Api-Key:abc. Requests that carry the header must carry this value.")
	fs.Float64Var(&failRate, "fail-rate", 0, "Share of authenticated requests, 0 to 1, answered 500 at random.")
	fs.DurationVar(&tolerance, "tolerance", dispatcher.DefaultTolerance, "How far the signed timestamp may be from now.")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: webhook-operator receiver [flags]\n\n"+
			"A sample webhook receiver. Answers 401 to unauthenticated requests, 500 to paths under /fail\n"+
			"and to a --fail-rate share, 200 otherwise, and prints one line per request.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if failRate < 0 || failRate > 1 {
		return fmt.Errorf("--fail-rate %g: want a number from 0 to 1", failRate)
	}
	opts := receiver.Options{FailRate: failRate, Tolerance: tolerance, Out: os.Stdout}
	switch {
	case secret != "" && secretFile != "":
		return errors.New("give --secret or --secret-file, not both")
	case secretFile != "":
		b, err := os.ReadFile(secretFile)
		if err != nil {
			return err
		}
		if secret = strings.TrimSpace(string(b)); secret == "" {
			return fmt.Errorf("--secret-file %s is empty", secretFile)
		}
	}
	opts.Secret = []byte(secret)
	if authHeader != "" {
		name, value, ok := strings.Cut(authHeader, ":")
		name, value = strings.TrimSpace(name), strings.TrimSpace(value)
		if !ok || name == "" || value == "" {
			return errors.New("--auth-header: want Name:Value, such as X-Api-Key:abc")
		}
		opts.AuthHeaderName, opts.AuthHeaderValue = http.CanonicalHeaderKey(name), value
	}

	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler:           receiver.New(opts),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
	}
	auth := []string{}
	if len(opts.Secret) > 0 {
		auth = append(auth, "signature")
	}
	if opts.AuthHeaderName != "" {
		auth = append(auth, "header "+opts.AuthHeaderName)
	}
	if len(auth) == 0 {
		auth = append(auth, "none (accepting every request)")
	}
	fmt.Printf("receiver: listening on http://%s (verifying: %s; paths under %s answer 500; fail rate %g)\n",
		ln.Addr(), strings.Join(auth, ", "), receiver.FailPath, failRate)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return srv.Shutdown(shutdownCtx)
}
