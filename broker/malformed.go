package broker

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"

	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	grpcproto "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// A request body that does not decode (broken wire format, invalid UTF-8 in
// a string field) is the caller's fault, but grpc-go decodes a unary request
// before any interceptor runs and turns every codec error into INTERNAL,
// whatever status the codec returns (grpc/grpc-go#371). So the server's codec
// does not fail: it leaves the message empty and notes the error against
// that message, and the first interceptor refuses the request with
// INVALID_ARGUMENT. Should the note ever be missed, the handler sees an
// empty request, which validation refuses.

// maxPendingMalformed bounds the notes; each is taken by the interceptor of
// the same request, so only a bug would let them pile up.
const maxPendingMalformed = 4096

// malformedGuard is the codec and the interceptors that report decode
// failures as INVALID_ARGUMENT.
type malformedGuard struct {
	base    encoding.CodecV2
	log     *slog.Logger
	metrics *Metrics

	// pending is len(bad), read without the lock so that the common case,
	// a body that decoded, costs one atomic load. A note is made and taken
	// in the same goroutine (the decode precedes the interceptor, or is
	// inside RecvMsg), so a zero here means none for this request.
	pending atomic.Int64

	mu  sync.Mutex
	bad map[any]error // by the message pointer the codec decoded into
}

func newMalformedGuard(log *slog.Logger, m *Metrics) *malformedGuard {
	return &malformedGuard{base: encoding.GetCodecV2(grpcproto.Name), log: log, metrics: m, bad: map[any]error{}}
}

// codec returns the server's codec: the standard protobuf codec, whose
// unmarshal errors are noted instead of returned.
func (g *malformedGuard) codec() encoding.CodecV2 { return guardCodec{g} }

type guardCodec struct{ g *malformedGuard }

func (c guardCodec) Name() string { return grpcproto.Name }

func (c guardCodec) Marshal(v any) (mem.BufferSlice, error) { return c.g.base.Marshal(v) }

func (c guardCodec) Unmarshal(data mem.BufferSlice, v any) error {
	err := c.g.base.Unmarshal(data, v)
	m, ok := v.(proto.Message)
	if err == nil || !ok {
		return err
	}
	proto.Reset(m) // a partly decoded request must never reach a handler
	c.g.mu.Lock()
	defer c.g.mu.Unlock()
	if len(c.g.bad) >= maxPendingMalformed {
		clear(c.g.bad) // the reset above still keeps the handlers safe
	}
	c.g.bad[v] = err
	c.g.pending.Store(int64(len(c.g.bad)))
	return nil
}

// take returns the refusal for a message the codec could not decode, or nil.
func (g *malformedGuard) take(ctx context.Context, method string, msg any) error {
	if g.pending.Load() == 0 {
		return nil
	}
	g.mu.Lock()
	err, ok := g.bad[msg]
	delete(g.bad, msg)
	g.pending.Store(int64(len(g.bad)))
	g.mu.Unlock()
	if !ok {
		return nil
	}
	g.metrics.malformed.WithLabelValues(method).Inc()
	g.log.LogAttrs(ctx, slog.LevelInfo, "malformed request refused", slog.String("method", method),
		slog.String("source", sourceOf(ctx)), slog.String("error", err.Error()))
	name := "request"
	if m, ok := msg.(proto.Message); ok {
		name = string(proto.MessageName(m))
	}
	return toStatus(errorf(credbrokerv1.ErrorReason_INVALID_REQUEST, "malformed request: the body is not a valid %s (protobuf wire format, UTF-8 strings)", name))
}

// unary refuses a unary request whose body did not decode.
func (g *malformedGuard) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if err := g.take(ctx, info.FullMethod, req); err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

// stream refuses, on the receive, any stream message that did not decode.
func (g *malformedGuard) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	return handler(srv, &guardedStream{ServerStream: ss, g: g, method: info.FullMethod})
}

type guardedStream struct {
	grpc.ServerStream
	g      *malformedGuard
	method string
}

func (s *guardedStream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	return s.g.take(s.Context(), s.method, m)
}
