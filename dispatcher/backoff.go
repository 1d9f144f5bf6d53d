package dispatcher

import "time"

// Policy is an exponential backoff schedule. The zero value is not useful; the controllers
// build it from a WebhookEndpoint's retryPolicy with its defaults applied.
type Policy struct {
	// MaxRetries is how many attempts may follow the first one.
	MaxRetries int32
	// InitialDelay is the wait after the first failed attempt.
	InitialDelay time.Duration
	// Factor multiplies the wait after each further failure.
	Factor int32
	// MaxDelay caps a wait, Retry-After included.
	MaxDelay time.Duration
	// JitterPercent is the largest random addition to a wait, in percent of it.
	JitterPercent int32
}

// Exhausted reports whether no automatic attempt is left after `attempts` attempts.
func (p Policy) Exhausted(attempts int32) bool {
	return attempts > p.MaxRetries
}

// Delay is the wait after the attempts-th failed attempt (attempts >= 1):
//
//	base   = min(InitialDelay * Factor^(attempts-1), MaxDelay)
//	base   = max(base, min(retryAfter, MaxDelay))   when the receiver sent Retry-After
//	delay  = base + base * JitterPercent/100 * jitter
//
// jitter is a number in [0, 1) supplied by the caller, so the function is pure and the spread is
// bounded: a retry is never earlier than its nominal time, nor later than JitterPercent past it.
func (p Policy) Delay(attempts int32, retryAfter time.Duration, jitter float64) time.Duration {
	base := p.InitialDelay
	for i := int32(1); i < attempts && base < p.MaxDelay; i++ {
		base *= time.Duration(max(p.Factor, 1))
	}
	base = min(base, p.MaxDelay)
	if retryAfter > base {
		base = min(retryAfter, p.MaxDelay)
	}
	jitter = min(max(jitter, 0), 1)
	return base + time.Duration(float64(base)*float64(p.JitterPercent)/100*jitter)
}

// Schedule lists the nominal waits (no jitter) of every retry of the policy, for documentation
// and tests.
func (p Policy) Schedule() []time.Duration {
	out := make([]time.Duration, 0, p.MaxRetries)
	for n := int32(1); n <= p.MaxRetries; n++ {
		out = append(out, p.Delay(n, 0, 0))
	}
	return out
}
