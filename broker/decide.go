package broker

import (
	"fmt"
	"slices"

	"github.com/credbroker/credbroker/broker/config"
	"github.com/credbroker/credbroker/broker/limits"
	"github.com/credbroker/credbroker/broker/state"
)

// QuotaLimit is one quota the broker would apply to a quota key, and the
// requests it governs.
type QuotaLimit struct {
	Quota limits.Quota
	// AppliesTo names the requests, e.g. "profile capa-token (rule 0)".
	AppliesTo []string
}

// QuotaLimits returns the quotas the broker would apply to key, one per
// distinct limit, from the same limits resolution issuance uses
// (Limiter.Resolve over the policy rule and profile): for an identity,
// every profile a rule matching it grants; for a cluster, every
// cluster-scoped profile a rule grants for it. A key no rule grants anything
// is governed by the defaults only.
func (s *Service) QuotaLimits(key state.QuotaKey) []QuotaLimit {
	names := make([]string, 0, len(s.profiles))
	for name, p := range s.profiles {
		if key.Kind == state.QuotaCluster && p.ClusterMode == config.ClusterNone {
			continue
		}
		names = append(names, name)
	}
	slices.Sort(names)
	grants := s.policy.GrantsTo(key.Name, names)
	if key.Kind == state.QuotaCluster {
		grants = s.policy.GrantsFor(key.Name, names)
	}
	quotaOf := func(c limits.Config) limits.Quota {
		if key.Kind == state.QuotaCluster {
			return c.ClusterQuota
		}
		return c.IdentityQuota
	}
	if len(grants) == 0 {
		return []QuotaLimit{{Quota: quotaOf(s.limiter.Resolve(-1, "")), AppliesTo: []string{"defaults"}}}
	}
	var out []QuotaLimit
	for _, g := range grants {
		q := quotaOf(s.limiter.Resolve(g.Rule, g.Profile))
		where := fmt.Sprintf("profile %s (rule %d)", g.Profile, g.Rule)
		i := slices.IndexFunc(out, func(l QuotaLimit) bool { return l.Quota == q })
		if i < 0 {
			out = append(out, QuotaLimit{Quota: q})
			i = len(out) - 1
		}
		if !slices.Contains(out[i].AppliesTo, where) {
			out[i].AppliesTo = append(out[i].AppliesTo, where)
		}
	}
	// The tightest first: that is the one an operator watches.
	slices.SortStableFunc(out, func(a, b QuotaLimit) int {
		switch {
		case a.Quota.Max == 0 && b.Quota.Max == 0:
			return 0
		case a.Quota.Max == 0:
			return 1
		case b.Quota.Max == 0:
			return -1
		}
		return a.Quota.Max - b.Quota.Max
	})
	return out
}
