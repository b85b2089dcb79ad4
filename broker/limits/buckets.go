package limits

import (
	"fmt"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Spec is a token bucket: Rate tokens per second, at most Burst saved up.
type Spec struct {
	// Rate is the sustained rate in tokens per second; it must be positive.
	Rate rate.Limit
	// Burst is the bucket size; at least 1.
	Burst int
}

func (s Spec) validate() error {
	// !(Rate > 0) also refuses NaN, which passes every comparison.
	if !(s.Rate > 0) || s.Rate == rate.Inf || s.Burst < 1 {
		return fmt.Errorf("limits: a bucket needs a positive, finite rate and a burst of at least 1 (got %g/s, burst %d)", float64(s.Rate), s.Burst)
	}
	return nil
}

// DefaultMaxKeys is how many keys a Buckets table tracks individually before
// new keys share its overflow bucket.
const DefaultMaxKeys = 10000

// Overflow is the key under which Buckets accounts for keys that arrive while
// its table is full of keys that are still in use.
const Overflow = "\x00overflow"

// Buckets is a table of token buckets, one per key (a caller identity, a
// source address, an admin principal), optionally behind one bucket shared by
// every key (Total), for calls that anyone can make from many keys.
//
// Memory is bounded without giving anything away: a bucket that is full again
// is indistinguishable from a new one and is dropped, and once maxKeys
// buckets are all in use, further keys share one overflow bucket instead of
// evicting (and so refilling) someone's. Safe for concurrent use.
type Buckets struct {
	spec    Spec
	total   *rate.Limiter // nil: no shared bound
	maxKeys int

	mu        sync.Mutex
	keys      map[string]*rate.Limiter
	nextSweep int
	lastSweep time.Time
}

// NewBuckets returns a table of per-key buckets of spec; total, when not
// nil, is a bucket every key's token must also come from. maxKeys <= 0 means
// DefaultMaxKeys.
func NewBuckets(spec Spec, total *Spec, maxKeys int) (*Buckets, error) {
	if err := spec.validate(); err != nil {
		return nil, err
	}
	if maxKeys <= 0 {
		maxKeys = DefaultMaxKeys
	}
	b := &Buckets{spec: spec, maxKeys: maxKeys, keys: make(map[string]*rate.Limiter), nextSweep: min(defaultSweepMin, maxKeys)}
	if total != nil {
		if err := total.validate(); err != nil {
			return nil, fmt.Errorf("%w (total)", err)
		}
		b.total = rate.NewLimiter(total.Rate, total.Burst)
	}
	return b, nil
}

// Spec returns the per-key bucket.
func (b *Buckets) Spec() Spec { return b.spec }

// Exhausted says which bucket refused a token and when one will be there.
type Exhausted struct {
	// RetryAfter is how long until a token is available.
	RetryAfter time.Duration
	// Total is true when the shared bucket refused, not the key's own.
	Total bool
}

// Take takes one token for key at now. It takes nothing when it refuses: a
// refused call does not push the caller's next success further away.
func (b *Buckets) Take(key string, now time.Time) (ok bool, why Exhausted) {
	b.mu.Lock()
	defer b.mu.Unlock()
	l, ok := b.keys[key]
	if !ok {
		b.maybeSweep(now)
		if len(b.keys) >= b.maxKeys {
			key = Overflow
			l = b.keys[key]
		}
		if l == nil {
			l = rate.NewLimiter(b.spec.Rate, b.spec.Burst)
			b.keys[key] = l
		}
	}
	res := l.ReserveN(now, 1)
	if d := res.DelayFrom(now); d > 0 {
		res.CancelAt(now)
		return false, Exhausted{RetryAfter: d}
	}
	if b.total != nil {
		tres := b.total.ReserveN(now, 1)
		if d := tres.DelayFrom(now); d > 0 {
			tres.CancelAt(now)
			res.CancelAt(now)
			return false, Exhausted{RetryAfter: d, Total: true}
		}
	}
	return true, Exhausted{}
}

// Len is the number of keys tracked individually (the overflow bucket
// included when in use).
func (b *Buckets) Len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.keys)
}

// maybeSweep drops the buckets that are full again. It runs when the table
// has doubled since the last sweep (amortised O(1) per new key), when the
// table is full (at most once a second, so a table full of busy keys does
// not cost a scan per call), or once per sweepInterval. b.mu must be held.
func (b *Buckets) maybeSweep(now time.Time) {
	n := len(b.keys)
	due := n >= b.nextSweep
	if n >= b.maxKeys {
		due = now.Sub(b.lastSweep) >= time.Second
	} else if n > defaultSweepMin && now.Sub(b.lastSweep) >= sweepInterval {
		due = true
	}
	if !due {
		return
	}
	for k, l := range b.keys {
		if l.TokensAt(now) >= float64(l.Burst()) {
			delete(b.keys, k)
		}
	}
	b.nextSweep = max(min(defaultSweepMin, b.maxKeys), 2*len(b.keys))
	b.lastSweep = now
}
