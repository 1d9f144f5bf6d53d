//go:build cluster

package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/docrouter/webhook-operator/internal/history/historytest"
)

// postgres is the PostgreSQL server of the install with config/overlays/postgres, as an
// administrator would run one for the operator: a database and a role of its own with a
// password, reachable from the pods' network only. It runs on this machine (PostgreSQL 15 from
// Debian, the binaries the history store's tests use), as the postgres user (PostgreSQL
// refuses to run as root), in CLUSTER_DIR/postgres, listening on the bridge address (the
// pods reach the node there) on a free port, and on a Unix socket in its directory for the
// test's own administration. The cluster's teardown stops it with the pods gone, and the
// comparison of the machine knows its port, its socket and its directory.
type postgres struct {
	dir, sock string
	port      int
	user, db  string
	password  string
	pid       int
}

const (
	postgresUser = "webhooks"
	postgresDB   = "webhooks"
)

// url is what the Secret webhook-operator-history-database holds: the role, its password, the
// bridge address. No TLS: the connection never leaves the machine's bridge, and SCRAM never
// sends the password.
func (p *postgres) url() string {
	u := url.URL{Scheme: "postgres", User: url.UserPassword(p.user, p.password), Host: net.JoinHostPort(nodeIP, strconv.Itoa(p.port)), Path: "/" + p.db, RawQuery: "sslmode=disable"}
	return u.String()
}

// secretForms are the ways the password could show up in a log: as it is, escaped in a URL
// (user info or query), and its random part alone (a log that mangled the rest).
func (p *postgres) secretForms() []string {
	core := strings.TrimPrefix(strings.TrimSuffix(p.password, passwordSuffix), "pw-")
	return []string{p.password, url.PathEscape(p.password), url.QueryEscape(p.password), url.UserPassword("x", p.password).String()[2:], core}
}

// passwordSuffix holds characters that a URL must escape, so that redaction is tried on an
// escaped password too.
const passwordSuffix = "/@:%?"

// startPostgres initialises a database cluster, starts the server and creates the operator's
// role and database.
func (n *node) startPostgres(ctx context.Context) (*postgres, error) {
	bin, err := historytest.BinDir()
	if err != nil {
		return nil, err
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("PostgreSQL refuses to run as root, and there is no postgres user to run it as (apt-get install postgresql creates one): %w", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	cred := &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	raw := make([]byte, 16)
	if _, err := rand.Read(raw); err != nil {
		return nil, err
	}
	p := &postgres{dir: n.path("postgres"), user: postgresUser, db: postgresDB, password: "pw-" + hex.EncodeToString(raw) + passwordSuffix}
	p.sock = filepath.Join(p.dir, "sock")
	for _, d := range []string{p.dir, p.sock} {
		if err := os.Mkdir(d, 0o700); err != nil {
			return nil, err
		}
		if err := os.Chown(d, uid, gid); err != nil {
			return nil, err
		}
	}
	// A free port on the bridge address, where the server listens (and nowhere else).
	l, err := net.Listen("tcp", net.JoinHostPort(nodeIP, "0"))
	if err != nil {
		return nil, err
	}
	p.port = l.Addr().(*net.TCPAddr).Port
	_ = l.Close()
	n.ports["postgres"] = p.port

	data := filepath.Join(p.dir, "data")
	initdb := exec.Command(filepath.Join(bin, "initdb"), "-D", data, "-U", "postgres", "--auth-local=peer", "--auth-host=reject",
		"-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions")
	initdb.Dir, initdb.Env = p.dir, append(os.Environ(), "LC_ALL=C", "TZ=UTC")
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	if out, err := initdb.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("initdb in %s: %w\n%s", data, err, out)
	}
	// Who may connect: the test (root, mapped to the postgres superuser) on the socket of this
	// directory, and the operator's role to its database with its password, from the pods'
	// network only. Nothing else: no other address, role or method.
	hba := `# TYPE  DATABASE  USER      ADDRESS        METHOD
local   all       postgres                 peer map=admins
host    ` + postgresDB + `  ` + postgresUser + `  ` + podCIDR + `  scram-sha-256
`
	ident := "admins root postgres\nadmins postgres postgres\n"
	for name, body := range map[string]string{"pg_hba.conf": hba, "pg_ident.conf": ident} {
		f := filepath.Join(data, name)
		if err := os.WriteFile(f, []byte(body), 0o600); err != nil {
			return nil, err
		}
		if err := os.Chown(f, uid, gid); err != nil {
			return nil, err
		}
	}
	t0 := time.Now()
	proc, err := n.startAs("postgres", cred, filepath.Join(bin, "postgres"), "-D", data, "-p", strconv.Itoa(p.port),
		"-k", p.sock, "-c", "listen_addresses="+nodeIP, "-c", "unix_socket_permissions=0700",
		"-c", "password_encryption=scram-sha-256", "-c", "log_connections=on",
		// Segments in the data directory rather than in /dev/shm, which other programs share.
		"-c", "dynamic_shared_memory_type=mmap",
		"-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
		"-c", "max_connections=50", "-c", "shared_buffers=32MB")
	if err != nil {
		return nil, err
	}
	p.pid = proc.Pid
	var admin *pgx.Conn
	if err := waitFor(ctx, "PostgreSQL accepting connections", 30*time.Second, func(ctx context.Context) (bool, error) {
		c, err := pgx.Connect(ctx, p.adminDSN("postgres"))
		if err != nil {
			return false, err
		}
		admin = c
		return true, nil
	}, proc); err != nil {
		return nil, err
	}
	defer func() { _ = admin.Close(context.Background()) }()
	n.logf("PostgreSQL %s (pid %d) on %s:%d and %s, as the postgres user, ready in %.1fs", serverVersion(ctx, admin), p.pid, nodeIP, p.port, p.sock, time.Since(t0).Seconds())
	for _, q := range []string{
		"CREATE ROLE " + postgresUser + " LOGIN PASSWORD " + quoteLiteral(p.password),
		"CREATE DATABASE " + postgresDB + " OWNER " + postgresUser,
	} {
		if _, err := admin.Exec(ctx, q); err != nil {
			return nil, fmt.Errorf("creating the operator's role and database: %w", scrub(err, p.password))
		}
	}
	var verifier string
	if err := admin.QueryRow(ctx, "SELECT rolpassword FROM pg_authid WHERE rolname = $1", postgresUser).Scan(&verifier); err != nil {
		return nil, err
	}
	if !strings.HasPrefix(verifier, "SCRAM-SHA-256$") {
		return nil, fmt.Errorf("the role %s's password is not stored as a SCRAM-SHA-256 verifier", postgresUser)
	}
	// pg_hba.conf as meant: the role with its password connects (from the bridge address,
	// which is in the pods' network); a wrong password, the superuser over TCP, and the role
	// with its password from an address outside the pods' network (the machine's loopback,
	// which reaches the bridge address too) are refused.
	conn, err := pgx.Connect(ctx, p.url())
	if err != nil {
		return nil, fmt.Errorf("connecting as %s with its password: %w", postgresUser, scrub(err, p.password))
	}
	_ = conn.Close(ctx)
	for _, c := range []struct {
		who, dsn, want string
		from           net.IP
	}{
		{"a wrong password", strings.Replace(p.url(), url.UserPassword(p.user, p.password).String(), p.user+":wrong", 1), "password authentication failed", nil},
		{"the superuser over TCP", fmt.Sprintf("postgres://postgres@%s:%d/postgres?sslmode=disable", nodeIP, p.port), "no pg_hba.conf entry", nil},
		{"the operator's role from 127.0.0.1", p.url(), "no pg_hba.conf entry", net.IPv4(127, 0, 0, 1)},
	} {
		cfg, err := pgx.ParseConfig(c.dsn)
		if err != nil {
			return nil, scrub(err, p.password)
		}
		if c.from != nil {
			cfg.DialFunc = (&net.Dialer{LocalAddr: &net.TCPAddr{IP: c.from}, Timeout: 5 * time.Second}).DialContext
		}
		conn, err := pgx.ConnectConfig(ctx, cfg)
		if err == nil {
			_ = conn.Close(ctx)
			return nil, fmt.Errorf("PostgreSQL accepted %s", c.who)
		}
		if !strings.Contains(err.Error(), c.want) {
			return nil, fmt.Errorf("PostgreSQL refused %s, but not for the expected reason (%q): %w", c.who, c.want, scrub(err, p.password))
		}
	}
	n.logf("PostgreSQL: role %s (password stored as a SCRAM-SHA-256 verifier) owns database %s; pg_hba.conf lets it in from %s with scram-sha-256 and nothing else: a wrong password, the superuser over TCP and the role from 127.0.0.1 are refused", postgresUser, postgresDB, podCIDR)
	return p, nil
}

// adminDSN connects to a database as the superuser over the socket (peer authentication).
func (p *postgres) adminDSN(db string) string {
	return fmt.Sprintf("host=%s port=%d user=postgres dbname=%s sslmode=disable connect_timeout=2", p.sock, p.port, db)
}

// query runs a query on database db as the superuser and returns its rows as strings.
func (p *postgres) query(ctx context.Context, db, q string, args ...any) ([][]string, error) {
	conn, err := pgx.Connect(ctx, p.adminDSN(db))
	if err != nil {
		return nil, err
	}
	defer func() { _ = conn.Close(context.Background()) }()
	rows, err := conn.Query(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out [][]string
	for rows.Next() {
		vals, err := rows.Values()
		if err != nil {
			return nil, err
		}
		row := make([]string, len(vals))
		for i, v := range vals {
			row[i] = fmt.Sprint(v)
		}
		out = append(out, row)
	}
	return out, rows.Err()
}

func serverVersion(ctx context.Context, c *pgx.Conn) string {
	var v string
	_ = c.QueryRow(ctx, "SHOW server_version").Scan(&v)
	return v
}

func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// scrub keeps the password out of an error the test prints.
func scrub(err error, password string) error {
	if err == nil || !strings.Contains(err.Error(), password) {
		return err
	}
	return errors.New(strings.ReplaceAll(err.Error(), password, "(password)"))
}

// stopPostgres stops the server, if one runs, with a fast shutdown.
func (n *node) stopPostgres() {
	if n.procs["postgres"] == nil {
		return
	}
	t0 := time.Now()
	n.stopWith("postgres", syscall.SIGINT, 20*time.Second)
	if err := os.RemoveAll(n.path("postgres")); err != nil {
		n.logf("removing PostgreSQL's directory: %v", err)
	}
	n.logf("PostgreSQL stopped and its directory %s removed: %.1fs", n.path("postgres"), time.Since(t0).Seconds())
}

// postgresPids are the pids the test's PostgreSQL servers had (of this run, or of the run
// that crashed before it).
func (n *node) postgresPids() map[int]bool {
	pids := map[int]bool{}
	for _, p := range n.state.Procs {
		if p.Name == "postgres" {
			pids[p.Pid] = true
		}
	}
	return pids
}

// sysvSegmentsOf lists the System V shared memory segments that processes pids created.
func sysvSegmentsOf(pids map[int]bool) []string {
	var out []string
	for _, m := range readSharedMemory() {
		id, pid, _ := strings.Cut(m, " ")
		if p, err := strconv.Atoi(pid); err == nil && pids[p] {
			out = append(out, id)
		}
	}
	return out
}
