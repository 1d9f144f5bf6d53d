package plugin

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/duration"
)

// none is what kubectl prints for an empty value.
const none = "<none>"

// age is how long ago t was, as kubectl prints ages (3m12s, 5d).
func age(now time.Time, t time.Time) string {
	if t.IsZero() {
		return none
	}
	return duration.HumanDuration(now.Sub(t))
}

// ago is age with " ago", or <none> for no time.
func ago(now time.Time, t *time.Time) string {
	if t == nil || t.IsZero() {
		return none
	}
	return duration.HumanDuration(now.Sub(*t)) + " ago"
}

// percent prints a success rate from 0 to 1; "-" when none finished.
func percent(rate *float64) string {
	if rate == nil {
		return "-"
	}
	return strconv.FormatFloat(*rate*100, 'f', 1, 64) + "%"
}

// millis prints a duration in milliseconds as people read latencies: 42ms, 1.5s.
func millis(ms int64) string {
	switch {
	case ms <= 0:
		return "-"
	case ms < 1000:
		return strconv.FormatInt(ms, 10) + "ms"
	case ms < 10000:
		return strconv.FormatFloat(float64(ms)/1000, 'f', 2, 64) + "s"
	}
	return strconv.FormatFloat(float64(ms)/1000, 'f', 1, 64) + "s"
}

// took prints an attempt's duration: one that was made took something, if under 1 ms.
func took(ms int64) string {
	if ms <= 0 {
		return "<1ms"
	}
	return millis(ms)
}

// code prints an HTTP status; "-" for no response.
func code(c int32) string {
	if c == 0 {
		return "-"
	}
	return strconv.Itoa(int(c))
}

// orNone prints an empty string as <none>.
func orNone(s string) string {
	if s == "" {
		return none
	}
	return s
}

// oneLine keeps a value on one table line and bounds it.
func oneLine(s string, max int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len([]rune(s)) > max {
		return string([]rune(s)[:max-1]) + "…"
	}
	return s
}

// timestamp prints a time as RFC 3339 with its age, as kubectl describe does.
func timestamp(now time.Time, t *time.Time) string {
	if t == nil || t.IsZero() {
		return none
	}
	return fmt.Sprintf("%s (%s ago)", t.UTC().Format(time.RFC3339), duration.HumanDuration(now.Sub(*t)))
}

// parseSince reads a --since value: a Go duration (90m, 2h) or whole days (7d).
func parseSince(v string) (time.Duration, error) {
	if v == "" {
		return 0, nil
	}
	if days, ok := strings.CutSuffix(v, "d"); ok {
		n, err := strconv.Atoi(days)
		if err == nil && n > 0 {
			return time.Duration(n) * 24 * time.Hour, nil
		}
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("--since %q: want a positive duration such as 30m, 2h or 7d", v)
	}
	return d, nil
}
