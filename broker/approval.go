package broker

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/credbroker/credbroker/broker/alerts"
	"github.com/credbroker/credbroker/broker/audit"
	"github.com/credbroker/credbroker/broker/config"
	"github.com/credbroker/credbroker/broker/state"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// ApprovalStore is what two-person approval needs from the state seam.
type ApprovalStore interface {
	RequestApproval(ctx context.Context, a state.Approval, bound state.ApprovalBound, now time.Time) (state.Approval, bool, error)
	GetApproval(ctx context.Context, id string) (state.Approval, error)
	FindApproval(ctx context.Context, requester, digest string, now time.Time) (state.Approval, bool, error)
	ListApprovals(ctx context.Context, f state.ApprovalFilter) ([]state.Approval, error)
	Approve(ctx context.Context, id, admin string, now time.Time) (state.Approval, bool, error)
	DenyApproval(ctx context.Context, id, admin, reason string, now time.Time) (state.Approval, error)
	ReleaseApproval(ctx context.Context, id, issuanceID string) (state.Approval, error)
	PurgeApprovals(ctx context.Context, now time.Time) ([]state.Approval, error)
}

// ApprovalRule is a profile's two-person approval (config profiles.P.approval):
// Approvers distinct admins other than the requester within Window. The zero
// rule needs no approval.
type ApprovalRule struct {
	Approvers int
	Window    time.Duration
}

// Required reports whether r asks for approval.
func (r ApprovalRule) Required() bool { return r.Approvers > 0 }

// ApprovalNeeded says whether a request for profile needs two-person
// approval and under which rule; false for an unknown profile. It issues
// and changes nothing (for `policy explain`).
func (s *Service) ApprovalNeeded(profile string) (ApprovalRule, bool) {
	p, ok := s.profiles[profile]
	return p.Approval, ok && p.Approval.Required()
}

// MaxOpenApprovals bounds the approvals one identity may have open (pending
// or granted, unexpired) at once, so that a caller cannot fill the store by
// varying its requests; an identical request costs nothing.
const MaxOpenApprovals = 8

// DefaultOpenApprovalsTotal bounds the approvals the broker holds over all
// identities (config limits.open_approvals) when none is configured: many
// identities, each within MaxOpenApprovals, must not grow the store
// without bound either.
const DefaultOpenApprovalsTotal = config.DefaultOpenApprovals

// ApprovalEvent is one step of an approval, for the log and the alerts.
type ApprovalEvent struct {
	// Step is "requested", "approved", "granted", "denied", "consumed" or
	// "expired".
	Step string
	// Approval is the approval after the step.
	Approval state.Approval
	// Admin is the admin principal who approved or denied.
	Admin string
}

// approvalAlerts are the alert rules of the steps approvers and operators
// are told of through the alert channels (broker/alerts).
var approvalAlerts = map[string]string{
	"requested": alerts.ApprovalRequested,
	"granted":   alerts.ApprovalGranted,
	"denied":    alerts.ApprovalDenied,
}

// Approvals runs two-person approval: it opens an approval for a request
// that needs one, tells the requester who can approve and how, records every
// step in the audit log naming the principals, and serves the admin API's
// approvals. Consumption happens in the issuance's own ledger transaction
// (Service), so an approval is used only by a recorded issuance.
type Approvals struct {
	store  ApprovalStore
	audit  ApprovalAudit
	now    func() time.Time
	newID  func() (string, error)
	alerts alerts.Emitter
	log    *slog.Logger
	// approvers says in words who may approve, for messages.
	approvers string
	// bound is what RequestApproval may add to; full says, at a bounded
	// rate, that the total refused requests.
	bound state.ApprovalBound
	full  boundLog
}

// boundLog logs that the broker's total bound of open approvals refused
// requests at most once a minute, with how many it refused meanwhile: an
// operator must look (approvals left undecided, or requests from many
// identities), but a flood of refusals must not become a flood of log.
type boundLog struct {
	mu      sync.Mutex
	last    time.Time
	refused int
}

// refusal counts one refusal at now and reports how many to log (those
// since the last line), or 0 within a minute of the last line.
func (b *boundLog) refusal(now time.Time) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.refused++
	if !b.last.IsZero() && now.Sub(b.last) < time.Minute && !now.Before(b.last) {
		return 0
	}
	n := b.refused
	b.last, b.refused = now, 0
	return n
}

// ApprovalAudit is what approvals record their steps in, and read back to
// make sure an approval's request is on record before anyone acts on it.
type ApprovalAudit interface {
	AuditLog
	ByIssuance(issuanceID string) ([]audit.Record, error)
}

// ApprovalsDeps are what Approvals are built from.
type ApprovalsDeps struct {
	Store ApprovalStore
	Audit ApprovalAudit
	// Clock nil means time.Now.
	Clock func() time.Time
	NewID func() (string, error)
	// Alerts tells approvers of requested, granted and denied approvals
	// (alert rules approval_requested, approval_granted, approval_denied:
	// log event, counter, webhooks). Nil: the log only.
	Alerts alerts.Emitter
	Log    *slog.Logger
	// Approvers describes who may approve ("admin SPIFFE IDs (...) or uids
	// ... on the admin socket"), shown to requesters.
	Approvers string
	// MaxOpenTotal bounds the approvals the store holds over all identities
	// (state.ApprovalBound.Total; config limits.open_approvals); 0:
	// DefaultOpenApprovalsTotal.
	MaxOpenTotal int
}

// NewApprovals returns the approval workflow.
func NewApprovals(d ApprovalsDeps) (*Approvals, error) {
	if d.Store == nil || d.Audit == nil || d.NewID == nil {
		return nil, errors.New("broker: NewApprovals: missing dependency")
	}
	if d.Clock == nil {
		d.Clock = time.Now
	}
	if d.Log == nil {
		d.Log = slog.New(slog.DiscardHandler)
	}
	if d.Approvers == "" {
		d.Approvers = "an admin"
	}
	if d.Alerts == nil {
		d.Alerts = alerts.Nop{}
	}
	if d.MaxOpenTotal == 0 {
		d.MaxOpenTotal = DefaultOpenApprovalsTotal
	}
	bound := state.ApprovalBound{PerRequester: MaxOpenApprovals, Total: d.MaxOpenTotal}
	if err := bound.Validate(); err != nil {
		return nil, fmt.Errorf("broker: NewApprovals: %w", err)
	}
	return &Approvals{store: d.Store, audit: d.Audit, now: d.Clock, newID: d.NewID, alerts: d.Alerts, log: d.Log, approvers: d.Approvers,
		bound: bound}, nil
}

// RequestDigest is the hex SHA-256 of everything that shapes a credential:
// the caller, profile, cluster, audience and TTL (after defaults). An
// approval is bound to it, so that approving one request approves nothing
// else. Fields are length-prefixed, so no two requests share an encoding.
func RequestDigest(caller, profile, cluster, audience string, ttl time.Duration) string {
	h := sha256.New()
	h.Write([]byte("credbroker approval v1\x00"))
	for _, f := range []string{caller, profile, cluster, audience, strconv.FormatInt(int64(ttl), 10)} {
		h.Write(binary.BigEndian.AppendUint32(nil, uint32(len(f))))
		h.Write([]byte(f))
	}
	return hex.EncodeToString(h.Sum(nil))
}

// Metadata keys of APPROVAL_REQUIRED and APPROVAL_DENIED.
const (
	MetaApprovalID      = "approval_id"
	MetaApproversNeeded = "approvers_needed"
	MetaApprovals       = "approvals"
	MetaExpiresAt       = "expires_at"
	MetaDeniedBy        = "denied_by"
)

// require finds or opens the approval of the request rec describes (rule
// from its profile) and returns how to consume it when it is granted; else
// the refusal to send (APPROVAL_REQUIRED, APPROVAL_DENIED, or why none could
// be opened).
func (v *Approvals) require(ctx context.Context, rule ApprovalRule, rec *audit.Record, audience string) (state.ApprovalUse, error) {
	now := v.now()
	digest := RequestDigest(rec.Caller, rec.Profile, rec.Cluster, audience, rec.TTL)
	id, err := v.newID()
	if err != nil {
		return state.ApprovalUse{}, wrapf(credbrokerv1.ErrorReason_UNAVAILABLE, err, "cannot allocate an approval id")
	}
	a, created, err := v.store.RequestApproval(ctx, state.Approval{
		ID: id, Digest: digest, Requester: rec.Caller, Profile: rec.Profile, Cluster: rec.Cluster, Audience: audience,
		TTL: rec.TTL, Needed: rule.Approvers, CreatedAt: now, ExpiresAt: now.Add(rule.Window), Status: state.ApprovalPending,
	}, v.bound, now)
	var lim *state.ApprovalLimitError
	switch {
	case errors.As(err, &lim) && lim.Total:
		if n := v.full.refusal(now); n > 0 {
			v.log.LogAttrs(ctx, slog.LevelWarn, "approval requests refused: the broker holds its bound of open approvals", slog.Int("bound", lim.Max),
				slog.Int("refused", n), slog.String("hint", "decide or deny waiting approvals (credbrokerctl approvals list), or raise limits.open_approvals"))
		}
		return state.ApprovalUse{}, exhausted(credbrokerv1.ErrorReason_QUOTA_EXHAUSTED, "open approvals",
			fmt.Sprintf("profile %q needs approval, and the broker already holds %d approvals waiting (limits.open_approvals); some must be decided or expire first", rec.Profile, lim.Max), rule.Window)
	case errors.As(err, &lim):
		return state.ApprovalUse{}, exhausted(credbrokerv1.ErrorReason_QUOTA_EXHAUSTED, "pending approvals",
			fmt.Sprintf("profile %q needs approval, and %d approvals of yours are already waiting; one must be decided or expire first", rec.Profile, lim.Max), rule.Window)
	case err != nil:
		return state.ApprovalUse{}, wrapf(credbrokerv1.ErrorReason_UNAVAILABLE, err, "approval store unavailable; nothing was issued")
	}
	if created {
		r := approvalRecord(a, audit.DecisionApprovalRequested, rec.Caller, rec.Attestation,
			fmt.Sprintf("approval %s requested: needs %d distinct admins other than the requester by %s", a.ID, a.Needed, a.ExpiresAt.UTC().Format(time.RFC3339)))
		if _, err := v.audit.Append(r); err != nil {
			// The approval is open but its request is not on record: the
			// first admin to act on it records it first (onRecord).
			return state.ApprovalUse{}, wrapf(credbrokerv1.ErrorReason_AUDIT_UNAVAILABLE, err, "audit store unavailable; nothing was issued")
		}
		v.event(ctx, ApprovalEvent{Step: "requested", Approval: a})
	}
	switch a.Status {
	case state.ApprovalGranted:
		return state.ApprovalUse{ID: a.ID, Digest: digest, Requester: rec.Caller, IssuanceID: rec.IssuanceID}, nil
	case state.ApprovalDenied:
		return state.ApprovalUse{}, deniedError(a)
	}
	return state.ApprovalUse{}, v.requiredError(a)
}

// approvalDecision is how a request refused for its approval is recorded:
// pending while it waits (APPROVAL_REQUIRED), throttled over the bound of
// open approvals, denied otherwise (APPROVAL_DENIED, a store down), all at
// the bounded rate of refusal records.
func approvalDecision(err error) audit.Decision {
	var ae *apiError
	if errors.As(err, &ae) {
		switch ae.reason {
		case credbrokerv1.ErrorReason_APPROVAL_REQUIRED:
			return audit.DecisionPending
		case credbrokerv1.ErrorReason_QUOTA_EXHAUSTED:
			return audit.DecisionThrottled
		}
	}
	return audit.DecisionDenied
}

// requiredError is the APPROVAL_REQUIRED refusal of a pending approval: who
// can approve, how, and by when.
func (v *Approvals) requiredError(a state.Approval) error {
	msg := fmt.Sprintf("profile %q needs the approval of %d distinct admins other than the requester; approval %s has %d of %d and expires at %s. "+
		"Ask %s to run: credbrokerctl approvals approve %s",
		a.Profile, a.Needed, a.ID, len(a.Votes), a.Needed, a.ExpiresAt.UTC().Format(time.RFC3339), v.approvers, a.ID)
	if len(a.Votes) > 0 {
		msg += " (approved so far by " + strings.Join(a.Admins(), ", ") + ")"
	}
	msg += "; then repeat this exact request"
	return errorf(credbrokerv1.ErrorReason_APPROVAL_REQUIRED, "%s", msg).
		with(MetaApprovalID, a.ID).
		with(MetaApproversNeeded, strconv.Itoa(a.Needed)).
		with(MetaApprovals, strconv.Itoa(len(a.Votes))).
		with(MetaExpiresAt, a.ExpiresAt.UTC().Format(time.RFC3339))
}

// deniedError is the refusal of a request whose approval an admin denied.
func deniedError(a state.Approval) error {
	return errorf(credbrokerv1.ErrorReason_APPROVAL_DENIED, "approval %s for profile %q was denied by %s: %s; the identical request is refused until %s",
		a.ID, a.Profile, clip(a.DeniedBy), reasonOrNone(a.DenyReason), a.ExpiresAt.UTC().Format(time.RFC3339)).
		with(MetaApprovalID, a.ID).
		with(MetaDeniedBy, clip(a.DeniedBy)).
		with(MetaExpiresAt, a.ExpiresAt.UTC().Format(time.RFC3339))
}

// consumeError is the refusal of a request whose granted approval could not
// be consumed with its record (another request used it first, or it expired
// meanwhile).
func consumeError(err error, use *state.ApprovalUse) error {
	if use == nil {
		return nil
	}
	id := use.ID
	switch {
	case errors.Is(err, state.ErrApprovalClosed), errors.Is(err, state.ErrApprovalExpired),
		errors.Is(err, state.ErrApprovalNotGranted), errors.Is(err, state.ErrNotFound), errors.Is(err, state.ErrApprovalMismatch):
		return wrapf(credbrokerv1.ErrorReason_APPROVAL_REQUIRED, err, "approval %s can no longer be used (used by another request, or expired); repeat the request to ask for a new approval", id).
			with(MetaApprovalID, id)
	}
	return nil
}

// approvalNote is the reason of the record that consumes a: which approval,
// approved by whom.
func approvalNote(a state.ApprovalUse, admins []string) string {
	return clip(fmt.Sprintf("approval %s consumed (approved by %s)", a.ID, strings.Join(admins, ", ")))
}

// release gives back an approval consumed by an issuance whose credential
// was not handed out.
func (v *Approvals) release(ctx context.Context, u state.ApprovalUse) {
	if _, err := v.store.ReleaseApproval(context.WithoutCancel(ctx), u.ID, u.IssuanceID); err != nil {
		// It stays used: the requester asks again; nothing was handed out.
		v.log.LogAttrs(ctx, slog.LevelWarn, "approval not released after a failed issuance", slog.String("approval_id", u.ID),
			slog.String("issuance_id", u.IssuanceID), slog.String("error", err.Error()))
	}
}

// consumed tells approvers that a was used.
func (v *Approvals) consumed(ctx context.Context, u state.ApprovalUse) {
	a, err := v.store.GetApproval(ctx, u.ID)
	if err != nil {
		return
	}
	v.event(ctx, ApprovalEvent{Step: "consumed", Approval: a})
}

// admins returns the approval's voters, for the consuming record.
func (v *Approvals) admins(ctx context.Context, id string) []string {
	a, err := v.store.GetApproval(ctx, id)
	if err != nil {
		return nil
	}
	return a.Admins()
}

func (v *Approvals) event(ctx context.Context, e ApprovalEvent) {
	v.log.LogAttrs(ctx, slog.LevelInfo, "approval "+e.Step, slog.String("approval_id", e.Approval.ID), slog.String("requester", e.Approval.Requester),
		slog.String("profile", e.Approval.Profile), slog.String("cluster", e.Approval.Cluster), slog.String("admin", e.Admin),
		slog.Int("approvals", len(e.Approval.Votes)), slog.Int("approvers_needed", e.Approval.Needed))
	rule, ok := approvalAlerts[e.Step]
	if !ok {
		return
	}
	a := e.Approval
	fields := map[string]string{
		"approval_id": a.ID, "requester": a.Requester, "profile": a.Profile, "cluster": a.Cluster,
		"approvers_needed": strconv.Itoa(a.Needed), "approvals": strconv.Itoa(len(a.Votes)),
		"expires_at": a.ExpiresAt.UTC().Format(time.RFC3339),
	}
	var summary string
	switch e.Step {
	case "requested":
		summary = fmt.Sprintf("%s asks for profile %q%s; %d admins other than the requester must approve: credbrokerctl approvals approve %s",
			a.Requester, a.Profile, clusterText(a.Cluster), a.Needed, a.ID)
	case "granted":
		summary = fmt.Sprintf("approval %s of %s for profile %q granted by %s", a.ID, a.Requester, a.Profile, strings.Join(a.Admins(), ", "))
		fields["approved_by"] = strings.Join(a.Admins(), ", ")
	case "denied":
		summary = fmt.Sprintf("approval %s of %s for profile %q denied by %s: %s", a.ID, a.Requester, a.Profile, e.Admin, reasonOrNone(a.DenyReason))
		fields["denied_by"], fields["reason"] = e.Admin, a.DenyReason
	}
	v.alerts.Emit(ctx, alerts.Event{Rule: rule, Subject: "approval " + a.ID, Summary: summary, Fields: fields})
}

func clusterText(cluster string) string {
	if cluster == "" {
		return ""
	}
	return " for cluster " + cluster
}

// approvalRecord is the audit record of one approval step; caller is who
// took it.
func approvalRecord(a state.Approval, d audit.Decision, caller, attestation, reason string) audit.Record {
	return audit.Record{IssuanceID: a.ID, Caller: clip(caller), Attestation: attestation, Profile: clip(a.Profile), Cluster: clip(a.Cluster),
		Decision: d, Reason: clip(reason), TTL: a.TTL, ExpiresAt: a.ExpiresAt}
}

// onRecord makes sure approval id's request is on record before an admin
// acts on it: the approval_requested record is written when the approval is
// opened, but if the audit store failed just then, it is written now
// (saying so), so that the chain never shows an approval or denial of a
// request it does not show.
func (v *Approvals) onRecord(ctx context.Context, id string) error {
	a, err := v.Get(ctx, id)
	if err != nil {
		return err
	}
	recs, err := v.audit.ByIssuance(a.ID)
	if err != nil {
		return wrapf(credbrokerv1.ErrorReason_AUDIT_UNAVAILABLE, err, "audit store unavailable; nothing changed")
	}
	for _, r := range recs {
		if r.Decision == audit.DecisionApprovalRequested {
			return nil
		}
	}
	r := approvalRecord(a, audit.DecisionApprovalRequested, a.Requester, "",
		fmt.Sprintf("approval %s requested at %s (recorded late: the audit store was unavailable then): needs %d distinct admins other than the requester by %s",
			a.ID, a.CreatedAt.UTC().Format(time.RFC3339), a.Needed, a.ExpiresAt.UTC().Format(time.RFC3339)))
	if _, err := v.audit.Append(r); err != nil {
		return wrapf(credbrokerv1.ErrorReason_AUDIT_UNAVAILABLE, err, "audit store unavailable; nothing changed")
	}
	return nil
}

// Approve records admin's approval of approval id.
func (v *Approvals) Approve(ctx context.Context, admin, id string) (state.Approval, bool, error) {
	if id == "" || len(id) > audit.MaxFieldLen {
		return state.Approval{}, false, invalid("approval_id", "approval_id is required")
	}
	if err := v.onRecord(ctx, id); err != nil {
		return state.Approval{}, false, err
	}
	a, counted, err := v.store.Approve(ctx, id, admin, v.now())
	if err != nil {
		return state.Approval{}, false, approvalAdminError(err, id, admin)
	}
	if !counted {
		return a, false, nil
	}
	r := approvalRecord(a, audit.DecisionApprovalApproved, admin, attestAdmin,
		fmt.Sprintf("approval %s of %s approved by %s (%d of %d)", a.ID, a.Requester, admin, len(a.Votes), a.Needed))
	if _, err := v.audit.Append(r); err != nil {
		return a, true, wrapf(credbrokerv1.ErrorReason_AUDIT_UNAVAILABLE, err, "audit store unavailable; the approval of %s counts but is not on record", id)
	}
	v.event(ctx, ApprovalEvent{Step: "approved", Approval: a, Admin: admin})
	if a.Status == state.ApprovalGranted {
		r := approvalRecord(a, audit.DecisionApprovalGranted, admin, attestAdmin,
			fmt.Sprintf("approval %s of %s granted: approved by %s", a.ID, a.Requester, strings.Join(a.Admins(), ", ")))
		if _, err := v.audit.Append(r); err != nil {
			return a, true, wrapf(credbrokerv1.ErrorReason_AUDIT_UNAVAILABLE, err, "audit store unavailable; approval %s is granted but that is not on record", id)
		}
		v.event(ctx, ApprovalEvent{Step: "granted", Approval: a, Admin: admin})
	}
	return a, true, nil
}

// Deny records admin's denial of approval id.
func (v *Approvals) Deny(ctx context.Context, admin, id, reason string) (state.Approval, error) {
	if id == "" || len(id) > audit.MaxFieldLen {
		return state.Approval{}, invalid("approval_id", "approval_id is required")
	}
	if len(reason) > maxRevocationReason {
		return state.Approval{}, invalid("reason", "reason is longer than %d bytes", maxRevocationReason)
	}
	if err := v.onRecord(ctx, id); err != nil {
		return state.Approval{}, err
	}
	a, err := v.store.DenyApproval(ctx, id, admin, reason, v.now())
	if err != nil {
		return state.Approval{}, approvalAdminError(err, id, admin)
	}
	r := approvalRecord(a, audit.DecisionApprovalDenied, admin, attestAdmin,
		fmt.Sprintf("approval %s of %s denied by %s: %s", a.ID, a.Requester, admin, reasonOrNone(reason)))
	if _, err := v.audit.Append(r); err != nil {
		return a, wrapf(credbrokerv1.ErrorReason_AUDIT_UNAVAILABLE, err, "audit store unavailable; approval %s is denied but that is not on record", id)
	}
	v.event(ctx, ApprovalEvent{Step: "denied", Approval: a, Admin: admin})
	return a, nil
}

// approvalAdminError maps a refused approve or deny to the API.
func approvalAdminError(err error, id, admin string) error {
	switch {
	case errors.Is(err, state.ErrNotFound):
		return errorf(credbrokerv1.ErrorReason_NOT_FOUND, "no approval %q", clip(id))
	case errors.Is(err, state.ErrSelfApproval):
		return errorf(credbrokerv1.ErrorReason_POLICY_DENIED, "%s requested approval %s itself; a requester can never approve its own request: another admin must", clip(admin), clip(id))
	case errors.Is(err, state.ErrApprovalExpired):
		return invalid("approval_id", "approval %s has expired; the requester must ask again", clip(id))
	case errors.Is(err, state.ErrApprovalClosed):
		return invalid("approval_id", "approval %s was already denied or used", clip(id))
	}
	return wrapf(credbrokerv1.ErrorReason_UNAVAILABLE, err, "approval store unavailable; nothing changed")
}

// Get returns approval id.
func (v *Approvals) Get(ctx context.Context, id string) (state.Approval, error) {
	a, err := v.store.GetApproval(ctx, id)
	switch {
	case errors.Is(err, state.ErrNotFound):
		return a, errorf(credbrokerv1.ErrorReason_NOT_FOUND, "no approval %q", clip(id))
	case err != nil:
		return a, wrapf(credbrokerv1.ErrorReason_UNAVAILABLE, err, "approval store unavailable")
	}
	return a, nil
}

// List returns up to limit approvals after the id after.
func (v *Approvals) List(ctx context.Context, after string, limit int) ([]state.Approval, error) {
	as, err := v.store.ListApprovals(ctx, state.ApprovalFilter{After: after, Limit: limit})
	if err != nil {
		return nil, wrapf(credbrokerv1.ErrorReason_UNAVAILABLE, err, "approval store unavailable")
	}
	return as, nil
}

// Expire purges the approvals expired at now, recording those that expired
// unused (pending or granted) as approval_expired, and returns how many were
// purged. Housekeeping calls it.
func (v *Approvals) Expire(ctx context.Context, now time.Time) (int, error) {
	gone, err := v.store.PurgeApprovals(ctx, now)
	if err != nil {
		return 0, err
	}
	var errs []error
	for _, a := range gone {
		if a.Status != state.ApprovalPending && a.Status != state.ApprovalGranted {
			continue
		}
		r := approvalRecord(a, audit.DecisionApprovalExpired, a.Requester, "",
			fmt.Sprintf("approval %s of %s expired %s with %d of %d approvals", a.ID, a.Requester, a.Status, len(a.Votes), a.Needed))
		if _, err := v.audit.Append(r); err != nil {
			errs = append(errs, err)
		}
		v.event(ctx, ApprovalEvent{Step: "expired", Approval: a})
	}
	return len(gone), errors.Join(errs...)
}

// ApprovalProto converts an approval to its API form; now decides whether
// an open one has expired.
func ApprovalProto(a state.Approval, now time.Time) *credbrokerv1.Approval {
	out := &credbrokerv1.Approval{
		ApprovalId: a.ID, Status: approvalStatus(a, now), Requester: a.Requester, Profile: a.Profile, Cluster: a.Cluster,
		Audience: a.Audience, ApproversNeeded: int32(a.Needed), CreatedAt: ProtoTime(a.CreatedAt), ExpiresAt: ProtoTime(a.ExpiresAt),
		GrantedAt: ProtoTime(a.GrantedAt), DeniedBy: a.DeniedBy, DenyReason: a.DenyReason, DeniedAt: ProtoTime(a.DeniedAt),
		ConsumedBy: a.ConsumedBy, ConsumedAt: ProtoTime(a.ConsumedAt), RequestDigest: a.Digest,
	}
	if a.TTL > 0 {
		out.Ttl = durationpb.New(a.TTL)
	}
	for _, vt := range a.Votes {
		out.Approvals = append(out.Approvals, &credbrokerv1.ApprovalVote{Admin: vt.Admin, ApprovedAt: ProtoTime(vt.At)})
	}
	return out
}

func approvalStatus(a state.Approval, now time.Time) credbrokerv1.ApprovalStatus {
	switch {
	case a.Status == state.ApprovalDenied:
		return credbrokerv1.ApprovalStatus_APPROVAL_STATUS_DENIED
	case a.Status == state.ApprovalConsumed:
		return credbrokerv1.ApprovalStatus_APPROVAL_STATUS_CONSUMED
	case a.Expired(now):
		return credbrokerv1.ApprovalStatus_APPROVAL_STATUS_EXPIRED
	case a.Status == state.ApprovalGranted:
		return credbrokerv1.ApprovalStatus_APPROVAL_STATUS_GRANTED
	}
	return credbrokerv1.ApprovalStatus_APPROVAL_STATUS_PENDING
}

// WithApprovals serves the approvals of the admin API from v. Without it,
// those methods answer FAILED_PRECONDITION.
func WithApprovals(v *Approvals) AdminOption {
	return func(a *Admin) { a.approvals = v }
}

var errApprovalsDisabled = errorf(credbrokerv1.ErrorReason_MISCONFIGURED, "two-person approval is not wired into this broker")

// listApprovals names the page tokens of ListApprovals.
const listApprovals = "approvals"

// ListApprovals implements AdminService.ListApprovals.
func (a *Admin) ListApprovals(ctx context.Context, req *credbrokerv1.ListApprovalsRequest) (*credbrokerv1.ListApprovalsResponse, error) {
	if a.approvals == nil {
		return nil, toStatus(errApprovalsDisabled)
	}
	size, after, err := pageRequest(listApprovals, req.GetPageSize(), req.GetPageToken())
	if err != nil {
		return nil, toStatus(err)
	}
	as, err := a.approvals.List(ctx, after, size+1)
	if err != nil {
		return nil, toStatus(err)
	}
	out := &credbrokerv1.ListApprovalsResponse{}
	if len(as) > size {
		as = as[:size]
		out.NextPageToken = nextPage(listApprovals, as[size-1].ID)
	}
	now := a.approvals.now()
	for _, ap := range as {
		out.Approvals = append(out.Approvals, ApprovalProto(ap, now))
	}
	return out, nil
}

// GetApproval implements AdminService.GetApproval.
func (a *Admin) GetApproval(ctx context.Context, req *credbrokerv1.GetApprovalRequest) (*credbrokerv1.GetApprovalResponse, error) {
	if a.approvals == nil {
		return nil, toStatus(errApprovalsDisabled)
	}
	if req.GetApprovalId() == "" {
		return nil, toStatus(invalid("approval_id", "approval_id is required"))
	}
	ap, err := a.approvals.Get(ctx, req.GetApprovalId())
	if err != nil {
		return nil, toStatus(err)
	}
	return &credbrokerv1.GetApprovalResponse{Approval: ApprovalProto(ap, a.approvals.now())}, nil
}

// Approve implements AdminService.Approve: the calling admin principal
// approves.
func (a *Admin) Approve(ctx context.Context, req *credbrokerv1.ApproveRequest) (*credbrokerv1.ApproveResponse, error) {
	if a.approvals == nil {
		return nil, toStatus(errApprovalsDisabled)
	}
	ap, counted, err := a.approvals.Approve(ctx, AdminPrincipal(ctx), req.GetApprovalId())
	if err != nil {
		return nil, toStatus(err)
	}
	return &credbrokerv1.ApproveResponse{Approval: ApprovalProto(ap, a.approvals.now()), Counted: counted}, nil
}

// DenyApproval implements AdminService.DenyApproval.
func (a *Admin) DenyApproval(ctx context.Context, req *credbrokerv1.DenyApprovalRequest) (*credbrokerv1.DenyApprovalResponse, error) {
	if a.approvals == nil {
		return nil, toStatus(errApprovalsDisabled)
	}
	ap, err := a.approvals.Deny(ctx, AdminPrincipal(ctx), req.GetApprovalId(), req.GetReason())
	if err != nil {
		return nil, toStatus(err)
	}
	return &credbrokerv1.DenyApprovalResponse{Approval: ApprovalProto(ap, a.approvals.now())}, nil
}
