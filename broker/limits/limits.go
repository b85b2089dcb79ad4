// Package limits bounds how fast and how much a caller may be issued: a token
// bucket per caller identity for request rate, and the fixed-window issuance
// quotas per identity and per workload cluster that a request is charged.
//
// Rate buckets are memory only: a restart refills them, which costs at most
// one burst. Quotas are not kept here: Reserve names the charges a request
// makes (which keys, with which limits), and the broker spends them in the
// shared state (broker/state) together with the request's audit record, so
// that a restart, or another replica, cannot hand out a fresh quota.
package limits

import (
	"errors"
	"fmt"
	"math"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/credbroker/credbroker/broker/state"
)

// ErrNoIdentity is returned by Reserve when the identity is empty: limits are
// per identity, so an anonymous request cannot be accounted for.
var ErrNoIdentity = errors.New("limits: empty identity")

// Quota is a fixed-window issuance quota: at most Max issuances per Window.
// A key's window starts at its first issuance.
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
	// ClusterQuota bounds issuances per workload cluster ("namespace/name"),
	// shared by every identity that asks for that cluster.
	ClusterQuota Quota
	// Scope names where Rate and Burst come from ("" for the defaults,
	// "profile P", "rule N"; see Table.Resolve). Each identity has one
	// bucket per scope.
	Scope string
}

func (c Config) rateUnlimited() bool { return c.Rate == 0 || c.Rate == rate.Inf }

func (c Config) validate() error {
	if c.Rate < 0 || math.IsNaN(float64(c.Rate)) {
		// NaN would pass every other check and make the bucket admit all.
		return fmt.Errorf("limits: rate %v is not a non-negative number", c.Rate)
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

// Option configures a Limiter.
type Option func(*Limiter)

// WithOverrides adds the limits that profiles and policy rules set over the
// defaults (see Table).
func WithOverrides(profiles map[string]Override, rules []Override) Option {
	return func(l *Limiter) { l.table.Profiles, l.table.Rules = profiles, rules }
}

// WithClock makes the Limiter read time from now instead of time.Now.
func WithClock(now func() time.Time) Option {
	return func(l *Limiter) { l.now = now }
}

// withSweepThreshold lowers the table size at which sweeping starts; tests
// use it to observe sweeps without creating thousands of buckets.
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
	table Table
	now   func() time.Time

	mu        sync.Mutex
	buckets   map[string]*rate.Limiter // per identity; absent = full bucket
	sweepMin  int
	nextSweep int // table size that triggers the next sweep
	lastSweep time.Time
}

// New returns a Limiter with the default limits cfg.
func New(cfg Config, opts ...Option) (*Limiter, error) {
	l := &Limiter{
		table:    Table{Default: cfg},
		now:      time.Now,
		buckets:  make(map[string]*rate.Limiter),
		sweepMin: defaultSweepMin,
	}
	for _, o := range opts {
		o(l)
	}
	if err := l.table.Validate(); err != nil {
		return nil, err
	}
	l.nextSweep = l.sweepMin
	l.lastSweep = l.now()
	return l, nil
}

// Reserve admits one request from identity for cluster ("" when the request
// is not scoped to a cluster): it takes a token from identity's rate bucket
// and returns the quota charges the request makes, one unit of the identity
// quota and one of the cluster quota (none for an unlimited quota). The
// charges are spent with the request's audit record (state.Ledger); a
// request refused by a quota has still used its rate token: the rate bounds
// requests, not issuances.
//
// On refusal the error is an *ExceededError carrying the retry delay.
func (l *Limiter) Reserve(identity, cluster string) (*Reservation, error) {
	return l.ReserveFor(identity, cluster, l.table.Default)
}

// Resolve returns the limits of a request that policy rule (index; -1 for
// none) granted for profile: Table.Resolve over the Limiter's table.
func (l *Limiter) Resolve(rule int, profile string) Config { return l.table.Resolve(rule, profile) }

// ReserveFor is Reserve under the limits cfg (from Resolve) instead of the
// defaults.
func (l *Limiter) ReserveFor(identity, cluster string, cfg Config) (*Reservation, error) {
	if identity == "" {
		return nil, ErrNoIdentity
	}
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.takeRate(identity, cfg, now); err != nil {
		return nil, err
	}
	l.maybeSweep(now)
	return &Reservation{charges: charges(identity, cluster, cfg)}, nil
}

// Check answers what ReserveFor would answer now, taking nothing: the
// refusal of the rate limit, or the charges the request would make. It is
// for explaining a decision (policy explain) with the same limits.
func (l *Limiter) Check(identity, cluster string, cfg Config) (*Reservation, error) {
	if identity == "" {
		return nil, ErrNoIdentity
	}
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if !cfg.rateUnlimited() {
		if b, ok := l.buckets[bucketKey(identity, cfg)]; ok {
			if tokens := b.TokensAt(now); tokens < 1 {
				return nil, rateExceeded(identity, cfg, time.Duration((1-tokens)/float64(cfg.Rate)*float64(time.Second)))
			}
		}
	}
	return &Reservation{charges: charges(identity, cluster, cfg)}, nil
}

// charges are the quota units a request of identity for cluster spends
// under cfg: one of each limited quota that applies.
func charges(identity, cluster string, cfg Config) []state.Charge {
	var out []state.Charge
	for _, c := range []struct {
		kind state.QuotaKind
		name string
		q    Quota
	}{{state.QuotaIdentity, identity, cfg.IdentityQuota}, {state.QuotaCluster, cluster, cfg.ClusterQuota}} {
		if c.name == "" || c.q.unlimited() {
			continue
		}
		out = append(out, state.Charge{
			Key:   state.QuotaKey{Kind: c.kind, Name: c.name},
			Quota: state.Quota{Max: c.q.Max, Window: c.q.Window},
		})
	}
	return out
}

// bucketKey names identity's rate bucket under cfg's scope.
func bucketKey(identity string, cfg Config) string {
	if cfg.Scope != "" {
		return cfg.Scope + "\x00" + identity
	}
	return identity
}

func rateExceeded(identity string, cfg Config, retryAfter time.Duration) *ExceededError {
	return &ExceededError{Limit: LimitRate, Key: identity, RetryAfter: retryAfter, Max: cfg.Burst, Rate: cfg.Rate}
}

// takeRate takes one token from identity's bucket for cfg's scope, or
// returns why not. A refused request leaves the bucket as it was.
func (l *Limiter) takeRate(identity string, cfg Config, now time.Time) *ExceededError {
	if cfg.rateUnlimited() {
		return nil
	}
	key := bucketKey(identity, cfg)
	b, ok := l.buckets[key]
	if !ok {
		b = rate.NewLimiter(cfg.Rate, cfg.Burst)
		l.buckets[key] = b
	}
	res := b.ReserveN(now, 1)
	if d := res.DelayFrom(now); d > 0 {
		res.CancelAt(now)
		return rateExceeded(identity, cfg, d)
	}
	return nil
}

// maybeSweep drops what an idle identity would recreate identically: rate
// buckets that are full again. It runs when the table has doubled since the
// last sweep (amortised O(1) per Reserve, and memory bounded by twice the
// identities active within one refill time) or, for a table that has
// stopped growing, once per sweepInterval. l.mu must be held.
func (l *Limiter) maybeSweep(now time.Time) {
	size := len(l.buckets)
	if size < l.nextSweep && (size <= l.sweepMin || now.Sub(l.lastSweep) < sweepInterval) {
		return
	}
	for id, b := range l.buckets {
		if b.TokensAt(now) >= float64(b.Burst()) {
			delete(l.buckets, id)
		}
	}
	l.nextSweep = max(l.sweepMin, 2*len(l.buckets))
	l.lastSweep = now
}

// Reservation is what Reserve admitted: the quota charges the request
// makes.
type Reservation struct {
	charges []state.Charge
}

// Charges returns the quota units the request must spend before anything
// is issued; none when every quota that applies is unlimited.
func (r *Reservation) Charges() []state.Charge { return r.charges }
