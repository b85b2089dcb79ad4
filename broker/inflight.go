package broker

import (
	"context"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"
)

// MaxStreamsPerAddress and MaxStreams cap the streams (calls, unary or not)
// open at once from one source IP address and on one server. Each open
// stream holds a goroutine, and grpc-go runs it from its HEADERS frame on,
// before the request body arrives and so before any interceptor can
// authenticate or rate-limit it: without these caps a caller with no
// identity could open MaxConcurrentStreams streams on each of its
// connections, never send their bodies, and hold a goroutine for each for
// ever.
const (
	MaxStreamsPerAddress = 1024
	MaxStreams           = 8192
)

// inflight counts open streams per source address and in all, in the
// server's InTapHandle: a stream beyond the caps is refused with
// RESOURCE_EXHAUSTED before its handler goroutine starts.
type inflight struct {
	perAddress, total int
	m                 *Metrics

	mu   sync.Mutex
	open map[string]int
	n    int
}

func newInflight(perAddress, total int, m *Metrics) *inflight {
	return &inflight{perAddress: perAddress, total: total, m: m, open: make(map[string]int)}
}

// tap admits a new stream or refuses it. It runs with the connection's
// lock held, so it only counts. grpc-go cancels a stream's context whenever
// the stream ends (finished, reset, or its connection closed), and that
// gives the slot back.
func (f *inflight) tap(ctx context.Context, _ *tap.Info) (context.Context, error) {
	addr := "unknown"
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		addr = sourceAddress(p.Addr)
	}
	f.mu.Lock()
	switch {
	case f.n >= f.total:
		f.mu.Unlock()
		f.m.streamsRefused.WithLabelValues("total").Inc()
		return nil, status.Errorf(codes.ResourceExhausted, "too many calls open on the broker (at most %d); retry later", f.total)
	case f.open[addr] >= f.perAddress:
		f.mu.Unlock()
		f.m.streamsRefused.WithLabelValues("per_address").Inc()
		return nil, status.Errorf(codes.ResourceExhausted, "too many calls open from this address (at most %d); retry later", f.perAddress)
	}
	f.n++
	f.open[addr]++
	f.mu.Unlock()
	f.m.streamsOpen.Inc()
	context.AfterFunc(ctx, func() {
		f.m.streamsOpen.Dec()
		f.mu.Lock()
		defer f.mu.Unlock()
		f.n--
		if f.open[addr]--; f.open[addr] <= 0 {
			delete(f.open, addr)
		}
	})
	return ctx, nil
}

func (f *inflight) option() grpc.ServerOption { return grpc.InTapHandle(f.tap) }
