package limits

import (
	"fmt"
	"sort"

	"golang.org/x/time/rate"
)

// Override is a partial Config, set by a profile or a policy rule: each nil
// field inherits the value of the level below.
type Override struct {
	Rate          *rate.Limit
	Burst         *int
	IdentityQuota *Quota
	ClusterQuota  *Quota
}

// Table is every issuance limit of a configuration: the defaults, each
// profile's overrides and each policy rule's (by rule index).
//
// Precedence is rule over profile over default, field by field. A rule is
// the most specific statement there is — these identities, these profiles,
// these clusters — so it is where an operator gives a CAPI controller that
// creates hundreds of clusters more than a single node; a profile sets what
// holds for a kind of credential wherever no rule says otherwise.
type Table struct {
	Default  Config
	Profiles map[string]Override
	Rules    []Override
}

// Resolve returns the limits of a request that rule (an index into Rules; -1
// for none) granted for profile. It is a pure function of the table.
func (t Table) Resolve(rule int, profile string) Config {
	c := t.Default
	c.Scope = ""
	apply := func(o Override, scope string) {
		if o.Rate != nil || o.Burst != nil {
			// A bucket per identity and scope: requests governed by
			// different rates do not share one.
			c.Scope = scope
		}
		if o.Rate != nil {
			c.Rate = *o.Rate
		}
		if o.Burst != nil {
			c.Burst = *o.Burst
		}
		if o.IdentityQuota != nil {
			c.IdentityQuota = *o.IdentityQuota
		}
		if o.ClusterQuota != nil {
			c.ClusterQuota = *o.ClusterQuota
		}
	}
	if o, ok := t.Profiles[profile]; ok {
		apply(o, "profile "+profile)
	}
	if rule >= 0 && rule < len(t.Rules) {
		apply(t.Rules[rule], fmt.Sprintf("rule %d", rule))
	}
	return c
}

// Validate checks the defaults and every combination a request can resolve
// to.
func (t Table) Validate() error {
	if err := t.Default.validate(); err != nil {
		return fmt.Errorf("%w (defaults)", err)
	}
	profiles := make([]string, 0, len(t.Profiles))
	for p := range t.Profiles {
		profiles = append(profiles, p)
	}
	sort.Strings(profiles)
	for _, p := range append([]string{""}, profiles...) {
		for r := -1; r < len(t.Rules); r++ {
			if err := t.Resolve(r, p).validate(); err != nil {
				return fmt.Errorf("%w (%s)", err, describeLevel(r, p))
			}
		}
	}
	return nil
}

func describeLevel(rule int, profile string) string {
	switch {
	case rule >= 0 && profile != "":
		return fmt.Sprintf("rule %d with profile %s", rule, profile)
	case rule >= 0:
		return fmt.Sprintf("rule %d", rule)
	case profile != "":
		return "profile " + profile
	}
	return "defaults"
}
