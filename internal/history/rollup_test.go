package history

import (
	"testing"
	"time"

	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
)

func TestAttemptClass(t *testing.T) {
	for _, c := range []struct {
		result string
		code   int32
		want   string
	}{
		{"Success", 200, "2xx"}, {"Success", 0, "2xx"}, {"HTTPError", 301, "3xx"}, {"HTTPError", 429, "4xx"},
		{"HTTPError", 500, "5xx"}, {"HTTPError", 100, "other"}, {"Timeout", 0, "timeout"},
		{"NetworkError", 0, "network"}, {"Blocked", 0, "blocked"}, {"InvalidRequest", 0, "invalid"},
		{"SomethingNew", 0, "other"},
	} {
		if got := AttemptClass(webhooksv1alpha1.Attempt{Result: webhooksv1alpha1.AttemptResult(c.result), StatusCode: c.code}); got != c.want {
			t.Errorf("%s %d: class %s, want %s", c.result, c.code, got, c.want)
		}
	}
}

func TestDurationBuckets(t *testing.T) {
	if len(DurationBuckets) != numBuckets-1 || DurationBuckets[0] != 5*time.Millisecond || DurationBuckets[numBuckets-2] != time.Minute {
		t.Fatalf("buckets %v: want %d bounds from 5ms to 60s", DurationBuckets, numBuckets-1)
	}
	for d, want := range map[time.Duration]int{
		0: 0, 5 * time.Millisecond: 0, 6 * time.Millisecond: 1, 10 * time.Millisecond: 1,
		time.Second: 8, 59 * time.Second: 14, time.Minute: 14, 2 * time.Minute: 15,
	} {
		if got := bucketIndex(d); got != want {
			t.Errorf("%s is in bucket %d, want %d", d, got, want)
		}
	}
}

func TestPercentileInterpolatesWithinTheBucket(t *testing.T) {
	b := make([]int64, numBuckets)
	if Percentile(b, 0.5) != 0 {
		t.Fatal("an empty histogram has a percentile")
	}
	b[2] = 10 // 10 attempts of 10..20 ms
	if got := Percentile(b, 0.5); got != 15*time.Millisecond {
		t.Errorf("p50 of 10 in 10..20ms: %s, want 15ms", got)
	}
	b[0] = 10 // and 10 of 0..5 ms
	if got := Percentile(b, 0.25); got != 2500*time.Microsecond {
		t.Errorf("p25: %s, want 2.5ms", got)
	}
	if got := Percentile(b, 0.99); got < 19*time.Millisecond || got > 20*time.Millisecond {
		t.Errorf("p99: %s, want just under 20ms", got)
	}
	b[numBuckets-1] = 1000 // above 60 s nothing more is known
	if got := Percentile(b, 0.99); got != time.Minute {
		t.Errorf("p99 beyond the last bound: %s, want 60s", got)
	}
}

func TestUnixMinute(t *testing.T) {
	at := time.Date(2030, 1, 1, 0, 1, 59, 999, time.UTC)
	if got := unixMinute(at); got*60 != at.Truncate(time.Minute).Unix() {
		t.Fatalf("minute %d of %s", got, at)
	}
	if got := unixMinute(time.Unix(-1, 0)); got != -1 {
		t.Fatalf("the second before 1970 is in minute %d, want -1", got)
	}
}

func TestDollarPlaceholders(t *testing.T) {
	if got := postgresDialect.q("a = ? AND b IN (?, ?)"); got != "a = $1 AND b IN ($2, $3)" {
		t.Fatal(got)
	}
	if got := sqliteDialect.q("a = ?"); got != "a = ?" {
		t.Fatal(got)
	}
}
