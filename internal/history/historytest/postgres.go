// Package historytest runs the history store's engines for tests: a real PostgreSQL server
// started from the machine's binaries (one per test binary, a fresh database per test) and
// SQLite in a temporary file. Nothing here is a fake: the tests of every package that needs
// a store get the real thing.
//
//	func TestMain(m *testing.M) { os.Exit(historytest.Main(m)) }
//
//	func TestSomething(t *testing.T) {
//		store := historytest.OpenPostgres(t) // or historytest.SQLite(t)
//		...
//	}
package historytest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/docrouter/webhook-operator/internal/history"
)

// DefaultBinDir is where Debian's postgresql package puts the PostgreSQL 15 server.
const DefaultBinDir = "/usr/lib/postgresql/15/bin"

// BinDir finds the directory of the PostgreSQL server binaries (initdb, postgres): $POSTGRES_BIN,
// then DefaultBinDir, then the newest /usr/lib/postgresql/*/bin, then initdb on the PATH.
func BinDir() (string, error) {
	has := func(dir string) bool {
		for _, b := range []string{"initdb", "postgres"} {
			if fi, err := os.Stat(filepath.Join(dir, b)); err != nil || fi.IsDir() {
				return false
			}
		}
		return true
	}
	if dir := os.Getenv("POSTGRES_BIN"); dir != "" {
		if has(dir) {
			return dir, nil
		}
		return "", fmt.Errorf("POSTGRES_BIN=%s holds no initdb and postgres binaries", dir)
	}
	if has(DefaultBinDir) {
		return DefaultBinDir, nil
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Sort(sort.Reverse(sort.StringSlice(dirs)))
	for _, dir := range dirs {
		if has(dir) {
			return dir, nil
		}
	}
	if p, err := exec.LookPath("initdb"); err == nil && has(filepath.Dir(p)) {
		return filepath.Dir(p), nil
	}
	return "", errors.New("the PostgreSQL server binaries (initdb, postgres) are not on this machine: " +
		"install them with `apt-get install postgresql` (the tests use " + DefaultBinDir + "), " +
		"or set POSTGRES_BIN to their directory; hack/postgres.sh finds them")
}

// Server is a PostgreSQL server for tests, in a temporary directory, listening on a free
// loopback port and on a Unix socket inside that directory. fsync, synchronous_commit and
// full_page_writes are off: the tests need speed, not durability across power cuts.
type Server struct {
	// Dir holds the data directory, the socket and postgres.log.
	Dir  string
	Port int

	bin  string
	cred *syscall.Credential

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}

	dbs atomic.Int64
}

// NewServer initialises a database cluster and starts a server on it. PostgreSQL refuses to
// run as root: as root (the tests here and in CI), initdb and postgres run as the postgres
// user, in a directory that user owns.
func NewServer() (*Server, error) {
	bin, err := BinDir()
	if err != nil {
		return nil, err
	}
	s := &Server{bin: bin}
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return nil, fmt.Errorf("the tests run as root and PostgreSQL refuses to, but there is no postgres user to run it as (apt-get install postgresql creates one): %w", err)
		}
		uid, _ := strconv.ParseUint(u.Uid, 10, 32)
		gid, _ := strconv.ParseUint(u.Gid, 10, 32)
		s.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	}
	removeAbandoned()
	s.Dir, err = os.MkdirTemp("", dirPattern)
	if err != nil {
		return nil, fmt.Errorf("cannot make a directory for PostgreSQL: %w", err)
	}
	if err := os.WriteFile(filepath.Join(s.Dir, ownerFile), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		_ = os.RemoveAll(s.Dir)
		return nil, err
	}
	if err := s.init(); err != nil {
		_ = os.RemoveAll(s.Dir)
		return nil, err
	}
	if err := s.Start(); err != nil {
		_ = os.RemoveAll(s.Dir)
		return nil, err
	}
	return s, nil
}

const (
	dirPattern = "historytest-postgres-"
	// ownerFile holds the pid of the test binary that made the directory.
	ownerFile = "owner.pid"
)

// removeAbandoned removes the directories of servers whose test binary died without cleaning
// up (a panic in a test, a timeout, SIGKILL): the kernel stopped their server (Pdeathsig),
// but nothing removed the files.
func removeAbandoned() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), dirPattern+"*"))
	for _, dir := range dirs {
		b, err := os.ReadFile(filepath.Join(dir, ownerFile))
		if err != nil {
			continue
		}
		pid, err := strconv.Atoi(string(b))
		if err != nil || alive(pid) {
			continue
		}
		// A server still running there (its postmaster.pid starts with its pid) is left alone.
		if b, err := os.ReadFile(filepath.Join(dir, "data", "postmaster.pid")); err == nil {
			first, _, _ := strings.Cut(string(b), "\n")
			if pg, err := strconv.Atoi(strings.TrimSpace(first)); err == nil && alive(pg) {
				continue
			}
		}
		_ = os.RemoveAll(dir)
	}
}

func alive(pid int) bool {
	return pid > 0 && !errors.Is(syscall.Kill(pid, 0), syscall.ESRCH)
}

func (s *Server) command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(filepath.Join(s.bin, name), args...)
	cmd.Dir = s.Dir
	cmd.Env = append(os.Environ(), "LC_ALL=C", "TZ=UTC")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred}
	return cmd
}

func (s *Server) init() error {
	sock := filepath.Join(s.Dir, "sock")
	if err := os.Mkdir(sock, 0o700); err != nil {
		return err
	}
	if s.cred != nil {
		for _, p := range []string{s.Dir, sock} {
			if err := os.Chown(p, int(s.cred.Uid), int(s.cred.Gid)); err != nil {
				return fmt.Errorf("cannot hand %s to the postgres user: %w", p, err)
			}
		}
	}
	port, err := freePort()
	if err != nil {
		return err
	}
	s.Port = port
	cmd := s.command("initdb", "-D", filepath.Join(s.Dir, "data"), "-U", "postgres", "-A", "trust",
		"-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("initdb failed in %s: %w\n%s", s.Dir, err, out)
	}
	return nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("cannot find a free loopback port for PostgreSQL: %w", err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	return port, l.Close()
}

// Start starts the server (again, after Stop) and waits until it accepts connections.
func (s *Server) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return errors.New("the PostgreSQL server of the test is running already")
	}
	logPath := filepath.Join(s.Dir, "postgres.log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	defer func() { _ = logf.Close() }() // the server keeps its own descriptor
	cmd := s.command("postgres", "-D", filepath.Join(s.Dir, "data"), "-p", strconv.Itoa(s.Port),
		"-k", filepath.Join(s.Dir, "sock"), "-c", "listen_addresses=127.0.0.1",
		"-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
		"-c", "max_connections=200", "-c", "shared_buffers=64MB", "-c", "log_min_messages=warning")
	cmd.Stdout, cmd.Stderr = logf, logf
	// If the test binary dies without cleaning up, the kernel stops the server.
	cmd.SysProcAttr.Pdeathsig = syscall.SIGQUIT
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("cannot start postgres: %w", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	s.cmd, s.done = cmd, done

	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		conn, err := pgx.Connect(ctx, s.DSN("postgres"))
		cancel()
		if err == nil {
			_ = conn.Close(context.Background())
			return nil
		}
		select {
		case <-done:
			s.cmd = nil
			return fmt.Errorf("postgres exited at start: %s", tail(logPath))
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			_ = s.stopLocked() // the error below says why
			return fmt.Errorf("postgres did not accept connections within 30s: %v; %s", err, tail(logPath))
		}
	}
}

func tail(path string) string {
	b, _ := os.ReadFile(path)
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(bytes.TrimSpace(b))
}

// Stop stops the server (a fast shutdown: clients are disconnected) and waits for it.
func (s *Server) Stop() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stopLocked()
}

func (s *Server) stopLocked() error {
	if s.cmd == nil {
		return nil
	}
	_ = s.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-s.done:
	case <-time.After(20 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.done
	}
	s.cmd = nil
	return nil
}

// Close stops the server and removes its directory.
func (s *Server) Close() error {
	err := s.Stop()
	return errors.Join(err, os.RemoveAll(s.Dir))
}

// DSN is the URL of a database of the server, as the postgres superuser.
func (s *Server) DSN(database string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", s.Port, database)
}

// CreateDatabase creates a fresh, empty database and returns its name.
func (s *Server) CreateDatabase(ctx context.Context) (string, error) {
	name := fmt.Sprintf("test_%d_%d", os.Getpid(), s.dbs.Add(1))
	conn, err := pgx.Connect(ctx, s.DSN("postgres"))
	if err != nil {
		return "", fmt.Errorf("cannot reach the test PostgreSQL server: %w", err)
	}
	defer func() { _ = conn.Close(context.Background()) }()
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return "", fmt.Errorf("cannot create database %s: %w", name, err)
	}
	return name, nil
}

// DropDatabase drops a database, disconnecting its clients.
func (s *Server) DropDatabase(ctx context.Context, name string) error {
	conn, err := pgx.Connect(ctx, s.DSN("postgres"))
	if err != nil {
		return err
	}
	defer func() { _ = conn.Close(context.Background()) }()
	_, err = conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)")
	return err
}

// Database creates a fresh database for the test, dropped when the test ends, and returns
// its DSN.
func (s *Server) Database(tb testing.TB) string {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	name, err := s.CreateDatabase(ctx)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := s.DropDatabase(ctx, name); err != nil {
			tb.Logf("dropping test database %s: %v", name, err)
		}
	})
	return s.DSN(name)
}

// StartPostgres starts a server of the test's own (for tests that stop and start it),
// stopped and removed when the test ends, failed or not.
func StartPostgres(tb testing.TB) *Server {
	tb.Helper()
	s, err := NewServer()
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := s.Close(); err != nil {
			tb.Logf("stopping the test PostgreSQL server: %v", err)
		}
	})
	return s
}

var shared struct {
	sync.Mutex
	inMain bool
	server *Server
	err    error
}

// Main runs the tests of a package that uses Postgres or OpenPostgres: their one server
// starts at the first test that asks for it and is stopped and removed after the last one,
// whatever the tests did.
//
//	func TestMain(m *testing.M) { os.Exit(historytest.Main(m)) }
func Main(m *testing.M) int {
	shared.Lock()
	shared.inMain = true
	shared.Unlock()
	defer func() {
		shared.Lock()
		defer shared.Unlock()
		if shared.server != nil {
			if err := shared.server.Close(); err != nil {
				fmt.Fprintf(os.Stderr, "historytest: stopping PostgreSQL: %v\n", err)
			}
			shared.server = nil
		}
	}()
	return m.Run()
}

// SharedServer returns the test binary's PostgreSQL server, started on first use.
func SharedServer(tb testing.TB) *Server {
	tb.Helper()
	shared.Lock()
	defer shared.Unlock()
	if !shared.inMain {
		tb.Fatal("historytest: the shared PostgreSQL server needs historytest.Main, which stops it: " +
			"add func TestMain(m *testing.M) { os.Exit(historytest.Main(m)) } to the package's tests")
	}
	if shared.server == nil && shared.err == nil {
		shared.server, shared.err = NewServer()
	}
	if shared.err != nil {
		tb.Fatal(shared.err)
	}
	return shared.server
}

// Postgres returns the DSN of a fresh database on the shared server, dropped when the test
// ends.
func Postgres(tb testing.TB) string {
	tb.Helper()
	return SharedServer(tb).Database(tb)
}

// OpenPostgres opens a store on a fresh database of the shared server, closed when the test
// ends.
func OpenPostgres(tb testing.TB, opts ...history.Options) history.Store {
	tb.Helper()
	return open(tb, Postgres(tb), opts)
}

// SQLiteDSN is the DSN of a SQLite database in a temporary directory of the test.
func SQLiteDSN(tb testing.TB) string {
	tb.Helper()
	return "sqlite://" + filepath.Join(tb.TempDir(), "history.db")
}

// SQLite opens a store on a fresh SQLite file, closed when the test ends.
func SQLite(tb testing.TB, opts ...history.Options) history.Store {
	tb.Helper()
	return open(tb, SQLiteDSN(tb), opts)
}

func open(tb testing.TB, dsn string, opts []history.Options) history.Store {
	tb.Helper()
	var o history.Options
	if len(opts) > 0 {
		o = opts[0]
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := history.Open(ctx, dsn, o)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = s.Close() })
	return s
}
