package history_test

import (
	"context"
	"database/sql"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/docrouter/webhook-operator/internal/history"
	"github.com/docrouter/webhook-operator/internal/history/historytest"
)

// rawDB opens the database behind a store's DSN directly, to look at the schema.
func rawDB(t *testing.T, dsn string) *sql.DB {
	t.Helper()
	driver, source := "pgx", dsn
	if path, ok := strings.CutPrefix(dsn, "sqlite://"); ok {
		driver, source = "sqlite", path
	}
	db, err := sql.Open(driver, source)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return db
}

func TestMigrations(t *testing.T) {
	for _, e := range []struct {
		name string
		dsn  func(testing.TB) string
	}{{"sqlite", historytest.SQLiteDSN}, {"postgres", historytest.Postgres}} {
		t.Run(e.name+": a fresh database is brought to the latest version, and reopening applies nothing", func(t *testing.T) {
			t.Parallel()
			files, err := filepath.Glob(filepath.Join("migrations", e.name, "*.sql"))
			if err != nil || len(files) == 0 {
				t.Fatalf("no migrations for %s: %v", e.name, err)
			}
			dsn := e.dsn(t)
			ctx := ctxT(t)
			s, err := history.Open(ctx, dsn, history.Options{})
			if err != nil {
				t.Fatal(err)
			}
			r := record("team-a", "crm", "evt-1", "uid-1", succeeded, failedAttempts(1, 2, t0)...)
			mustWrite(t, s, r)
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}

			db := rawDB(t, dsn)
			var version, rows int64
			q := "SELECT MAX(version_id), COUNT(*) FROM " + history.SchemaTable
			if err := db.QueryRowContext(ctx, q).Scan(&version, &rows); err != nil {
				t.Fatal(err)
			}
			if version != int64(len(files)) {
				t.Fatalf("schema version %d, want %d (one per migration file)", version, len(files))
			}

			s, err = history.Open(ctx, dsn, history.Options{})
			if err != nil {
				t.Fatalf("reopening: %v", err)
			}
			var rowsAgain int64
			if err := db.QueryRowContext(ctx, "SELECT COUNT(*) FROM "+history.SchemaTable).Scan(&rowsAgain); err != nil {
				t.Fatal(err)
			}
			if rowsAgain != rows {
				t.Fatalf("reopening changed the version table: %d rows, was %d", rowsAgain, rows)
			}
			if got := mustGet(t, s, keyOf(r)); len(got.Attempts) != 2 {
				t.Fatalf("after reopening the record has %d attempts, want 2", len(got.Attempts))
			}
			_ = s.Close()

			// A database from a newer operator is refused, not migrated down or half used.
			if _, err := db.ExecContext(ctx, "INSERT INTO "+history.SchemaTable+" (version_id, is_applied) VALUES (999, true)"); err != nil {
				t.Fatal(err)
			}
			_, err = history.Open(ctx, dsn, history.Options{})
			if err == nil || !strings.Contains(err.Error(), "newer than this operator's") {
				t.Fatalf("opening a database of schema 999: %v", err)
			}
			t.Log(err)
		})
	}
}

func TestOpenRefusesWhatItCannotUse(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		dsn, says string
	}{
		{"", "no history database given"},
		{"mysql://u:hunter22@db/x", "neither sqlite:///path/to/history.db nor a postgres:// URL"},
		{"sqlite://", "needs a file path"},
		{"sqlite://" + dir + "/h.db?mode=ro", "holds a ? or #"},
		{"sqlite://" + file + "/h.db", "cannot create the directory"},
		{"postgres://u:hunter22@127.0.0.1:1/db?sslmode=disable", "cannot reach the history database at 127.0.0.1:1"},
		{"postgres://u:hunter22@127.0.0.1:badport/db", "is not valid"},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		s, err := history.Open(ctx, c.dsn, history.Options{})
		cancel()
		if err == nil {
			_ = s.Close()
			t.Errorf("Open(%q) succeeded", c.dsn)
			continue
		}
		if !strings.Contains(err.Error(), c.says) {
			t.Errorf("Open(%q): %q does not say %q", c.dsn, err, c.says)
		}
		if strings.Contains(err.Error(), "hunter22") {
			t.Errorf("Open(%q): the error shows the password: %v", c.dsn, err)
		}
		t.Logf("%s: %v", c.dsn, err)
	}
}

func TestRedactDSN(t *testing.T) {
	for dsn, want := range map[string]string{
		"postgres://app:s3cret@db:5432/webhooks?sslmode=require": "postgres://app:xxxxx@db:5432/webhooks?sslmode=require",
		"postgresql://db/webhooks?user=app&password=s3cret":      "postgresql://db/webhooks?password=xxxxx&user=app",
		"postgres://app@db/webhooks":                             "postgres://app@db/webhooks",
		"sqlite:///var/lib/history.db":                           "sqlite:///var/lib/history.db",
		"mysql://app:s3cret@db/webhooks":                         "mysql://app:xxxxx@db/webhooks",
		"host=db user=app password=s3cret":                       "(a database DSN, hidden: it holds a password)",
	} {
		if got := history.RedactDSN(dsn); got != want {
			t.Errorf("RedactDSN(%q) = %q, want %q", dsn, got, want)
		}
	}
}

func TestPostgresRestart(t *testing.T) {
	t.Parallel()
	t.Run("while PostgreSQL is down calls fail; once it is back the same store works, without reopening", func(t *testing.T) {
		srv := historytest.StartPostgres(t)
		s, err := history.Open(ctxT(t), srv.Database(t), history.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		r := record("team-a", "crm", "evt-1", "uid-1", succeeded, failedAttempts(1, 2, t0)...)
		mustWrite(t, s, r)

		if err := srv.Stop(); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.Ping(ctx); err == nil {
			t.Fatal("Ping succeeded with the server stopped")
		} else {
			t.Logf("down: %v", err)
		}
		if err := s.Write(ctx, []history.Record{record("team-a", "crm", "evt-2", "uid-2", succeeded)}); err == nil {
			t.Fatal("Write succeeded with the server stopped")
		}

		if err := srv.Start(); err != nil {
			t.Fatal(err)
		}
		if err := s.Ping(ctxT(t)); err != nil {
			t.Fatalf("Ping after the restart: %v", err)
		}
		if got := mustGet(t, s, keyOf(r)); len(got.Attempts) != 2 {
			t.Fatalf("after the restart the record has %d attempts", len(got.Attempts))
		}
		mustWrite(t, s, record("team-a", "crm", "evt-2", "uid-2", succeeded))
	})
}
