// Package history is the delivery history store: every WebhookDelivery's record (its event,
// where it is in its life, and every attempt) and the backlog of events that wait for room in
// the working set. It owns its schema, its migrations and its two engines, SQLite (embedded,
// the default) and PostgreSQL (for clusters and scale); callers see the Store interface only.
//
// The WebhookDelivery in etcd stays the unit of work: the controller makes every attempt and
// writes its status there. The store keeps what etcd should not: finished deliveries once they
// have left etcd, all of their attempts (status keeps the last 20), per-minute rollups for
// statistics, and the backlog.
//
//	store, err := history.Open(ctx, "sqlite:///var/lib/webhook-operator/history.db", history.Options{})
//	store, err := history.Open(ctx, "postgres://user:pass@db:5432/webhooks?sslmode=require", history.Options{})
//
// A record is identified by its namespace and name: the delivery name is the endpoint's name
// and a hash of the event id, so a record is "this event, to this endpoint". A delivery that is
// re-created from its record (a manual retry after it left etcd) gets a new UID but continues
// the same record: its new attempts are added to the old ones. Attempts are stored by the UID
// of the delivery that made them and their number, so writing the same snapshot twice (a crash
// between archiving and deleting, a repeated batch) changes nothing.
package history

import (
	"context"
	"errors"
	"time"

	"k8s.io/apimachinery/pkg/types"

	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
)

// ErrNotFound is returned by Get for a record the store does not hold.
var ErrNotFound = errors.New("history: record not found")

// Record is one delivery as the store holds it.
type Record struct {
	Namespace string
	Name      string
	// UID is the UID of the WebhookDelivery that last wrote the record.
	UID types.UID
	// ResourceVersion is the WebhookDelivery's resourceVersion that the record was taken from
	// (after the status write it records): the record holds exactly that version of the object.
	ResourceVersion string
	Endpoint        string
	// Event is the whole event, as sent.
	Event webhooksv1alpha1.Event
	// Labels are the delivery's labels (the endpoint and event-type labels among them).
	Labels map[string]string

	Phase          webhooksv1alpha1.DeliveryPhase
	AttemptCount   int32
	LastStatusCode int32
	LastError      string
	// Reason and Message are those of the delivery's Ready condition.
	Reason  string
	Message string
	// LastRetryToken is the last webhooks.docrouter.ai/retry value handled.
	LastRetryToken string

	CreationTime    time.Time
	LastAttemptTime *time.Time
	NextAttemptTime *time.Time
	CompletionTime  *time.Time
	// RemovedTime is when the WebhookDelivery left etcd (nil while it is there).
	RemovedTime *time.Time

	// Attempts are every attempt, oldest first. Write merges the ones given with those
	// stored (by delivery UID and number); Get returns them all; List leaves them empty.
	Attempts []webhooksv1alpha1.Attempt

	// Seq is assigned by the store at the record's first write and never changes: List orders
	// by it, newest first, and pages by it, so records written meanwhile neither skip nor
	// repeat on later pages.
	Seq int64
	// Revision is assigned by the store at every write that changed the record, from one
	// counter for the whole store: it increases, and Changes returns records by it (a watch).
	Revision int64
}

// Key names a record.
type Key struct {
	Namespace string
	Name      string
}

// ArchiveCheck asks whether the store holds a delivery as finished: a record written from
// the delivery of this UID at this resourceVersion, in a finished phase. A delivery whose check
// is satisfied may leave etcd: nothing of it is lost.
type ArchiveCheck struct {
	Key
	UID             types.UID
	ResourceVersion string
}

// ListOptions select records. Empty fields select everything.
type ListOptions struct {
	// Namespace, or "" for every namespace.
	Namespace string
	Endpoint  string
	Phase     webhooksv1alpha1.DeliveryPhase
	EventID   string
	EventType string
	// Since keeps records created at or after this time.
	Since time.Time
	// Limit bounds the page (0 means DefaultPageSize; above MaxPageSize, MaxPageSize; a
	// negative limit is an error).
	Limit int
	// Continue is the Continue of the previous page.
	Continue string
}

// Page sizes of List.
const (
	DefaultPageSize = 500
	MaxPageSize     = 5000
)

// Page is one page of List: newest first.
type Page struct {
	Records []Record
	// Continue fetches the next page; empty on the last one.
	Continue string
	// Revision is the store's revision when the page was read: Changes from it continues.
	Revision int64
}

// BacklogItem is an accepted event for one endpoint that waits in the store because the
// working set was full (or the endpoint already had a backlog, which keeps publish order).
type BacklogItem struct {
	// ID is assigned by Enqueue, in publish order.
	ID        int64
	Namespace string
	Endpoint  string
	// Name is the name its WebhookDelivery will have (webhooksv1alpha1.DeliveryName).
	Name       string
	Event      webhooksv1alpha1.Event
	EnqueuedAt time.Time
}

// EndpointKey names an endpoint.
type EndpointKey struct {
	Namespace string
	Name      string
}

// Stats summarise an endpoint's deliveries, computed in the store from per-minute rollups.
type Stats struct {
	Windows []WindowStats
	// Backlog counts the endpoint's events waiting in the store's backlog.
	Backlog int64
	// Unfinished counts the endpoint's records in phase Pending or Retrying.
	Unfinished int64
}

// Windows of Stats.
var StatsWindows = []time.Duration{time.Hour, 24 * time.Hour, 7 * 24 * time.Hour}

// WindowStats cover [Start, End): End is the end of the minute that holds Stats' now (the
// current minute counts), Start is End minus the window.
type WindowStats struct {
	Window     time.Duration
	Start, End time.Time
	// Succeeded and Failed count deliveries that reached that phase in the window.
	Succeeded, Failed int64
	// Attempts counts attempts by class: the class values of internal/metrics (2xx, 3xx,
	// 4xx, 5xx, timeout, network, blocked, invalid, other).
	Attempts map[string]int64
	// SuccessRate is Succeeded / (Succeeded + Failed), or -1 when neither happened.
	SuccessRate float64
	// Latency percentiles of attempt durations, interpolated within histogram buckets; zero
	// when there was no attempt.
	LatencyP50, LatencyP95, LatencyP99 time.Duration
	// Series splits the window into equal points for charts (12 for an hour, 24 for a day,
	// 28 for a week).
	Series []StatsPoint
}

// StatsPoint is one point of a chart.
type StatsPoint struct {
	Start             time.Time
	Succeeded, Failed int64
	Attempts          int64
	FailedAttempts    int64
	LatencyP50        time.Duration
	LatencyP95        time.Duration
}

// Store is the history store. Its methods are safe for concurrent use.
type Store interface {
	// Write upserts records by namespace and name, in one transaction: the latest values
	// win, attempts are merged (by delivery UID and number), rollups count each attempt and
	// each finished phase once. Revision and Seq of the arguments are ignored. A snapshot of
	// the delivery that wrote the record (same UID) with fewer attempts than the record is an
	// older one: it does not overwrite the record (its attempts are still merged). A record
	// without RemovedTime keeps the stored one when it comes from the same UID (a late write
	// of a delivery that left etcd); a new UID clears it (the delivery is in etcd again). The
	// same key twice in one batch: the last one's values, every one's attempts.
	Write(ctx context.Context, records []Record) error
	// Archived returns, for the UID of each check, whether the store satisfies it (see
	// ArchiveCheck).
	Archived(ctx context.Context, checks []ArchiveCheck) (map[types.UID]bool, error)
	// MarkRemoved records that these deliveries left etcd at the given time. A record marked
	// already keeps its first time; keys the store does not hold are ignored.
	MarkRemoved(ctx context.Context, keys []Key, at time.Time) error
	// Get returns one record with every attempt, or ErrNotFound.
	Get(ctx context.Context, key Key) (*Record, error)
	// List returns a page of records, newest first.
	List(ctx context.Context, opts ListOptions) (*Page, error)
	// Changes returns records of namespace ("" for all) whose Revision is above revision,
	// by increasing Revision, at most limit of them (0: DefaultPageSize; at most
	// MaxPageSize): a watch's source. Records deleted by Prune are not reported.
	Changes(ctx context.Context, namespace string, revision int64, limit int) ([]Record, error)
	// Revision is the store's current revision.
	Revision(ctx context.Context) (int64, error)
	// Known returns which of these names of namespace the store holds, as a record or in the
	// backlog (the intake does not create a delivery again for an event it already took).
	Known(ctx context.Context, namespace string, names []string) (map[string]bool, error)
	// Stats summarise an endpoint over StatsWindows ending at now.
	Stats(ctx context.Context, endpoint EndpointKey, now time.Time) (*Stats, error)
	// Prune deletes records that left etcd and finished before the given time, with their
	// attempts, and rollups older than it, at most batch records (or rollup rows) per
	// transaction, until none is left; it returns how many records it deleted. Records still
	// in etcd are kept. batch must be at least 1.
	Prune(ctx context.Context, before time.Time, batch int) (int, error)

	// Enqueue appends items to the backlog, in order, in one transaction, and returns for
	// each whether it was added: an item whose name the store already knows (a record or a
	// backlog item) is not added again. A zero EnqueuedAt is the store's now; ID is ignored.
	Enqueue(ctx context.Context, items []BacklogItem) ([]bool, error)
	// NextBacklog returns the oldest items of an endpoint's backlog, at most limit (0:
	// DefaultPageSize; at most MaxPageSize).
	NextBacklog(ctx context.Context, endpoint EndpointKey, limit int) ([]BacklogItem, error)
	// DeleteBacklog removes items (by ID) that became WebhookDeliveries.
	DeleteBacklog(ctx context.Context, ids []int64) error
	// BacklogCounts counts the backlog per endpoint (endpoints without a backlog are absent).
	BacklogCounts(ctx context.Context) (map[EndpointKey]int64, error)

	// Ping checks that the store answers.
	Ping(ctx context.Context) error
	// Engine is "sqlite" or "postgres".
	Engine() string
	Close() error
}

// Options configure Open.
type Options struct {
	// Now is the store's clock (rollup minutes of Stats windows use the times of the records
	// themselves); time.Now when nil.
	Now func() time.Time
}
