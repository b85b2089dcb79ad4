package broker

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/credbroker/credbroker/broker/config"
	"github.com/credbroker/credbroker/broker/state"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// MetaBudget names, in a RATE_LIMITED refusal, the upstream budget that is
// spent.
const MetaBudget = "budget"

// limitBudget is the limit metadata of a refusal by an upstream budget.
const limitBudget = "upstream budget"

// UpstreamBudget is an issuer's budget of upstream calls (issuers.Budget):
// a token bucket kept in the state store, which every replica draws from,
// so that the fleet together never calls AWS STS (or Vault) faster than the
// budget allows, and a burst of requests is refused at the broker with
// RetryInfo rather than throttled upstream for everyone.
//
// With a lease of 1, every upstream call takes its token from the store
// (one compare-and-swap in etcd, the cost of the STS call it guards) and
// the fleet's calls are exactly within the bucket: over any span d, at
// most Burst + Rate*d. A lease of L > 1 saves round trips: a replica takes
// up to L tokens in one compare-and-swap and spends them locally, each
// within (L-1) intervals of the take (1/Rate each); tokens unused by then
// are dropped. A token is then spent at most (L-1)/Rate after the shared
// bucket granted it, which could put up to L-1 more calls into a span than
// the bucket granted in it; so the shared bucket is kept L-1 tokens
// smaller than Burst, and the calls stay within Burst + Rate*d, never over
// (the dropped tokens only make the fleet slower).
type UpstreamBudget struct {
	name   string
	spec   state.BudgetSpec // as configured
	shared state.BudgetSpec // the bucket in the store: Burst - (lease-1)
	lease  int
	store  state.Budgets
	now    func() time.Time
	m      *Metrics

	mu        sync.Mutex
	held      int       // leased tokens not spent yet
	heldUntil time.Time // when they are dropped
	// emptyUntil is when the next token frees, as the store last refused:
	// the bucket's state only moves forward, so none frees earlier.
	emptyUntil time.Time
}

// NewUpstreamBudget returns the budget named name, of spec, drawn from
// store with leases of lease tokens (at least 1, at most config.MaxBudgetLease,
// and at most (Burst+1)/2 so the shared bucket holds a whole lease). clock
// nil means time.Now.
func NewUpstreamBudget(name string, spec state.BudgetSpec, lease int, store state.Budgets, clock func() time.Time, m *Metrics) (*UpstreamBudget, error) {
	if err := spec.Validate(); err != nil {
		return nil, fmt.Errorf("broker: budget %q: %w", name, err)
	}
	if name == "" || store == nil || m == nil {
		return nil, errors.New("broker: NewUpstreamBudget: missing name, store or metrics")
	}
	if lease < 1 || lease > config.MaxBudgetLease || spec.Burst-(lease-1) < lease {
		return nil, fmt.Errorf("broker: budget %q: lease %d must be between 1 and min(%d, (burst+1)/2 = %d)", name, lease, config.MaxBudgetLease, (spec.Burst+1)/2)
	}
	if clock == nil {
		clock = time.Now
	}
	shared := spec
	shared.Burst -= lease - 1
	return &UpstreamBudget{name: name, spec: spec, shared: shared, lease: lease, store: store, now: clock, m: m}, nil
}

// Take implements issuers.Budget: nil when an upstream call may go ahead
// now, a RATE_LIMITED refusal (with the delay until a token frees) when the
// budget is spent, UNAVAILABLE when the store cannot tell.
func (b *UpstreamBudget) Take(ctx context.Context) error {
	now := b.now()
	b.mu.Lock()
	if b.held > 0 && now.Before(b.heldUntil) {
		b.held--
		b.mu.Unlock()
		b.m.budgetTokens.WithLabelValues(b.name, "lease").Inc()
		return nil
	}
	b.held = 0
	b.mu.Unlock()
	got, err := b.store.TakeBudget(ctx, b.name, b.lease, b.shared, now)
	var ex *state.BudgetExhaustedError
	switch {
	case errors.As(err, &ex):
		b.mu.Lock()
		if until := now.Add(ex.RetryAfter); until.After(b.emptyUntil) {
			b.emptyUntil = until
		}
		b.mu.Unlock()
		return b.refusal(ex.RetryAfter)
	case errors.Is(err, state.ErrUnavailable):
		return wrapf(credbrokerv1.ErrorReason_UNAVAILABLE, err, "shared state unavailable: upstream budget %q not drawn from; nothing was issued", b.name)
	case err != nil:
		return wrapf(credbrokerv1.ErrorReason_INTERNAL, err, "upstream budget %q not drawn from; nothing was issued", b.name)
	}
	b.m.budgetTokens.WithLabelValues(b.name, "store").Inc()
	if got > 1 {
		// Replace, not add to, what another take may have leased meanwhile:
		// the older tokens are only dropped early, which errs on the slow
		// side.
		b.mu.Lock()
		b.held, b.heldUntil = got-1, now.Add(time.Duration(b.lease-1)*b.spec.Interval())
		b.mu.Unlock()
	}
	return nil
}

// Spent returns the budget's refusal when this replica already knows that
// it has no token at now (the store refused a take, and the next token
// frees later), without asking the store; nil otherwise. The broker asks
// it before a request's intent record, so that while a budget is spent its
// refusals (and a caller's retries) spend no quota.
func (b *UpstreamBudget) Spent() error {
	now := b.now()
	b.mu.Lock()
	wait := b.emptyUntil.Sub(now)
	held := b.held > 0 && now.Before(b.heldUntil)
	b.mu.Unlock()
	if held || wait <= 0 {
		return nil
	}
	return b.refusal(wait)
}

// refusal is the RATE_LIMITED refusal of a call wait before the next token.
func (b *UpstreamBudget) refusal(wait time.Duration) error {
	b.m.budgetRefusals.WithLabelValues(b.name).Inc()
	msg := fmt.Sprintf("upstream budget %q of %g calls/s (burst %d) is spent; retry in %s", b.name, b.spec.Rate, b.spec.Burst, state.RoundUp(wait))
	return exhausted(credbrokerv1.ErrorReason_RATE_LIMITED, limitBudget, msg, wait).with(MetaBudget, b.name)
}

// budgetMetrics registers the upstream budget metrics.
func budgetMetrics() (tokens, refusals *prometheus.CounterVec) {
	tokens = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "credbroker_upstream_budget_tokens_total",
		Help: "Upstream calls let through by an upstream budget, by budget and by where the token came from (store: taken from the state store, shared by the replicas; lease: leased earlier by this replica).",
	}, []string{"budget", "from"})
	refusals = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "credbroker_upstream_budget_refusals_total",
		Help: "Requests refused (RATE_LIMITED) because their issuer's upstream budget was spent, by budget; no upstream call was made for them.",
	}, []string{"budget"})
	return tokens, refusals
}
