package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

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
)

// methods declares every RPC the broker serves. A method missing here fails
// with INTERNAL instead of running unauthenticated: fail closed by
// construction.
var methods = map[string]api{
	credbrokerv1.BrokerService_IssueCredential_FullMethodName: apiWorkload,
	credbrokerv1.NodeService_AttestNode_FullMethodName:        apiAttest,
	credbrokerv1.NodeService_RenewNodeSVID_FullMethodName:     apiNode,
	credbrokerv1.AdminService_ListIssuances_FullMethodName:    apiAdmin,
	credbrokerv1.AdminService_GetIssuance_FullMethodName:      apiAdmin,
	credbrokerv1.AdminService_VerifyAudit_FullMethodName:      apiAdmin,
	credbrokerv1.AdminService_ExportAudit_FullMethodName:      apiAdmin,
	credbrokerv1.AdminService_CreateJoinToken_FullMethodName:  apiAdmin,
	credbrokerv1.AdminService_ListNodes_FullMethodName:        apiAdmin,
	credbrokerv1.AdminService_EvictNode_FullMethodName:        apiAdmin,
}

// Gate authenticates every call on the mTLS listener, puts the caller in the
// context once, refuses non-admins on the admin API, and records
// unauthenticated attempts on the workload API.
type Gate struct {
	authenticators []attest.Authenticator
	admins         map[string]bool
	audit          AuditLog
	metrics        *Metrics
	log            *slog.Logger
	unauth         *unauthRecorder
	evicted        func(id string) (bool, error)
	adminJWT       bool
}

// GateOption configures a Gate.
type GateOption func(*gateOptions)

type gateOptions struct {
	now      func() time.Time
	evicted  func(id string) (bool, error)
	adminJWT bool
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

// WithGateClock sets the clock that paces the recording of unauthenticated
// attempts (default time.Now).
func WithGateClock(now func() time.Time) GateOption {
	return func(o *gateOptions) { o.now = now }
}

// NewGate returns a Gate that tries authenticators in order; admins are the
// SPIFFE IDs allowed on the admin API.
func NewGate(authenticators []attest.Authenticator, admins []string, audit AuditLog, m *Metrics, log *slog.Logger, opts ...GateOption) *Gate {
	o := gateOptions{now: time.Now}
	for _, opt := range opts {
		opt(&o)
	}
	set := make(map[string]bool, len(admins))
	for _, a := range admins {
		set[a] = true
	}
	return &Gate{authenticators: authenticators, admins: set, audit: audit, metrics: m, log: log, unauth: newUnauthRecorder(o.now), evicted: o.evicted, adminJWT: o.adminJWT}
}

// Unary is the unary server interceptor.
func (g *Gate) Unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	ctx, err := g.admit(ctx, info.FullMethod)
	if err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

// Stream is the stream server interceptor.
func (g *Gate) Stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	ctx, err := g.admit(ss.Context(), info.FullMethod)
	if err != nil {
		return err
	}
	return handler(srv, &contextStream{ServerStream: ss, ctx: ctx})
}

func (g *Gate) admit(ctx context.Context, method string) (context.Context, error) {
	kind, ok := methods[method]
	if !ok {
		return nil, status.Errorf(codes.Internal, "method %s has no access rule", method)
	}
	if kind == apiAttest {
		// The handler verifies the evidence in the request and records the outcome.
		return ctx, nil
	}
	caller, err := g.authenticate(ctx)
	if err != nil {
		g.metrics.authFails.WithLabelValues(kind.String()).Inc()
		return nil, g.unauthenticated(ctx, kind, err)
	}
	if kind == apiAdmin && caller.Method != attest.MethodX509SVID && !g.adminJWT {
		return nil, status.Errorf(codes.Unauthenticated, "admin API: an X.509-SVID (mTLS client certificate) is required; a bearer %s is not accepted here", caller.Method)
	}
	if kind == apiAdmin && !g.admins[caller.ID.String()] {
		return nil, status.Errorf(codes.PermissionDenied, "admin API: %s is not an admin identity", caller.ID)
	}
	if g.evicted != nil && caller.Constraints.Node != "" {
		switch evicted, err := g.evicted(caller.ID.String()); {
		case err != nil:
			return nil, status.Error(codes.Unavailable, "node registry unavailable")
		case evicted:
			return nil, status.Errorf(codes.PermissionDenied, "node %s was evicted", caller.ID)
		}
	}
	return attest.WithCaller(ctx, caller), nil
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

// unauthenticated records a refused workload call and returns the caller's
// error. Verifier messages are written to be caller-safe.
func (g *Gate) unauthenticated(ctx context.Context, kind api, err error) error {
	msg := "unauthenticated: " + err.Error()
	src := sourceOf(ctx)
	if kind == apiWorkload || kind == apiNode {
		g.metrics.observe(audit.DecisionDenied, "unknown", 0)
		record, suppressed := g.unauth.admit(src)
		if !record {
			g.metrics.unauthUnrecorded.Inc()
			return status.Error(codes.Unauthenticated, msg)
		}
		reason := msg + " (from " + src + ")"
		if suppressed > 0 {
			reason += fmt.Sprintf(" (%d earlier attempts from this address were not recorded)", suppressed)
		}
		if _, aerr := g.audit.Append(audit.Record{Decision: audit.DecisionDenied, Reason: clip(reason)}); aerr != nil {
			g.log.LogAttrs(ctx, slog.LevelError, "cannot record unauthenticated request", slog.String("error", aerr.Error()))
		}
	}
	g.log.LogAttrs(ctx, slog.LevelInfo, "request refused", slog.String("api", kind.String()), slog.String("source", src), slog.String("error", msg))
	return status.Error(codes.Unauthenticated, msg)
}

func (k api) String() string {
	switch k {
	case apiAdmin:
		return "admin"
	case apiAttest:
		return "attest"
	case apiNode:
		return "node"
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
	if methods[method] != apiAdmin || !strings.HasPrefix(method, "/credbroker.v1.AdminService/") {
		return status.Errorf(codes.PermissionDenied, "method %s is not served on the admin socket", method)
	}
	return nil
}
