package state

import (
	"context"
	"fmt"
	"time"
)

// QuotaKind names what a quota is counted against.
type QuotaKind string

// Quota kinds.
const (
	// QuotaIdentity counts issuances per caller SPIFFE ID.
	QuotaIdentity QuotaKind = "identity"
	// QuotaCluster counts issuances per workload cluster ("namespace/name"),
	// shared by every identity that asks for that cluster.
	QuotaCluster QuotaKind = "cluster"
)

// Valid reports whether k is QuotaIdentity or QuotaCluster.
func (k QuotaKind) Valid() bool { return k == QuotaIdentity || k == QuotaCluster }

// QuotaKey is one counted quota: a kind and the identity or cluster.
type QuotaKey struct {
	Kind QuotaKind
	Name string
}

// String names the key for messages, e.g. "cluster team-a/alpha".
func (k QuotaKey) String() string { return string(k.Kind) + " " + k.Name }

// Quota is a fixed-window limit: at most Max units per Window, the window
// opening at the first unit spent after the previous one ended.
type Quota struct {
	Max    int
	Window time.Duration
}

// Charge is one unit to take from Key, which may hold at most Quota. The
// caller decides the Quota per charge (from the defaults, a policy rule or a
// profile); the store keeps only counts and window bounds.
type Charge struct {
	Key   QuotaKey
	Quota Quota
}

func (c Charge) validate() error {
	if !c.Key.Kind.Valid() || c.Key.Name == "" {
		return fmt.Errorf("state: invalid quota key %q/%q", c.Key.Kind, c.Key.Name)
	}
	if c.Quota.Max < 1 || c.Quota.Window <= 0 {
		return fmt.Errorf("state: invalid quota %d per %s for %s", c.Quota.Max, c.Quota.Window, c.Key)
	}
	return nil
}

// ValidateCharges checks that every charge names a valid key and a positive
// Max and Window, and that no key is charged twice. Implementations call it
// before spending; an unlimited quota is expressed by not charging it.
func ValidateCharges(charges []Charge) error {
	seen := make(map[QuotaKey]bool, len(charges))
	for _, c := range charges {
		if err := c.validate(); err != nil {
			return err
		}
		if seen[c.Key] {
			return fmt.Errorf("state: quota %s charged twice", c.Key)
		}
		seen[c.Key] = true
	}
	return nil
}

// Spent is one unit taken by Spend: enough to give it back to the same
// window, and only to that one.
type Spent struct {
	Key         QuotaKey
	WindowStart time.Time
}

// Usage is one key's use in its current window.
type Usage struct {
	Key QuotaKey
	// Used is the number of units taken in the current window.
	Used int
	// WindowStart and ResetAt bound the current window; both are zero when
	// the key has no current window (Used is then 0).
	WindowStart, ResetAt time.Time
}

// ExhaustedError is the refusal of a Spend: Key has no unit left in its
// window until RetryAfter has passed. The broker maps it to
// RESOURCE_EXHAUSTED with RetryInfo.
type ExhaustedError struct {
	Key        QuotaKey
	Quota      Quota
	RetryAfter time.Duration
}

// Error names the quota, the key and when to retry, in words a caller can
// act on.
func (e *ExhaustedError) Error() string {
	return fmt.Sprintf("%s quota of %d per %s exceeded for %s; retry in %s",
		e.Key.Kind, e.Quota.Max, e.Quota.Window, e.Key.Name, RoundUp(e.RetryAfter))
}

// RoundUp rounds d up to whole seconds, or to milliseconds below a second,
// so a message never suggests retrying earlier than d.
func RoundUp(d time.Duration) time.Duration {
	unit := time.Second
	if d < time.Second {
		unit = time.Millisecond
	}
	if r := d % unit; r != 0 {
		d += unit - r
	}
	return d
}

// Quotas keeps the fixed quota windows.
type Quotas interface {
	// Spend takes one unit from every charge's key at now, or none: if any
	// key has no unit left it returns an *ExhaustedError (naming the key
	// that frees up last) and changes nothing. A window that has ended
	// (now is not before its end) is replaced by one opening at now.
	// Concurrent spends never take more than Max units from a window.
	Spend(ctx context.Context, now time.Time, charges []Charge) ([]Spent, error)
	// Refund gives spent units back to the windows they were taken from;
	// a unit whose window has since ended, or was reset, is not returned.
	Refund(ctx context.Context, spent []Spent) error
	// Usage reports key's use at now.
	Usage(ctx context.Context, now time.Time, key QuotaKey) (Usage, error)
	// ResetQuota forgets key's current window, so its next spend opens a
	// fresh one.
	ResetQuota(ctx context.Context, key QuotaKey) error
	// PurgeQuotas deletes the windows that have ended at now and returns how
	// many. Spend and Usage ignore ended windows anyway; purging bounds the
	// store's size.
	PurgeQuotas(ctx context.Context, now time.Time) (int, error)
}

// Exhausted returns the refusal for charges against windows that are
// exhausted at now: the one that frees up last, so that a retry after
// RetryAfter is not refused by another. ends[i] is the end of charges[i]'s
// window. Implementations use it so every store words refusals alike.
func Exhausted(now time.Time, charges []Charge, ends []time.Time) *ExhaustedError {
	var worst *ExhaustedError
	for i, c := range charges {
		d := ends[i].Sub(now)
		if worst == nil || d > worst.RetryAfter {
			worst = &ExhaustedError{Key: c.Key, Quota: c.Quota, RetryAfter: d}
		}
	}
	return worst
}
