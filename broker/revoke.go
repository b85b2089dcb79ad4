package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/credbroker/credbroker/broker/alerts"
	"github.com/credbroker/credbroker/broker/audit"
	"github.com/credbroker/credbroker/broker/state"
	"github.com/credbroker/credbroker/issuers"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// RevocationStore is what revocation needs from the state seam.
type RevocationStore interface {
	Revoke(ctx context.Context, r state.Revocation) (state.Revocation, error)
	LiftRevocation(ctx context.Context, id string) (state.Revocation, error)
	ListRevocations(ctx context.Context, f state.RevocationFilter) ([]state.Revocation, error)
}

// RevocationChecker says whether a request or credential is covered by a
// revocation at now (state.RevocationIndex, from memory).
type RevocationChecker interface {
	Covering(now time.Time, issuanceID, identity, cluster string) (state.Revocation, bool)
}

// RevocationAudit is what revocation records its decisions in and reads an
// issuance from.
type RevocationAudit interface {
	AuditLog
	ByIssuance(issuanceID string) ([]audit.Record, error)
	List(q audit.Query) ([]audit.Record, error)
}

// Revocations makes, lifts and lists revocations for the admin API: each
// change is durable in the state store (and so in the index every request
// is checked against, and dropped from every reuse cache, before the call
// returns) and then on record in the audit log as a revoked or lifted
// decision naming the admin principal and the reason.
type Revocations struct {
	store RevocationStore
	index RevocationChecker
	audit RevocationAudit
	now   func() time.Time
	newID func() (string, error)
	// upstream are the issuers, by name, whose credentials a revocation
	// also revokes where they are honoured.
	upstream map[string]issuers.UpstreamRevoker
	log      *slog.Logger
	// aws compiles the AWS deny document of a revocation (nil: no AWS
	// STS issuer).
	aws    AWSPolicies
	alerts alerts.Emitter
}

// RevocationOption configures Revocations.
type RevocationOption func(*Revocations)

// WithUpstreamRevokers makes each revocation also revoke, at the issuer
// named by the issued record, the unexpired credentials it covers (Vault
// leases and tokens), and log failures to log (nil: discarded).
func WithUpstreamRevokers(byIssuer map[string]issuers.UpstreamRevoker, log *slog.Logger) RevocationOption {
	return func(v *Revocations) { v.upstream, v.log = byIssuer, log }
}

// WithRevocationAlerts raises a revocation alert for every revocation made.
func WithRevocationAlerts(e alerts.Emitter) RevocationOption {
	return func(v *Revocations) { v.alerts = e }
}

// NewRevocations returns the revocation admin; clock nil means time.Now.
// index must be the one built over store, so that a change is enforced as
// soon as it is made.
func NewRevocations(store RevocationStore, index RevocationChecker, log RevocationAudit, clock func() time.Time, newID func() (string, error), opts ...RevocationOption) (*Revocations, error) {
	if store == nil || index == nil || log == nil || newID == nil {
		return nil, errors.New("broker: NewRevocations: missing dependency")
	}
	if clock == nil {
		clock = time.Now
	}
	v := &Revocations{store: store, index: index, audit: log, now: clock, newID: newID}
	for _, o := range opts {
		o(v)
	}
	if v.log == nil {
		v.log = slog.New(slog.DiscardHandler)
	}
	if v.alerts == nil {
		v.alerts = alerts.Nop{}
	}
	return v, nil
}

// maxRevocationReason bounds an admin's reason.
const maxRevocationReason = 512

// Revoke revokes target (an issuance id, a SPIFFE ID or a cluster, by kind)
// for admin, with reason, until the time given (zero: until lifted). An
// issuance must have been issued and not yet expired; its revocation ends
// with the credential. It is RevokeUpstream without the upstream outcome.
func (v *Revocations) Revoke(ctx context.Context, admin string, kind state.RevocationKind, target, reason string, until time.Time) (state.Revocation, error) {
	r, _, err := v.RevokeUpstream(ctx, admin, kind, target, reason, until)
	return r, err
}

// RevokeUpstream is Revoke, also returning what the revocation took back at
// the issuers that can revoke upstream, one entry per issuer with covered
// credentials, by issuer name.
func (v *Revocations) RevokeUpstream(ctx context.Context, admin string, kind state.RevocationKind, target, reason string, until time.Time) (state.Revocation, []UpstreamOutcome, error) {
	now := v.now()
	if len(reason) > maxRevocationReason {
		return state.Revocation{}, nil, errorf(credbrokerv1.ErrorReason_INVALID_REQUEST, "reason is longer than %d bytes", maxRevocationReason)
	}
	if !until.IsZero() && !until.After(now) {
		return state.Revocation{}, nil, errorf(credbrokerv1.ErrorReason_INVALID_REQUEST, "until (%s) is not in the future", until.UTC().Format(time.RFC3339))
	}
	if target == "" || len(target) > audit.MaxFieldLen {
		return state.Revocation{}, nil, errorf(credbrokerv1.ErrorReason_INVALID_REQUEST, "the %s to revoke is empty or longer than %d bytes", kind, audit.MaxFieldLen)
	}
	rec := audit.Record{Caller: clip(admin), Attestation: attestAdmin, Decision: audit.DecisionRevoked}
	r := state.Revocation{Kind: kind, Target: target, Reason: reason, Admin: admin, CreatedAt: now, Until: until}
	switch kind {
	case state.RevokeIssuance:
		issued, err := v.issued(target)
		if err != nil {
			return state.Revocation{}, nil, err
		}
		if !issued.ExpiresAt.After(now) {
			return state.Revocation{}, nil, errorf(credbrokerv1.ErrorReason_INVALID_REQUEST, "issuance %s expired at %s; there is nothing left to revoke", target, issued.ExpiresAt.UTC().Format(time.RFC3339))
		}
		r.CoveredUntil, r.UpstreamRef, r.Issuer, r.Profile = issued.ExpiresAt, issued.UpstreamRef, issued.Issuer, issued.Profile
		if issued.Reused {
			r.Origin = v.origin(issued)
		}
		rec.IssuanceID, rec.Profile, rec.Cluster, rec.Issuer, rec.UpstreamRef = target, issued.Profile, issued.Cluster, issued.Issuer, issued.UpstreamRef
	case state.RevokeIdentity:
		if _, err := spiffeid.FromString(target); err != nil {
			return state.Revocation{}, nil, errorf(credbrokerv1.ErrorReason_INVALID_REQUEST, "identity %q is not a SPIFFE ID", clip(target))
		}
	case state.RevokeCluster:
		if _, err := parseCluster(target); err != nil {
			return state.Revocation{}, nil, err
		}
		rec.Cluster = target
	default:
		return state.Revocation{}, nil, errorf(credbrokerv1.ErrorReason_INVALID_REQUEST, "unknown revocation kind %q", kind)
	}
	id, err := v.newID()
	if err != nil {
		return state.Revocation{}, nil, wrapf(credbrokerv1.ErrorReason_UNAVAILABLE, err, "cannot allocate a revocation id")
	}
	r.ID = id
	if rec.IssuanceID == "" {
		rec.IssuanceID = id
	}
	r, err = v.store.Revoke(ctx, r)
	if err != nil {
		return state.Revocation{}, nil, wrapf(credbrokerv1.ErrorReason_UNAVAILABLE, err, "revocation store unavailable; nothing was revoked")
	}
	rec.Reason = clip(fmt.Sprintf("revoked %s %s by %s: %s (revocation %s%s)", kind, target, admin, reasonOrNone(reason), id, untilText(until)))
	// The revocation is in force from here on, whatever else fails.
	v.alerts.Emit(ctx, alerts.Event{Rule: alerts.Revocation, Subject: "revocation " + id, Summary: rec.Reason,
		Fields: map[string]string{"kind": string(kind), "target": target, "admin": admin, "reason": reason, "until": untilField(until)}})
	_, auditErr := v.audit.Append(rec)
	// Upstream revocation follows the broker-side one and never undoes it:
	// its outcome is on record, and the admin may revoke again.
	out := v.revokeUpstream(ctx, r, rec)
	if auditErr != nil {
		// The revocation stands: refusing more than is on record is the safe
		// side; the admin is told it is not on record.
		return r, out, wrapf(credbrokerv1.ErrorReason_AUDIT_UNAVAILABLE, auditErr, "audit store unavailable; revocation %s is in effect but not on record", id)
	}
	return r, out, nil
}

// Bounds of the upstream revocation one Revoke call does, so that an admin
// call ends in bounded time: it reads at most maxUpstreamScan issued records
// of the target, newest first (the unexpired ones are the newest), and
// revokes at most maxUpstreamRevokes distinct credentials upstream. What is
// left over is on record (and in the log); revoking the target again retries
// the same newest ones, so credentials beyond the cap are revoked by
// issuance (issuances list names them).
const (
	maxUpstreamScan    = 1000
	maxUpstreamRevokes = 100
)

// UpstreamOutcome is what a revocation took back at one issuer.
type UpstreamOutcome struct {
	// Issuer is the issuer's configured name.
	Issuer string
	// Candidates is how many distinct unexpired credentials of the issuer
	// the revocation covers (as far as scanned); Revoked and Failed how
	// many were revoked and failed; Skipped how many were over the cap.
	Candidates, Revoked, Failed, Skipped int
	// FirstError is the first failure's issuers.Error code, safe to show.
	FirstError string
	// ScanLimited is true when the covered issuances were read only up to
	// maxUpstreamScan records: older unexpired ones are not counted.
	ScanLimited bool
}

// add sums o into t (the totals over issuers).
func (t *UpstreamOutcome) add(o UpstreamOutcome) {
	t.Candidates += o.Candidates
	t.Revoked += o.Revoked
	t.Failed += o.Failed
	t.Skipped += o.Skipped
	t.ScanLimited = t.ScanLimited || o.ScanLimited
	if t.FirstError == "" {
		t.FirstError = o.FirstError
	}
}

// revokeUpstream revokes at the issuers that support it the unexpired
// credentials r covers, records the outcome in the audit log and returns it
// per issuer, by issuer name.
func (v *Revocations) revokeUpstream(ctx context.Context, r state.Revocation, base audit.Record) []UpstreamOutcome {
	if len(v.upstream) == 0 {
		return nil
	}
	now := v.now()
	var recs []audit.Record
	var err error
	switch r.Kind {
	case state.RevokeIssuance:
		recs, err = v.audit.ByIssuance(r.Target)
	case state.RevokeIdentity:
		recs, err = v.audit.List(audit.Query{Caller: r.Target, Decision: audit.DecisionIssued, Limit: maxUpstreamScan})
	case state.RevokeCluster:
		recs, err = v.audit.List(audit.Query{Cluster: r.Target, Decision: audit.DecisionIssued, Limit: maxUpstreamScan})
	}
	if err != nil {
		total := UpstreamOutcome{FirstError: "audit store unavailable"}
		v.log.Error("upstream revocation: cannot read the covered issuances", slog.String("revocation", r.ID), slog.Any("err", err))
		v.recordUpstream(r, base, total)
		out := make([]UpstreamOutcome, 0, len(v.upstream))
		for name := range v.upstream {
			out = append(out, UpstreamOutcome{Issuer: name, FirstError: total.FirstError})
		}
		slices.SortFunc(out, func(a, b UpstreamOutcome) int { return strings.Compare(a.Issuer, b.Issuer) })
		return out
	}
	scanLimited := r.Kind != state.RevokeIssuance && len(recs) >= maxUpstreamScan
	type ref struct{ issuer, ref string }
	seen := map[ref]bool{}
	var todo []ref
	for _, rec := range recs {
		if rec.Decision != audit.DecisionIssued || rec.UpstreamRef == "" || !rec.ExpiresAt.After(now) {
			continue
		}
		if _, ok := v.upstream[rec.Issuer]; !ok {
			continue
		}
		k := ref{rec.Issuer, rec.UpstreamRef}
		if seen[k] {
			continue
		}
		seen[k] = true
		todo = append(todo, k)
	}
	if len(todo) == 0 {
		return nil
	}
	byIssuer := map[string]*UpstreamOutcome{}
	for i, k := range todo {
		o, ok := byIssuer[k.issuer]
		if !ok {
			o = &UpstreamOutcome{Issuer: k.issuer, ScanLimited: scanLimited}
			byIssuer[k.issuer] = o
		}
		o.Candidates++
		if i >= maxUpstreamRevokes {
			o.Skipped++
			continue
		}
		if err := v.upstream[k.issuer].Revoke(ctx, k.ref); err != nil {
			o.Failed++
			if o.FirstError == "" {
				o.FirstError = upstreamCode(err)
			}
			v.log.Warn("upstream revocation failed", slog.String("revocation", r.ID), slog.String("issuer", k.issuer),
				slog.String("upstream_ref", k.ref), slog.Any("err", err))
			continue
		}
		o.Revoked++
	}
	out := make([]UpstreamOutcome, 0, len(byIssuer))
	var total UpstreamOutcome
	for _, o := range byIssuer {
		out = append(out, *o)
		total.add(*o)
	}
	slices.SortFunc(out, func(a, b UpstreamOutcome) int { return strings.Compare(a.Issuer, b.Issuer) })
	v.recordUpstream(r, base, total)
	return out
}

// recordUpstream puts an upstream revocation's outcome (the totals over
// issuers) on record.
func (v *Revocations) recordUpstream(r state.Revocation, base audit.Record, out UpstreamOutcome) {
	rec := base
	text := fmt.Sprintf("upstream for revocation %s: %d of %d covered credentials revoked, %d failed, %d over the cap of %d",
		r.ID, out.Revoked, out.Candidates, out.Failed, out.Skipped, maxUpstreamRevokes)
	if out.FirstError != "" {
		text += " (first failure: " + out.FirstError + "; revoke again to retry)"
	}
	rec.Reason = clip(text)
	if _, err := v.audit.Append(rec); err != nil {
		v.log.Error("upstream revocation not on record", slog.String("revocation", r.ID), slog.String("outcome", text), slog.Any("err", err))
	}
}

// upstreamCode is an issuer failure as it may be shown: its kind and code,
// never the upstream's text.
func upstreamCode(err error) string {
	var ie *issuers.Error
	if errors.As(err, &ie) {
		return fmt.Sprintf("%v (%s)", ie.Kind, ie.Code)
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return "deadline exceeded"
	}
	return "upstream error"
}

// Lift deletes revocation id for admin, on record as a lifted decision.
func (v *Revocations) Lift(ctx context.Context, admin, id string) (state.Revocation, error) {
	if id == "" {
		return state.Revocation{}, errorf(credbrokerv1.ErrorReason_INVALID_REQUEST, "revocation id is required")
	}
	r, err := v.store.LiftRevocation(ctx, id)
	switch {
	case errors.Is(err, state.ErrNotFound):
		return state.Revocation{}, errorf(credbrokerv1.ErrorReason_NOT_FOUND, "no revocation %q (lifted, expired and purged, or never made)", clip(id))
	case err != nil:
		return state.Revocation{}, wrapf(credbrokerv1.ErrorReason_UNAVAILABLE, err, "revocation store unavailable; nothing was lifted")
	}
	rec := audit.Record{IssuanceID: id, Caller: clip(admin), Attestation: attestAdmin, Decision: audit.DecisionLifted,
		Reason: clip(fmt.Sprintf("lifted revocation %s of %s %s (made by %s: %s)", id, r.Kind, r.Target, r.Admin, reasonOrNone(r.Reason)))}
	switch r.Kind {
	case state.RevokeIssuance:
		rec.IssuanceID = r.Target
	case state.RevokeCluster:
		rec.Cluster = r.Target
	}
	if _, err := v.audit.Append(rec); err != nil {
		return r, wrapf(credbrokerv1.ErrorReason_AUDIT_UNAVAILABLE, err, "audit store unavailable; revocation %s is lifted but the lift is not on record", id)
	}
	return r, nil
}

// List returns up to limit revocations after the id after, by id.
func (v *Revocations) List(ctx context.Context, after string, limit int) ([]state.Revocation, error) {
	rs, err := v.store.ListRevocations(ctx, state.RevocationFilter{After: after, Limit: limit})
	if err != nil {
		return nil, wrapf(credbrokerv1.ErrorReason_UNAVAILABLE, err, "revocation store unavailable")
	}
	return rs, nil
}

// Covering returns the revocation covering a request or credential now.
func (v *Revocations) Covering(issuanceID, identity, cluster string) (state.Revocation, bool) {
	return v.index.Covering(v.now(), issuanceID, identity, cluster)
}

// issued returns the issued record of issuance id.
func (v *Revocations) issued(id string) (audit.Record, error) {
	recs, err := v.audit.ByIssuance(id)
	if err != nil {
		return audit.Record{}, wrapf(credbrokerv1.ErrorReason_AUDIT_UNAVAILABLE, err, "audit store unavailable")
	}
	for _, r := range recs {
		if r.Decision == audit.DecisionIssued {
			return r, nil
		}
	}
	return audit.Record{}, errorf(credbrokerv1.ErrorReason_NOT_FOUND, "no issued credential %q", clip(id))
}

// origin returns the id of the issuance a reused credential was minted
// for: the newest issued record of the same caller, not reused, with the
// same upstream reference, among the maxUpstreamScan issued up to it. Empty
// when there is none (the revocation then still refuses the credential at
// the broker; an upstream deny by issuance tag cannot name its session).
func (v *Revocations) origin(reused audit.Record) string {
	if reused.UpstreamRef == "" {
		return ""
	}
	recs, err := v.audit.List(audit.Query{Caller: reused.Caller, Decision: audit.DecisionIssued, Until: reused.Time.Add(time.Nanosecond), Limit: maxUpstreamScan})
	if err != nil {
		v.log.Warn("revocation: cannot find the issuance a reused credential was minted for", slog.String("issuance", reused.IssuanceID), slog.Any("err", err))
		return ""
	}
	for _, rec := range recs {
		if !rec.Reused && rec.UpstreamRef == reused.UpstreamRef && rec.IssuanceID != reused.IssuanceID {
			return rec.IssuanceID
		}
	}
	return ""
}

// Forgets returns what a reusing issuer must drop for revocation r: the
// credentials it covers by issuance (the one they were minted for, or, for
// an issuance revocation, the same upstream credential handed out under
// another issuance), subject or cluster.
func Forgets(r state.Revocation) func(issuers.Held) bool {
	return func(h issuers.Held) bool {
		if r.Covers(h.IssuanceID, h.Subject, h.Cluster) {
			return true
		}
		return r.Kind == state.RevokeIssuance && r.UpstreamRef != "" && r.UpstreamRef == h.UpstreamRef
	}
}

// revokedError is the refusal of a request a revocation covers: it says what
// is revoked, why, by whom, and the revocation id to quote.
func revokedError(r state.Revocation) *apiError {
	return errorf(credbrokerv1.ErrorReason_REVOKED, "%s", state.Describe(r)).with(MetaRevocationID, r.ID).with(MetaRevokedBy, clip(r.Admin))
}

// attestAdmin marks a record of an operator action through the admin API;
// its caller is the admin principal.
const attestAdmin = "admin"

// untilField is a revocation's end for an alert: RFC 3339, or "" for
// until lifted.
func untilField(until time.Time) string {
	if until.IsZero() {
		return ""
	}
	return until.UTC().Format(time.RFC3339)
}

func reasonOrNone(reason string) string {
	if reason == "" {
		return "no reason given"
	}
	return reason
}

func untilText(until time.Time) string {
	if until.IsZero() {
		return ""
	}
	return ", until " + until.UTC().Format(time.RFC3339)
}
