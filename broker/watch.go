package broker

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/credbroker/credbroker/attest"
	"github.com/credbroker/credbroker/broker/audit"
	"github.com/credbroker/credbroker/broker/state"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// RevocationFeed is what revocation watches need from the revocation index
// (state.RevocationIndex): the revocations in force, and every change.
type RevocationFeed interface {
	Select(now time.Time, keep func(state.Revocation) bool) []state.Revocation
	Subscribe(fn func(state.RevocationChange)) (cancel func())
}

// IssuanceReader reads an issuance's audit records (audit.Log.ByIssuance),
// to check that a watched issuance was issued to the watcher.
type IssuanceReader interface {
	ByIssuance(issuanceID string) ([]audit.Record, error)
}

// Bounds of a revocation watch.
const (
	// MaxWatchedIssuances bounds the issuance ids one watch names (and so the
	// audit reads at its start): a sidecar serves a handful of credentials.
	MaxWatchedIssuances = 32
	// maxWatchedIDLen bounds one named issuance id (a UUIDv7 has 36 bytes).
	maxWatchedIDLen = 128
	// watchBuffer is how many events may wait for one slow stream; past it
	// the stream ends (UNAVAILABLE) and its client reconnects, getting the
	// revocations in force afresh, so nothing is lost and memory is bounded.
	watchBuffer = 64
	// DefaultWatchHeartbeat is how often an idle watch says it is alive.
	DefaultWatchHeartbeat = 10 * time.Second
)

// MetaLimitWatchStreams is the ErrorInfo `limit` of a watch refused because
// too many are open.
const MetaLimitWatchStreams = "watch_streams"

// WatchConfig configures Watches.
type WatchConfig struct {
	// PerIdentity and Total cap the streams open at once, per caller
	// identity and over all of them (config limits.watch_streams).
	PerIdentity, Total int
	// Heartbeat is the interval of heartbeats (0: DefaultWatchHeartbeat).
	Heartbeat time.Duration
	// Clock decides which revocations are in force (nil: time.Now).
	Clock func() time.Time
	// Registerer, when set, gets the watches' metrics: the streams open
	// (credbroker_revocation_watches) and those refused by the caps
	// (credbroker_revocation_watches_refused_total).
	Registerer prometheus.Registerer
}

// Watches serves BrokerService.WatchRevocations: it fans the revocation
// index's changes out to the open streams, each of which sees only those
// covering its caller. The index calls it synchronously on each change, so
// fanning out never blocks: each stream has a bounded buffer, and a stream
// that lets it overflow is ended for its client to reconnect.
type Watches struct {
	feed      RevocationFeed
	issued    IssuanceReader
	now       func() time.Time
	heartbeat time.Duration
	perID     int
	total     int
	cancel    func()
	refusedN  prometheus.Counter

	mu     sync.Mutex
	subs   map[*watcher]struct{}
	open   map[string]int // streams per identity
	nopen  int
	closed bool
	stop   chan struct{}
}

// watcher is one open stream's subscription.
type watcher struct {
	in       interest
	events   chan state.RevocationChange
	lagged   chan struct{} // closed when events overflowed
	overflow bool          // guarded by Watches.mu
}

// NewWatches returns Watches over the index feed, checking watched
// issuances in issued. Stop it before stopping the gRPC server: open
// streams would hold a graceful stop open.
func NewWatches(feed RevocationFeed, issued IssuanceReader, c WatchConfig) (*Watches, error) {
	if feed == nil || issued == nil {
		return nil, errors.New("broker: NewWatches: missing dependency")
	}
	if c.PerIdentity < 1 || c.Total < c.PerIdentity {
		return nil, errors.New("broker: NewWatches: per-identity cap must be at least 1 and the total at least that")
	}
	if c.Heartbeat <= 0 {
		c.Heartbeat = DefaultWatchHeartbeat
	}
	if c.Clock == nil {
		c.Clock = time.Now
	}
	w := &Watches{feed: feed, issued: issued, now: c.Clock, heartbeat: c.Heartbeat, perID: c.PerIdentity, total: c.Total,
		subs: map[*watcher]struct{}{}, open: map[string]int{}, stop: make(chan struct{})}
	w.refusedN = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "credbroker_revocation_watches_refused_total",
		Help: "WatchRevocations streams refused because the caller's identity, or the broker, had as many open as limits.watch_streams allows.",
	})
	if c.Registerer != nil {
		if err := c.Registerer.Register(w.refusedN); err != nil {
			return nil, fmt.Errorf("broker: NewWatches: %w", err)
		}
		open := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "credbroker_revocation_watches",
			Help: "WatchRevocations streams open (sidecars watching for revocations of what they serve).",
		}, func() float64 { return float64(w.Open()) })
		if err := c.Registerer.Register(open); err != nil {
			return nil, fmt.Errorf("broker: NewWatches: %w", err)
		}
	}
	w.cancel = feed.Subscribe(w.publish)
	return w, nil
}

// Stop ends every open stream (UNAVAILABLE: the broker is shutting down),
// refuses new ones and stops listening to the index.
func (w *Watches) Stop() {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return
	}
	w.closed = true
	close(w.stop)
	w.mu.Unlock()
	// Outside w.mu: the index calls publish (which takes w.mu) while it
	// holds what cancel waits for.
	w.cancel()
}

// Open returns how many streams are open (for tests and metrics).
func (w *Watches) Open() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.nopen
}

// publish hands a change to every stream it concerns, never blocking.
func (w *Watches) publish(c state.RevocationChange) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for s := range w.subs {
		if !s.in.covers(c.Revocation) {
			continue
		}
		select {
		case s.events <- c:
		default:
			if !s.overflow {
				s.overflow = true
				close(s.lagged)
			}
		}
	}
}

// interest is what one watch is about: the caller and what it holds.
type interest struct {
	identity string
	clusters map[string]bool
	// held are the named issuances: their clusters and upstream references.
	held map[string]heldIssuance
	refs map[string]bool
}

type heldIssuance struct{ cluster, ref string }

// covers reports whether r takes back anything the watcher holds or asks
// for; it never matches another identity's revocation, nor an issuance the
// caller did not prove to be its own.
func (in interest) covers(r state.Revocation) bool {
	switch r.Kind {
	case state.RevokeIdentity:
		return r.Target == in.identity
	case state.RevokeCluster:
		return in.clusters[r.Target]
	case state.RevokeIssuance:
		_, ok := in.held[r.Target]
		return ok || (r.UpstreamRef != "" && in.refs[r.UpstreamRef])
	}
	return false
}

// coveredIDs are the named issuances r covers.
func (in interest) coveredIDs(r state.Revocation) []string {
	var out []string
	for id, h := range in.held {
		var hit bool
		switch r.Kind {
		case state.RevokeIdentity:
			hit = r.Target == in.identity
		case state.RevokeCluster:
			hit = h.cluster != "" && h.cluster == r.Target
		case state.RevokeIssuance:
			hit = id == r.Target || (r.UpstreamRef != "" && h.ref == r.UpstreamRef)
		}
		if hit {
			out = append(out, id)
		}
	}
	return out
}

// interestOf checks the named issuances (bounded, each issued to the
// caller) and returns what the caller's watch covers.
func (w *Watches) interestOf(caller attest.Caller, ids []string) (interest, error) {
	in := interest{identity: caller.ID.String(), clusters: map[string]bool{}, held: map[string]heldIssuance{}, refs: map[string]bool{}}
	if c := caller.Constraints.Cluster; c != "" {
		in.clusters[c] = true
	}
	if len(ids) > MaxWatchedIssuances {
		return interest{}, invalid("issuance_ids", "a watch names at most %d issuances, not %d", MaxWatchedIssuances, len(ids))
	}
	for _, id := range ids {
		if id == "" || len(id) > maxWatchedIDLen {
			return interest{}, invalid("issuance_ids", "an issuance id is empty or longer than %d bytes", maxWatchedIDLen)
		}
		if _, dup := in.held[id]; dup {
			continue
		}
		recs, err := w.issued.ByIssuance(id)
		if err != nil {
			return interest{}, wrapf(credbrokerv1.ErrorReason_AUDIT_UNAVAILABLE, err, "audit store unavailable")
		}
		found := false
		for _, r := range recs {
			if r.Decision != audit.DecisionIssued || r.Caller != in.identity {
				continue
			}
			found = true
			in.held[id] = heldIssuance{cluster: r.Cluster, ref: r.UpstreamRef}
			if r.Cluster != "" {
				in.clusters[r.Cluster] = true
			}
			if r.UpstreamRef != "" {
				in.refs[r.UpstreamRef] = true
			}
		}
		if !found {
			// The same answer whether the issuance does not exist or is
			// another identity's: a watch reveals nothing about others.
			return interest{}, errorf(credbrokerv1.ErrorReason_NOT_FOUND, "no credential %q was issued to %s", clip(id), in.identity).with(MetaField, "issuance_ids")
		}
	}
	return in, nil
}

// acquire takes one of the identity's stream slots.
func (w *Watches) acquire(identity string) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case w.closed:
		return errorf(credbrokerv1.ErrorReason_UNAVAILABLE, "broker is shutting down")
	case w.open[identity] >= w.perID:
		w.refusedN.Inc()
		ae := errorf(credbrokerv1.ErrorReason_RATE_LIMITED, "%s already has %d revocation watches open, the most one identity may; close one", identity, w.open[identity])
		ae.retryAfter = w.heartbeat
		return ae.with(MetaLimit, MetaLimitWatchStreams)
	case w.nopen >= w.total:
		w.refusedN.Inc()
		ae := errorf(credbrokerv1.ErrorReason_RATE_LIMITED, "the broker has %d revocation watches open, the most it serves; retry later", w.nopen)
		ae.retryAfter = w.heartbeat
		return ae.with(MetaLimit, MetaLimitWatchStreams)
	}
	w.open[identity]++
	w.nopen++
	return nil
}

func (w *Watches) release(identity string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.open[identity]--; w.open[identity] <= 0 {
		delete(w.open, identity)
	}
	w.nopen--
}

// subscribe registers a watcher for in; false when stopping.
func (w *Watches) subscribe(in interest) (*watcher, bool) {
	s := &watcher{in: in, events: make(chan state.RevocationChange, watchBuffer), lagged: make(chan struct{})}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return nil, false
	}
	w.subs[s] = struct{}{}
	return s, true
}

func (w *Watches) unsubscribe(s *watcher) {
	w.mu.Lock()
	defer w.mu.Unlock()
	delete(w.subs, s)
}

// Serve runs one WatchRevocations stream for caller until the client goes
// away, the broker stops, or the stream falls behind.
func (w *Watches) Serve(caller attest.Caller, req *credbrokerv1.WatchRevocationsRequest, stream grpc.ServerStreamingServer[credbrokerv1.WatchRevocationsResponse]) error {
	ctx := stream.Context()
	identity := caller.ID.String()
	if err := w.acquire(identity); err != nil {
		return toStatus(err)
	}
	defer w.release(identity)
	in, err := w.interestOf(caller, req.GetIssuanceIds())
	if err != nil {
		return toStatus(err)
	}
	// Subscribed before the revocations in force are read, so that none made
	// in between is missed (one seen twice is harmless).
	sub, ok := w.subscribe(in)
	if !ok {
		return toStatus(errorf(credbrokerv1.ErrorReason_UNAVAILABLE, "broker is shutting down"))
	}
	defer w.unsubscribe(sub)
	for _, r := range w.feed.Select(w.now(), in.covers) {
		if err := stream.Send(revocationEvent(in, r, false)); err != nil {
			return err // the client went away; the status says how
		}
	}
	beat := &credbrokerv1.WatchRevocationsResponse{Event: &credbrokerv1.WatchRevocationsResponse_Heartbeat{
		Heartbeat: &credbrokerv1.WatchHeartbeat{Interval: durationpb.New(w.heartbeat)}}}
	if err := stream.Send(beat); err != nil {
		return err
	}
	tick := time.NewTicker(w.heartbeat)
	defer tick.Stop()
	for {
		var msg *credbrokerv1.WatchRevocationsResponse
		select {
		case <-ctx.Done():
			return toStatus(ctx.Err())
		case <-w.stop:
			return toStatus(errorf(credbrokerv1.ErrorReason_UNAVAILABLE, "broker is shutting down; watch again"))
		case <-sub.lagged:
			return toStatus(errorf(credbrokerv1.ErrorReason_UNAVAILABLE, "the watch fell more than %d events behind; watch again", watchBuffer))
		case c := <-sub.events:
			msg = revocationEvent(in, c.Revocation, c.Removed)
		case <-tick.C:
			msg = beat
		}
		if err := stream.Send(msg); err != nil {
			return err
		}
	}
}

// revocationEvent is r as the watcher of in is told of it.
func revocationEvent(in interest, r state.Revocation, lifted bool) *credbrokerv1.WatchRevocationsResponse {
	ev := &credbrokerv1.RevocationEvent{Revocation: RevocationProto(r), IssuanceIds: in.coveredIDs(r)}
	if lifted {
		return &credbrokerv1.WatchRevocationsResponse{Event: &credbrokerv1.WatchRevocationsResponse_Lifted{Lifted: ev}}
	}
	return &credbrokerv1.WatchRevocationsResponse{Event: &credbrokerv1.WatchRevocationsResponse_Revoked{Revoked: ev}}
}

// WatchRevocations implements BrokerService.WatchRevocations (see Watches).
func (s *Service) WatchRevocations(req *credbrokerv1.WatchRevocationsRequest, stream grpc.ServerStreamingServer[credbrokerv1.WatchRevocationsResponse]) error {
	caller, ok := attest.CallerFrom(stream.Context())
	if !ok {
		return toStatus(errorf(credbrokerv1.ErrorReason_UNAUTHENTICATED, "caller identity not established"))
	}
	if s.watches == nil {
		return toStatus(errorf(credbrokerv1.ErrorReason_MISCONFIGURED, "revocation watches are not wired into this broker"))
	}
	return s.watches.Serve(caller, req, stream)
}
