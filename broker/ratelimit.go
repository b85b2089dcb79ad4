package broker

import (
	"fmt"
	"path"
	"time"

	"golang.org/x/time/rate"

	"github.com/credbroker/credbroker/broker/config"
	"github.com/credbroker/credbroker/broker/limits"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// limiter names the rate limit that governs a method. Every method in the
// method table declares one; the zero value is "none declared", and such a
// method fails with INTERNAL instead of running unlimited.
type limiter int

const (
	limitUndeclared limiter = iota
	// limitIssue: per caller identity.
	limitIssue
	// limitRenew: per node identity.
	limitRenew
	// limitAdmin: per admin principal (admin SPIFFE ID, or unix uid on the
	// admin socket); a stream takes one token when it starts.
	limitAdmin
	// limitAttest: per source address and in total, before the evidence is
	// looked at (it may spend a join token or fetch keys).
	limitAttest
	// limitUnauthenticated governs calls whose identity did not verify, per
	// source address and in total, whatever the method.
	limitUnauthenticated
	// limitWatch: starts of revocation watches per caller identity (how
	// many may stay open is the Watches' own cap).
	limitWatch
	// limitHealth: health checks and health Watch starts per source
	// address and in total; they need no identity.
	limitHealth
	// limitReflection: starts of server reflection streams per caller
	// identity.
	limitReflection
)

func (l limiter) String() string {
	switch l {
	case limitIssue:
		return "issue"
	case limitRenew:
		return "renew"
	case limitAdmin:
		return "admin"
	case limitAttest:
		return "attest"
	case limitUnauthenticated:
		return "unauthenticated"
	case limitWatch:
		return "watch"
	case limitHealth:
		return "health"
	case limitReflection:
		return "reflection"
	case limitUndeclared:
		return "undeclared"
	}
	return fmt.Sprintf("limiter(%d)", int(l))
}

// RequestLimits are the token buckets of each limiter. Total buckets are
// shared by every key; they exist for calls that anyone who can reach the
// port can make from many addresses.
type RequestLimits struct {
	// Issue bounds IssueCredential per caller identity.
	Issue limits.Spec
	// Renew bounds RenewNodeSVID per node identity.
	Renew limits.Spec
	// Admin bounds the admin API per admin principal.
	Admin limits.Spec
	// Attest and AttestTotal bound AttestNode per source address and in total.
	Attest, AttestTotal limits.Spec
	// Unauthenticated and UnauthenticatedTotal bound calls that fail
	// authentication, per source address and in total.
	Unauthenticated, UnauthenticatedTotal limits.Spec
	// Watch bounds WatchRevocations starts per caller identity.
	Watch limits.Spec
	// Health and HealthTotal bound health checks per source address and in
	// total.
	Health, HealthTotal limits.Spec
	// Reflection bounds server reflection stream starts per caller identity.
	Reflection limits.Spec
}

// DefaultRequestLimits are the limits used when none are configured (the
// defaults of the configuration file's limits.requests).
func DefaultRequestLimits() RequestLimits {
	var r config.Requests
	r.ApplyDefaults()
	return RequestLimitsFrom(r)
}

// RequestLimitsFrom converts the configuration's limits.requests (with its
// defaults applied).
func RequestLimitsFrom(r config.Requests) RequestLimits {
	return RequestLimits{
		Issue: specOf(r.Issue), Renew: specOf(r.Renew), Admin: specOf(r.Admin),
		Attest: r.Attest.PerKey(), AttestTotal: r.Attest.Total(),
		Unauthenticated: r.Unauthenticated.PerKey(), UnauthenticatedTotal: r.Unauthenticated.Total(),
		Watch:  specOf(r.Watch),
		Health: r.Health.PerKey(), HealthTotal: r.Health.Total(),
		Reflection: specOf(r.Reflection),
	}
}

func specOf(b config.Bucket) limits.Spec {
	return limits.Spec{Rate: rate.Limit(b.Rate), Burst: b.Burst}
}

// RateLimits holds the buckets of every limiter. One RateLimits serves the
// mTLS listener and the admin socket, so an admin principal has one budget.
type RateLimits struct {
	now     func() time.Time
	buckets map[limiter]*limits.Buckets
}

// NewRateLimits builds the buckets of l; now is the clock (nil: time.Now).
func NewRateLimits(l RequestLimits, now func() time.Time) (*RateLimits, error) {
	if now == nil {
		now = time.Now
	}
	rl := &RateLimits{now: now, buckets: map[limiter]*limits.Buckets{}}
	for _, b := range []struct {
		lim   limiter
		spec  limits.Spec
		total *limits.Spec
	}{
		{limitIssue, l.Issue, nil},
		{limitRenew, l.Renew, nil},
		{limitAdmin, l.Admin, nil},
		{limitAttest, l.Attest, &l.AttestTotal},
		{limitUnauthenticated, l.Unauthenticated, &l.UnauthenticatedTotal},
		{limitWatch, l.Watch, nil},
		{limitHealth, l.Health, &l.HealthTotal},
		{limitReflection, l.Reflection, nil},
	} {
		buckets, err := limits.NewBuckets(b.spec, b.total, 0)
		if err != nil {
			return nil, fmt.Errorf("broker: %s limit: %w", b.lim, err)
		}
		rl.buckets[b.lim] = buckets
	}
	return rl, nil
}

func mustDefaultRateLimits(now func() time.Time) *RateLimits {
	rl, err := NewRateLimits(DefaultRequestLimits(), now)
	if err != nil {
		panic(err) // the defaults are valid; a test proves it
	}
	return rl
}

// declared reports whether lim has buckets; a method whose limiter has none
// must not run.
func (r *RateLimits) declared(lim limiter) bool { return r.buckets[lim] != nil }

// take takes a token for key from lim's buckets, or returns the
// RESOURCE_EXHAUSTED error (with the retry delay) for the caller. A limiter
// without buckets is INTERNAL: fail closed.
func (r *RateLimits) take(m *Metrics, fullMethod string, lim limiter, key string) *apiError {
	b := r.buckets[lim]
	if b == nil {
		return errorf(credbrokerv1.ErrorReason_INTERNAL, "method %s has no rate limit", fullMethod)
	}
	ok, why := b.Take(key, r.now())
	if ok {
		return nil
	}
	bucket, whose := "key", "for this caller"
	if why.Total {
		bucket, whose = "total", "from all callers"
	}
	if lim == limitUnauthenticated || lim == limitAttest || lim == limitHealth {
		whose = "from this address"
		if why.Total {
			whose = "from all addresses"
		}
	}
	m.rateLimited.WithLabelValues(path.Base(fullMethod), bucket).Inc()
	spec := b.Spec()
	ae := errorf(credbrokerv1.ErrorReason_RATE_LIMITED, "rate limit: too many %s requests %s (%g/s, burst %d per caller); retry in %s",
		lim, whose, float64(spec.Rate), spec.Burst, roundRetry(why.RetryAfter))
	ae.retryAfter = why.RetryAfter
	return ae.with(MetaLimit, limits.LimitRate)
}

// roundRetry rounds d up to a whole millisecond (second above one), so that
// the message never suggests retrying earlier than RetryInfo says.
func roundRetry(d time.Duration) time.Duration {
	unit := time.Millisecond
	if d >= time.Second {
		unit = time.Second
	}
	if r := d % unit; r != 0 {
		d += unit - r
	}
	return d
}
