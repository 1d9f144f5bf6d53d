package dispatcher

import (
	"testing"
	"time"
)

// examplePolicy is an explicit policy for the tests of the function. The operator's default
// policy is built from the API's defaults, so its schedule is tested where the two meet:
// controllers/retrypolicy_test.go.
var examplePolicy = Policy{MaxRetries: 10, InitialDelay: 30 * time.Second, Factor: 2, MaxDelay: 4 * time.Hour, JitterPercent: 10}

// Schedule lists one nominal wait per retry: no jitter, multiplied by the factor each time,
// capped at MaxDelay.
func TestScheduleListsTheNominalWaitOfEachRetry(t *testing.T) {
	for _, tc := range []struct {
		name string
		p    Policy
		want []time.Duration
	}{
		{"doubling, capped", Policy{MaxRetries: 6, InitialDelay: time.Second, Factor: 2, MaxDelay: 10 * time.Second, JitterPercent: 50},
			[]time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 10 * time.Second, 10 * time.Second}},
		{"factor 3", Policy{MaxRetries: 3, InitialDelay: 5 * time.Second, Factor: 3, MaxDelay: time.Hour},
			[]time.Duration{5 * time.Second, 15 * time.Second, 45 * time.Second}},
		{"no retries", Policy{MaxRetries: 0, InitialDelay: time.Second, Factor: 2, MaxDelay: time.Hour}, []time.Duration{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := tc.p.Schedule()
			if len(got) != len(tc.want) {
				t.Fatalf("Schedule() = %v, want %v", got, tc.want)
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Fatalf("Schedule() = %v, want %v", got, tc.want)
				}
			}
		})
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
		{"first retry", examplePolicy, 1, 0, 0, 30 * time.Second},
		{"jitter is an addition of at most jitterPercent", examplePolicy, 1, 0, 0.999999, 32999997 * time.Microsecond},
		{"half jitter", examplePolicy, 2, 0, 0.5, 63 * time.Second},
		{"capped", examplePolicy, 30, 0, 0, 4 * time.Hour},
		{"huge attempt count does not overflow", Policy{InitialDelay: time.Second, Factor: 10, MaxDelay: time.Hour}, 1 << 30, 0, 0, time.Hour},
		{"Retry-After longer than backoff wins", examplePolicy, 1, 10 * time.Minute, 0, 10 * time.Minute},
		{"Retry-After shorter than backoff is ignored", examplePolicy, 3, time.Second, 0, 2 * time.Minute},
		{"Retry-After is capped by maxDelay", examplePolicy, 1, 48 * time.Hour, 0, 4 * time.Hour},
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
