package history

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
)

// TestListIsServedByIndexes asks SQLite how it runs each List query: every filter walks an
// index in seq order (no scan of the table, no sort of what it found), so a page costs the
// page, not the store.
func TestListIsServedByIndexes(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st, err := Open(ctx, "sqlite://"+filepath.Join(t.TempDir(), "h.db"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	s := st.(*sqlStore)
	cont := encodeContinue(1000)
	for name, opts := range map[string]ListOptions{
		"all":                 {},
		"all, next page":      {Continue: cont},
		"namespace":           {Namespace: "a"},
		"namespace, next":     {Namespace: "a", Continue: cont},
		"endpoint":            {Namespace: "a", Endpoint: "crm"},
		"endpoint, next page": {Namespace: "a", Endpoint: "crm", Continue: cont},
		"phase":               {Phase: webhooksv1alpha1.PhaseFailed},
		"phase in namespace":  {Namespace: "a", Phase: webhooksv1alpha1.PhaseFailed},
		"endpoint and phase":  {Namespace: "a", Endpoint: "crm", Phase: webhooksv1alpha1.PhaseFailed, Continue: cont},
		"event id":            {EventID: "evt-1"},
		"event id, namespace": {Namespace: "a", EventID: "evt-1"},
		"event type":          {Namespace: "a", EventType: "llm.error"},
	} {
		query, args, _, err := listQuery(opts)
		if err != nil {
			t.Fatal(err)
		}
		plan := explain(t, s, query, args)
		if !strings.Contains(plan, "INDEX") || strings.Contains(plan, "TEMP B-TREE") {
			t.Errorf("%s: %s\nis not an index walk in seq order:\n%s", name, query, plan)
		}
		t.Logf("%s: %s", name, plan)
	}
	for name, q := range map[string]string{
		"changes":           "SELECT " + recordColumns + " FROM records WHERE revision > ? ORDER BY revision LIMIT ?",
		"changes namespace": "SELECT " + recordColumns + " FROM records WHERE revision > ? AND namespace = ? ORDER BY revision LIMIT ?",
	} {
		args := []any{1, 10}
		if strings.Contains(q, "namespace = ?") {
			args = []any{1, "a", 10}
		}
		if plan := explain(t, s, q, args); !strings.Contains(plan, "INDEX") || strings.Contains(plan, "TEMP B-TREE") {
			t.Errorf("%s is not an index walk:\n%s", name, plan)
		}
	}
}

func explain(t *testing.T, s *sqlStore, query string, args []any) string {
	t.Helper()
	rows, err := s.read.Query("EXPLAIN QUERY PLAN "+query, args...)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var lines []string
	for rows.Next() {
		var id, parent, unused int
		var detail string
		if err := rows.Scan(&id, &parent, &unused, &detail); err != nil {
			t.Fatal(err)
		}
		lines = append(lines, detail)
	}
	return strings.Join(lines, "; ")
}
