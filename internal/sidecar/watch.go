package sidecar

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/credbroker/credbroker/internal/backoff"
	"github.com/credbroker/credbroker/internal/brokerclient"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// RevocationSource is the broker's revocation watch; the generated
// credbrokerv1.BrokerServiceClient and Redialer satisfy it.
type RevocationSource interface {
	WatchRevocations(ctx context.Context, in *credbrokerv1.WatchRevocationsRequest, opts ...grpc.CallOption) (grpc.ServerStreamingClient[credbrokerv1.WatchRevocationsResponse], error)
}

// Watch timing.
const (
	// MissedHeartbeats is how many heartbeat intervals of silence make the
	// Watcher give the stream up for dead and reconnect.
	MissedHeartbeats = 3
	// firstHeartbeat bounds the wait for a new stream's first heartbeat,
	// before the broker has said its interval.
	firstHeartbeat = 30 * time.Second
	// Heartbeat intervals the broker announces are taken within these bounds.
	minHeartbeat, maxHeartbeat = time.Second, 5 * time.Minute
	// maxWatched is the most issuances one watch may name (the broker's
	// MaxWatchedIssuances). Credentials beyond it are still covered by
	// revocations of the identity, and by others at their next refresh.
	maxWatched = 32
)

// Watcher keeps a revocation watch open at the broker for the credentials
// its Refreshers hold, and drops a credential the moment the broker says a
// revocation covers it: its issuance, its cluster, or the sidecar's
// identity. It restarts the watch when a credential is renewed (the watch
// names the issuances it holds), and reconnects with jittered backoff when
// the stream breaks or falls silent. While the broker is unreachable
// nothing is dropped: the Refreshers keep serving what they hold until it
// expires, as they do for refreshes.
type Watcher struct {
	src     RevocationSource
	rs      []*Refresher
	log     *slog.Logger
	rand    func() float64
	after   func(time.Duration) <-chan time.Time
	renewed chan struct{}
}

// NewWatcher returns a Watcher for rs over src; log nil means discard.
func NewWatcher(src RevocationSource, rs []*Refresher, log *slog.Logger) *Watcher {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Watcher{src: src, rs: rs, log: log, rand: rand.Float64, after: time.After, renewed: make(chan struct{}, 1)}
}

// Renewed tells the Watcher that a credential was renewed, so that its
// watch names the new issuance. It never blocks.
func (w *Watcher) Renewed() {
	select {
	case w.renewed <- struct{}{}:
	default:
	}
}

// errRenewed ends a stream whose issuances changed; it is restarted at once.
var errRenewed = errors.New("sidecar: a credential was renewed")

// Run watches until ctx ends.
func (w *Watcher) Run(ctx context.Context) {
	failures := 0
	for ctx.Err() == nil {
		connected, err := w.watchOnce(ctx)
		switch {
		case ctx.Err() != nil:
			return
		case errors.Is(err, errRenewed):
			continue
		case status.Code(err) == codes.Unimplemented:
			w.log.Warn("the broker does not serve revocation watches; a revoked credential is served until it expires", "error", describe(err))
			return
		}
		if connected {
			failures = 0
		}
		failures++
		d := backoff.Policy{Min: MinBackoff, Max: MaxBackoff, Rand: w.rand}.Delay(failures)
		if ra, ok := brokerclient.RetryAfter(err); ok {
			d = max(d, min(ra, MaxRetryInfo))
		}
		w.log.Warn("revocation watch ended; reconnecting", "in", d.Round(time.Millisecond), "error", describe(err))
		select {
		case <-ctx.Done():
			return
		case <-w.after(d):
		}
	}
}

// watchOnce runs one stream until it ends; connected reports whether it got
// as far as the broker's first heartbeat.
func (w *Watcher) watchOnce(ctx context.Context) (connected bool, err error) {
	// Drain a renewal signal from before this stream: it names the
	// issuances held now.
	select {
	case <-w.renewed:
	default:
	}
	held := map[string]*Refresher{}
	req := &credbrokerv1.WatchRevocationsRequest{}
	for _, r := range w.rs {
		if c, ok := r.Latest(); ok && c.IssuanceID != "" {
			if len(req.IssuanceIds) == maxWatched {
				w.log.Warn("more credentials than one revocation watch names; the rest hear of a revocation of their issuance or cluster at their next refresh", "watched", maxWatched)
				break
			}
			held[c.IssuanceID] = r
			req.IssuanceIds = append(req.IssuanceIds, c.IssuanceID)
		}
	}
	sctx, cancel := context.WithCancel(ctx)
	type received struct {
		msg *credbrokerv1.WatchRevocationsResponse
		err error
	}
	msgs := make(chan received)
	done := make(chan struct{})
	defer func() { cancel(); <-done }()
	stream, err := w.src.WatchRevocations(sctx, req)
	if err != nil {
		close(done)
		return false, w.refused(err)
	}
	go func() {
		defer close(done)
		for {
			msg, err := stream.Recv()
			select {
			case msgs <- received{msg, err}:
			case <-sctx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	}()
	silence := firstHeartbeat
	var inForce map[string]bool // revocation ids in force, until the first heartbeat
	for {
		select {
		case <-ctx.Done():
			return connected, ctx.Err()
		case <-w.renewed:
			return connected, errRenewed
		case <-w.after(MissedHeartbeats * silence):
			return connected, fmt.Errorf("no word from the broker in %s", MissedHeartbeats*silence)
		case m := <-msgs:
			if m.err != nil {
				return connected, w.refused(m.err)
			}
			switch ev := m.msg.GetEvent().(type) {
			case *credbrokerv1.WatchRevocationsResponse_Heartbeat:
				silence = min(max(ev.Heartbeat.GetInterval().AsDuration(), minHeartbeat), maxHeartbeat)
				if !connected {
					connected = true
					w.resumeLifted(inForce)
					w.log.Info("watching revocations", "issuances", len(req.IssuanceIds))
				}
			case *credbrokerv1.WatchRevocationsResponse_Revoked:
				if !connected {
					if inForce == nil {
						inForce = map[string]bool{}
					}
					inForce[ev.Revoked.GetRevocation().GetRevocationId()] = true
				}
				w.apply(ev.Revoked, held)
			case *credbrokerv1.WatchRevocationsResponse_Lifted:
				w.lift(ev.Lifted.GetRevocation().GetRevocationId())
			}
		}
	}
}

// refused handles a watch the broker refused or ended: REVOKED (the
// sidecar's identity is revoked) drops every credential; anything else is
// returned for the caller to back off and reconnect, keeping what is held.
func (w *Watcher) refused(err error) error {
	if n, ok := revocationNotice(err); ok {
		for _, r := range w.rs {
			r.Drop(n, false)
		}
	}
	return err
}

// apply drops what revocation ev covers: everything for the sidecar's
// identity, every credential of a revoked cluster, and the named issuances.
func (w *Watcher) apply(ev *credbrokerv1.RevocationEvent, held map[string]*Refresher) {
	rev := ev.GetRevocation()
	n := Notice{RevocationID: rev.GetRevocationId(), Admin: rev.GetAdmin(), Message: describeRevocation(rev)}
	covered := map[*Refresher]bool{}
	for _, id := range ev.GetIssuanceIds() {
		if r := held[id]; r != nil {
			if c, ok := r.Latest(); ok && c.IssuanceID == id {
				covered[r] = true
			}
		}
	}
	issuanceOnly := rev.GetKind() == credbrokerv1.RevocationKind_REVOCATION_KIND_ISSUANCE
	for _, r := range w.rs {
		switch rev.GetKind() {
		case credbrokerv1.RevocationKind_REVOCATION_KIND_IDENTITY:
			covered[r] = true
		case credbrokerv1.RevocationKind_REVOCATION_KIND_CLUSTER:
			if r.Spec().Cluster != "" && r.Spec().Cluster == rev.GetTarget() {
				covered[r] = true
			}
		}
	}
	for _, r := range w.rs {
		if covered[r] {
			// A revoked issuance is replaced at once; a revoked identity or
			// cluster is not asked for again before the backoff.
			r.Drop(n, issuanceOnly)
		}
	}
}

// lift resumes the credentials a lifted revocation had dropped.
func (w *Watcher) lift(id string) {
	for _, r := range w.rs {
		if n, ok := r.Revoked(); ok && n.RevocationID == id {
			r.Resume()
		}
	}
}

// resumeLifted resumes, when a watch starts, the credentials dropped by a
// revocation that is no longer in force (lifted while the watch was down).
func (w *Watcher) resumeLifted(inForce map[string]bool) {
	for _, r := range w.rs {
		if n, ok := r.Revoked(); ok && !inForce[n.RevocationID] {
			if _, have := r.Latest(); !have {
				r.Resume()
			}
		}
	}
}

// describeRevocation words a revocation as the broker's REVOKED refusal
// does: what, why, by whom, and the id to quote.
func describeRevocation(r *credbrokerv1.Revocation) string {
	kind := map[credbrokerv1.RevocationKind]string{
		credbrokerv1.RevocationKind_REVOCATION_KIND_ISSUANCE: "issuance",
		credbrokerv1.RevocationKind_REVOCATION_KIND_IDENTITY: "identity",
		credbrokerv1.RevocationKind_REVOCATION_KIND_CLUSTER:  "cluster",
	}[r.GetKind()]
	s := fmt.Sprintf("%s %s is revoked", kind, r.GetTarget())
	if r.GetReason() != "" {
		s += " (" + r.GetReason() + ")"
	}
	return s + fmt.Sprintf(" since %s by %s; ask a broker admin, quoting revocation %s",
		r.GetCreatedAt().AsTime().UTC().Format(time.RFC3339), r.GetAdmin(), r.GetRevocationId())
}
