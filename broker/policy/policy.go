// Package policy decides which profiles, for which workload clusters, a
// verified SPIFFE ID may be issued. It knows nothing of how the caller was
// verified or of limits; it answers one question and says why.
//
// A rule matches a caller by SPIFFE ID pattern and grants profiles for
// clusters. Patterns use path.Match syntax: `*` matches within one path
// segment, so `spiffe://example.org/ns/*/sa/capa-controller-manager` matches
// that service account in every namespace but nothing deeper. Cluster
// patterns work the same way on "namespace/name" (`capi-*/*`, `*/*`). Rules
// only grant; a request no rule grants is denied.
package policy

import (
	"errors"
	"fmt"
	"path"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Rule grants profiles for clusters to callers whose SPIFFE ID matches ID.
type Rule struct {
	// ID is an exact SPIFFE ID or a path.Match pattern over it.
	ID string `yaml:"id"`
	// Profiles are profile names this rule grants; "*" grants all.
	Profiles []string `yaml:"profiles"`
	// Clusters are "namespace/name" patterns the granted profiles may be
	// scoped to. An empty list places no cluster restriction; a rule that
	// lists clusters grants only requests scoped to one of them.
	Clusters []string `yaml:"clusters"`
}

// Decision is the outcome of Allow.
type Decision struct {
	Allowed bool
	// Reason explains the decision in words safe to show the caller.
	Reason string
	// Rule is the index of the granting rule, or -1.
	Rule int
}

// Policy is an immutable, validated rule set. Safe for concurrent use.
type Policy struct {
	rules []Rule
}

// New validates rules and returns a Policy.
func New(rules []Rule) (*Policy, error) {
	var errs []error
	for i, r := range rules {
		if err := validate(r); err != nil {
			errs = append(errs, fmt.Errorf("policy: rule %d (%q): %w", i, r.ID, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return &Policy{rules: slices.Clone(rules)}, nil
}

func validate(r Rule) error {
	if r.ID == "" {
		return errors.New("id is empty")
	}
	if !strings.HasPrefix(r.ID, "spiffe://") {
		return errors.New("id must start with spiffe://")
	}
	if _, err := path.Match(r.ID, ""); err != nil {
		return fmt.Errorf("bad id pattern: %w", err)
	}
	if !strings.ContainsAny(r.ID, "*?[") {
		if _, err := spiffeid.FromString(r.ID); err != nil {
			return fmt.Errorf("bad SPIFFE ID: %w", err)
		}
	}
	if len(r.Profiles) == 0 {
		return errors.New("grants no profiles")
	}
	for _, c := range r.Clusters {
		if _, err := path.Match(c, ""); err != nil {
			return fmt.Errorf("bad cluster pattern %q: %w", c, err)
		}
		if c != "*" && strings.Count(c, "/") != 1 {
			return fmt.Errorf("cluster pattern %q must be \"namespace/name\" or \"*\"", c)
		}
	}
	return nil
}

// Allow reports whether caller may be issued profile for cluster ("" when
// the request is not cluster-scoped).
func (p *Policy) Allow(caller spiffeid.ID, profile, cluster string) Decision {
	id := caller.String()
	matchedID := false
	for i, r := range p.rules {
		if !match(r.ID, id) {
			continue
		}
		matchedID = true
		if !slices.ContainsFunc(r.Profiles, func(p string) bool { return p == "*" || p == profile }) {
			continue
		}
		if !clusterAllowed(r.Clusters, cluster) {
			continue
		}
		return Decision{Allowed: true, Reason: fmt.Sprintf("granted by rule %d", i), Rule: i}
	}
	switch {
	case !matchedID:
		return Decision{Reason: "no policy rule matches the caller", Rule: -1}
	case cluster != "":
		return Decision{Reason: fmt.Sprintf("no policy rule grants profile %q for cluster %q to the caller", profile, cluster), Rule: -1}
	default:
		return Decision{Reason: fmt.Sprintf("no policy rule grants profile %q to the caller", profile), Rule: -1}
	}
}

// Grant is one rule that may grant one profile.
type Grant struct {
	// Rule is the rule's index.
	Rule int
	// Profile is the profile granted.
	Profile string
}

// GrantsTo returns the rules that grant caller each of profiles, for some
// cluster, in rule order: the rules whose limits may govern the caller's
// requests. A rule that names "*" grants every profile listed.
func (p *Policy) GrantsTo(caller string, profiles []string) []Grant {
	return p.grants(profiles, func(r Rule) bool { return match(r.ID, caller) })
}

// GrantsFor returns the rules that grant any caller each of profiles for
// cluster, in rule order: the rules whose limits may govern requests for
// that cluster.
func (p *Policy) GrantsFor(cluster string, profiles []string) []Grant {
	return p.grants(profiles, func(r Rule) bool { return clusterAllowed(r.Clusters, cluster) })
}

func (p *Policy) grants(profiles []string, applies func(Rule) bool) []Grant {
	var out []Grant
	for i, r := range p.rules {
		if !applies(r) {
			continue
		}
		for _, prof := range profiles {
			if slices.ContainsFunc(r.Profiles, func(p string) bool { return p == "*" || p == prof }) {
				out = append(out, Grant{Rule: i, Profile: prof})
			}
		}
	}
	return out
}

// Rules returns a copy of the rule set, in order.
func (p *Policy) Rules() []Rule {
	out := make([]Rule, len(p.rules))
	for i, r := range p.rules {
		out[i] = Rule{ID: r.ID, Profiles: slices.Clone(r.Profiles), Clusters: slices.Clone(r.Clusters)}
	}
	return out
}

func clusterAllowed(patterns []string, cluster string) bool {
	if len(patterns) == 0 {
		return true
	}
	if cluster == "" {
		// A rule that restricts clusters only grants cluster-scoped requests.
		return false
	}
	return slices.ContainsFunc(patterns, func(p string) bool { return p == "*" || match(p, cluster) })
}

func match(pattern, s string) bool {
	ok, err := path.Match(pattern, s)
	return err == nil && ok
}
