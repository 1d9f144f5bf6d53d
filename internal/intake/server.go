package intake

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/go-logr/logr"
	"sigs.k8s.io/controller-runtime/pkg/certwatcher"
	"sigs.k8s.io/controller-runtime/pkg/manager"
)

// DefaultBindAddress is where the intake listens unless told otherwise: loopback, plain HTTP,
// for local development. In a cluster, bind to :8090 with a certificate and key.
const DefaultBindAddress = "127.0.0.1:8090"

// Server serves a Handler as a manager Runnable. It runs on every replica, leader or not: any
// replica may create deliveries, and only the leader sends them.
type Server struct {
	// Addr is the listen address, such as 127.0.0.1:8090 or :8090.
	Addr string
	// CertFile and KeyFile, when both are set, serve HTTPS (TLS 1.2 or later). The files are
	// watched and a renewed certificate is used without a restart.
	CertFile, KeyFile string
	Handler           http.Handler
	Log               logr.Logger
	// ready, when not nil, receives the bound address once the server listens (for tests).
	ready chan<- net.Addr
}

var (
	_ manager.Runnable               = (*Server)(nil)
	_ manager.LeaderElectionRunnable = (*Server)(nil)
)

// NeedLeaderElection is false: the intake serves on every replica.
func (s *Server) NeedLeaderElection() bool { return false }

// Start listens and serves until ctx is done, then drains in-flight requests for up to 10s.
func (s *Server) Start(ctx context.Context) error {
	if (s.CertFile == "") != (s.KeyFile == "") {
		return errors.New("intake: give both a TLS certificate file and a key file, or neither")
	}
	srv := &http.Server{
		Handler:           s.Handler,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    64 << 10,
		BaseContext:       func(net.Listener) context.Context { return logr.NewContext(context.Background(), s.Log) },
	}
	ln, err := net.Listen("tcp", s.Addr)
	if err != nil {
		return fmt.Errorf("intake: listening on %s: %w", s.Addr, err)
	}
	scheme := "http"
	if s.CertFile != "" {
		watcher, err := certwatcher.New(s.CertFile, s.KeyFile)
		if err != nil {
			_ = ln.Close()
			return fmt.Errorf("intake: loading the TLS certificate: %w", err)
		}
		go func() {
			if err := watcher.Start(ctx); err != nil {
				s.Log.Error(err, "watching the intake's TLS certificate")
			}
		}()
		srv.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: watcher.GetCertificate}
		scheme = "https"
	}
	s.Log.Info("serving the event intake", "address", ln.Addr().String(), "scheme", scheme)
	if s.ready != nil {
		s.ready <- ln.Addr()
	}
	errc := make(chan error, 1)
	go func() {
		if scheme == "https" {
			errc <- srv.ServeTLS(ln, "", "") // the certificate comes from TLSConfig.GetCertificate
		} else {
			errc <- srv.Serve(ln)
		}
	}()
	select {
	case err := <-errc:
		return fmt.Errorf("intake: %w", err)
	case <-ctx.Done():
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdown); err != nil {
		return fmt.Errorf("intake: shutting down: %w", err)
	}
	return nil
}
