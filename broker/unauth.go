package broker

import (
	"context"
	"net"
	"sync"
	"time"

	"golang.org/x/time/rate"
	"google.golang.org/grpc/peer"
)

// Unauthenticated requests cost the broker an audit write each, and anyone
// who can reach the port can send them. So they are recorded at most
// unauthRecordRate per second per source address (with a burst); the rest
// are still refused, counted in credbroker_unauthenticated_unrecorded_total,
// and the next recorded attempt from the same address says how many were
// left out since the last one.
const (
	unauthRecordRate  = rate.Limit(10)
	unauthRecordBurst = 50
	unauthMaxSources  = 10000
)

type unauthSource struct {
	limiter    *rate.Limiter
	suppressed int
}

// unauthRecorder decides which unauthenticated attempts get an audit record.
type unauthRecorder struct {
	mu      sync.Mutex
	now     func() time.Time
	sources map[string]*unauthSource
}

func newUnauthRecorder(now func() time.Time) *unauthRecorder {
	return &unauthRecorder{now: now, sources: map[string]*unauthSource{}}
}

// admit reports whether an attempt from addr should be recorded and, if so,
// how many attempts from addr went unrecorded before it.
func (u *unauthRecorder) admit(addr string) (record bool, suppressed int) {
	u.mu.Lock()
	defer u.mu.Unlock()
	s, ok := u.sources[addr]
	if !ok {
		if len(u.sources) >= unauthMaxSources {
			// Forget everyone rather than grow without bound; worst case a
			// flood gets one more burst recorded per address.
			u.sources = map[string]*unauthSource{}
		}
		s = &unauthSource{limiter: rate.NewLimiter(unauthRecordRate, unauthRecordBurst)}
		u.sources[addr] = s
	}
	if !s.limiter.AllowN(u.now(), 1) {
		s.suppressed++
		return false, 0
	}
	suppressed, s.suppressed = s.suppressed, 0
	return true, suppressed
}

// sourceOf is the caller's IP address (without port), or "unknown".
func sourceOf(ctx context.Context) string {
	p, ok := peer.FromContext(ctx)
	if !ok || p.Addr == nil {
		return "unknown"
	}
	host, _, err := net.SplitHostPort(p.Addr.String())
	if err != nil {
		return p.Addr.String()
	}
	return host
}
