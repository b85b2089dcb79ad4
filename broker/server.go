package broker

import (
	"context"
	"crypto/tls"
	"log/slog"
	"runtime/debug"
	"time"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/recovery"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// MaxRequestBytes bounds a request message; larger ones are refused with
// RESOURCE_EXHAUSTED before they are decoded.
const MaxRequestBytes = 64 << 10

// MaxConnectionIdle is how long a gRPC connection may stay without a
// stream before the broker closes it.
const MaxConnectionIdle = 5 * time.Minute

// MaxHeaderBytes bounds a request's header list (HTTP/2
// SETTINGS_MAX_HEADER_LIST_SIZE: names, values and 32 bytes per field),
// which grpc-go would otherwise let grow to 16 MiB. The largest legitimate
// header is a JWT-SVID in authorization (at most 8 KiB); a longer list gets
// its stream reset before any of it is parsed into metadata.
const MaxHeaderBytes = 16 << 10

// recoverer turns a panic in a handler into INTERNAL for that request, with
// the panic and its stack in the log, instead of taking the broker down.
func recoverer(log *slog.Logger) (grpc.UnaryServerInterceptor, grpc.StreamServerInterceptor) {
	handler := recovery.WithRecoveryHandlerContext(func(ctx context.Context, p any) error {
		log.LogAttrs(ctx, slog.LevelError, "panic in request handler", slog.Any("panic", p), slog.String("stack", string(debug.Stack())))
		return toStatus(errorf(credbrokerv1.ErrorReason_INTERNAL, "internal error"))
	})
	return recovery.UnaryServerInterceptor(handler), recovery.StreamServerInterceptor(handler)
}

func commonOptions(log *slog.Logger, m *Metrics) []grpc.ServerOption {
	unary, stream := recoverer(log)
	malformed := newMalformedGuard(log, m)
	return []grpc.ServerOption{
		// Recovery first in every chain, so that no interceptor's panic
		// escapes it; then per-method metrics, which see every outcome; then
		// the refusal of bodies that did not decode, before any other work.
		grpc.ChainUnaryInterceptor(unary, m.grpc.UnaryServerInterceptor(), malformed.unary),
		grpc.ChainStreamInterceptor(stream, m.grpc.StreamServerInterceptor(), malformed.stream),
		grpc.ForceServerCodecV2(malformed.codec()),
		grpc.MaxRecvMsgSize(MaxRequestBytes),
		grpc.MaxHeaderListSize(MaxHeaderBytes),
		grpc.MaxConcurrentStreams(1024),
		newInflight(MaxStreamsPerAddress, MaxStreams, m).option(),
		grpc.ConnectionTimeout(10 * time.Second),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		// A connection with no stream for this long is closed (GOAWAY; a
		// client reconnects on its next call), so that connections opened
		// and left do not stay for ever within the connection limits.
		grpc.KeepaliveParams(keepalive.ServerParameters{MaxConnectionIdle: MaxConnectionIdle}),
	}
}

// NewGRPCServer returns the mTLS server for workloads, nodes and admin SPIFFE
// IDs. tlsConfig must request (not require) client certificates: verification
// is the Gate's job, so that a bad identity is UNAUTHENTICATED rather than a
// failed handshake, and JWT-SVID callers need no certificate at all. nodes
// serves NodeService (broker/nodeauth); nil answers its calls with
// FAILED_PRECONDITION. Options add the health service and reflection.
func NewGRPCServer(tlsConfig *tls.Config, gate *Gate, svc *Service, nodes credbrokerv1.NodeServiceServer, adm *Admin, options ...ServerOption) *grpc.Server {
	var o serverOptions
	for _, opt := range options {
		opt(&o)
	}
	opts := append(commonOptions(gate.log, gate.metrics),
		grpc.Creds(newTLSCreds(tlsConfig)),
		grpc.ChainUnaryInterceptor(gate.Unary),
		// Reflection streams are capped once the Gate has admitted them.
		grpc.ChainStreamInterceptor(gate.Stream, newStreamCap(MaxReflectionStreams, reflectionMethods...).stream),
	)
	s := grpc.NewServer(opts...)
	o.register(s)
	credbrokerv1.RegisterBrokerServiceServer(s, svc)
	if nodes == nil {
		nodes = disabledNodes{}
	}
	credbrokerv1.RegisterNodeServiceServer(s, nodes)
	credbrokerv1.RegisterAdminServiceServer(s, adm)
	gate.metrics.grpc.InitializeMetrics(s)
	return s
}

// NewAdminSocketServer returns the admin API server for the unix socket,
// admitting only peers whose uid is in uids, each within the admin rate
// limit of rl (share the Gate's; nil: DefaultRequestLimits). Other peers
// are refused, counted, and recorded in ref at its bounded rate (share the
// Gate's, so that its totals bound the broker as a whole; nil: logged only).
func NewAdminSocketServer(uids []uint32, adm *Admin, log *slog.Logger, m *Metrics, rl *RateLimits, ref *Refusals) *grpc.Server {
	if rl == nil {
		rl = mustDefaultRateLimits(nil)
	}
	g := uidGate{uids: uids, limits: rl, metrics: m,
		refused: adminRefusals{listener: "socket", limits: rl, metrics: m, refusals: ref, log: log}}
	opts := append(commonOptions(log, m),
		grpc.Creds(peerCredCreds{}),
		grpc.ChainUnaryInterceptor(g.unary),
		grpc.ChainStreamInterceptor(g.stream),
	)
	s := grpc.NewServer(opts...)
	credbrokerv1.RegisterAdminServiceServer(s, adm)
	return s
}
