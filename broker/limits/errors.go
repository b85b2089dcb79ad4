package limits

import (
	"errors"
	"fmt"
	"time"

	"golang.org/x/time/rate"
)

// Values of ExceededError.Limit.
const (
	LimitRate          = "rate"
	LimitIdentityQuota = "identity quota"
	LimitClusterQuota  = "cluster quota"
)

// ErrExceeded matches every *ExceededError with errors.Is, for callers that
// only need to know a limit was hit.
var ErrExceeded = errors.New("limits: limit exceeded")

// ExceededError reports a refused Reserve. The broker maps it to
// RESOURCE_EXHAUSTED with RetryAfter as the RetryInfo delay.
type ExceededError struct {
	// Limit is LimitRate, LimitIdentityQuota or LimitClusterQuota.
	Limit string
	// Key is the identity or cluster that hit the limit.
	Key string
	// RetryAfter is how long until a retry can succeed (as far as this limit
	// is concerned).
	RetryAfter time.Duration
	// Max is the quota maximum, or the burst for LimitRate.
	Max int
	// Window is the quota window; zero for LimitRate.
	Window time.Duration
	// Rate is the sustained rate for LimitRate; zero otherwise.
	Rate rate.Limit
}

// Error describes the limit, the key and when to retry.
func (e *ExceededError) Error() string {
	if e.Limit == LimitRate {
		return fmt.Sprintf("limits: rate of %g/s (burst %d) exceeded for %s; retry in %s",
			float64(e.Rate), e.Max, e.Key, roundUp(e.RetryAfter))
	}
	return fmt.Sprintf("limits: %s of %d per %s exceeded for %s; retry in %s",
		e.Limit, e.Max, e.Window, e.Key, roundUp(e.RetryAfter))
}

// Is reports whether target is ErrExceeded.
func (e *ExceededError) Is(target error) bool { return target == ErrExceeded }

// roundUp rounds d up to whole seconds, or to milliseconds below a second, so
// a message never suggests retrying earlier than RetryAfter.
func roundUp(d time.Duration) time.Duration {
	unit := time.Second
	if d < time.Second {
		unit = time.Millisecond
	}
	if r := d % unit; r != 0 {
		d += unit - r
	}
	return d
}

func quotaLimit(k Kind) string {
	if k == KindCluster {
		return LimitClusterQuota
	}
	return LimitIdentityQuota
}
