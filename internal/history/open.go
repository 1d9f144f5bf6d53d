package history

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"
	_ "modernc.org/sqlite" // the "sqlite" database/sql driver, pure Go (CGO_ENABLED=0 builds)
)

// Open opens the store that dsn names and brings its schema to this binary's version:
//
//	sqlite:///var/lib/webhook-operator/history.db   (an absolute path)
//	sqlite://relative/path/history.db               (relative to the working directory)
//	postgres://user:password@host:5432/db?sslmode=require   (or postgresql://)
//
// Errors say what failed in a sentence and never hold the password (see RedactDSN).
func Open(ctx context.Context, dsn string, opts Options) (Store, error) {
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	switch {
	case strings.HasPrefix(dsn, "sqlite://"):
		return openSQLite(ctx, strings.TrimPrefix(dsn, "sqlite://"), now)
	case strings.HasPrefix(dsn, "postgres://"), strings.HasPrefix(dsn, "postgresql://"):
		return openPostgres(ctx, dsn, now)
	case dsn == "":
		return nil, errors.New("history: no history database given (sqlite:///path/to/history.db or a postgres:// URL)")
	}
	return nil, fmt.Errorf("history: the history database %q is neither sqlite:///path/to/history.db nor a postgres:// URL", RedactDSN(dsn))
}

// RedactDSN returns dsn fit for logs: the password of a URL, in its user info or its
// query, is replaced by xxxxx; a DSN that is not a URL and mentions a password is hidden.
func RedactDSN(dsn string) string {
	if strings.HasPrefix(dsn, "sqlite://") {
		return dsn
	}
	scheme, _, isURL := strings.Cut(dsn, "://")
	if !isURL {
		if strings.Contains(strings.ToLower(dsn), "password") {
			return "(a database DSN, hidden: it holds a password)"
		}
		return dsn
	}
	u, err := url.Parse(dsn)
	if err != nil {
		return scheme + "://(a URL that does not parse, hidden)"
	}
	if q := u.Query(); q.Has("password") {
		q.Set("password", "xxxxx")
		u.RawQuery = q.Encode()
	}
	return u.Redacted()
}

// dsnPassword is the password in a PostgreSQL URL, to scrub from errors of the driver.
func dsnPassword(dsn string) string {
	u, err := url.Parse(dsn)
	if err != nil {
		return ""
	}
	if p, ok := u.User.Password(); ok && p != "" {
		return p
	}
	return u.Query().Get("password")
}

// scrubbed is an error whose text has a secret replaced.
type scrubbed struct {
	err    error
	secret string
}

func (e scrubbed) Error() string { return strings.ReplaceAll(e.err.Error(), e.secret, "xxxxx") }
func (e scrubbed) Unwrap() error { return e.err }

func scrub(err error, secret string) error {
	if err == nil || len(secret) < 3 || !strings.Contains(err.Error(), secret) {
		return err
	}
	return scrubbed{err, secret}
}

// SQLite: one write connection, so that writers queue in Go (database/sql hands the one
// connection out in turn) rather than spinning on SQLITE_BUSY, and BEGIN IMMEDIATE takes the
// write lock at the start of a transaction, so a read-then-write transaction cannot fail to
// upgrade; a pool of read-only connections beside it, which WAL lets read while the writer
// writes. synchronous=FULL: a committed batch survives a power cut, because the archiver
// deletes WebhookDeliveries from etcd once they are in the store.
const (
	sqliteWriteParams = "_txlock=immediate&_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)" +
		"&_pragma=synchronous(FULL)&_pragma=foreign_keys(1)&_pragma=cache_size(-16384)&_pragma=wal_autocheckpoint(8192)"
	sqliteReadParams = "_pragma=busy_timeout(10000)&_pragma=query_only(1)&_pragma=foreign_keys(1)" +
		"&_pragma=cache_size(-16384)"
	sqliteReaders = 4
)

func openSQLite(ctx context.Context, path string, now func() time.Time) (Store, error) {
	switch {
	case path == "":
		return nil, errors.New("history: sqlite:// needs a file path (sqlite:///var/lib/webhook-operator/history.db)")
	case strings.ContainsAny(path, "?#"):
		return nil, fmt.Errorf("history: the SQLite path %q holds a ? or #; sqlite:// takes a file path only", path)
	}
	if dir := filepath.Dir(path); dir != "" {
		if err := os.MkdirAll(dir, 0o750); err != nil {
			return nil, fmt.Errorf("history: cannot create the directory of the history database %s: %w", path, err)
		}
	}
	write, err := sql.Open("sqlite", path+"?"+sqliteWriteParams)
	if err != nil {
		return nil, fmt.Errorf("history: cannot open the SQLite history database %s: %w", path, err)
	}
	write.SetMaxOpenConns(1)
	write.SetMaxIdleConns(1)
	write.SetConnMaxLifetime(0)
	write.SetConnMaxIdleTime(0)
	if err := write.PingContext(ctx); err != nil {
		_ = write.Close()
		return nil, fmt.Errorf("history: cannot open the SQLite history database %s: %w", path, err)
	}
	if err := migrate(ctx, write, "sqlite"); err != nil {
		_ = write.Close()
		return nil, fmt.Errorf("history: cannot bring the SQLite history database %s to the current schema: %w", path, err)
	}
	read, err := sql.Open("sqlite", path+"?"+sqliteReadParams)
	if err != nil {
		_ = write.Close()
		return nil, fmt.Errorf("history: cannot open the SQLite history database %s: %w", path, err)
	}
	read.SetMaxOpenConns(sqliteReaders)
	read.SetMaxIdleConns(sqliteReaders)
	if err := read.PingContext(ctx); err != nil {
		_ = write.Close()
		_ = read.Close()
		return nil, fmt.Errorf("history: cannot open the SQLite history database %s for reading: %w", path, err)
	}
	s := &sqlStore{d: sqliteDialect, where: "the SQLite history database " + path, write: write, read: read, now: now}
	if err := s.prepareWrites(ctx); err != nil {
		_ = s.Close()
		return nil, fmt.Errorf("history: cannot prepare the statements of the SQLite history database %s: %w", path, err)
	}
	return s, nil
}

// PostgreSQL goes through database/sql with pgx's stdlib driver rather than pgxpool: both
// engines then share one implementation (store.go) and goose's migrations, which take a
// *sql.DB; database/sql discards connections that a server restart broke and dials again,
// so the store recovers by itself. What pgxpool would add (batches, COPY) the store does not
// need: a Write is a handful of multi-row statements.
const (
	postgresMaxConns       = 10
	postgresConnectTimeout = 10 * time.Second
)

func openPostgres(ctx context.Context, dsn string, now func() time.Time) (Store, error) {
	password := dsnPassword(dsn)
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("history: the PostgreSQL URL %s is not valid: %w", RedactDSN(dsn), scrub(err, password))
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = postgresConnectTimeout
	}
	addr := cfg.Host
	if !strings.HasPrefix(addr, "/") {
		addr = net.JoinHostPort(cfg.Host, strconv.Itoa(int(cfg.Port)))
	}
	db := stdlib.OpenDB(*cfg)
	db.SetMaxOpenConns(postgresMaxConns)
	db.SetMaxIdleConns(postgresMaxConns)
	db.SetConnMaxIdleTime(5 * time.Minute)
	db.SetConnMaxLifetime(time.Hour)
	if err := db.PingContext(ctx); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("history: cannot reach the history database at %s (database %q, user %q): %w",
			addr, cfg.Database, cfg.User, scrub(err, password))
	}
	if err := migrate(ctx, db, "postgres"); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("history: cannot bring the history database at %s (database %q) to the current schema: %w",
			addr, cfg.Database, scrub(err, password))
	}
	where := fmt.Sprintf("the history database at %s (database %q)", addr, cfg.Database)
	return &sqlStore{d: postgresDialect, where: where, write: db, read: db, now: now}, nil
}

// The schema of each engine: versioned goose SQL files, embedded in the binary.
//
//go:embed migrations/sqlite/*.sql migrations/postgres/*.sql
var migrations embed.FS

// SchemaTable is the table that records the applied schema versions.
const SchemaTable = "history_schema_version"

// migrate applies the migrations not applied yet. On PostgreSQL a session advisory lock
// makes replicas that start together apply them once.
func migrate(ctx context.Context, db *sql.DB, engine string) error {
	fsys, err := fs.Sub(migrations, "migrations/"+engine)
	if err != nil {
		return err
	}
	dialect := goose.DialectSQLite3
	opts := []goose.ProviderOption{goose.WithTableName(SchemaTable), goose.WithDisableGlobalRegistry(true)}
	if engine == "postgres" {
		dialect = goose.DialectPostgres
		locker, err := lock.NewPostgresSessionLocker()
		if err != nil {
			return err
		}
		opts = append(opts, goose.WithSessionLocker(locker))
	}
	p, err := goose.NewProvider(dialect, db, fsys, opts...)
	if err != nil {
		return err
	}
	current, target, err := p.GetVersions(ctx)
	if err != nil {
		return err
	}
	if current > target {
		return fmt.Errorf("the database has schema version %d, newer than this operator's %d: run the newer operator, or restore a backup", current, target)
	}
	_, err = p.Up(ctx)
	return err
}
