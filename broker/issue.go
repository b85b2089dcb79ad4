package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"
	"unicode/utf8"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/credbroker/credbroker/attest"
	"github.com/credbroker/credbroker/broker/alerts"
	"github.com/credbroker/credbroker/broker/audit"
	"github.com/credbroker/credbroker/broker/config"
	"github.com/credbroker/credbroker/broker/limits"
	"github.com/credbroker/credbroker/broker/policy"
	"github.com/credbroker/credbroker/broker/state"
	"github.com/credbroker/credbroker/issuers"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// Profile is a configured profile bound to its issuer.
type Profile struct {
	Name       string
	IssuerName string
	Issuer     issuers.Issuer
	DefaultTTL time.Duration
	MaxTTL     time.Duration
	// Audiences a request may ask for; the first is the default.
	Audiences []string
	// ClusterMode is config.ClusterOptional, ClusterRequired or ClusterNone.
	ClusterMode string
	// MinTTL is the shortest lifetime the issuer can mint (e.g. 15 minutes
	// for AWS STS); zero means the broker's own minimum of one second.
	MinTTL time.Duration
	// Approval, when required, makes each credential wait for two-person
	// approval.
	Approval ApprovalRule
	// Budget is the upstream budget the issuer draws from (the same one it
	// was configured with), or nil: a request that would call upstream is
	// refused before its intent record while the budget is known spent.
	Budget *UpstreamBudget
}

// AuditLog is the durable, append-only decision record the broker needs.
type AuditLog interface {
	Append(r audit.Record) (audit.Record, error)
}

// Limiter admits one issuance against the rate limit and names the quota
// it charges, under the limits that govern the request: Resolve is a pure
// function of the configuration (policy rule and profile → limits), and
// ReserveFor applies its result.
type Limiter interface {
	Resolve(rule int, profile string) limits.Config
	ReserveFor(identity, cluster string, cfg limits.Config) (*limits.Reservation, error)
	// Check answers as ReserveFor would, taking nothing (policy explain).
	Check(identity, cluster string, cfg limits.Config) (*limits.Reservation, error)
}

// Ledger spends an issuance's quota together with its intent record
// (boltstate.Store.Ledger on one node, state.SpendFirst with a shared store).
type Ledger = state.Ledger[audit.Record]

// Service implements BrokerService: the straight line from a verified caller
// to an audited credential.
type Service struct {
	credbrokerv1.UnimplementedBrokerServiceServer

	profiles map[string]Profile
	policy   *policy.Policy
	limiter  Limiter
	ledger   Ledger
	audit    AuditLog
	now      func() time.Time
	newID    func() (string, error)
	log      *slog.Logger
	metrics  *Metrics
	refusals *Refusals
	revoked  RevocationChecker
	watches  *Watches
	// approvals and approving serve profiles that need approval; nil when
	// none does.
	approvals *Approvals
	approving state.ApprovalLedger[audit.Record]
	alerts    DecisionAlerts
}

// ServiceDeps are what a Service is built from.
type ServiceDeps struct {
	Profiles map[string]Profile
	Policy   *policy.Policy
	Limiter  Limiter
	// Ledger spends quota with the intent record; it must append to Audit.
	Ledger Ledger
	Audit  AuditLog
	// Clock is the time quota windows are reckoned by; nil means time.Now.
	Clock func() time.Time
	// NewID returns a fresh issuance id (UUIDv7 in production).
	NewID   func() (string, error)
	Log     *slog.Logger
	Metrics *Metrics
	// Refusals records denials and throttles at a bounded rate; share the
	// Gate's. Nil: a private one with DefaultRefusalLimits.
	Refusals *Refusals
	// Revocations is checked before a request is served and again before
	// its credential is handed out (state.RevocationIndex). Nil: nothing is
	// ever revoked (tests of other parts).
	Revocations RevocationChecker
	// Watches serves WatchRevocations. Nil: the method answers
	// MISCONFIGURED.
	Watches *Watches
	// Approvals serves profiles that need two-person approval; required
	// when one does, and then Ledger must be a state.ApprovalLedger (both
	// boltstate's and state.SpendFirst's are).
	Approvals *Approvals
	// Alerts is told of every credential handed out (mass_issuance,
	// quota_near_limit); share it with the Refusals. Nil: no alerts.
	Alerts DecisionAlerts
}

// DecisionAlerts receives the decisions the counting alert rules count
// (broker/alerts.Alerter). Both calls return at once.
type DecisionAlerts interface {
	Issued(ctx context.Context, is alerts.Issuance)
	Refused(ctx context.Context, r alerts.Refusal)
}

// NewService returns a Service. Every dependency but Clock is
// required.
func NewService(d ServiceDeps) (*Service, error) {
	if d.Profiles == nil || d.Policy == nil || d.Limiter == nil || d.Ledger == nil || d.Audit == nil || d.NewID == nil || d.Log == nil || d.Metrics == nil {
		return nil, errors.New("broker: NewService: missing dependency")
	}
	if d.Clock == nil {
		d.Clock = time.Now
	}
	if d.Refusals == nil {
		d.Refusals = mustDefaultRefusals(d.Audit, d.Metrics, d.Clock)
	}
	s := &Service{profiles: d.Profiles, policy: d.Policy, limiter: d.Limiter, ledger: d.Ledger, audit: d.Audit, now: d.Clock,
		newID: d.NewID, log: d.Log, metrics: d.Metrics, refusals: d.Refusals, revoked: d.Revocations, watches: d.Watches, approvals: d.Approvals,
		alerts: d.Alerts}
	for name, p := range d.Profiles {
		if !p.Approval.Required() {
			continue
		}
		al, ok := d.Ledger.(state.ApprovalLedger[audit.Record])
		if d.Approvals == nil || !ok {
			return nil, fmt.Errorf("broker: NewService: profile %q needs approval, but no approval store (with a ledger that consumes approvals) is wired", name)
		}
		s.approving = al
	}
	return s, nil
}

// Request field bounds. Kubernetes names are at most 253 characters.
const (
	maxProfileLen  = 64
	maxAudienceLen = 256
	// minTTL is the shortest lifetime any credential is minted for; an issuer
	// may impose a longer one.
	minTTL = time.Second
)

// IssueCredential runs attest (done by the interceptor) → validate → policy →
// limits → audit intent (issuers with an upstream side effect) → issuer →
// audit result.
func (s *Service) IssueCredential(ctx context.Context, req *credbrokerv1.IssueCredentialRequest) (*credbrokerv1.IssueCredentialResponse, error) {
	caller, ok := attest.CallerFrom(ctx)
	if !ok {
		// The interceptor chain guarantees a caller; refuse rather than run unauthenticated.
		return nil, toStatus(errorf(credbrokerv1.ErrorReason_UNAUTHENTICATED, "caller identity not established"))
	}
	id, err := s.newID()
	if err != nil {
		return nil, toStatus(wrapf(credbrokerv1.ErrorReason_UNAVAILABLE, err, "cannot allocate an issuance id"))
	}
	rec := audit.Record{
		IssuanceID:  id,
		Caller:      caller.ID.String(),
		Attestation: caller.Method,
		Profile:     clip(req.GetProfile()),
		Cluster:     clip(req.GetCluster()),
	}
	start := time.Now()
	cred, err := s.issue(ctx, caller, req, &rec)
	profileLabel := "unknown"
	if _, ok := s.profiles[rec.Profile]; ok {
		profileLabel = rec.Profile
	}
	s.metrics.observe(rec.Decision, profileLabel, time.Since(start))
	if err != nil {
		annotate(err, &rec)
		// A refusal is routine; a failure of the broker or its upstream is not.
		level := slog.LevelInfo
		if c := status.Code(toStatus(err)); c == codes.Unavailable || c == codes.Internal {
			level = slog.LevelError
		}
		s.log.LogAttrs(ctx, RefusalLogLevel(err, level), "credential refused", logAttrs(rec, err)...)
		return nil, toStatus(err)
	}
	s.log.LogAttrs(ctx, slog.LevelInfo, "credential issued", logAttrs(rec, nil)...)
	return &credbrokerv1.IssueCredentialResponse{Credential: cred}, nil
}

// issue does the work of IssueCredential and keeps rec describing the last
// decision taken, for logs and metrics.
func (s *Service) issue(ctx context.Context, caller attest.Caller, req *credbrokerv1.IssueCredentialRequest, rec *audit.Record) (_ *credbrokerv1.Credential, err error) {
	d := s.decide(caller, req)
	prof, grant := d.prof, d.grant
	if d.valid {
		rec.Cluster = grant.cluster
		rec.Issuer = prof.IssuerName
		rec.TTL = grant.ttl
	}
	if d.err != nil {
		return nil, s.refuse(ctx, rec, audit.DecisionDenied, d.err)
	}

	res, err := s.limiter.ReserveFor(rec.Caller, grant.cluster, d.limits)
	if err != nil {
		decision, refusal := limitError(err)
		return nil, s.refuse(ctx, rec, decision, refusal)
	}

	// A profile that needs approval is served only under a granted
	// approval of this exact request; it is consumed below with the
	// record that spends the quota, and given back if nothing is handed
	// out.
	var use *state.ApprovalUse
	if prof.Approval.Required() {
		u, err := s.approvals.require(ctx, prof.Approval, rec, grant.audience)
		if err != nil {
			return nil, s.refuse(ctx, rec, approvalDecision(err), err)
		}
		use = &u
	}

	// An issuer with an upstream side effect gets a durable intent, with the
	// quota it consumes, before it is called, so that the effect is on
	// record even if the broker dies right after causing it; a quota with no
	// unit left refuses here, spending nothing. An issuer with no effect
	// outside the process needs only its result record, which then carries
	// the spend.
	ireq := issuers.Request{
		IssuanceID: rec.IssuanceID,
		Subject:    rec.Caller,
		Profile:    prof.Name,
		Cluster:    grant.cluster,
		Audience:   grant.audience,
		TTL:        grant.ttl,
	}
	// While the issuer's upstream budget is known spent, a request that
	// would call upstream is refused here, before its intent, so that it
	// (and a caller retrying) spends no quota; one the issuer would serve
	// from a credential it holds goes on, spending no budget. The issuer
	// takes the budget's token itself, just before its call.
	if prof.Budget != nil && !reuses(prof.Issuer, ireq) {
		if err := prof.Budget.Spent(); err != nil {
			return nil, s.refuse(ctx, rec, audit.DecisionThrottled, err)
		}
	}

	charges := res.Charges()
	if prof.Issuer.Effect() != issuers.EffectNone {
		rec.Decision, rec.Reason = audit.DecisionIntent, ""
		if err := s.spend(ctx, rec, charges, use, "nothing was issued"); err != nil {
			return nil, err
		}
		charges = nil
		if use != nil {
			// The intent consumed the approval: give it back unless the
			// credential is handed out.
			consumed := *use
			use = nil
			defer func() {
				if err != nil {
					s.approvals.release(ctx, consumed)
				} else {
					s.approvals.consumed(ctx, consumed)
				}
			}()
		}
	}

	cred, err := s.mint(ctx, prof, ireq)
	var revoked *revokedCredential
	var own *apiError
	switch {
	case errors.As(err, &revoked):
		return nil, s.refuse(ctx, rec, audit.DecisionDenied, revokedError(revoked.r))
	case errors.As(err, &own):
		// The broker's own refusal from within the issuer: its upstream
		// budget (UpstreamBudget) let no call go out. The error may be
		// shared by every request that joined one issuer call, so each
		// refuses with its own copy.
		decision := audit.DecisionFailed
		if own.reason == credbrokerv1.ErrorReason_RATE_LIMITED {
			decision = audit.DecisionThrottled
		}
		return nil, s.refuse(ctx, rec, decision, own.clone())
	case err != nil:
		s.metrics.upstreamFailure(prof.IssuerName, err)
		return nil, s.refuse(ctx, rec, audit.DecisionFailed, issuerError(err, rec.IssuanceID))
	}

	rec.Decision = audit.DecisionIssued
	rec.ExpiresAt = cred.ExpiresAt
	rec.UpstreamRef = cred.UpstreamRef
	rec.SourceIdentity = cred.SourceIdentity
	rec.Reused = cred.Reused
	// Fail closed: a credential whose issuance is not on record is not
	// handed out (nor one over quota, for an issuer with no intent record,
	// nor one whose approval another request used first).
	if err := s.spend(ctx, rec, charges, use, "credential withheld"); err != nil {
		return nil, err
	}
	if use != nil {
		s.approvals.consumed(ctx, *use)
	}
	if cred.Reused {
		s.metrics.reused.WithLabelValues(prof.Name).Inc()
	}
	if s.alerts != nil {
		s.alerts.Issued(ctx, alerts.Issuance{Identity: rec.Caller, Cluster: rec.Cluster, Profile: prof.Name, Charges: res.Charges()})
	}
	return toProto(rec, cred), nil
}

// decision is what the broker decides about a request from the request
// itself, the configuration and the revocations in force, before anything
// is reserved, spent or issued. IssueCredential acts on it and
// ExplainPolicy reports it: one function, so that an explanation cannot
// drift from what issuance does.
type decision struct {
	prof  Profile
	grant grant
	// valid is set once the request is well-formed for a known profile
	// (prof and grant are then complete).
	valid bool
	// revocation covers the identity or the cluster, when one does.
	revocation *state.Revocation
	// policy is the policy's answer (zero when not reached).
	policy   policy.Decision
	askedPol bool
	// limits govern the request: the granting rule's and the profile's
	// over the defaults.
	limits limits.Config
	// err is the refusal, nil when the request passes; failedAt names the
	// step that refused ("request", "revocation", "policy").
	err      error
	failedAt string
}

// decide validates req from caller, checks the revocations and the policy,
// and resolves the limits that govern it: validate → revocation → policy →
// limits, the first refusal ending it.
func (s *Service) decide(caller attest.Caller, req *credbrokerv1.IssueCredentialRequest) decision {
	var d decision
	prof, g, err := s.validate(caller, req)
	if err != nil {
		d.prof, d.err, d.failedAt = prof, err, stepRequest
		return d
	}
	d.prof, d.grant, d.valid = prof, g, true
	if r, ok := s.covering("", caller.ID.String(), g.cluster); ok {
		d.revocation, d.err, d.failedAt = &r, revokedError(r), stepRevocation
		return d
	}
	d.policy, d.askedPol = s.policy.Allow(caller.ID, prof.Name, g.cluster), true
	if !d.policy.Allowed {
		d.err, d.failedAt = errorf(credbrokerv1.ErrorReason_POLICY_DENIED, "%s", d.policy.Reason), stepPolicy
		return d
	}
	// The granting rule and the profile may set their own limits.
	d.limits = s.limiter.Resolve(d.policy.Rule, prof.Name)
	return d
}

// limitError is the refusal of a request the limiter did not admit, and how
// it is recorded: throttled over a rate limit, failed when the limits
// cannot be read.
func limitError(err error) (audit.Decision, error) {
	var ex *limits.ExceededError
	if !errors.As(err, &ex) {
		return audit.DecisionFailed, wrapf(credbrokerv1.ErrorReason_UNAVAILABLE, err, "limits unavailable; nothing was issued")
	}
	return audit.DecisionThrottled, exhausted(credbrokerv1.ErrorReason_RATE_LIMITED, ex.Limit, ex.Error(), ex.RetryAfter)
}

// quotaError is the refusal of a request a quota has no unit left for.
func quotaError(ex *state.ExhaustedError) *apiError {
	return exhausted(credbrokerv1.ErrorReason_QUOTA_EXHAUSTED, string(ex.Key.Kind)+" quota", ex.Error(), ex.RetryAfter)
}

// spend appends rec with the quota charges it spends and, when use is not
// nil, consumes the approval in the same step (rec's reason then names it
// and its approvers). A quota with no unit left is recorded as a throttled
// refusal (of whatever rec described), an approval that can no longer be
// used as a denied one; a shared state store or audit failure is
// Unavailable, saying what became of the request (withheld).
func (s *Service) spend(ctx context.Context, rec *audit.Record, charges []state.Charge, use *state.ApprovalUse, withheld string) error {
	var err error
	if use != nil {
		rec.Reason = approvalNote(*use, s.approvals.admins(ctx, use.ID))
		_, err = s.approving.ConsumeSpendAndAppend(ctx, s.now(), *use, charges, *rec)
	} else {
		_, err = s.ledger.SpendAndAppend(ctx, s.now(), charges, *rec)
	}
	if err != nil {
		if aerr := consumeError(err, use); aerr != nil {
			rec.ExpiresAt, rec.UpstreamRef, rec.SourceIdentity, rec.Reused = time.Time{}, "", "", false
			return s.refuse(ctx, rec, audit.DecisionPending, aerr)
		}
		var ex *state.ExhaustedError
		if errors.As(err, &ex) {
			// Nothing was handed out: the refusal names no credential.
			rec.ExpiresAt, rec.UpstreamRef, rec.SourceIdentity, rec.Reused = time.Time{}, "", "", false
			return s.refuse(ctx, rec, audit.DecisionThrottled, quotaError(ex))
		}
		if errors.Is(err, state.ErrUnavailable) {
			// A shared store (etcd) could not decide the spend in time:
			// nothing is handed out without its quota recorded.
			return wrapf(credbrokerv1.ErrorReason_UNAVAILABLE, err, "shared state unavailable; %s (issuance %s)", withheld, rec.IssuanceID)
		}
		return wrapf(credbrokerv1.ErrorReason_AUDIT_UNAVAILABLE, err, "audit store unavailable; %s (issuance %s)", withheld, rec.IssuanceID)
	}
	return nil
}

// mint has prof's issuer mint a credential for req and checks it against the
// revocations before it is handed out: a revocation made while the request
// was in flight covers it too. A reused credential whose own issuance was
// revoked is not the caller's fault: the issuer has dropped it from reuse
// (its Forget ran before the revocation returned), so one more call mints a
// fresh one.
func (s *Service) mint(ctx context.Context, prof Profile, req issuers.Request) (issuers.Credential, error) {
	for attempt := 0; ; attempt++ {
		cred, err := prof.Issuer.Issue(ctx, req)
		if err != nil {
			return cred, err
		}
		origin := cred.OriginIssuanceID
		if origin == "" {
			origin = req.IssuanceID
		}
		r, ok := s.covering(origin, req.Subject, req.Cluster)
		switch {
		case !ok:
			return cred, nil
		case r.Kind != state.RevokeIssuance || origin == req.IssuanceID || attempt > 0:
			return issuers.Credential{}, &revokedCredential{r}
		}
	}
}

// reuses reports whether iss would serve req from a credential it holds.
func reuses(iss issuers.Issuer, req issuers.Request) bool {
	r, ok := iss.(issuers.Reuser)
	return ok && r.Reuses(req)
}

// revokedCredential is a minted credential a revocation covers.
type revokedCredential struct{ r state.Revocation }

func (e *revokedCredential) Error() string { return state.Describe(e.r) }

// covering returns the revocation covering a request or credential now.
func (s *Service) covering(issuanceID, identity, cluster string) (state.Revocation, bool) {
	if s.revoked == nil {
		return state.Revocation{}, false
	}
	return s.revoked.Covering(s.now(), issuanceID, identity, cluster)
}

// exhausted is the refusal of a request over a rate limit or quota (reason
// RATE_LIMITED or QUOTA_EXHAUSTED, limit naming which one), with the delay
// after which a retry can succeed.
func exhausted(reason credbrokerv1.ErrorReason, limit, msg string, retryAfter time.Duration) *apiError {
	ae := errorf(reason, "%s", msg).with(MetaLimit, limit)
	ae.retryAfter = retryAfter
	return ae
}

// grant is what a validated request asks for, with defaults applied.
type grant struct {
	cluster  string
	audience string
	ttl      time.Duration
}

func (s *Service) validate(caller attest.Caller, req *credbrokerv1.IssueCredentialRequest) (Profile, grant, error) {
	var g grant
	name := req.GetProfile()
	if name == "" || len(name) > maxProfileLen {
		return Profile{}, g, invalid("profile", "profile is required (at most %d characters)", maxProfileLen)
	}
	prof, ok := s.profiles[name]
	if !ok {
		return Profile{}, g, errorf(credbrokerv1.ErrorReason_UNKNOWN_PROFILE, "unknown profile %q", name)
	}

	g.cluster = req.GetCluster()
	if g.cluster != "" && !attest.ValidCluster(g.cluster) {
		return prof, g, invalid("cluster", "cluster must be \"namespace/name\" with Kubernetes names")
	}
	if bound := caller.Constraints.Cluster; bound != "" {
		// Attestation bound this caller to one cluster (e.g. a node).
		if g.cluster == "" {
			g.cluster = bound
		}
		if g.cluster != bound {
			return prof, g, errorf(credbrokerv1.ErrorReason_POLICY_DENIED, "caller is bound to cluster %q", bound)
		}
	}
	switch {
	case prof.ClusterMode == config.ClusterRequired && g.cluster == "":
		return prof, g, invalid("cluster", "profile %q requires a cluster", name)
	case prof.ClusterMode == config.ClusterNone && g.cluster != "":
		return prof, g, invalid("cluster", "profile %q is not cluster-scoped; omit the cluster", name)
	}

	g.ttl = prof.DefaultTTL
	if d := req.GetTtl(); d != nil {
		if err := d.CheckValid(); err != nil {
			return prof, g, invalid("ttl", "ttl is not a valid duration")
		}
		if t := d.AsDuration(); t != 0 {
			if lo := max(minTTL, prof.MinTTL); t < lo || t > prof.MaxTTL {
				return prof, g, errorf(credbrokerv1.ErrorReason_TTL_OUT_OF_RANGE, "ttl %s is outside [%s, %s] for profile %q", t, lo, prof.MaxTTL, name)
			}
			g.ttl = t
		}
	}

	g.audience = prof.Audiences[0]
	if a := req.GetAudience(); a != "" {
		if len(a) > maxAudienceLen || !slices.Contains(prof.Audiences, a) {
			return prof, g, invalid("audience", "audience is not allowed for profile %q", name)
		}
		g.audience = a
	}
	return prof, g, nil
}

// refuse records a refusal and returns err for the caller (see
// Refusals.Refuse).
func (s *Service) refuse(ctx context.Context, rec *audit.Record, d audit.Decision, err error) error {
	return s.refusals.Refuse(ctx, rec, d, err)
}

func reasonOf(err error) string {
	var ae *apiError
	if errors.As(err, &ae) {
		return ae.msg
	}
	return "internal error"
}

// maxRecordedLen bounds caller-chosen text copied into audit records and logs.
const maxRecordedLen = 256

// clip shortens s to at most maxRecordedLen bytes on a rune boundary, so an
// oversized field is still recorded (marked as cut) rather than refused.
func clip(s string) string { return clipTo(s, maxRecordedLen) }

// clipTo shortens s to at most n bytes on a rune boundary, ending in "..."
// when it was cut.
func clipTo(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := max(n-len("..."), 0)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "..."
}

// issuerError maps an issuer failure to a caller-safe error. Upstream text
// is kept for the log (the cause) and never reaches the caller; an
// issuers.Error contributes only its code.
func issuerError(err error, id string) error {
	var ie *issuers.Error
	if errors.As(err, &ie) {
		var ae *apiError
		switch {
		case errors.Is(ie.Kind, issuers.ErrUnavailable):
			ae = wrapf(credbrokerv1.ErrorReason_UPSTREAM_UNAVAILABLE, err, "upstream issuer unavailable: %s (issuance %s)", ie.Code, id)
		case errors.Is(ie.Kind, issuers.ErrThrottled):
			ae = wrapf(credbrokerv1.ErrorReason_UPSTREAM_THROTTLED, err, "upstream issuer rate limit: %s (issuance %s)", ie.Code, id)
		case errors.Is(ie.Kind, issuers.ErrRejected):
			ae = wrapf(credbrokerv1.ErrorReason_UPSTREAM_REJECTED, err, "upstream issuer refused the request: %s (issuance %s)", ie.Code, id)
		default:
			ae = wrapf(credbrokerv1.ErrorReason_MISCONFIGURED, err, "upstream issuer rejected the request as invalid: %s; the broker's configuration needs fixing (issuance %s)", ie.Code, id)
		}
		ae.retryAfter = ie.RetryAfter
		return ae
	}
	switch {
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return wrapf(credbrokerv1.ErrorReason_UPSTREAM_UNAVAILABLE, err, "issuance %s interrupted before the issuer answered", id)
	case errors.Is(err, issuers.ErrUnavailable):
		return wrapf(credbrokerv1.ErrorReason_UPSTREAM_UNAVAILABLE, err, "upstream issuer unavailable (issuance %s)", id)
	default:
		return wrapf(credbrokerv1.ErrorReason_INTERNAL, err, "issuer failed (issuance %s)", id)
	}
}

func toProto(rec *audit.Record, c issuers.Credential) *credbrokerv1.Credential {
	out := &credbrokerv1.Credential{
		IssuanceId: rec.IssuanceID,
		Profile:    rec.Profile,
		Cluster:    rec.Cluster,
		Issuer:     rec.Issuer,
		ExpiresAt:  timestamppb.New(c.ExpiresAt),
	}
	switch c.Kind {
	case issuers.KindAWS:
		out.Kind = &credbrokerv1.Credential_Aws{Aws: &credbrokerv1.AWSCredentials{
			AccessKeyId:     c.AWS.AccessKeyID,
			SecretAccessKey: c.AWS.SecretAccessKey,
			SessionToken:    c.AWS.SessionToken,
		}}
	case issuers.KindSecret:
		out.Kind = &credbrokerv1.Credential_Secret{Secret: &credbrokerv1.Secret{Json: string(c.Secret)}}
	default:
		out.Kind = &credbrokerv1.Credential_Token{Token: &credbrokerv1.Token{Token: c.Token, TokenType: c.TokenType}}
	}
	return out
}

// logAttrs describes a decision for the log. It never includes a credential.
func logAttrs(rec audit.Record, err error) []slog.Attr {
	attrs := []slog.Attr{
		slog.String("issuance_id", rec.IssuanceID),
		slog.String("caller", rec.Caller),
		slog.String("profile", rec.Profile),
		slog.String("cluster", rec.Cluster),
		slog.String("decision", string(rec.Decision)),
	}
	if rec.UpstreamRef != "" {
		attrs = append(attrs, slog.String("upstream_ref", rec.UpstreamRef))
	}
	if rec.SourceIdentity != "" {
		attrs = append(attrs, slog.String("source_identity", rec.SourceIdentity))
	}
	if rec.Reused {
		attrs = append(attrs, slog.Bool("reused", true))
	}
	if err != nil {
		attrs = append(attrs, slog.String("error", err.Error()))
	}
	return attrs
}
