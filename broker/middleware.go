package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path"
	"strings"
	"time"

	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/credbroker/credbroker/attest"
	"github.com/credbroker/credbroker/broker/audit"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// api says which surface a method belongs to and therefore who may call it.
type api int

const (
	apiWorkload api = iota + 1 // any authenticated caller; policy decides the rest
	apiAdmin                   // admin identities only
	apiAttest                  // no identity yet: the request carries attestation evidence
	apiNode                    // an authenticated node identity; the handler checks it is one, and records why not
	apiPublic                  // no identity needed: the health service, limited per source address
)

// method is a method's access rule: who may call it, and the rate limit that
// applies before anything durable happens.
type method struct {
	api   api
	limit limiter
}

// methods declares every RPC the broker serves. A method missing here, or
// declared without a rate limit, fails with INTERNAL instead of running
// unauthenticated or unlimited: fail closed by construction.
var methods = map[string]method{
	credbrokerv1.BrokerService_IssueCredential_FullMethodName:       {apiWorkload, limitIssue},
	credbrokerv1.BrokerService_WatchRevocations_FullMethodName:      {apiWorkload, limitWatch},
	credbrokerv1.NodeService_AttestNode_FullMethodName:              {apiAttest, limitAttest},
	credbrokerv1.NodeService_RenewNodeSVID_FullMethodName:           {apiNode, limitRenew},
	credbrokerv1.AdminService_ListIssuances_FullMethodName:          {apiAdmin, limitAdmin},
	credbrokerv1.AdminService_GetIssuance_FullMethodName:            {apiAdmin, limitAdmin},
	credbrokerv1.AdminService_VerifyAudit_FullMethodName:            {apiAdmin, limitAdmin},
	credbrokerv1.AdminService_ExportAudit_FullMethodName:            {apiAdmin, limitAdmin},
	credbrokerv1.AdminService_MarkAuditExported_FullMethodName:      {apiAdmin, limitAdmin},
	credbrokerv1.AdminService_CreateJoinToken_FullMethodName:        {apiAdmin, limitAdmin},
	credbrokerv1.AdminService_ListNodes_FullMethodName:              {apiAdmin, limitAdmin},
	credbrokerv1.AdminService_EvictNode_FullMethodName:              {apiAdmin, limitAdmin},
	credbrokerv1.AdminService_Revoke_FullMethodName:                 {apiAdmin, limitAdmin},
	credbrokerv1.AdminService_ListRevocations_FullMethodName:        {apiAdmin, limitAdmin},
	credbrokerv1.AdminService_LiftRevocation_FullMethodName:         {apiAdmin, limitAdmin},
	credbrokerv1.AdminService_GetAWSRevocationPolicy_FullMethodName: {apiAdmin, limitAdmin},
	credbrokerv1.AdminService_ListClusters_FullMethodName:           {apiAdmin, limitAdmin},
	credbrokerv1.AdminService_DeleteCluster_FullMethodName:          {apiAdmin, limitAdmin},
	credbrokerv1.AdminService_GetQuota_FullMethodName:               {apiAdmin, limitAdmin},
	credbrokerv1.AdminService_ResetQuota_FullMethodName:             {apiAdmin, limitAdmin},
	credbrokerv1.AdminService_ListApprovals_FullMethodName:          {apiAdmin, limitAdmin},
	credbrokerv1.AdminService_GetApproval_FullMethodName:            {apiAdmin, limitAdmin},
	credbrokerv1.AdminService_Approve_FullMethodName:                {apiAdmin, limitAdmin},
	credbrokerv1.AdminService_DenyApproval_FullMethodName:           {apiAdmin, limitAdmin},
	credbrokerv1.AdminService_ExplainPolicy_FullMethodName:          {apiAdmin, limitAdmin},
	credbrokerv1.AdminService_ListSigningKeys_FullMethodName:        {apiAdmin, limitAdmin},
	credbrokerv1.AdminService_RotateSigningKey_FullMethodName:       {apiAdmin, limitAdmin},
	// Kubernetes probes and load balancers check health without a
	// certificate; what they learn is one status.
	healthpb.Health_Check_FullMethodName: {apiPublic, limitHealth},
	healthpb.Health_List_FullMethodName:  {apiPublic, limitHealth},
	healthpb.Health_Watch_FullMethodName: {apiPublic, limitHealth},
	// Reflection (config grpc_reflection) discloses the schema only, but to
	// callers the broker knows: any authenticated identity.
	reflectionMethods[0]: {apiWorkload, limitReflection},
	reflectionMethods[1]: {apiWorkload, limitReflection},
}

// lookup returns m's access rule, or the INTERNAL error for a method that is
// not declared or whose rate limit is not configured.
func lookup(rl *RateLimits, fullMethod string) (method, error) {
	m, ok := methods[fullMethod]
	switch {
	case !ok:
		return method{}, toStatus(errorf(credbrokerv1.ErrorReason_INTERNAL, "method %s has no access rule", fullMethod))
	case !rl.declared(m.limit):
		return method{}, toStatus(errorf(credbrokerv1.ErrorReason_INTERNAL, "method %s has no rate limit", fullMethod))
	}
	return m, nil
}

// Gate authenticates every call on the mTLS listener, puts the caller in the
// context once, refuses non-admins on the admin API, applies each method's
// rate limit before the handler runs, and records refusals (unauthenticated
// attempts on every API, non-admins on the admin API, rate-limited calls) at
// a bounded rate.
type Gate struct {
	authenticators []attest.Authenticator
	admins         map[string]bool
	metrics        *Metrics
	log            *slog.Logger
	limits         *RateLimits
	refusals       *Refusals
	evicted        func(id string) (bool, error)
	revoked        RevocationChecker
	now            func() time.Time
	adminJWT       bool
}

// GateOption configures a Gate.
type GateOption func(*gateOptions)

type gateOptions struct {
	now      func() time.Time
	evicted  func(id string) (bool, error)
	revoked  RevocationChecker
	adminJWT bool
	limits   *RateLimits
	refusals *Refusals
}

// WithAdminJWTSVID lets admin identities use the admin API with a JWT-SVID
// (config admin.allow_jwt_svid). By default the admin API requires an
// X.509-SVID: a bearer token works for whoever holds a copy of it, and a
// token sent to any service with the broker's audience can be replayed to
// the broker, whereas a certificate proves possession of its key in the
// handshake.
func WithAdminJWTSVID(allow bool) GateOption {
	return func(o *gateOptions) { o.adminJWT = allow }
}

// WithEvictionCheck makes the Gate refuse node identities that evicted
// reports as evicted, on every method (fail closed when it errs).
func WithEvictionCheck(evicted func(id string) (bool, error)) GateOption {
	return func(o *gateOptions) { o.evicted = evicted }
}

// WithRevocationCheck makes the Gate refuse, on every workload and node
// method, a caller whose identity is revoked, and a node whose cluster is,
// with FAILED_PRECONDITION naming the revocation; the clock is the Gate's.
func WithRevocationCheck(r RevocationChecker) GateOption {
	return func(o *gateOptions) { o.revoked = r }
}

// WithGateClock sets the clock of the default rate limits and refusal
// recording (default time.Now).
func WithGateClock(now func() time.Time) GateOption {
	return func(o *gateOptions) { o.now = now }
}

// WithRateLimits sets the per-method rate limits (default:
// DefaultRequestLimits). Share them with NewAdminSocketServer.
func WithRateLimits(rl *RateLimits) GateOption {
	return func(o *gateOptions) { o.limits = rl }
}

// WithRefusals sets where refusals are recorded (default: a private
// Refusals with DefaultRefusalLimits). Share it with the Service and the
// node authority, so that its totals bound the broker as a whole.
func WithRefusals(r *Refusals) GateOption {
	return func(o *gateOptions) { o.refusals = r }
}

// NewGate returns a Gate that tries authenticators in order; admins are the
// SPIFFE IDs allowed on the admin API.
func NewGate(authenticators []attest.Authenticator, admins []string, log AuditLog, m *Metrics, logger *slog.Logger, opts ...GateOption) *Gate {
	o := gateOptions{now: time.Now}
	for _, opt := range opts {
		opt(&o)
	}
	if o.limits == nil {
		o.limits = mustDefaultRateLimits(o.now)
	}
	if o.refusals == nil {
		o.refusals = mustDefaultRefusals(log, m, o.now)
	}
	set := make(map[string]bool, len(admins))
	for _, a := range admins {
		set[a] = true
	}
	return &Gate{authenticators: authenticators, admins: set, metrics: m, log: logger, limits: o.limits, refusals: o.refusals, evicted: o.evicted, revoked: o.revoked, now: o.now, adminJWT: o.adminJWT}
}

// Unary is the unary server interceptor.
func (g *Gate) Unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	ctx, err := g.admit(ctx, info.FullMethod, req)
	if err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

// Stream is the stream server interceptor.
func (g *Gate) Stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	ctx, err := g.admit(ss.Context(), info.FullMethod, nil)
	if err != nil {
		return err
	}
	return handler(srv, &contextStream{ServerStream: ss, ctx: ctx})
}

// admit runs a call's access rule: authentication, the admin checks, the
// method's rate limit, the eviction and revocation checks, in that order, so that a caller
// over its limit costs no more than verifying its identity.
func (g *Gate) admit(ctx context.Context, fullMethod string, req any) (context.Context, error) {
	m, err := lookup(g.limits, fullMethod)
	if err != nil {
		return nil, err
	}
	if m.api == apiPublic {
		// Not audited: a health probe is not a decision.
		if lerr := g.limits.take(g.metrics, fullMethod, m.limit, sourceKey(ctx)); lerr != nil {
			return nil, toStatus(lerr)
		}
		return ctx, nil
	}
	if m.api == apiAttest {
		// The handler verifies the evidence in the request and records the
		// outcome; the limit comes first, since verifying can spend a join
		// token or fetch a cluster's keys.
		src := sourceKey(ctx)
		if lerr := g.limits.take(g.metrics, fullMethod, m.limit, src); lerr != nil {
			g.throttled(ctx, fullMethod, byAddress, src, describe(req, audit.Record{Reason: "node attestation from " + sourceOf(ctx)}), lerr)
			return nil, toStatus(lerr)
		}
		return ctx, nil
	}
	caller, err := g.authenticate(ctx)
	if err != nil {
		g.metrics.authFails.WithLabelValues(m.api.String()).Inc()
		return nil, g.unauthenticated(ctx, fullMethod, m.api, err)
	}
	if m.api == apiAdmin {
		rec := audit.Record{Caller: caller.ID.String(), Attestation: caller.Method}
		switch {
		case caller.Method != attest.MethodX509SVID && !g.adminJWT:
			return nil, g.adminRefusals().refuse(ctx, fullMethod, adminRefusalBearer, rec, errorf(credbrokerv1.ErrorReason_UNAUTHENTICATED,
				"admin API: an X.509-SVID (mTLS client certificate) is required; a bearer %s is not accepted here", caller.Method))
		case !g.admins[caller.ID.String()]:
			return nil, g.adminRefusals().refuse(ctx, fullMethod, adminRefusalNotAdmin, rec, errorf(credbrokerv1.ErrorReason_ADMIN_ONLY,
				"admin API: %s is not an admin identity", caller.ID))
		}
	}
	if lerr := g.limits.take(g.metrics, fullMethod, m.limit, caller.ID.String()); lerr != nil {
		if m.api != apiAdmin {
			g.throttled(ctx, fullMethod, byIdentity, caller.ID.String(), describe(req, audit.Record{Caller: caller.ID.String(), Attestation: caller.Method}), lerr)
		}
		return nil, toStatus(lerr)
	}
	// An evicted node is told so (NODE_EVICTED: final), although its
	// eviction is also a revocation of its identity.
	if g.evicted != nil && caller.Constraints.Node != "" {
		switch evicted, err := g.evicted(caller.ID.String()); {
		case err != nil:
			return nil, toStatus(errorf(credbrokerv1.ErrorReason_UNAVAILABLE, "node registry unavailable"))
		case evicted:
			return nil, toStatus(errorf(credbrokerv1.ErrorReason_NODE_EVICTED, "node %s was evicted", caller.ID))
		}
	}
	if g.revoked != nil && m.api != apiAdmin {
		if r, ok := g.revoked.Covering(g.now(), "", caller.ID.String(), caller.Constraints.Cluster); ok {
			rec := describe(req, audit.Record{Caller: caller.ID.String(), Attestation: caller.Method, Cluster: caller.Constraints.Cluster})
			return nil, toStatus(g.refusals.Refuse(ctx, &rec, audit.DecisionDenied, revokedError(r)))
		}
	}
	return attest.WithCaller(ctx, caller), nil
}

// describe fills in what a refused call asked for, as far as the Gate can
// tell without the handler: the profile and cluster of a credential request.
func describe(req any, rec audit.Record) audit.Record {
	if r, ok := req.(interface {
		GetProfile() string
		GetCluster() string
	}); ok {
		rec.Profile, rec.Cluster = clip(r.GetProfile()), clip(r.GetCluster())
	}
	return rec
}

// throttled records a call refused by its rate limit, at the bounded rate of
// refusal records, and logs it.
func (g *Gate) throttled(ctx context.Context, fullMethod string, class refusalClass, key string, rec audit.Record, lerr *apiError) {
	rec.Decision = audit.DecisionThrottled
	if rec.Reason != "" {
		rec.Reason += ": "
	}
	rec.Reason = clip(rec.Reason + lerr.msg)
	if fullMethod == credbrokerv1.BrokerService_IssueCredential_FullMethodName {
		g.metrics.observe(audit.DecisionThrottled, "unknown", 0)
	}
	if _, aerr := g.refusals.record(ctx, class, key, rec); aerr != nil {
		g.log.LogAttrs(ctx, slog.LevelError, "cannot record a rate-limited request", slog.String("error", aerr.Error()))
	}
	g.log.LogAttrs(ctx, slog.LevelDebug, "request rate-limited", slog.String("key", key), slog.String("error", lerr.msg))
}

// maxCallerIDLen is the longest caller SPIFFE ID the broker serves: what an
// audit record's caller field holds. SPIFFE allows 2048 bytes; a longer ID
// could be verified but not recorded, and a request the broker cannot record
// is not served.
const maxCallerIDLen = audit.MaxFieldLen

// authenticate runs every authenticator. Any evidence that is present must
// verify: invalid evidence is never skipped in favour of other evidence.
// When a request carries both an X.509-SVID and a JWT-SVID they must name
// the same SPIFFE ID, and the caller is then the X.509-SVID's (proved by the
// handshake, bound to the connection); two different identities are
// refused, since honouring either would let a bearer token act for a
// verified certificate or the reverse.
func (g *Gate) authenticate(ctx context.Context) (attest.Caller, error) {
	var callers []attest.Caller
	for _, a := range g.authenticators {
		c, err := a.Authenticate(ctx)
		switch {
		case errors.Is(err, attest.ErrNoEvidence):
			continue
		case err != nil:
			return attest.Caller{}, err
		}
		callers = append(callers, c)
	}
	if len(callers) == 0 {
		return attest.Caller{}, errors.New("no X.509-SVID or JWT-SVID presented")
	}
	caller := callers[0]
	for _, c := range callers[1:] {
		if c.ID != caller.ID {
			return attest.Caller{}, fmt.Errorf("the request carries two identities (%s by %s, %s by %s); send one",
				clipTo(caller.ID.String(), 96), caller.Method, clipTo(c.ID.String(), 96), c.Method)
		}
		if c.Method == attest.MethodX509SVID {
			caller = c
		}
	}
	if n := len(caller.ID.String()); n > maxCallerIDLen {
		return attest.Caller{}, fmt.Errorf("SPIFFE ID is %d bytes, longer than the %d the broker accepts: %s", n, maxCallerIDLen, clipTo(caller.ID.String(), 128))
	}
	return caller, nil
}

// unauthenticated answers a call whose identity did not verify: the
// unauthenticated rate limit (per source address and in total) decides
// between UNAUTHENTICATED and RESOURCE_EXHAUSTED, and the refusal is
// recorded at the bounded rate per address (which feeds
// unauthenticated_burst), on the admin API too. Verifier messages are
// written to be caller-safe.
func (g *Gate) unauthenticated(ctx context.Context, fullMethod string, kind api, err error) error {
	msg := "unauthenticated: " + err.Error()
	key := sourceKey(ctx)
	out := errorf(credbrokerv1.ErrorReason_UNAUTHENTICATED, "%s", msg)
	decision := audit.DecisionDenied
	if lerr := g.limits.take(g.metrics, fullMethod, limitUnauthenticated, key); lerr != nil {
		out, decision = lerr, audit.DecisionThrottled
		msg += "; " + lerr.msg
	}
	if kind == apiWorkload || kind == apiNode {
		g.metrics.observe(decision, "unknown", 0)
	}
	level := slog.LevelDebug // the log says no more than the audit
	rec := audit.Record{Decision: decision, Reason: clipWith(msg, " (from "+sourceOf(ctx)+")")}
	if kind == apiAdmin {
		rec.Reason = clipWith(msg, " ("+path.Base(fullMethod)+" from "+sourceOf(ctx)+")")
	}
	recorded, aerr := g.refusals.record(ctx, byAddress, key, rec)
	if aerr != nil {
		g.log.LogAttrs(ctx, slog.LevelError, "cannot record unauthenticated request", slog.String("error", aerr.Error()))
	}
	if recorded {
		level = slog.LevelInfo
	}
	g.log.LogAttrs(ctx, level, "request refused", slog.String("api", kind.String()), slog.String("source", sourceOf(ctx)), slog.String("error", msg))
	return toStatus(out)
}

// Why a call on the admin API was refused, as credbroker_admin_refusals_total
// labels it.
const (
	adminRefusalNotAdmin = "not_admin" // an identity or socket uid that is not an admin
	adminRefusalBearer   = "jwt_svid"  // a JWT-SVID where an X.509-SVID is required
)

// adminRefusals answers the calls on the admin API of callers that are
// authenticated but not admins: a SPIFFE ID not in admin.spiffe_ids, a
// JWT-SVID where an X.509-SVID is required, a socket peer whose uid is not
// listed. Any workload can make such calls, so they are bounded like
// unauthenticated ones. The Gate and the admin socket share it.
type adminRefusals struct {
	listener string // "mtls" or "socket"
	limits   *RateLimits
	metrics  *Metrics
	refusals *Refusals
	log      *slog.Logger
}

func (g *Gate) adminRefusals() adminRefusals {
	return adminRefusals{listener: "mtls", limits: g.limits, metrics: g.metrics, refusals: g.refusals, log: g.log}
}

// refuse counts the refused call in credbroker_admin_refusals_total, takes a
// token of limits.requests.unauthenticated for its source address (past it
// the answer is RESOURCE_EXHAUSTED, recorded as throttled), and records rec
// (the caller) as a denial at the bounded rate of refusal records per
// identity, which feeds denial_burst; the log line is at info only when the
// refusal was recorded. It returns the status for the caller.
func (a adminRefusals) refuse(ctx context.Context, fullMethod, why string, rec audit.Record, err *apiError) error {
	a.metrics.adminRefusals.WithLabelValues(a.listener, why).Inc()
	out, msg := err, err.msg
	rec.Decision = audit.DecisionDenied
	if lerr := a.limits.take(a.metrics, fullMethod, limitUnauthenticated, sourceKey(ctx)); lerr != nil {
		out, rec.Decision = lerr, audit.DecisionThrottled
		msg += "; " + lerr.msg
	}
	rec.Reason = clipWith(msg, " ("+path.Base(fullMethod)+")")
	level := slog.LevelWarn
	if a.refusals != nil {
		recorded, aerr := a.refusals.record(ctx, byIdentity, rec.Caller, rec)
		if aerr != nil {
			a.log.LogAttrs(ctx, slog.LevelError, "cannot record a refused admin API call", slog.String("error", aerr.Error()))
		}
		if !recorded {
			level = slog.LevelDebug // the log says no more than the audit
		}
	}
	a.log.LogAttrs(ctx, level, "admin API call refused", slog.String("listener", a.listener), slog.String("caller", rec.Caller),
		slog.String("source", sourceOf(ctx)), slog.String("method", path.Base(fullMethod)), slog.String("error", msg))
	return toStatus(out)
}

func (k api) String() string {
	switch k {
	case apiAdmin:
		return "admin"
	case apiAttest:
		return "attest"
	case apiNode:
		return "node"
	case apiPublic:
		return "public"
	}
	return "workload"
}

// contextStream replaces a stream's context.
type contextStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *contextStream) Context() context.Context { return s.ctx }

// onlyAdminMethods refuses anything but the admin API; it guards the admin
// unix socket, whose peers are checked by uid in the transport.
func onlyAdminMethods(method string) error {
	if methods[method].api != apiAdmin || !strings.HasPrefix(method, "/credbroker.v1.AdminService/") {
		return toStatus(errorf(credbrokerv1.ErrorReason_ADMIN_ONLY, "method %s is not served on the admin socket", method))
	}
	return nil
}
