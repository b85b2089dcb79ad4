package config

import (
	"fmt"
	"math"
	"sort"

	"github.com/credbroker/credbroker/broker/state"
)

// MaxBudgetLease bounds issuers.NAME.budget.lease: how many tokens a
// replica takes from a shared budget at once.
const MaxBudgetLease = 100

// IssuerBudget is the budget of upstream calls an issuer (aws_sts, vault)
// draws from, shared by every replica: a token bucket of Rate calls per
// second holding at most Burst. Issuers that call the same upstream account
// (one AWS account, one Vault) name the same budget.
type IssuerBudget struct {
	// Name of the budget; default the issuer's name. Issuers naming the
	// same budget share it and must give it the same rate, burst and lease.
	Name string `yaml:"name"`
	// Rate is the sustained upstream calls per second (required).
	Rate float64 `yaml:"rate"`
	// Burst is how many calls may go out at once after a quiet spell
	// (required).
	Burst int `yaml:"burst"`
	// Lease is how many tokens a replica takes from the shared budget in
	// one round trip to the state store and spends locally, each within
	// (lease-1)/rate of the take; default 1 (a round trip per upstream
	// call). At most 100 and (burst+1)/2.
	Lease int `yaml:"lease"`
}

// Key is the budget's name for an issuer named issuer.
func (b IssuerBudget) Key(issuer string) string {
	if b.Name != "" {
		return b.Name
	}
	return issuer
}

// LeaseSize is Lease with its default.
func (b IssuerBudget) LeaseSize() int {
	if b.Lease == 0 {
		return 1
	}
	return b.Lease
}

// Spec is the budget's token bucket.
func (b IssuerBudget) Spec() state.BudgetSpec {
	return state.BudgetSpec{Rate: b.Rate, Burst: b.Burst}
}

// validateBudgets checks every issuer's budget, and that issuers sharing a
// budget agree on it.
func (c *Config) validateBudgets() []error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf("config: "+format, a...)) }
	names := make([]string, 0, len(c.Issuers))
	for name := range c.Issuers {
		names = append(names, name)
	}
	sort.Strings(names)
	first := map[string]string{} // budget key -> first issuer naming it
	for _, name := range names {
		is := c.Issuers[name]
		b := is.Budget
		if b == nil {
			continue
		}
		if is.Type == IssuerJWT {
			bad("issuers.%s.budget: a %q issuer makes no upstream call; a budget is only for %q and %q issuers", name, IssuerJWT, IssuerAWSSTS, IssuerVault)
			continue
		}
		if b.Name != "" && !nameRE.MatchString(b.Name) {
			bad("issuers.%s.budget.name %q: use lowercase letters, digits, '.', '_' and '-'", name, b.Name)
		}
		if !(b.Rate >= 1.0/86400) || math.IsInf(b.Rate, 0) || b.Burst < 1 {
			bad("issuers.%s.budget: rate must be at least one call a day (%g) and finite, burst at least 1 (got rate %g, burst %d)", name, 1.0/86400, b.Rate, b.Burst)
			continue
		}
		if l := b.LeaseSize(); l < 1 || l > MaxBudgetLease || b.Burst-(l-1) < l {
			bad("issuers.%s.budget.lease %d: want 1 to %d and at most (burst+1)/2 = %d", name, b.Lease, MaxBudgetLease, (b.Burst+1)/2)
		}
		key := b.Key(name)
		if other, ok := first[key]; ok {
			o := c.Issuers[other].Budget
			if o.Rate != b.Rate || o.Burst != b.Burst || o.LeaseSize() != b.LeaseSize() {
				bad("issuers.%s.budget: budget %q is shared with issuer %s, which gives it another rate, burst or lease", name, key, other)
			}
			continue
		}
		first[key] = name
	}
	return errs
}
