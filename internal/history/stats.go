package history

import (
	"context"
	"fmt"
	"strings"
	"time"
)

// statsPoints is how many chart points each of StatsWindows has.
func statsPoints(w time.Duration) int {
	switch w {
	case time.Hour:
		return 12
	case 24 * time.Hour:
		return 24
	case 7 * 24 * time.Hour:
		return 28
	}
	return 12
}

// The sums Stats reads per chart point, in the order of rollupColumns after the key.
var statsSums = func() string {
	cols := strings.Split(rollupColumns, ", ")[3:]
	sums := make([]string, len(cols))
	for i, c := range cols {
		sums[i] = "CAST(SUM(" + c + ") AS BIGINT)" // PostgreSQL sums bigints as numeric
	}
	return strings.Join(sums, ", ")
}()

// Stats sums an endpoint's rollups over each window, grouped into the window's chart points
// in SQL: a window reads at most one rollup row per minute of the endpoint (10,080 for a
// week) through the rollups' primary key, and returns at most 28 rows. Windows end at the end
// of the minute that holds now, so the current minute counts.
func (s *sqlStore) Stats(ctx context.Context, endpoint EndpointKey, now time.Time) (*Stats, error) {
	fail := func(err error) (*Stats, error) {
		return nil, fmt.Errorf("history: computing the statistics of %s/%s: %w", endpoint.Namespace, endpoint.Name, err)
	}
	out := &Stats{}
	endMinute := unixMinute(now) + 1
	for _, w := range StatsWindows {
		points := statsPoints(w)
		minutes := int64(w / time.Minute)
		step := minutes / int64(points)
		startMinute := endMinute - minutes
		ws := WindowStats{
			Window: w,
			Start:  time.Unix(startMinute*60, 0).UTC(),
			End:    time.Unix(endMinute*60, 0).UTC(),
			Series: make([]StatsPoint, points),
		}
		sums := make([]rollup, points)
		rows, err := s.read.QueryContext(ctx, s.d.q(
			"SELECT (minute - ?) / ? AS point, "+statsSums+" FROM rollups "+
				"WHERE namespace = ? AND endpoint = ? AND minute >= ? AND minute < ? GROUP BY point"),
			startMinute, step, endpoint.Namespace, endpoint.Name, startMinute, endMinute)
		if err != nil {
			return fail(err)
		}
		for rows.Next() {
			var p int64
			var r rollup
			dest := []any{&p, &r.succeeded, &r.failed, &r.attempts, &r.failedAttempts}
			for i := range r.classes {
				dest = append(dest, &r.classes[i])
			}
			for i := range r.buckets {
				dest = append(dest, &r.buckets[i])
			}
			if err := rows.Scan(dest...); err != nil {
				rows.Close()
				return fail(err)
			}
			if p >= 0 && p < int64(points) {
				sums[p].add(&r)
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return fail(err)
		}
		var total rollup
		for i := range sums {
			p := &sums[i]
			total.add(p)
			ws.Series[i] = StatsPoint{
				Start:          time.Unix((startMinute+int64(i)*step)*60, 0).UTC(),
				Succeeded:      p.succeeded,
				Failed:         p.failed,
				Attempts:       p.attempts,
				FailedAttempts: p.failedAttempts,
				LatencyP50:     Percentile(p.buckets[:], 0.50),
				LatencyP95:     Percentile(p.buckets[:], 0.95),
			}
		}
		ws.Succeeded, ws.Failed = total.succeeded, total.failed
		ws.Attempts = make(map[string]int64, len(Classes))
		for i, c := range Classes {
			ws.Attempts[c] = total.classes[i]
		}
		ws.SuccessRate = -1
		if n := total.succeeded + total.failed; n > 0 {
			ws.SuccessRate = float64(total.succeeded) / float64(n)
		}
		ws.LatencyP50 = Percentile(total.buckets[:], 0.50)
		ws.LatencyP95 = Percentile(total.buckets[:], 0.95)
		ws.LatencyP99 = Percentile(total.buckets[:], 0.99)
		out.Windows = append(out.Windows, ws)
	}
	if err := s.read.QueryRowContext(ctx, s.d.q("SELECT COUNT(*) FROM backlog WHERE namespace = ? AND endpoint = ?"),
		endpoint.Namespace, endpoint.Name).Scan(&out.Backlog); err != nil {
		return fail(err)
	}
	if err := s.read.QueryRowContext(ctx, s.d.q(
		"SELECT COUNT(*) FROM records WHERE namespace = ? AND endpoint = ? AND phase IN ('Pending', 'Retrying')"),
		endpoint.Namespace, endpoint.Name).Scan(&out.Unfinished); err != nil {
		return fail(err)
	}
	return out, nil
}
