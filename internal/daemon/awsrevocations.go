package daemon

import (
	"context"
	"log/slog"
	"slices"
	"time"

	"github.com/credbroker/credbroker/broker"
	"github.com/credbroker/credbroker/broker/config"
	"github.com/credbroker/credbroker/broker/state"
	"github.com/credbroker/credbroker/issuers/awssts"
)

// awsRevocations derives from the revocation index the IAM deny documents
// that take back at AWS the STS sessions the revocations cover (see
// issuers/awssts.CompileDenyPolicy): one for the admin API (every
// revocation, or one).
//
// An entry lasts while its revocation is in effect and some session it
// covers may still be alive: an issuance's until its credential expires; an
// identity's or cluster's until its time bound (awssts.DenyBound) plus the
// longest max_ttl of the role's profiles — no session issued before the
// bound outlives that. An until ends the entry with the revocation.
type awsRevocations struct {
	index *state.RevocationIndex
	now   func() time.Time
	log   *slog.Logger
	// issuers are the aws_sts issuers' names; profiles maps each of their
	// profiles to its role ARN.
	issuers  map[string]bool
	profiles map[string]string
	roles    map[string]*awsRole
	// maxTTL is the longest max_ttl of every AWS profile.
	maxTTL time.Duration
}

// awsRole is one IAM role the AWS profiles assume.
type awsRole struct {
	// maxTTL is the longest max_ttl of the profiles on the role.
	maxTTL time.Duration
}

// newAWSRevocations returns the AWS deny documents of cfg's AWS profiles,
// or nil when there is no aws_sts issuer.
func newAWSRevocations(cfg *config.Config, index *state.RevocationIndex, now func() time.Time, log *slog.Logger) *awsRevocations {
	a := &awsRevocations{index: index, now: now, log: log, issuers: map[string]bool{}, profiles: map[string]string{}, roles: map[string]*awsRole{}}
	for name, ic := range cfg.Issuers {
		if ic.Type == config.IssuerAWSSTS {
			a.issuers[name] = true
		}
	}
	if len(a.issuers) == 0 {
		return nil
	}
	for name, p := range cfg.Profiles {
		if !a.issuers[p.Issuer] || p.AWS == nil {
			continue
		}
		arn := p.AWS.RoleARN
		a.profiles[name] = arn
		r, ok := a.roles[arn]
		if !ok {
			r = &awsRole{}
			a.roles[arn] = r
		}
		r.maxTTL = max(r.maxTTL, p.MaxTTL)
		a.maxTTL = max(a.maxTTL, p.MaxTTL)
	}
	return a
}

// denies returns the entries of rs in effect at now for role (empty: any
// role), with when each ends.
func (a *awsRevocations) denies(rs []state.Revocation, now time.Time, role string) []awssts.Deny {
	maxTTL := a.maxTTL
	if r, ok := a.roles[role]; ok {
		maxTTL = r.maxTTL
	}
	var out []awssts.Deny
	for _, r := range rs {
		if !r.Active(now) {
			continue
		}
		d := awssts.Deny{Ref: r.ID, Target: r.Target, Made: r.CreatedAt}
		var ends time.Time
		switch r.Kind {
		case state.RevokeIssuance:
			// Revocations stored before the issuer or profile was recorded
			// are denied on every role: an id no session carries matches
			// nothing.
			if r.Issuer != "" && !a.issuers[r.Issuer] {
				continue
			}
			if arn, ok := a.profiles[r.Profile]; role != "" && r.Profile != "" && (!ok || arn != role) {
				continue
			}
			d.Kind = awssts.DenyIssuance
			if r.Origin != "" {
				d.Target = r.Origin // the session carries the tag of the issuance it was minted for
			}
			ends = r.CoveredUntil
			if ends.IsZero() {
				ends = r.CreatedAt.Add(maxTTL)
			}
		case state.RevokeIdentity, state.RevokeCluster:
			d.Kind = awssts.DenyIdentity
			if r.Kind == state.RevokeCluster {
				d.Kind = awssts.DenyCluster
			}
			d.IssuedBefore = awssts.DenyBound(r.CreatedAt, r.Until)
			ends = d.IssuedBefore.Add(maxTTL)
		default:
			continue
		}
		if !r.Until.IsZero() && r.Until.Before(ends) {
			ends = r.Until
		}
		if !now.Before(ends) {
			continue
		}
		if err := d.Check(); err != nil {
			// Only a target no STS session can carry fails the check:
			// nothing upstream is left uncovered by leaving it out.
			a.log.Warn("revocation has no AWS deny entry", slog.String("revocation", r.ID), slog.Any("err", err))
			continue
		}
		out = append(out, d)
	}
	return out
}

// AWSPolicy implements broker.AWSPolicies.
func (a *awsRevocations) AWSPolicy(_ context.Context, id string) (broker.AWSPolicy, error) {
	all := a.index.All()
	if id != "" {
		i := slices.IndexFunc(all, func(r state.Revocation) bool { return r.ID == id })
		if i < 0 {
			return broker.AWSPolicy{}, broker.ErrNoRevocation
		}
		all = all[i : i+1]
	}
	p, err := awssts.CompileDenyPolicy(a.denies(all, a.now(), ""), awssts.MaxRolePolicyChars)
	if err != nil {
		return broker.AWSPolicy{}, err
	}
	out := broker.AWSPolicy{Document: p.Document, Entries: len(p.Included), Chars: p.Chars}
	for _, d := range p.Omitted {
		out.Omitted = append(out.Omitted, d.Ref)
	}
	return out, nil
}
