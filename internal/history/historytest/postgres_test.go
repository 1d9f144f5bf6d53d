package historytest

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

func TestServerIsStoppedAndRemovedWhenTheTestEnds(t *testing.T) {
	// A directory left behind by a test binary that died.
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	abandoned, err := os.MkdirTemp("", dirPattern)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(abandoned, ownerFile), []byte(strconv.Itoa(dead.Process.Pid)), 0o644); err != nil {
		t.Fatal(err)
	}

	var dir, dsn string
	t.Run("a test that uses its own server", func(t *testing.T) {
		srv := StartPostgres(t)
		dir, dsn = srv.Dir, srv.Database(t)
		conn, err := pgx.Connect(context.Background(), dsn)
		if err != nil {
			t.Fatal(err)
		}
		var one int
		if err := conn.QueryRow(context.Background(), "SELECT 1").Scan(&one); err != nil || one != 1 {
			t.Fatalf("SELECT 1: %d, %v", one, err)
		}
		_ = conn.Close(context.Background())
		if _, err := os.Stat(abandoned); !os.IsNotExist(err) {
			t.Errorf("the abandoned directory %s is still there: %v", abandoned, err)
		}
	})
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("the server's directory %s is still there after the test: %v", dir, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if conn, err := pgx.Connect(ctx, dsn); err == nil {
		_ = conn.Close(context.Background())
		t.Fatal("the server still answers after the test")
	}
}

func TestBinDirSaysWhereTheBinariesAreMissing(t *testing.T) {
	t.Setenv("POSTGRES_BIN", t.TempDir())
	_, err := BinDir()
	if err == nil || !strings.Contains(err.Error(), "holds no initdb and postgres") {
		t.Fatalf("BinDir with an empty POSTGRES_BIN: %v", err)
	}
}
