package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/credbroker/credbroker/broker"
	"github.com/credbroker/credbroker/broker/audit"
	"github.com/credbroker/credbroker/broker/config"
	"github.com/credbroker/credbroker/broker/state"
	"github.com/credbroker/credbroker/issuers/awssts"
)

// awsRevocations derives from the revocation index the IAM deny documents
// that take back at AWS the STS sessions the revocations cover (see
// issuers/awssts.CompileDenyPolicy): one for the admin API (every
// revocation, or one), and one per role for the roles whose profiles say
// aws.revocation.apply, which an applier keeps on the role.
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
	// appliers keep the applying roles' policies, by role ARN (one
	// applier per aws_sts issuer: its region, IAM endpoint and the
	// broker's credentials); empty when no role applies.
	appliers map[string]*awssts.RevocationApplier
	// tune, when set, adjusts each applier's configuration (tests: a short
	// debounce and backoff).
	tune func(*awssts.ApplierConfig)
}

// awsRole is one IAM role the AWS profiles assume.
type awsRole struct {
	// maxTTL is the longest max_ttl of the profiles on the role.
	maxTTL time.Duration
	// apply is set when a profile on the role has aws.revocation.apply;
	// maxChars is then the smallest max_chars among them.
	apply    bool
	maxChars int
	// issuer is the aws_sts issuer whose region and IAM endpoint apply it
	// (the first by name among the applying profiles' issuers).
	issuer string
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
		if rv := p.AWS.Revocation; rv != nil && rv.Apply {
			if !r.apply || rv.MaxChars < r.maxChars {
				r.maxChars = rv.MaxChars
			}
			if !r.apply || p.Issuer < r.issuer {
				r.issuer = p.Issuer
			}
			r.apply = true
		}
	}
	return a
}

// applyingRoles returns the ARNs of the roles the broker keeps a policy on,
// sorted.
func (a *awsRevocations) applyingRoles() []string {
	var out []string
	for arn, r := range a.roles {
		if r.apply {
			out = append(out, arn)
		}
	}
	slices.Sort(out)
	return out
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
	// The roles' state goes with every answer: for one revocation, it says
	// where the broker is applying it (the write follows the change).
	if out.Document != "" || id == "" {
		for _, arn := range a.applyingRoles() {
			ap, ok := a.appliers[arn]
			if !ok {
				continue
			}
			s := ap.Status(arn)
			out.Roles = append(out.Roles, broker.AWSRoleStatus{RoleARN: arn, PolicyName: s.PolicyName, InSync: s.InSync,
				Entries: s.Entries, Omitted: s.Omitted, Chars: s.Chars, AppliedAt: s.AppliedAt, Error: s.Error})
		}
	}
	return out, nil
}

// startAppliers builds one revocation applier per aws_sts issuer that
// applies a role, signing with the broker's own AWS credentials (the SDK's
// default chain, as its AssumeRole calls), and reports every outcome to
// report.
func (a *awsRevocations) startAppliers(ctx context.Context, cfg *config.Config, report func(awssts.ApplyReport)) ([]*awssts.RevocationApplier, error) {
	byIssuer := map[string]map[string]int{}
	for arn, r := range a.roles {
		if !r.apply {
			continue
		}
		if byIssuer[r.issuer] == nil {
			byIssuer[r.issuer] = map[string]int{}
		}
		byIssuer[r.issuer][arn] = r.maxChars
	}
	a.appliers = map[string]*awssts.RevocationApplier{}
	var out []*awssts.RevocationApplier
	for _, name := range slices.Sorted(maps.Keys(byIssuer)) {
		ic := cfg.Issuers[name].AWSSTS
		c := awssts.ApplierConfig{Region: ic.Region, Endpoint: ic.IAMEndpoint, Roles: byIssuer[name], Report: report}
		if a.tune != nil {
			a.tune(&c)
		}
		ap, err := awssts.NewRevocationApplier(ctx, c)
		if err != nil {
			return nil, fmt.Errorf("issuers.%s: %w", name, err)
		}
		for arn := range byIssuer[name] {
			a.appliers[arn] = ap
		}
		out = append(out, ap)
	}
	return out, nil
}

// sync hands every applying role the entries in effect now (a
// state.RevocationIndex hook and a housekeeping step: a change, or an
// entry whose sessions have all expired, changes the document; the
// applier writes only when it does).
func (a *awsRevocations) sync() { a.syncRoles(false) }

// syncRoles is sync; with verify, each role's policy is read again first,
// so that one changed or deleted by someone else is put back.
func (a *awsRevocations) syncRoles(verify bool) {
	if len(a.appliers) == 0 {
		return
	}
	all, now := a.index.All(), a.now()
	for arn, ap := range a.appliers {
		if verify {
			ap.Verify(arn, a.denies(all, now, arn))
		} else {
			ap.Set(arn, a.denies(all, now, arn))
		}
	}
}

// purge is the housekeeping step that takes off the roles the entries whose
// sessions have all expired (a revocation purged from the store reaches
// sync through the index's hook too), and puts back a policy someone else
// changed: one GetRolePolicy per role and interval.
func (a *awsRevocations) purge() purge {
	return purge{"ended AWS deny entries", func(time.Time) (int, error) { a.syncRoles(true); return 0, nil }}
}

// awsApplyReporter puts each applier outcome in the metrics, the log and
// the audit trail: a write or a deletion, and the first failure of a run
// (not every retry), each as one record naming the role, the policy, its
// size and what it leaves out; never a credential.
type awsApplyReporter struct {
	audit   broker.AuditLog
	self    string
	newID   func() (string, error)
	log     *slog.Logger
	writes  *prometheus.CounterVec
	omitted *prometheus.GaugeVec
	inSync  *prometheus.GaugeVec
	chars   *prometheus.GaugeVec
}

func newAWSApplyReporter(reg prometheus.Registerer, auditLog broker.AuditLog, self string, newID func() (string, error), log *slog.Logger) *awsApplyReporter {
	r := &awsApplyReporter{audit: auditLog, self: self, newID: newID, log: log,
		writes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "credbroker_aws_revocation_policy_writes_total",
			Help: "Attempts to bring a role's revocation deny policy up to date, by role, action (put, delete, unchanged) and result (ok, error).",
		}, []string{"role", "action", "result"}),
		omitted: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "credbroker_aws_revocation_policy_omitted",
			Help: "Revocations in effect left out of a role's deny policy for IAM's size limit: NOT enforced at AWS.",
		}, []string{"role"}),
		inSync: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "credbroker_aws_revocation_policy_in_sync",
			Help: "1 when a role's deny policy is what the revocations in effect want, 0 while it is not (IAM failing).",
		}, []string{"role"}),
		chars: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "credbroker_aws_revocation_policy_chars",
			Help: "Size of a role's deny policy as IAM counts it (IAM allows 10240 for all of a role's inline policies).",
		}, []string{"role"}),
	}
	reg.MustRegister(r.writes, r.omitted, r.inSync, r.chars)
	return r
}

// report implements awssts.ApplierConfig.Report.
func (r *awsApplyReporter) report(rep awssts.ApplyReport) {
	result := "ok"
	if rep.Err != nil {
		result = "error"
	}
	r.writes.WithLabelValues(rep.RoleARN, rep.Action, result).Inc()
	attrs := []any{slog.String("role", rep.RoleARN), slog.String("policy", rep.PolicyName), slog.String("action", rep.Action),
		slog.Int("entries", rep.Entries), slog.Int("chars", rep.Chars), slog.Int("omitted", len(rep.Omitted))}
	if rep.Err != nil {
		r.inSync.WithLabelValues(rep.RoleARN).Set(0)
		r.log.Error("aws revocation policy not applied; retrying (the revocations are in force at the broker)",
			append(attrs, slog.String("code", rep.Code), slog.Int("failures", rep.Failures), slog.Any("err", rep.Err))...)
		if rep.Failures == 1 {
			r.record(audit.DecisionFailed, rep, fmt.Sprintf("aws_revocation_failed: %s of %s on role %s failed with IAM error %s (%d revocations, %d characters); retrying with backoff; the revocations are in force at the broker",
				rep.Action, rep.PolicyName, rep.RoleARN, rep.Code, rep.Entries, rep.Chars))
		}
		return
	}
	r.inSync.WithLabelValues(rep.RoleARN).Set(1)
	r.omitted.WithLabelValues(rep.RoleARN).Set(float64(len(rep.Omitted)))
	r.chars.WithLabelValues(rep.RoleARN).Set(float64(rep.Chars))
	if len(rep.Omitted) > 0 {
		r.log.Error("aws revocation policy is full: revocations NOT enforced at AWS (the oldest are kept)",
			append(attrs, slog.String("omitted_revocations", strings.Join(rep.Omitted, ",")))...)
	}
	if rep.Action == awssts.ApplyUnchanged && rep.Failures == 1 {
		return // found up to date at the first try: nothing happened
	}
	text := fmt.Sprintf("aws_revocation_applied: %s %s on role %s: %d revocations, %d characters", rep.Action, rep.PolicyName, rep.RoleARN, rep.Entries, rep.Chars)
	if len(rep.Omitted) > 0 {
		text += fmt.Sprintf("; %d NOT enforced at AWS for IAM's size limit: %s", len(rep.Omitted), strings.Join(rep.Omitted, ","))
	}
	// On record first: whoever reads "applied" in the log finds it in the
	// audit trail too.
	r.record(audit.DecisionRevoked, rep, text)
	r.log.Info("aws revocation policy applied", attrs...)
}

// record appends one applier outcome to the audit trail.
func (r *awsApplyReporter) record(d audit.Decision, rep awssts.ApplyReport, text string) {
	id, err := r.newID()
	if err != nil {
		r.log.Error("aws revocation policy outcome not on record", slog.String("outcome", text), slog.Any("err", err))
		return
	}
	rec := audit.Record{IssuanceID: id, Caller: r.self, Attestation: "broker", Decision: d, UpstreamRef: rep.RoleARN, Reason: clipReason(text)}
	if _, err := r.audit.Append(rec); err != nil {
		r.log.Error("aws revocation policy outcome not on record", slog.String("outcome", text), slog.Any("err", err))
	}
}

// clipReason keeps an audit reason within the record's field bound.
func clipReason(s string) string {
	if len(s) <= audit.MaxFieldLen {
		return s
	}
	cut := audit.MaxFieldLen - len("…")
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}
