package history

import (
	"math"
	"time"

	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
	"github.com/docrouter/webhook-operator/dispatcher"
	"github.com/docrouter/webhook-operator/internal/metrics"
)

// Classes are the attempt classes of internal/metrics, in the order of the rollup columns
// c_2xx ... c_other.
var Classes = []string{
	metrics.Class2xx, metrics.Class3xx, metrics.Class4xx, metrics.Class5xx,
	metrics.ClassTimeout, metrics.ClassNetwork, metrics.ClassBlocked, metrics.ClassInvalid,
	metrics.ClassOther,
}

var classColumns = []string{
	"c_2xx", "c_3xx", "c_4xx", "c_5xx", "c_timeout", "c_network", "c_blocked", "c_invalid", "c_other",
}

// AttemptClass maps an attempt onto its class, as the controllers' attemptClass does for the
// attempts counter: the result first, then the status code of an HTTP error.
func AttemptClass(a webhooksv1alpha1.Attempt) string {
	switch dispatcher.Class(a.Result) {
	case dispatcher.ClassSuccess:
		return metrics.Class2xx
	case dispatcher.ClassTimeout:
		return metrics.ClassTimeout
	case dispatcher.ClassNetwork:
		return metrics.ClassNetwork
	case dispatcher.ClassBlocked:
		return metrics.ClassBlocked
	case dispatcher.ClassInvalid:
		return metrics.ClassInvalid
	}
	switch a.StatusCode / 100 {
	case 2:
		return metrics.Class2xx
	case 3:
		return metrics.Class3xx
	case 4:
		return metrics.Class4xx
	case 5:
		return metrics.Class5xx
	}
	return metrics.ClassOther
}

func classIndex(class string) int {
	for i, c := range Classes {
		if c == class {
			return i
		}
	}
	return len(Classes) - 1
}

// DurationBuckets are the upper bounds of the attempt-duration histogram of the rollups: 5 ms
// doubling up to 40.96 s, then 60 s (the longest attempt timeout); the last bucket, beyond
// 60 s, has no bound. Log-scale, so a percentile read from them is within a factor of two.
var DurationBuckets = func() []time.Duration {
	b := make([]time.Duration, 0, numBuckets-1)
	for d := 5 * time.Millisecond; d <= 41*time.Second; d *= 2 {
		b = append(b, d)
	}
	return append(b, 60*time.Second)
}()

// numBuckets is the number of d00..d15 columns.
const numBuckets = 16

var bucketColumns = func() []string {
	c := make([]string, numBuckets)
	for i := range c {
		c[i] = "d" + string(rune('0'+i/10)) + string(rune('0'+i%10))
	}
	return c
}()

// bucketIndex is the bucket of a duration: the first whose upper bound holds it.
func bucketIndex(d time.Duration) int {
	for i, upper := range DurationBuckets {
		if d <= upper {
			return i
		}
	}
	return numBuckets - 1
}

// bucketBounds are the lower and upper bounds of bucket i; the last one's upper bound is its
// lower bound (nothing is known above 60 s).
func bucketBounds(i int) (lower, upper time.Duration) {
	if i > 0 {
		lower = DurationBuckets[i-1]
	}
	if i < len(DurationBuckets) {
		return lower, DurationBuckets[i]
	}
	return lower, lower
}

// Percentile interpolates the q-quantile (0 < q <= 1) of the durations counted in buckets,
// linearly within the bucket that holds it, like Prometheus' histogram_quantile; zero when
// the buckets are empty.
func Percentile(buckets []int64, q float64) time.Duration {
	var total int64
	for _, n := range buckets {
		total += n
	}
	if total == 0 {
		return 0
	}
	rank := q * float64(total)
	var below float64
	for i, n := range buckets {
		if n == 0 {
			continue
		}
		if below+float64(n) >= rank {
			lower, upper := bucketBounds(i)
			frac := (rank - below) / float64(n)
			frac = math.Max(0, math.Min(1, frac))
			return lower + time.Duration(frac*float64(upper-lower))
		}
		below += float64(n)
	}
	lower, _ := bucketBounds(len(buckets) - 1)
	return lower
}

// rollupKey names one rollup row.
type rollupKey struct {
	namespace, endpoint string
	minute              int64
}

// rollup is what one write adds to a rollup row (and what Stats sums).
type rollup struct {
	succeeded, failed        int64
	attempts, failedAttempts int64
	classes                  [9]int64
	buckets                  [numBuckets]int64
}

func (r *rollup) addAttempt(a webhooksv1alpha1.Attempt) {
	class := AttemptClass(a)
	r.attempts++
	if class != metrics.Class2xx {
		r.failedAttempts++
	}
	r.classes[classIndex(class)]++
	r.buckets[bucketIndex(time.Duration(a.DurationMilliseconds)*time.Millisecond)]++
}

func (r *rollup) add(o *rollup) {
	r.succeeded += o.succeeded
	r.failed += o.failed
	r.attempts += o.attempts
	r.failedAttempts += o.failedAttempts
	for i := range r.classes {
		r.classes[i] += o.classes[i]
	}
	for i := range r.buckets {
		r.buckets[i] += o.buckets[i]
	}
}

// unixMinute is the minute that holds t.
func unixMinute(t time.Time) int64 {
	s := t.Unix()
	m := s / 60
	if s%60 < 0 {
		m--
	}
	return m
}
