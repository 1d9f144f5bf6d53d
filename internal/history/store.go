package history

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"k8s.io/apimachinery/pkg/types"

	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
)

// Both engines are one implementation over database/sql: the SQL is the same (upserts with
// ON CONFLICT, RETURNING, row values, partial indexes all exist in SQLite and PostgreSQL), and
// a dialect holds the few differences. Times are stored as Unix microseconds in both.

// dialect is what differs between the engines.
type dialect struct {
	engine string
	// dollar rewrites ? placeholders as $1, $2... (PostgreSQL).
	dollar bool
	// lockRevision reads the store's revision and locks it until the transaction ends, so that
	// writers hand out revisions in commit order. SQLite's write transactions are exclusive
	// already (BEGIN IMMEDIATE on the one write connection).
	lockRevision string
	// readTx are the options of read transactions that read more than one statement (List).
	readTx *sql.TxOptions
	// lockBacklog, when set, serialises Enqueue per namespace until the transaction ends:
	// replicas that enqueue the same names in different orders would otherwise deadlock on
	// the backlog's unique index (SQLite's one writer needs nothing).
	lockBacklog string
}

var (
	sqliteDialect = dialect{
		engine:       "sqlite",
		lockRevision: "SELECT revision FROM history_meta WHERE id = 1",
	}
	postgresDialect = dialect{
		engine:       "postgres",
		dollar:       true,
		lockRevision: "SELECT revision FROM history_meta WHERE id = 1 FOR UPDATE",
		// One snapshot for a page and the revision it reports.
		readTx:      &sql.TxOptions{Isolation: sql.LevelRepeatableRead, ReadOnly: true},
		lockBacklog: "SELECT pg_advisory_xact_lock(7231, hashtext($1))",
	}
)

// byNames selects cols of the rows of table in one namespace whose names are in a JSON array:
// its arguments are the array, then the namespace. Each name is one probe of the primary key
// (namespace, name) whatever the planner's statistics say: in PostgreSQL through a LATERAL
// subquery that LIMIT keeps from being flattened into a join (a freshly filled table without
// statistics otherwise got a scan of the whole namespace); SQLite probes an IN list by index.
func (d dialect) byNames(table, cols string) string {
	if d.dollar {
		return d.q("SELECT r.* FROM json_array_elements_text(?::json) AS k(name) CROSS JOIN LATERAL " +
			"(SELECT " + cols + " FROM " + table + " WHERE namespace = ? AND name = k.name LIMIT 1) AS r")
	}
	return "SELECT " + cols + " FROM " + table + " WHERE name IN (SELECT value FROM json_each(?)) AND namespace = ?"
}

// knownQuery selects the names of a JSON array in one namespace that the records or the backlog
// hold, in one statement (a query per table was two round trips for every event published).
func (d dialect) knownQuery() string {
	return d.byNames("records", "name") + " UNION ALL " + d.byNames("backlog", "name")
}

// knownArgs are knownQuery's arguments: PostgreSQL's $1 and $2 serve both halves, SQLite's ?
// take them again.
func (d dialect) knownArgs(list, namespace string) []any {
	if d.dollar {
		return []any{list, namespace}
	}
	return []any{list, namespace, list, namespace}
}

func namesJSON(names []string) string {
	b, _ := json.Marshal(names)
	return string(b)
}

// q rewrites a query written with ? placeholders for the engine.
func (d dialect) q(query string) string {
	if !d.dollar {
		return query
	}
	var b strings.Builder
	b.Grow(len(query) + 64)
	n := 0
	for i := 0; i < len(query); i++ {
		if query[i] == '?' {
			n++
			b.WriteByte('$')
			b.WriteString(strconv.Itoa(n))
			continue
		}
		b.WriteByte(query[i])
	}
	return b.String()
}

// sqlStore is the Store of both engines.
type sqlStore struct {
	d dialect
	// where names the database in errors, without credentials.
	where string
	// write runs the write transactions. For SQLite it holds one connection, so writes queue
	// in Go instead of failing with SQLITE_BUSY; for PostgreSQL it is the pool.
	write *sql.DB
	// read runs reads: a pool of read-only connections for SQLite (WAL lets them read while
	// the writer writes); the pool again for PostgreSQL.
	read *sql.DB
	now  func() time.Time

	// stmts are the write statements that SQLite would otherwise parse at every call (a
	// multi-row INSERT of 2,400 values per chunk), prepared once at Open on the write
	// connection; read-only afterwards. PostgreSQL has none: pgx caches the statements of each
	// connection itself.
	stmts map[string]*sql.Stmt
}

var _ Store = (*sqlStore)(nil)

// prepareWrites prepares the statements of every Write, for the whole chunks. It runs before
// the store is used: the write pool of SQLite has one connection, which a transaction holds.
func (s *sqlStore) prepareWrites(ctx context.Context) error {
	s.stmts = map[string]*sql.Stmt{}
	for _, q := range []string{
		s.d.lockRevision, setRevisionQuery, s.d.byNames("records", loadStatesColumns),
		upsertRecordsQuery(rowsPerInsert), insertAttemptsQuery(rowsPerInsert), addRollupsQuery(rowsPerInsert),
	} {
		q = s.d.q(q)
		st, err := s.write.PrepareContext(ctx, q)
		if err != nil {
			return fmt.Errorf("preparing %.40q: %w", q, err)
		}
		s.stmts[q] = st
	}
	return nil
}

// exec runs a write statement of tx, prepared when it is one of stmts.
func (s *sqlStore) exec(ctx context.Context, tx *sql.Tx, query string, args ...any) (sql.Result, error) {
	if st := s.stmts[query]; st != nil {
		return tx.StmtContext(ctx, st).ExecContext(ctx, args...)
	}
	return tx.ExecContext(ctx, query, args...)
}

// query is exec for statements that return rows.
func (s *sqlStore) query(ctx context.Context, tx *sql.Tx, query string, args ...any) (*sql.Rows, error) {
	if st := s.stmts[query]; st != nil {
		return tx.StmtContext(ctx, st).QueryContext(ctx, args...)
	}
	return tx.QueryContext(ctx, query, args...)
}

func (s *sqlStore) Engine() string { return s.d.engine }

func (s *sqlStore) Close() error {
	for _, st := range s.stmts {
		_ = st.Close()
	}
	err := s.write.Close()
	if s.read != s.write {
		err = errors.Join(err, s.read.Close())
	}
	return err
}

func (s *sqlStore) Ping(ctx context.Context) error {
	if err := s.write.PingContext(ctx); err != nil {
		return fmt.Errorf("history: %s does not answer: %w", s.where, err)
	}
	if s.read != s.write {
		if err := s.read.PingContext(ctx); err != nil {
			return fmt.Errorf("history: %s does not answer: %w", s.where, err)
		}
	}
	return nil
}

// Bounds of one statement: rows per multi-row INSERT (SQLite allows 500 rows in a VALUES
// list) and values per IN list.
const (
	rowsPerInsert = 100
	keysPerIn     = 500
)

// inWrite runs fn in a write transaction.
func (s *sqlStore) inWrite(ctx context.Context, fn func(tx *sql.Tx) error) error {
	tx, err := s.write.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := fn(tx); err != nil {
		return errors.Join(err, ignoreDone(tx.Rollback()))
	}
	return tx.Commit()
}

// inRead runs fn in a read transaction: one snapshot for every statement of fn.
func (s *sqlStore) inRead(ctx context.Context, fn func(tx *sql.Tx) error) error {
	tx, err := s.read.BeginTx(ctx, s.d.readTx)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback() }()
	return fn(tx)
}

// maxTries bounds the runs of a transaction that PostgreSQL aborted (see retryable).
const maxTries = 5

// retryable reports a PostgreSQL deadlock or serialisation failure: the transaction was
// aborted and can run again.
func retryable(err error) bool {
	var pg *pgconn.PgError
	return errors.As(err, &pg) && (pg.Code == "40P01" || pg.Code == "40001")
}

func ignoreDone(err error) error {
	if errors.Is(err, sql.ErrTxDone) {
		return nil
	}
	return err
}

// lockRevision returns the store's revision, locked until tx ends.
func (s *sqlStore) lockRevision(ctx context.Context, tx *sql.Tx) (int64, error) {
	var rev int64
	rows, err := s.query(ctx, tx, s.d.lockRevision)
	if err != nil {
		return 0, fmt.Errorf("reading the store's revision: %w", err)
	}
	defer rows.Close()
	if !rows.Next() {
		return 0, fmt.Errorf("reading the store's revision: %w", errors.Join(rows.Err(), errors.New("history_meta has no row")))
	}
	if err := rows.Scan(&rev); err != nil {
		return 0, fmt.Errorf("reading the store's revision: %w", err)
	}
	return rev, nil
}

const setRevisionQuery = "UPDATE history_meta SET revision = ? WHERE id = 1"

func (s *sqlStore) setRevision(ctx context.Context, tx *sql.Tx, rev int64) error {
	_, err := s.exec(ctx, tx, s.d.q(setRevisionQuery), rev)
	return err
}

// Times are Unix microseconds.
func micro(t time.Time) int64 { return t.UnixMicro() }

func microPtr(t *time.Time) *int64 {
	if t == nil {
		return nil
	}
	v := t.UnixMicro()
	return &v
}

func fromMicro(v int64) time.Time { return time.UnixMicro(v).UTC() }

func fromMicroPtr(v sql.NullInt64) *time.Time {
	if !v.Valid {
		return nil
	}
	t := fromMicro(v.Int64)
	return &t
}

// placeholders returns "(?, ?, ...)" with n marks.
func placeholders(n int) string {
	return "(" + strings.TrimSuffix(strings.Repeat("?, ", n), ", ") + ")"
}

// valuesList returns rows groups of "(?, ...)" of cols marks each.
func valuesList(rows, cols int) string {
	one := placeholders(cols)
	return strings.TrimSuffix(strings.Repeat(one+", ", rows), ", ")
}

// chunks calls fn for consecutive parts of n items of at most size each.
func chunks(n, size int, fn func(lo, hi int) error) error {
	for lo := 0; lo < n; lo += size {
		if err := fn(lo, min(lo+size, n)); err != nil {
			return err
		}
	}
	return nil
}

// ---- Write

// recordRow is one record of a Write, encoded.
type recordRow struct {
	rec    *Record
	event  string
	labels string
	// attempts of every record of the batch with this key (the same key twice in one batch
	// keeps the last record's values and every attempt).
	attempts []attemptRow

	// filled from the stored row
	removed  *int64
	digest   string
	revision int64
	upsert   bool
}

type attemptRow struct {
	uid string
	a   webhooksv1alpha1.Attempt
}

// storedState is what Write reads of a stored record to decide what changes.
type storedState struct {
	uid      string
	phase    webhooksv1alpha1.DeliveryPhase
	attempts int32
	removed  sql.NullInt64
	digest   string
}

func validateRecord(i int, r *Record) error {
	switch {
	case r.Namespace == "":
		return fmt.Errorf("history: record %d (%q) has no namespace", i, r.Name)
	case r.Name == "":
		return fmt.Errorf("history: record %d in namespace %q has no name", i, r.Namespace)
	case r.UID == "":
		return fmt.Errorf("history: record %s/%s has no UID", r.Namespace, r.Name)
	case r.Endpoint == "":
		return fmt.Errorf("history: record %s/%s has no endpoint", r.Namespace, r.Name)
	}
	for _, a := range r.Attempts {
		if a.Number < 1 {
			return fmt.Errorf("history: record %s/%s has an attempt numbered %d (attempts count from 1)", r.Namespace, r.Name, a.Number)
		}
	}
	if r.Phase != "" && !validPhase(r.Phase) {
		return fmt.Errorf("history: record %s/%s has the unknown phase %q", r.Namespace, r.Name, r.Phase)
	}
	return nil
}

func validPhase(p webhooksv1alpha1.DeliveryPhase) bool {
	switch p {
	case webhooksv1alpha1.PhasePending, webhooksv1alpha1.PhaseRetrying, webhooksv1alpha1.PhaseSucceeded, webhooksv1alpha1.PhaseFailed:
		return true
	}
	return false
}

// digestOf hashes what a record row holds, but seq and revision: equal digests mean a write
// would change nothing.
func digestOf(r *recordRow) string {
	rec := r.rec
	h := sha256.New()
	enc := json.NewEncoder(h)
	_ = enc.Encode([]any{
		string(rec.UID), rec.Endpoint, r.event, r.labels, string(rec.Phase), rec.AttemptCount,
		rec.LastStatusCode, rec.LastError, rec.Reason, rec.Message, rec.LastRetryToken,
		micro(rec.CreationTime), microPtr(rec.LastAttemptTime), microPtr(rec.NextAttemptTime),
		microPtr(rec.CompletionTime), r.removed,
		// A new resourceVersion is a change, even with the same content: Archived compares it.
		rec.ResourceVersion,
	})
	return hex.EncodeToString(h.Sum(nil)[:16])
}

// Write upserts records (see Store). Inside one transaction, holding the store's revision:
// it reads the stored state of every key, keeps the newest values (an older snapshot of the
// same delivery, with fewer attempts, does not overwrite a newer one), inserts the attempts
// that are not stored yet, and adds to the rollups only what it inserted and the phases it
// moved into.
func (s *sqlStore) Write(ctx context.Context, records []Record) error {
	if len(records) == 0 {
		return nil
	}
	rows := make([]*recordRow, 0, len(records))
	byKey := make(map[Key]*recordRow, len(records))
	for i := range records {
		r := &records[i]
		if err := validateRecord(i, r); err != nil {
			return err
		}
		k := Key{r.Namespace, r.Name}
		row := byKey[k]
		if row == nil {
			row = &recordRow{}
			byKey[k] = row
			rows = append(rows, row)
		}
		row.rec = r
		for _, a := range r.Attempts {
			row.attempts = append(row.attempts, attemptRow{uid: string(r.UID), a: a})
		}
	}
	for _, row := range rows {
		event, err := json.Marshal(row.rec.Event)
		if err != nil {
			return fmt.Errorf("history: encoding the event of %s/%s: %w", row.rec.Namespace, row.rec.Name, err)
		}
		labels := row.rec.Labels
		if labels == nil {
			labels = map[string]string{}
		}
		lb, err := json.Marshal(labels)
		if err != nil {
			return fmt.Errorf("history: encoding the labels of %s/%s: %w", row.rec.Namespace, row.rec.Name, err)
		}
		row.event, row.labels = string(event), string(lb)
	}
	err := s.inWrite(ctx, func(tx *sql.Tx) error { return s.write1(ctx, tx, rows) })
	if err != nil {
		return fmt.Errorf("history: writing %d records: %w", len(records), err)
	}
	return nil
}

func (s *sqlStore) write1(ctx context.Context, tx *sql.Tx, rows []*recordRow) error {
	rev, err := s.lockRevision(ctx, tx)
	if err != nil {
		return err
	}
	startRev := rev
	keys := make([]Key, len(rows))
	for i, row := range rows {
		keys[i] = Key{row.rec.Namespace, row.rec.Name}
	}
	stored, err := s.loadStates(ctx, tx, keys)
	if err != nil {
		return err
	}

	now := s.now()
	rollups := map[rollupKey]*rollup{}
	roll := func(ns, endpoint string, t time.Time) *rollup {
		k := rollupKey{ns, endpoint, unixMinute(t)}
		r := rollups[k]
		if r == nil {
			r = &rollup{}
			rollups[k] = r
		}
		return r
	}

	var upserts []*recordRow
	for i, row := range rows {
		rec := row.rec
		st, exists := stored[keys[i]]
		if exists && st.uid == string(rec.UID) && rec.AttemptCount < st.attempts {
			continue // an older snapshot of the delivery the store already holds
		}
		row.removed = microPtr(rec.RemovedTime)
		if row.removed == nil && exists && st.uid == string(rec.UID) && st.removed.Valid {
			// The delivery that wrote the record has left etcd: a late write of it keeps
			// that. A delivery re-created with a new UID is in etcd again.
			row.removed = &st.removed.Int64
		}
		row.digest = digestOf(row)
		if exists && row.digest == st.digest {
			continue
		}
		rev++
		row.revision = rev
		row.upsert = true
		upserts = append(upserts, row)
		if rec.Phase.Finished() && (!exists || st.phase != rec.Phase) {
			at := now
			switch {
			case rec.CompletionTime != nil:
				at = *rec.CompletionTime
			case rec.LastAttemptTime != nil:
				at = *rec.LastAttemptTime
			}
			r := roll(rec.Namespace, rec.Endpoint, at)
			if rec.Phase == webhooksv1alpha1.PhaseSucceeded {
				r.succeeded++
			} else {
				r.failed++
			}
		}
	}
	if err := s.upsertRecords(ctx, tx, upserts); err != nil {
		return err
	}

	inserted, err := s.insertAttempts(ctx, tx, rows)
	if err != nil {
		return err
	}
	for _, row := range rows {
		n := 0
		for _, a := range row.attempts {
			if inserted[attemptKey{a.uid, a.a.Number}] {
				roll(row.rec.Namespace, row.rec.Endpoint, a.a.Time.Time).addAttempt(a.a)
				n++
			}
		}
		if n > 0 && !row.upsert {
			// New attempts change what Get returns: the record gets a new revision.
			rev++
			if _, err := tx.ExecContext(ctx, s.d.q("UPDATE records SET revision = ? WHERE namespace = ? AND name = ?"),
				rev, row.rec.Namespace, row.rec.Name); err != nil {
				return fmt.Errorf("updating the revision of %s/%s: %w", row.rec.Namespace, row.rec.Name, err)
			}
		}
	}
	if err := s.addRollups(ctx, tx, rollups); err != nil {
		return err
	}
	if rev != startRev {
		return s.setRevision(ctx, tx, rev)
	}
	return nil
}

const loadStatesColumns = "name, uid, phase, attempt_count, removed_time, digest"

// loadStates reads what Write needs of the stored records among keys.
func (s *sqlStore) loadStates(ctx context.Context, tx *sql.Tx, keys []Key) (map[Key]storedState, error) {
	out := make(map[Key]storedState, len(keys))
	err := forKeysByNamespace(keys, func(ns string, names []string) error {
		rows, err := s.query(ctx, tx, s.d.byNames("records", loadStatesColumns),
			namesJSON(names), ns)
		if err != nil {
			return fmt.Errorf("reading stored records: %w", err)
		}
		defer rows.Close()
		for rows.Next() {
			var name string
			var st storedState
			if err := rows.Scan(&name, &st.uid, &st.phase, &st.attempts, &st.removed, &st.digest); err != nil {
				return fmt.Errorf("reading stored records: %w", err)
			}
			out[Key{ns, name}] = st
		}
		return rows.Err()
	})
	return out, err
}

// forKeysByNamespace calls fn with the names of keys grouped by namespace, at most keysPerIn
// at a time, so that each query is served by the primary key (namespace, name).
func forKeysByNamespace(keys []Key, fn func(ns string, names []string) error) error {
	var order []string
	names := map[string][]string{}
	for _, k := range keys {
		if _, ok := names[k.Namespace]; !ok {
			order = append(order, k.Namespace)
		}
		names[k.Namespace] = append(names[k.Namespace], k.Name)
	}
	for _, ns := range order {
		list := names[ns]
		if err := chunks(len(list), keysPerIn, func(lo, hi int) error { return fn(ns, list[lo:hi]) }); err != nil {
			return err
		}
	}
	return nil
}

const recordInsertColumns = "namespace, name, uid, endpoint, event_id, event_type, organization_id, event, labels, " +
	"phase, attempt_count, last_status_code, last_error, reason, message, last_retry_token, " +
	"creation_time, last_attempt_time, next_attempt_time, completion_time, removed_time, seq, revision, digest, resource_version"

const recordInsertCount = 25

// On conflict every column but the key and seq takes the new value.
var recordUpsertSet = func() string {
	var set []string
	for _, c := range strings.Split(recordInsertColumns, ", ") {
		if c == "namespace" || c == "name" || c == "seq" {
			continue
		}
		set = append(set, c+" = excluded."+c)
	}
	return strings.Join(set, ", ")
}()

func upsertRecordsQuery(rows int) string {
	return "INSERT INTO records (" + recordInsertColumns + ") VALUES " + valuesList(rows, recordInsertCount) +
		" ON CONFLICT (namespace, name) DO UPDATE SET " + recordUpsertSet
}

func (s *sqlStore) upsertRecords(ctx context.Context, tx *sql.Tx, rows []*recordRow) error {
	return chunks(len(rows), rowsPerInsert, func(lo, hi int) error {
		args := make([]any, 0, (hi-lo)*recordInsertCount)
		for _, row := range rows[lo:hi] {
			r := row.rec
			args = append(args, r.Namespace, r.Name, string(r.UID), r.Endpoint, r.Event.ID, r.Event.Type,
				r.Event.OrganizationID, row.event, row.labels, string(r.Phase), r.AttemptCount, r.LastStatusCode,
				r.LastError, r.Reason, r.Message, r.LastRetryToken, micro(r.CreationTime),
				microPtr(r.LastAttemptTime), microPtr(r.NextAttemptTime), microPtr(r.CompletionTime), row.removed,
				row.revision, row.revision, row.digest, r.ResourceVersion)
		}
		if _, err := s.exec(ctx, tx, s.d.q(upsertRecordsQuery(hi-lo)), args...); err != nil {
			return fmt.Errorf("upserting records: %w", err)
		}
		return nil
	})
}

type attemptKey struct {
	uid    string
	number int32
}

func insertAttemptsQuery(rows int) string {
	return "INSERT INTO attempts (delivery_uid, number, namespace, name, attempt_time, status_code, duration_ms, result, error, attempt_trigger) VALUES " +
		valuesList(rows, attemptColumnCount) + " ON CONFLICT (namespace, name, delivery_uid, number) DO NOTHING RETURNING delivery_uid, number"
}

const attemptColumnCount = 10

// insertAttempts inserts the attempts not stored yet and returns those it inserted.
func (s *sqlStore) insertAttempts(ctx context.Context, tx *sql.Tx, rows []*recordRow) (map[attemptKey]bool, error) {
	type item struct {
		row *recordRow
		a   attemptRow
	}
	var items []item
	seen := map[attemptKey]bool{}
	for _, row := range rows {
		for _, a := range row.attempts {
			k := attemptKey{a.uid, a.a.Number}
			if seen[k] {
				continue
			}
			seen[k] = true
			items = append(items, item{row, a})
		}
	}
	inserted := make(map[attemptKey]bool, len(items))
	err := chunks(len(items), rowsPerInsert, func(lo, hi int) error {
		args := make([]any, 0, (hi-lo)*attemptColumnCount)
		for _, it := range items[lo:hi] {
			a := it.a.a
			args = append(args, it.a.uid, a.Number, it.row.rec.Namespace, it.row.rec.Name, micro(a.Time.Time),
				a.StatusCode, a.DurationMilliseconds, a.Result, a.Error, string(a.Trigger))
		}
		rs, err := s.query(ctx, tx, s.d.q(insertAttemptsQuery(hi-lo)), args...)
		if err != nil {
			return fmt.Errorf("inserting attempts: %w", err)
		}
		defer rs.Close()
		for rs.Next() {
			var k attemptKey
			if err := rs.Scan(&k.uid, &k.number); err != nil {
				return fmt.Errorf("inserting attempts: %w", err)
			}
			inserted[k] = true
		}
		return rs.Err()
	})
	return inserted, err
}

var rollupColumns = func() string {
	c := []string{"namespace", "endpoint", "minute", "succeeded", "failed", "attempts", "failed_attempts"}
	c = append(c, classColumns...)
	c = append(c, bucketColumns...)
	return strings.Join(c, ", ")
}()

const rollupColumnCount = 7 + 9 + numBuckets

var rollupUpsertSet = func() string {
	var set []string
	for _, c := range strings.Split(rollupColumns, ", ")[3:] {
		set = append(set, c+" = rollups."+c+" + excluded."+c)
	}
	return strings.Join(set, ", ")
}()

func addRollupsQuery(rows int) string {
	return "INSERT INTO rollups (" + rollupColumns + ") VALUES " + valuesList(rows, rollupColumnCount) +
		" ON CONFLICT (namespace, endpoint, minute) DO UPDATE SET " + rollupUpsertSet
}

func (s *sqlStore) addRollups(ctx context.Context, tx *sql.Tx, rollups map[rollupKey]*rollup) error {
	keys := make([]rollupKey, 0, len(rollups))
	for k := range rollups {
		keys = append(keys, k)
	}
	return chunks(len(keys), rowsPerInsert, func(lo, hi int) error {
		args := make([]any, 0, (hi-lo)*rollupColumnCount)
		for _, k := range keys[lo:hi] {
			r := rollups[k]
			args = append(args, k.namespace, k.endpoint, k.minute, r.succeeded, r.failed, r.attempts, r.failedAttempts)
			for _, v := range r.classes {
				args = append(args, v)
			}
			for _, v := range r.buckets {
				args = append(args, v)
			}
		}
		if _, err := s.exec(ctx, tx, s.d.q(addRollupsQuery(hi-lo)), args...); err != nil {
			return fmt.Errorf("adding to the rollups: %w", err)
		}
		return nil
	})
}

// ---- Reads of records

const recordColumns = "namespace, name, uid, endpoint, event, labels, phase, attempt_count, last_status_code, " +
	"last_error, reason, message, last_retry_token, creation_time, last_attempt_time, next_attempt_time, " +
	"completion_time, removed_time, seq, revision, resource_version"

type scanner interface{ Scan(dest ...any) error }

func scanRecord(sc scanner) (Record, error) {
	var r Record
	var uid, phase string
	var event, labels []byte
	var created int64
	var last, next, completed, removed sql.NullInt64
	if err := sc.Scan(&r.Namespace, &r.Name, &uid, &r.Endpoint, &event, &labels, &phase, &r.AttemptCount,
		&r.LastStatusCode, &r.LastError, &r.Reason, &r.Message, &r.LastRetryToken, &created, &last, &next,
		&completed, &removed, &r.Seq, &r.Revision, &r.ResourceVersion); err != nil {
		return r, err
	}
	r.UID = types.UID(uid)
	r.Phase = webhooksv1alpha1.DeliveryPhase(phase)
	if err := json.Unmarshal(event, &r.Event); err != nil {
		return r, fmt.Errorf("decoding the event of %s/%s: %w", r.Namespace, r.Name, err)
	}
	if err := json.Unmarshal(labels, &r.Labels); err != nil {
		return r, fmt.Errorf("decoding the labels of %s/%s: %w", r.Namespace, r.Name, err)
	}
	if len(r.Labels) == 0 {
		r.Labels = nil
	}
	r.CreationTime = fromMicro(created)
	r.LastAttemptTime = fromMicroPtr(last)
	r.NextAttemptTime = fromMicroPtr(next)
	r.CompletionTime = fromMicroPtr(completed)
	r.RemovedTime = fromMicroPtr(removed)
	return r, nil
}

func (s *sqlStore) Get(ctx context.Context, key Key) (*Record, error) {
	var rec Record
	err := s.inRead(ctx, func(tx *sql.Tx) error {
		var err error
		rec, err = scanRecord(tx.QueryRowContext(ctx, s.d.q("SELECT "+recordColumns+" FROM records WHERE namespace = ? AND name = ?"),
			key.Namespace, key.Name))
		if err != nil {
			return err
		}
		rows, err := tx.QueryContext(ctx, s.d.q(
			"SELECT number, attempt_time, status_code, duration_ms, result, error, attempt_trigger FROM attempts "+
				"WHERE namespace = ? AND name = ? ORDER BY attempt_time, number"), key.Namespace, key.Name)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var a webhooksv1alpha1.Attempt
			var t int64
			var trigger string
			if err := rows.Scan(&a.Number, &t, &a.StatusCode, &a.DurationMilliseconds, &a.Result, &a.Error, &trigger); err != nil {
				return err
			}
			a.Time.Time = fromMicro(t)
			a.Trigger = webhooksv1alpha1.AttemptTrigger(trigger)
			rec.Attempts = append(rec.Attempts, a)
		}
		return rows.Err()
	})
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("history: reading %s/%s: %w", key.Namespace, key.Name, err)
	}
	return &rec, nil
}

// encodeContinue and decodeContinue make the opaque continue token: the seq of the last
// record of a page.
func encodeContinue(seq int64) string {
	return base64.RawURLEncoding.EncodeToString([]byte(strconv.FormatInt(seq, 10)))
}

func decodeContinue(token string) (int64, error) {
	b, err := base64.RawURLEncoding.DecodeString(token)
	if err == nil {
		var seq int64
		if seq, err = strconv.ParseInt(string(b), 10, 64); err == nil && seq > 0 {
			return seq, nil
		}
	}
	return 0, fmt.Errorf("history: the continue token %q is not one that List returned", token)
}

// List pages by seq, newest first: a page is the records below the previous page's last seq,
// so records written meanwhile (which get higher seqs) neither shift nor repeat later pages.
// Each filter walks an index that holds it and seq (see the migrations); EventType and Since
// are applied on that walk.
// listQuery is the query of List (with ? placeholders), its arguments and the page size.
func listQuery(opts ListOptions) (string, []any, int, error) {
	limit := opts.Limit
	switch {
	case limit < 0:
		return "", nil, 0, fmt.Errorf("history: the page size %d is negative", limit)
	case limit == 0:
		limit = DefaultPageSize
	case limit > MaxPageSize:
		limit = MaxPageSize
	}
	if opts.Phase != "" && !validPhase(opts.Phase) {
		return "", nil, 0, fmt.Errorf("history: cannot list by the unknown phase %q (Pending, Retrying, Succeeded or Failed)", opts.Phase)
	}
	var where []string
	var args []any
	add := func(cond string, v any) {
		where = append(where, cond)
		args = append(args, v)
	}
	if opts.Namespace != "" {
		add("namespace = ?", opts.Namespace)
	}
	if opts.Endpoint != "" {
		add("endpoint = ?", opts.Endpoint)
	}
	if opts.Phase != "" {
		add("phase = ?", string(opts.Phase))
	}
	if opts.EventID != "" {
		add("event_id = ?", opts.EventID)
	}
	if opts.EventType != "" {
		add("event_type = ?", opts.EventType)
	}
	if !opts.Since.IsZero() {
		add("creation_time >= ?", micro(opts.Since))
	}
	if opts.Continue != "" {
		seq, err := decodeContinue(opts.Continue)
		if err != nil {
			return "", nil, 0, err
		}
		add("seq < ?", seq)
	}
	query := "SELECT " + recordColumns + " FROM records"
	if len(where) > 0 {
		query += " WHERE " + strings.Join(where, " AND ")
	}
	query += " ORDER BY seq DESC LIMIT ?"
	args = append(args, limit+1)

	return query, args, limit, nil
}

func (s *sqlStore) List(ctx context.Context, opts ListOptions) (*Page, error) {
	query, args, limit, err := listQuery(opts)
	if err != nil {
		return nil, err
	}
	page := &Page{}
	err = s.inRead(ctx, func(tx *sql.Tx) error {
		if err := tx.QueryRowContext(ctx, "SELECT revision FROM history_meta WHERE id = 1").Scan(&page.Revision); err != nil {
			return err
		}
		rows, err := tx.QueryContext(ctx, s.d.q(query), args...)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			r, err := scanRecord(rows)
			if err != nil {
				return err
			}
			page.Records = append(page.Records, r)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("history: listing records: %w", err)
	}
	if len(page.Records) > limit {
		page.Records = page.Records[:limit]
		page.Continue = encodeContinue(page.Records[limit-1].Seq)
	}
	return page, nil
}

func (s *sqlStore) Changes(ctx context.Context, namespace string, revision int64, limit int) ([]Record, error) {
	if limit <= 0 {
		limit = DefaultPageSize
	}
	limit = min(limit, MaxPageSize)
	query := "SELECT " + recordColumns + " FROM records WHERE revision > ?"
	args := []any{revision}
	if namespace != "" {
		query += " AND namespace = ?"
		args = append(args, namespace)
	}
	query += " ORDER BY revision LIMIT ?"
	args = append(args, limit)
	rows, err := s.read.QueryContext(ctx, s.d.q(query), args...)
	if err != nil {
		return nil, fmt.Errorf("history: reading changes after revision %d: %w", revision, err)
	}
	defer rows.Close()
	var out []Record
	for rows.Next() {
		r, err := scanRecord(rows)
		if err != nil {
			return nil, fmt.Errorf("history: reading changes after revision %d: %w", revision, err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("history: reading changes after revision %d: %w", revision, err)
	}
	return out, nil
}

func (s *sqlStore) Revision(ctx context.Context) (int64, error) {
	var rev int64
	if err := s.read.QueryRowContext(ctx, "SELECT revision FROM history_meta WHERE id = 1").Scan(&rev); err != nil {
		return 0, fmt.Errorf("history: reading the store's revision: %w", err)
	}
	return rev, nil
}

func (s *sqlStore) Archived(ctx context.Context, checks []ArchiveCheck) (map[types.UID]bool, error) {
	out := make(map[types.UID]bool, len(checks))
	if len(checks) == 0 {
		return out, nil
	}
	keys := make([]Key, len(checks))
	for i, c := range checks {
		keys[i] = c.Key
	}
	type state struct {
		uid             string
		phase           webhooksv1alpha1.DeliveryPhase
		resourceVersion string
	}
	stored := map[Key]state{}
	err := forKeysByNamespace(keys, func(ns string, names []string) error {
		rows, err := s.read.QueryContext(ctx, s.d.byNames("records", "name, uid, phase, resource_version"), namesJSON(names), ns)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var name string
			var st state
			if err := rows.Scan(&name, &st.uid, &st.phase, &st.resourceVersion); err != nil {
				return err
			}
			stored[Key{ns, name}] = st
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("history: checking %d archived deliveries: %w", len(checks), err)
	}
	for _, c := range checks {
		st, ok := stored[c.Key]
		out[c.UID] = ok && st.uid == string(c.UID) && st.phase.Finished() && st.resourceVersion == c.ResourceVersion
	}
	return out, nil
}

// MarkRemoved sets the removed time of records that do not have one yet (the first time a
// delivery left etcd is kept), each with a new revision.
func (s *sqlStore) MarkRemoved(ctx context.Context, keys []Key, at time.Time) error {
	if len(keys) == 0 {
		return nil
	}
	err := s.inWrite(ctx, func(tx *sql.Tx) error {
		rev, err := s.lockRevision(ctx, tx)
		if err != nil {
			return err
		}
		start := rev
		stmt, err := tx.PrepareContext(ctx, s.d.q(
			"UPDATE records SET removed_time = ?, revision = ? WHERE namespace = ? AND name = ? AND removed_time IS NULL"))
		if err != nil {
			return err
		}
		defer stmt.Close()
		for _, k := range keys {
			res, err := stmt.ExecContext(ctx, micro(at), rev+1, k.Namespace, k.Name)
			if err != nil {
				return err
			}
			if n, err := res.RowsAffected(); err != nil {
				return err
			} else if n > 0 {
				rev++
			}
		}
		if rev != start {
			return s.setRevision(ctx, tx, rev)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("history: marking %d records removed: %w", len(keys), err)
	}
	return nil
}

func (s *sqlStore) Known(ctx context.Context, namespace string, names []string) (map[string]bool, error) {
	out := make(map[string]bool, len(names))
	err := chunks(len(names), keysPerIn, func(lo, hi int) error {
		list := namesJSON(names[lo:hi])
		rows, err := s.read.QueryContext(ctx, s.d.knownQuery(), s.d.knownArgs(list, namespace)...)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var n string
			if err := rows.Scan(&n); err != nil {
				return err
			}
			out[n] = true
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("history: looking up %d names in namespace %q: %w", len(names), namespace, err)
	}
	return out, nil
}

// Prune deletes in batches: each transaction deletes at most batch records (with their
// attempts) or batch rollup rows, so no transaction grows with the store.
func (s *sqlStore) Prune(ctx context.Context, before time.Time, batch int) (int, error) {
	if batch < 1 {
		return 0, fmt.Errorf("history: the prune batch size %d must be at least 1", batch)
	}
	total := 0
	for {
		n, err := s.pruneRecords(ctx, before, batch)
		total += n
		if err != nil {
			return total, fmt.Errorf("history: pruning records finished before %s: %w", before.UTC().Format(time.RFC3339), err)
		}
		if n < batch {
			break
		}
	}
	minute := unixMinute(before)
	for {
		var n int64
		err := s.inWrite(ctx, func(tx *sql.Tx) error {
			res, err := tx.ExecContext(ctx, s.d.q(
				"DELETE FROM rollups WHERE (namespace, endpoint, minute) IN "+
					"(SELECT namespace, endpoint, minute FROM rollups WHERE minute < ? LIMIT ?)"), minute, batch)
			if err != nil {
				return err
			}
			n, err = res.RowsAffected()
			return err
		})
		if err != nil {
			return total, fmt.Errorf("history: pruning rollups before %s: %w", before.UTC().Format(time.RFC3339), err)
		}
		if n < int64(batch) {
			return total, nil
		}
	}
}

func (s *sqlStore) pruneRecords(ctx context.Context, before time.Time, batch int) (int, error) {
	deleted := 0
	err := s.inWrite(ctx, func(tx *sql.Tx) error {
		// Serialise with Write, which reads and then rewrites records.
		if _, err := s.lockRevision(ctx, tx); err != nil {
			return err
		}
		rows, err := tx.QueryContext(ctx, s.d.q(
			"SELECT namespace, name FROM records WHERE removed_time IS NOT NULL AND completion_time < ? "+
				"AND phase IN ('Succeeded', 'Failed') LIMIT ?"), micro(before), batch)
		if err != nil {
			return err
		}
		var keys []Key
		for rows.Next() {
			var k Key
			if err := rows.Scan(&k.Namespace, &k.Name); err != nil {
				rows.Close()
				return err
			}
			keys = append(keys, k)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		return forKeysByNamespace(keys, func(ns string, names []string) error {
			args := []any{ns}
			for _, n := range names {
				args = append(args, n)
			}
			in := placeholders(len(names))
			if _, err := tx.ExecContext(ctx, s.d.q("DELETE FROM attempts WHERE namespace = ? AND name IN "+in), args...); err != nil {
				return err
			}
			res, err := tx.ExecContext(ctx, s.d.q("DELETE FROM records WHERE namespace = ? AND name IN "+in), args...)
			if err != nil {
				return err
			}
			n, err := res.RowsAffected()
			deleted += int(n)
			return err
		})
	})
	if err != nil {
		return 0, err
	}
	return deleted, nil
}

// ---- Backlog

func (s *sqlStore) Enqueue(ctx context.Context, items []BacklogItem) ([]bool, error) {
	added := make([]bool, len(items))
	if len(items) == 0 {
		return added, nil
	}
	events := make([]string, len(items))
	for i, it := range items {
		switch {
		case it.Namespace == "":
			return nil, fmt.Errorf("history: backlog item %d (%q) has no namespace", i, it.Name)
		case it.Name == "":
			return nil, fmt.Errorf("history: backlog item %d in namespace %q has no name", i, it.Namespace)
		case it.Endpoint == "":
			return nil, fmt.Errorf("history: backlog item %s/%s has no endpoint", it.Namespace, it.Name)
		}
		b, err := json.Marshal(it.Event)
		if err != nil {
			return nil, fmt.Errorf("history: encoding the event of backlog item %s/%s: %w", it.Namespace, it.Name, err)
		}
		events[i] = string(b)
	}
	now := s.now()
	var namespaces []string
	for _, it := range items {
		namespaces = append(namespaces, it.Namespace)
	}
	slices.Sort(namespaces)
	namespaces = slices.Compact(namespaces)
	enqueue := func(tx *sql.Tx) error {
		if s.d.lockBacklog != "" {
			for _, ns := range namespaces { // in order: two callers never wait on each other in a cycle
				if _, err := tx.ExecContext(ctx, s.d.lockBacklog, ns); err != nil {
					return err
				}
			}
		}
		// Known to the records, or already in the backlog (the unique index on namespace and
		// name decides between replicas that enqueue the same name at once).
		stmt, err := tx.PrepareContext(ctx, s.d.q(
			"INSERT INTO backlog (namespace, endpoint, name, event, enqueued_at) "+
				"SELECT ?, ?, ?, ?, ? WHERE NOT EXISTS (SELECT 1 FROM records WHERE namespace = ? AND name = ?) "+
				"ON CONFLICT (namespace, name) DO NOTHING"))
		if err != nil {
			return err
		}
		defer stmt.Close()
		for i, it := range items {
			at := it.EnqueuedAt
			if at.IsZero() {
				at = now
			}
			res, err := stmt.ExecContext(ctx, it.Namespace, it.Endpoint, it.Name, events[i], micro(at), it.Namespace, it.Name)
			if err != nil {
				return err
			}
			n, err := res.RowsAffected()
			if err != nil {
				return err
			}
			added[i] = n > 0
		}
		return nil
	}
	// A transaction that PostgreSQL aborted (a deadlock with something else, a serialisation
	// failure) runs again.
	var err error
	for try := 1; ; try++ {
		err = s.inWrite(ctx, enqueue)
		if err == nil || !retryable(err) || try == maxTries {
			break
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("history: adding %d events to the backlog: %w", len(items), errors.Join(err, ctx.Err()))
		case <-time.After(time.Duration(try*try) * 5 * time.Millisecond):
		}
	}
	if err != nil {
		return nil, fmt.Errorf("history: adding %d events to the backlog: %w", len(items), err)
	}
	return added, nil
}

func (s *sqlStore) NextBacklog(ctx context.Context, endpoint EndpointKey, limit int) ([]BacklogItem, error) {
	if limit <= 0 {
		limit = DefaultPageSize
	}
	limit = min(limit, MaxPageSize)
	rows, err := s.read.QueryContext(ctx, s.d.q(
		"SELECT id, name, event, enqueued_at FROM backlog WHERE namespace = ? AND endpoint = ? ORDER BY id LIMIT ?"),
		endpoint.Namespace, endpoint.Name, limit)
	if err != nil {
		return nil, fmt.Errorf("history: reading the backlog of %s/%s: %w", endpoint.Namespace, endpoint.Name, err)
	}
	defer rows.Close()
	var out []BacklogItem
	for rows.Next() {
		it := BacklogItem{Namespace: endpoint.Namespace, Endpoint: endpoint.Name}
		var event []byte
		var at int64
		if err := rows.Scan(&it.ID, &it.Name, &event, &at); err != nil {
			return nil, fmt.Errorf("history: reading the backlog of %s/%s: %w", endpoint.Namespace, endpoint.Name, err)
		}
		if err := json.Unmarshal(event, &it.Event); err != nil {
			return nil, fmt.Errorf("history: decoding backlog item %s/%s: %w", it.Namespace, it.Name, err)
		}
		it.EnqueuedAt = fromMicro(at)
		out = append(out, it)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("history: reading the backlog of %s/%s: %w", endpoint.Namespace, endpoint.Name, err)
	}
	return out, nil
}

func (s *sqlStore) DeleteBacklog(ctx context.Context, ids []int64) error {
	if len(ids) == 0 {
		return nil
	}
	err := s.inWrite(ctx, func(tx *sql.Tx) error {
		return chunks(len(ids), keysPerIn, func(lo, hi int) error {
			args := make([]any, 0, hi-lo)
			for _, id := range ids[lo:hi] {
				args = append(args, id)
			}
			_, err := tx.ExecContext(ctx, s.d.q("DELETE FROM backlog WHERE id IN "+placeholders(hi-lo)), args...)
			return err
		})
	})
	if err != nil {
		return fmt.Errorf("history: deleting %d backlog items: %w", len(ids), err)
	}
	return nil
}

func (s *sqlStore) BacklogCounts(ctx context.Context) (map[EndpointKey]int64, error) {
	rows, err := s.read.QueryContext(ctx, "SELECT namespace, endpoint, COUNT(*) FROM backlog GROUP BY namespace, endpoint")
	if err != nil {
		return nil, fmt.Errorf("history: counting the backlog: %w", err)
	}
	defer rows.Close()
	out := map[EndpointKey]int64{}
	for rows.Next() {
		var k EndpointKey
		var n int64
		if err := rows.Scan(&k.Namespace, &k.Name, &n); err != nil {
			return nil, fmt.Errorf("history: counting the backlog: %w", err)
		}
		out[k] = n
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("history: counting the backlog: %w", err)
	}
	return out, nil
}
