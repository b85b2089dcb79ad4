// Package limits bounds how fast and how much a caller may be issued: a token
// bucket per caller identity for request rate, and fixed-window issuance
// quotas per identity and per workload cluster.
//
// Quota state is kept in memory, where Reserve decides under one mutex, and is
// made durable by Reservation.Persist inside the bbolt transaction that writes
// the audit record, so a restart does not hand out a fresh quota. Rate buckets
// are memory only: a restart refills them, which costs at most one burst.
package limits

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"go.etcd.io/bbolt"
	"golang.org/x/time/rate"
)

// Kind names what a quota is counted against.
type Kind string

// Quota kinds.
const (
	// KindIdentity counts issuances per caller SPIFFE ID.
	KindIdentity Kind = "identity"
	// KindCluster counts issuances per workload cluster ("namespace/name"),
	// shared by every identity that asks for that cluster.
	KindCluster Kind = "cluster"
)

// ErrUnknownKind is returned by Usage and Reset for a kind other than
// KindIdentity or KindCluster. Callers may match it with errors.Is.
var ErrUnknownKind = errors.New("limits: unknown quota kind")

// ErrNoIdentity is returned by Reserve when the identity is empty: limits are
// per identity, so an anonymous request cannot be accounted for.
var ErrNoIdentity = errors.New("limits: empty identity")

// Quota is a fixed-window issuance quota: at most Max reservations per
// Window. A key's window starts at its first reservation.
type Quota struct {
	// Max is the number of issuances allowed per window; 0 means unlimited.
	Max int
	// Window is the window length; required when Max > 0.
	Window time.Duration
}

func (q Quota) unlimited() bool { return q.Max == 0 }

// Config sets the limits applied to every caller.
type Config struct {
	// Rate is the sustained request rate per identity, in requests per
	// second; 0 (or rate.Inf) means unlimited.
	Rate rate.Limit
	// Burst is the bucket size per identity; required when Rate is set.
	Burst int
	// IdentityQuota bounds issuances per caller identity.
	IdentityQuota Quota
	// ClusterQuota bounds issuances per workload cluster.
	ClusterQuota Quota
}

func (c Config) rateUnlimited() bool { return c.Rate == 0 || c.Rate == rate.Inf }

func (c Config) validate() error {
	if c.Rate < 0 {
		return fmt.Errorf("limits: negative rate %v", c.Rate)
	}
	if !c.rateUnlimited() && c.Burst < 1 {
		return fmt.Errorf("limits: burst must be at least 1 when rate is set, got %d", c.Burst)
	}
	for _, q := range []struct {
		name string
		q    Quota
	}{{"identity quota", c.IdentityQuota}, {"cluster quota", c.ClusterQuota}} {
		if q.q.Max < 0 {
			return fmt.Errorf("limits: %s max is negative (%d)", q.name, q.q.Max)
		}
		if q.q.Max > 0 && q.q.Window <= 0 {
			return fmt.Errorf("limits: %s window must be positive, got %v", q.name, q.q.Window)
		}
	}
	return nil
}

func (c Config) quota(k Kind) Quota {
	if k == KindCluster {
		return c.ClusterQuota
	}
	return c.IdentityQuota
}

// Option configures a Limiter.
type Option func(*Limiter)

// WithClock makes the Limiter read time from now instead of time.Now.
func WithClock(now func() time.Time) Option {
	return func(l *Limiter) { l.now = now }
}

// withSweepThreshold lowers the table size at which sweeping starts; tests
// use it to observe sweeps without creating thousands of entries.
func withSweepThreshold(n int) Option {
	return func(l *Limiter) { l.sweepMin = n }
}

const (
	// defaultSweepMin is the table size below which idle entries are kept:
	// sweeping a small table buys nothing.
	defaultSweepMin = 1024
	// sweepInterval bounds how long a grown table keeps idle entries once
	// traffic falls, when it no longer grows enough to trigger a sweep.
	sweepInterval = time.Minute
)

// Limiter enforces a Config. It is safe for concurrent use.
type Limiter struct {
	cfg Config
	now func() time.Time

	mu        sync.Mutex
	buckets   map[string]*rate.Limiter // per identity; absent = full bucket
	windows   map[quotaKey]window      // absent or ended = nothing used
	gen       uint64                   // last window generation handed out
	sweepMin  int
	nextSweep int // table size that triggers the next sweep
	lastSweep time.Time
}

type quotaKey struct {
	kind Kind
	key  string
}

// window is one key's current fixed window.
type window struct {
	start time.Time
	count int
	// gen identifies this window, so a late Cancel never returns a unit to
	// a window that replaced the one it was taken from.
	gen uint64
}

func (w window) end(q Quota) time.Time { return w.start.Add(q.Window) }

// New returns a Limiter for cfg and loads the quota state persisted in db
// (bucket "quota"); windows that have already ended are ignored. db may be
// nil for a Limiter with no persisted state. A record that cannot be decoded
// is an error: quota state is not silently discarded.
func New(db *bbolt.DB, cfg Config, opts ...Option) (*Limiter, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	l := &Limiter{
		cfg:      cfg,
		now:      time.Now,
		buckets:  make(map[string]*rate.Limiter),
		windows:  make(map[quotaKey]window),
		sweepMin: defaultSweepMin,
	}
	for _, o := range opts {
		o(l)
	}
	l.nextSweep = l.sweepMin
	l.lastSweep = l.now()
	if db != nil {
		if err := db.View(l.load); err != nil {
			return nil, err
		}
	}
	return l, nil
}

// Reserve admits one request from identity for cluster ("" when the request
// is not scoped to a cluster). It takes a token from identity's rate bucket,
// then reserves one unit of the identity quota and of the cluster quota. The
// two quota units are taken together or not at all. A request refused by a
// quota has still used its rate token: the rate bounds requests, not
// issuances.
//
// On refusal the error is an *ExceededError carrying the retry delay; when
// both quotas are exhausted it names the one that frees up last. The returned
// Reservation must be persisted with the decision record, or cancelled when
// nothing was issued.
func (l *Limiter) Reserve(identity, cluster string) (*Reservation, error) {
	if identity == "" {
		return nil, ErrNoIdentity
	}
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()

	if err := l.takeRate(identity, now); err != nil {
		return nil, err
	}

	keys := [2]quotaKey{{KindIdentity, identity}, {KindCluster, cluster}}
	var next [2]window
	var take [2]bool
	var refusal *ExceededError
	for i, k := range keys {
		if k.key == "" {
			continue
		}
		w, ok, err := l.check(k, now)
		if err != nil {
			if refusal == nil || err.RetryAfter > refusal.RetryAfter {
				refusal = err
			}
			continue
		}
		next[i], take[i] = w, ok
	}
	if refusal != nil {
		return nil, refusal
	}

	r := &Reservation{l: l}
	for i, k := range keys {
		if !take[i] {
			continue
		}
		l.windows[k] = next[i]
		r.units = append(r.units, unit{key: k, gen: next[i].gen})
	}
	l.maybeSweep(now)
	return r, nil
}

// takeRate takes one token from identity's bucket, or returns why not. A
// refused request leaves the bucket as it was.
func (l *Limiter) takeRate(identity string, now time.Time) *ExceededError {
	if l.cfg.rateUnlimited() {
		return nil
	}
	b, ok := l.buckets[identity]
	if !ok {
		b = rate.NewLimiter(l.cfg.Rate, l.cfg.Burst)
		l.buckets[identity] = b
	}
	res := b.ReserveN(now, 1)
	if d := res.DelayFrom(now); d > 0 {
		res.CancelAt(now)
		return &ExceededError{
			Limit:      LimitRate,
			Key:        identity,
			RetryAfter: d,
			Max:        l.cfg.Burst,
			Rate:       l.cfg.Rate,
		}
	}
	return nil
}

// check returns the window k would have after taking one unit, and whether
// k is counted at all (false for an unlimited quota). It does not change
// l.windows. l.mu must be held.
func (l *Limiter) check(k quotaKey, now time.Time) (window, bool, *ExceededError) {
	q := l.cfg.quota(k.kind)
	if q.unlimited() {
		return window{}, false, nil
	}
	w, ok := l.current(k, now)
	if !ok {
		l.gen++
		w = window{start: now, gen: l.gen}
	}
	if w.count >= q.Max {
		return window{}, false, &ExceededError{
			Limit:      quotaLimit(k.kind),
			Key:        k.key,
			RetryAfter: w.end(q).Sub(now),
			Max:        q.Max,
			Window:     q.Window,
		}
	}
	w.count++
	return w, true, nil
}

// current returns k's window if it has not ended at now. l.mu must be held.
func (l *Limiter) current(k quotaKey, now time.Time) (window, bool) {
	w, ok := l.windows[k]
	if !ok || !now.Before(w.end(l.cfg.quota(k.kind))) {
		return window{}, false
	}
	return w, true
}

// maybeSweep drops what an idle key would recreate identically: rate buckets
// that are full again and quota windows that have ended. It runs when the
// tables have doubled since the last sweep (amortised O(1) per Reserve, and
// memory bounded by twice the keys active within one refill time or quota
// window) or, for a table that has stopped growing, once per sweepInterval.
// l.mu must be held.
func (l *Limiter) maybeSweep(now time.Time) {
	size := len(l.buckets) + len(l.windows)
	if size < l.nextSweep && (size <= l.sweepMin || now.Sub(l.lastSweep) < sweepInterval) {
		return
	}
	for id, b := range l.buckets {
		if b.TokensAt(now) >= float64(l.cfg.Burst) {
			delete(l.buckets, id)
		}
	}
	for k := range l.windows {
		if _, ok := l.current(k, now); !ok {
			delete(l.windows, k)
		}
	}
	l.nextSweep = max(l.sweepMin, 2*(len(l.buckets)+len(l.windows)))
	l.lastSweep = now
}

// Usage is one key's quota use in its current window.
type Usage struct {
	// Kind is KindIdentity or KindCluster.
	Kind Kind
	// Key is the identity or cluster.
	Key string
	// Used is the number of units taken in the current window.
	Used int
	// Max is the configured maximum; 0 means unlimited.
	Max int
	// Window is the configured window length.
	Window time.Duration
	// WindowStart and ResetAt bound the current window; both are zero when
	// the key has no current window.
	WindowStart, ResetAt time.Time
}

// Usage reports key's use of the kind quota at the current time.
func (l *Limiter) Usage(kind Kind, key string) (Usage, error) {
	if !kind.valid() {
		return Usage{}, fmt.Errorf("%w %q", ErrUnknownKind, kind)
	}
	q := l.cfg.quota(kind)
	u := Usage{Kind: kind, Key: key, Max: q.Max, Window: q.Window}
	if q.unlimited() {
		return u, nil
	}
	now := l.now()
	l.mu.Lock()
	w, ok := l.current(quotaKey{kind, key}, now)
	l.mu.Unlock()
	if ok {
		u.Used, u.WindowStart, u.ResetAt = w.count, w.start, w.end(q)
	}
	return u, nil
}

func (k Kind) valid() bool { return k == KindIdentity || k == KindCluster }

// Reservation is the quota taken by one admitted request.
type Reservation struct {
	l     *Limiter
	units []unit
	// cancelled is guarded by l.mu.
	cancelled bool
}

type unit struct {
	key quotaKey
	gen uint64
}

// Cancel gives the reserved quota units back, for a request whose decision
// could not be made durable and so issued nothing. The rate token is not
// returned. A unit whose window has since ended is not returned to the new
// window. Cancel is idempotent.
func (r *Reservation) Cancel() {
	r.l.mu.Lock()
	defer r.l.mu.Unlock()
	if r.cancelled {
		return
	}
	r.cancelled = true
	for _, u := range r.units {
		w, ok := r.l.windows[u.key]
		if ok && w.gen == u.gen && w.count > 0 {
			w.count--
			r.l.windows[u.key] = w
		}
	}
}
