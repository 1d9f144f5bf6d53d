-- The history store's first schema, SQLite flavour. Times are Unix microseconds (UTC) in
-- both engines, so one code path reads and writes them; rollup minutes are Unix minutes.
-- Every query of the store has an index below that serves it (see store.go).

-- +goose Up

-- One row: the store-wide revision. Every write that changes a record takes it, bumps it and
-- stamps the record, so revisions are handed out in commit order (a watch never misses one).
CREATE TABLE history_meta (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    revision INTEGER NOT NULL
);
INSERT INTO history_meta (id, revision) VALUES (1, 0);

CREATE TABLE records (
    namespace         TEXT    NOT NULL,
    name              TEXT    NOT NULL,
    uid               TEXT    NOT NULL,
    endpoint          TEXT    NOT NULL,
    event_id          TEXT    NOT NULL,
    event_type        TEXT    NOT NULL,
    organization_id   TEXT    NOT NULL,
    event             TEXT    NOT NULL, -- JSON, as sent
    labels            TEXT    NOT NULL, -- JSON object
    phase             TEXT    NOT NULL,
    attempt_count     INTEGER NOT NULL,
    last_status_code  INTEGER NOT NULL,
    last_error        TEXT    NOT NULL,
    reason            TEXT    NOT NULL,
    message           TEXT    NOT NULL,
    last_retry_token  TEXT    NOT NULL,
    creation_time     INTEGER NOT NULL,
    last_attempt_time INTEGER,
    next_attempt_time INTEGER,
    completion_time   INTEGER,
    removed_time      INTEGER,
    seq               INTEGER NOT NULL,
    revision          INTEGER NOT NULL,
    -- digest of the columns above (but seq and revision): a write that changes nothing is seen
    -- without reading the event back.
    digest            TEXT    NOT NULL,
    PRIMARY KEY (namespace, name)
);
-- List, newest first, paged by seq: every namespace, one namespace, and each filter.
CREATE UNIQUE INDEX records_seq ON records (seq);
CREATE INDEX records_ns_seq ON records (namespace, seq);
CREATE INDEX records_ns_endpoint_seq ON records (namespace, endpoint, seq);
-- An endpoint's records by phase (List with both filters, and Stats' unfinished count).
CREATE INDEX records_ns_endpoint_phase_seq ON records (namespace, endpoint, phase, seq);
CREATE INDEX records_ns_phase_seq ON records (namespace, phase, seq);
CREATE INDEX records_phase_seq ON records (phase, seq);
CREATE INDEX records_ns_type_seq ON records (namespace, event_type, seq);
CREATE INDEX records_event_id ON records (event_id, seq);
-- Changes, by revision: every namespace and one.
CREATE INDEX records_revision ON records (revision);
CREATE INDEX records_ns_revision ON records (namespace, revision);
-- Prune: only records that left etcd are candidates.
CREATE INDEX records_prune ON records (completion_time) WHERE removed_time IS NOT NULL;

-- Attempts are immutable: an attempt is the delivery that made it (its UID) and its number.
-- The key leads with the record's key, so that a record's attempts sit together: Get and
-- Prune read one range, and a batch of writes dirties few pages (a key that led with the UID,
-- random, would touch a page per attempt, plus a second index for the record).
CREATE TABLE attempts (
    delivery_uid TEXT    NOT NULL,
    number       INTEGER NOT NULL,
    namespace    TEXT    NOT NULL,
    name         TEXT    NOT NULL,
    attempt_time INTEGER NOT NULL,
    status_code  INTEGER NOT NULL,
    duration_ms  INTEGER NOT NULL,
    result       TEXT    NOT NULL,
    error        TEXT    NOT NULL,
    attempt_trigger TEXT    NOT NULL,
    PRIMARY KEY (namespace, name, delivery_uid, number),
    FOREIGN KEY (namespace, name) REFERENCES records (namespace, name) ON DELETE CASCADE
) WITHOUT ROWID;

-- Per-minute rollups of an endpoint: what Stats sums. d00..d15 count attempt durations in
-- log-scale buckets (see rollup.go: 5 ms doubling to 40.96 s, then 60 s, then more).
CREATE TABLE rollups (
    namespace       TEXT    NOT NULL,
    endpoint        TEXT    NOT NULL,
    minute          INTEGER NOT NULL,
    succeeded       INTEGER NOT NULL DEFAULT 0,
    failed          INTEGER NOT NULL DEFAULT 0,
    attempts        INTEGER NOT NULL DEFAULT 0,
    failed_attempts INTEGER NOT NULL DEFAULT 0,
    c_2xx           INTEGER NOT NULL DEFAULT 0,
    c_3xx           INTEGER NOT NULL DEFAULT 0,
    c_4xx           INTEGER NOT NULL DEFAULT 0,
    c_5xx           INTEGER NOT NULL DEFAULT 0,
    c_timeout       INTEGER NOT NULL DEFAULT 0,
    c_network       INTEGER NOT NULL DEFAULT 0,
    c_blocked       INTEGER NOT NULL DEFAULT 0,
    c_invalid       INTEGER NOT NULL DEFAULT 0,
    c_other         INTEGER NOT NULL DEFAULT 0,
    d00 INTEGER NOT NULL DEFAULT 0, d01 INTEGER NOT NULL DEFAULT 0,
    d02 INTEGER NOT NULL DEFAULT 0, d03 INTEGER NOT NULL DEFAULT 0,
    d04 INTEGER NOT NULL DEFAULT 0, d05 INTEGER NOT NULL DEFAULT 0,
    d06 INTEGER NOT NULL DEFAULT 0, d07 INTEGER NOT NULL DEFAULT 0,
    d08 INTEGER NOT NULL DEFAULT 0, d09 INTEGER NOT NULL DEFAULT 0,
    d10 INTEGER NOT NULL DEFAULT 0, d11 INTEGER NOT NULL DEFAULT 0,
    d12 INTEGER NOT NULL DEFAULT 0, d13 INTEGER NOT NULL DEFAULT 0,
    d14 INTEGER NOT NULL DEFAULT 0, d15 INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (namespace, endpoint, minute)
) WITHOUT ROWID;
-- Prune of old minutes.
CREATE INDEX rollups_minute ON rollups (minute);

-- Events waiting for room in the working set, in publish order (id) per endpoint.
CREATE TABLE backlog (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    namespace   TEXT    NOT NULL,
    endpoint    TEXT    NOT NULL,
    name        TEXT    NOT NULL,
    event       TEXT    NOT NULL,
    enqueued_at INTEGER NOT NULL
);
-- Enqueue's dedupe and Known.
CREATE UNIQUE INDEX backlog_name ON backlog (namespace, name);
-- NextBacklog, BacklogCounts and Stats' backlog count.
CREATE INDEX backlog_endpoint_id ON backlog (namespace, endpoint, id);

-- +goose Down
DROP TABLE backlog;
DROP TABLE rollups;
DROP TABLE attempts;
DROP TABLE records;
DROP TABLE history_meta;
