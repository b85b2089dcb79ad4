package limits

import (
	"errors"
	"fmt"
	"time"

	"golang.org/x/time/rate"

	"github.com/credbroker/credbroker/broker/state"
)

// LimitRate is the value of ExceededError.Limit for the rate bucket.
// (Quota refusals come from the state store, as *state.ExhaustedError.)
const LimitRate = "rate"

// ErrExceeded matches every *ExceededError with errors.Is, for callers that
// only need to know a limit was hit.
var ErrExceeded = errors.New("limits: limit exceeded")

// ExceededError reports a refused Reserve. The broker maps it to
// RESOURCE_EXHAUSTED with RetryAfter as the RetryInfo delay.
type ExceededError struct {
	// Limit is LimitRate.
	Limit string
	// Key is the identity that hit the limit.
	Key string
	// RetryAfter is how long until a retry can succeed (as far as this limit
	// is concerned).
	RetryAfter time.Duration
	// Max is the burst.
	Max int
	// Rate is the sustained rate.
	Rate rate.Limit
}

// Error describes the limit, the key and when to retry.
func (e *ExceededError) Error() string {
	return fmt.Sprintf("limits: rate of %g/s (burst %d) exceeded for %s; retry in %s",
		float64(e.Rate), e.Max, e.Key, state.RoundUp(e.RetryAfter))
}

// Is reports whether target is ErrExceeded.
func (e *ExceededError) Is(target error) bool { return target == ErrExceeded }
