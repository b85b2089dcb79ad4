package broker

import (
	"context"
	"log/slog"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// DefaultMaxHealthWatches bounds the health Watch streams open at once over
// every listener: each holds a goroutine until the client leaves, and a
// health check needs no identity.
const DefaultMaxHealthWatches = 100

// MaxReflectionStreams bounds the server reflection streams open at once
// (grpcurl opens one per invocation and closes it).
const MaxReflectionStreams = 32

// LivenessService is the health service name that reports SERVING for as
// long as the broker runs, until shutdown, whatever its readiness: point
// liveness probes at it (grpc.service: liveness), so that a broker that
// cannot serve for a reason a restart does not cure (its agent down, etcd
// unreachable) is taken out of rotation by its readiness probe, not
// restarted in a loop.
const LivenessService = "liveness"

// servedServices are the service names the health service reports on,
// besides "" (the server as a whole): all share the broker's one status.
var servedServices = []string{
	credbrokerv1.BrokerService_ServiceDesc.ServiceName,
	credbrokerv1.NodeService_ServiceDesc.ServiceName,
	credbrokerv1.AdminService_ServiceDesc.ServiceName,
}

// Health is the broker's grpc.health.v1 service: grpc-go's health server,
// whose status the daemon sets from what it knows (SetServing), with Watch
// streams capped and ended by Stop so that they never hold a shutdown open.
// It starts NOT_SERVING, except LivenessService.
type Health struct {
	srv     *health.Server
	watches chan struct{} // one slot per open Watch stream

	stopOnce sync.Once
	stopped  chan struct{}
}

// NewHealth returns a Health that lets at most maxWatches Watch streams be
// open at once (0: DefaultMaxHealthWatches).
func NewHealth(maxWatches int) *Health {
	if maxWatches <= 0 {
		maxWatches = DefaultMaxHealthWatches
	}
	h := &Health{srv: health.NewServer(), watches: make(chan struct{}, maxWatches), stopped: make(chan struct{})}
	h.SetServing(false)
	h.srv.SetServingStatus(LivenessService, healthpb.HealthCheckResponse_SERVING)
	return h
}

// SetServing reports the broker SERVING or NOT_SERVING, for the server as a
// whole and for each of its services (not LivenessService). After Stop it
// changes nothing.
func (h *Health) SetServing(serving bool) {
	st := healthpb.HealthCheckResponse_NOT_SERVING
	if serving {
		st = healthpb.HealthCheckResponse_SERVING
	}
	h.srv.SetServingStatus("", st)
	for _, s := range servedServices {
		h.srv.SetServingStatus(s, st)
	}
}

// Stop reports NOT_SERVING for good and ends every Watch stream (after it
// has been sent NOT_SERVING, when the client reads fast enough). Call it
// when shutdown begins.
func (h *Health) Stop() {
	h.stopOnce.Do(func() {
		h.srv.Shutdown()
		close(h.stopped)
	})
}

// Check implements healthpb.HealthServer.
func (h *Health) Check(ctx context.Context, req *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	return h.srv.Check(ctx, req)
}

// List implements healthpb.HealthServer.
func (h *Health) List(ctx context.Context, req *healthpb.HealthListRequest) (*healthpb.HealthListResponse, error) {
	return h.srv.List(ctx, req)
}

// Watch implements healthpb.HealthServer: RESOURCE_EXHAUSTED when the cap
// of open Watch streams is reached; the stream ends when Stop is called.
func (h *Health) Watch(req *healthpb.HealthCheckRequest, stream grpc.ServerStreamingServer[healthpb.HealthCheckResponse]) error {
	select {
	case h.watches <- struct{}{}:
		defer func() { <-h.watches }()
	default:
		return status.Errorf(codes.ResourceExhausted, "too many health Watch streams open (at most %d); use Check", cap(h.watches))
	}
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	go func() {
		select {
		case <-h.stopped:
			cancel()
		case <-ctx.Done():
		}
	}()
	return h.srv.Watch(req, &contextStreamOf[healthpb.HealthCheckResponse]{ServerStreamingServer: stream, ctx: ctx})
}

// contextStreamOf replaces a typed server stream's context.
type contextStreamOf[T any] struct {
	grpc.ServerStreamingServer[T]
	ctx context.Context
}

func (s *contextStreamOf[T]) Context() context.Context { return s.ctx }

// streamCap refuses a stream of one of its methods with RESOURCE_EXHAUSTED
// while n of them are open. It runs after the Gate, so a caller must be
// admitted before it can hold a slot.
type streamCap struct {
	methods map[string]bool
	slots   chan struct{}
}

func newStreamCap(n int, methods ...string) *streamCap {
	c := &streamCap{methods: map[string]bool{}, slots: make(chan struct{}, n)}
	for _, m := range methods {
		c.methods[m] = true
	}
	return c
}

func (c *streamCap) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if !c.methods[info.FullMethod] {
		return handler(srv, ss)
	}
	select {
	case c.slots <- struct{}{}:
		defer func() { <-c.slots }()
	default:
		return status.Errorf(codes.ResourceExhausted, "too many %s streams open (at most %d); retry later", info.FullMethod, cap(c.slots))
	}
	return handler(srv, ss)
}

// reflectionMethods are the server reflection streams: v1, and v1alpha for
// clients that know only that one.
var reflectionMethods = []string{
	"/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
	"/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
}

// publicGate admits the health service on the plain-text health listener:
// nothing but methods with the public access rule, each within its rate
// limit per source address. Nothing there is audited: a health probe is not
// a decision.
type publicGate struct {
	limits  *RateLimits
	metrics *Metrics
}

func (g publicGate) check(ctx context.Context, fullMethod string) error {
	m, err := lookup(g.limits, fullMethod)
	if err != nil {
		return err
	}
	if m.api != apiPublic {
		return status.Errorf(codes.Unimplemented, "method %s is not served on the health listener", fullMethod)
	}
	if lerr := g.limits.take(g.metrics, fullMethod, m.limit, sourceKey(ctx)); lerr != nil {
		return toStatus(lerr)
	}
	return nil
}

func (g publicGate) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if err := g.check(ctx, info.FullMethod); err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

func (g publicGate) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if err := g.check(ss.Context(), info.FullMethod); err != nil {
		return err
	}
	return handler(srv, ss)
}

// NewHealthServer returns the plain-text server for the health listener
// (config health_listen): the health service only, for Kubernetes gRPC
// probes and load balancers, which present no certificate. Every call is
// within limitHealth per source address (share rl with the Gate; nil:
// DefaultRequestLimits).
func NewHealthServer(h *Health, log *slog.Logger, m *Metrics, rl *RateLimits) *grpc.Server {
	if rl == nil {
		rl = mustDefaultRateLimits(nil)
	}
	g := publicGate{limits: rl, metrics: m}
	opts := append(commonOptions(log, m),
		grpc.Creds(insecure.NewCredentials()),
		grpc.ChainUnaryInterceptor(g.unary),
		grpc.ChainStreamInterceptor(g.stream),
	)
	s := grpc.NewServer(opts...)
	healthpb.RegisterHealthServer(s, h)
	return s
}

// ServerOption adds an optional service to the mTLS server.
type ServerOption func(*serverOptions)

type serverOptions struct {
	health     *Health
	reflection bool
}

// WithHealth serves h (grpc.health.v1) on the mTLS listener too, to callers
// with or without an identity (public access rule, limitHealth per source
// address).
func WithHealth(h *Health) ServerOption { return func(o *serverOptions) { o.health = h } }

// WithReflection registers gRPC server reflection (config grpc_reflection)
// for authenticated callers (any identity the Gate admits; limitReflection
// per identity, MaxReflectionStreams open at once). It discloses the
// schema of every service, nothing else.
func WithReflection() ServerOption { return func(o *serverOptions) { o.reflection = true } }

// register registers the optional services of o on s.
func (o serverOptions) register(s *grpc.Server) {
	if o.health != nil {
		healthpb.RegisterHealthServer(s, o.health)
	}
	if o.reflection {
		reflection.Register(s)
	}
}
