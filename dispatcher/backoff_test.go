package dispatcher

import (
	"testing"
	"time"
)

var defaultPolicy = Policy{MaxRetries: 10, InitialDelay: 30 * time.Second, Factor: 2, MaxDelay: 4 * time.Hour, JitterPercent: 10}

// The documented default schedule: 30s doubling, capped at 4h, about 8.3 hours in all.
func TestDefaultSchedule(t *testing.T) {
	want := []time.Duration{30 * time.Second, time.Minute, 2 * time.Minute, 4 * time.Minute, 8 * time.Minute,
		16 * time.Minute, 32 * time.Minute, 64 * time.Minute, 128 * time.Minute, 4 * time.Hour}
	got := defaultPolicy.Schedule()
	if len(got) != len(want) {
		t.Fatalf("schedule has %d retries, want %d", len(got), len(want))
	}
	var total time.Duration
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("retry %d waits %v, want %v", i+1, got[i], want[i])
		}
		total += got[i]
	}
	if total != 29730*time.Second {
		t.Errorf("total %v, want 8h15m30s", total)
	}
}

func TestDelay(t *testing.T) {
	cases := []struct {
		name       string
		p          Policy
		attempts   int32
		retryAfter time.Duration
		jitter     float64
		want       time.Duration
	}{
		{"first retry", defaultPolicy, 1, 0, 0, 30 * time.Second},
		{"jitter is an addition of at most jitterPercent", defaultPolicy, 1, 0, 0.999999, 32999997 * time.Microsecond},
		{"half jitter", defaultPolicy, 2, 0, 0.5, 63 * time.Second},
		{"capped", defaultPolicy, 30, 0, 0, 4 * time.Hour},
		{"huge attempt count does not overflow", Policy{InitialDelay: time.Second, Factor: 10, MaxDelay: time.Hour}, 1 << 30, 0, 0, time.Hour},
		{"Retry-After longer than backoff wins", defaultPolicy, 1, 10 * time.Minute, 0, 10 * time.Minute},
		{"Retry-After shorter than backoff is ignored", defaultPolicy, 3, time.Second, 0, 2 * time.Minute},
		{"Retry-After is capped by maxDelay", defaultPolicy, 1, 48 * time.Hour, 0, 4 * time.Hour},
		{"factor 1 is constant", Policy{InitialDelay: 5 * time.Second, Factor: 1, MaxDelay: time.Hour}, 7, 0, 0, 5 * time.Second},
		{"out-of-range jitter is clamped", Policy{InitialDelay: 10 * time.Second, Factor: 2, MaxDelay: time.Hour, JitterPercent: 100}, 1, 0, 7, 20 * time.Second},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := tc.p.Delay(tc.attempts, tc.retryAfter, tc.jitter)
			if d := got - tc.want; d > time.Microsecond || d < -time.Microsecond {
				t.Fatalf("Delay(%d, %v, %v) = %v, want %v", tc.attempts, tc.retryAfter, tc.jitter, got, tc.want)
			}
		})
	}
}

func TestExhausted(t *testing.T) {
	p := Policy{MaxRetries: 2}
	for attempts, want := range map[int32]bool{1: false, 2: false, 3: true, 4: true} {
		if got := p.Exhausted(attempts); got != want {
			t.Errorf("Exhausted(%d) = %v, want %v", attempts, got, want)
		}
	}
	if !(Policy{MaxRetries: 0}).Exhausted(1) {
		t.Error("maxRetries 0 means a single attempt")
	}
}
