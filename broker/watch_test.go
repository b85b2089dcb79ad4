package broker_test

import (
	"context"
	"fmt"
	"io"
	"slices"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	"github.com/credbroker/credbroker/broker"
	"github.com/credbroker/credbroker/broker/limits"
	"github.com/credbroker/credbroker/broker/policy"
	"github.com/credbroker/credbroker/broker/state"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

var otherController = spiffeid.RequireFromPath(td, "/ns/team-b/sa/capa-controller-manager")

// watch opens a revocation watch on conn and waits for the end of its
// snapshot (the first heartbeat), returning the revocations in force.
func watch(t *testing.T, ctx context.Context, conn *grpc.ClientConn, ids ...string) (grpc.ServerStreamingClient[credbrokerv1.WatchRevocationsResponse], []*credbrokerv1.RevocationEvent, error) {
	t.Helper()
	stream, err := credbrokerv1.NewBrokerServiceClient(conn).WatchRevocations(ctx, &credbrokerv1.WatchRevocationsRequest{IssuanceIds: ids})
	if err != nil {
		return nil, nil, err
	}
	var inForce []*credbrokerv1.RevocationEvent
	for {
		msg, err := stream.Recv()
		if err != nil {
			return nil, nil, err
		}
		if msg.GetHeartbeat() != nil {
			return stream, inForce, nil
		}
		inForce = append(inForce, msg.GetRevoked())
	}
}

// nextEvent returns the next event that is not a heartbeat.
func nextEvent(t *testing.T, stream grpc.ServerStreamingClient[credbrokerv1.WatchRevocationsResponse]) *credbrokerv1.WatchRevocationsResponse {
	t.Helper()
	for {
		msg, err := stream.Recv()
		if err != nil {
			t.Fatalf("watch ended: %v", err)
		}
		if msg.GetHeartbeat() == nil {
			return msg
		}
	}
}

// TestWatchRevocationsTellsOnlyWhatCoversTheCaller: a watch hears of the
// revocation of a named issuance, its lift, and its identity's revocation,
// and of nothing about other identities, their issuances or clusters, nor
// about its own issuances it did not name; another identity's watch hears of
// the revocation of its issuance's cluster. A revoked identity cannot watch.
func TestWatchRevocationsTellsOnlyWhatCoversTheCaller(t *testing.T) {
	h := newHarness(t, func(c *harnessConfig) {
		c.rules = append(c.rules, policyRule(otherController.String(), "capa-token", "capi-*/*"))
	})
	ctx := ctxT(t)
	conn := h.dial(h.mint(controllerID, time.Hour))
	other := h.dial(h.mint(otherController, time.Hour))
	a, err := issue(ctx, conn, &credbrokerv1.IssueCredentialRequest{Profile: "plain-token"})
	if err != nil {
		t.Fatal(err)
	}
	b, err := issue(ctx, conn, &credbrokerv1.IssueCredentialRequest{Profile: "plain-token", Audience: "sts.amazonaws.com"})
	if err != nil {
		t.Fatal(err)
	}
	o, err := issue(ctx, other, &credbrokerv1.IssueCredentialRequest{Profile: "capa-token", Cluster: "capi-b/one"})
	if err != nil {
		t.Fatal(err)
	}
	mine, inForce, err := watch(t, ctx, conn, a.GetIssuanceId())
	if err != nil || len(inForce) != 0 {
		t.Fatalf("watch: %v, in force %v", err, inForce)
	}
	theirs, _, err := watch(t, ctx, other, o.GetIssuanceId())
	if err != nil {
		t.Fatal(err)
	}

	revoke := func(kind state.RevocationKind, target, reason string) state.Revocation {
		t.Helper()
		r, err := h.revoke.Revoke(ctx, adminPrincipal, kind, target, reason, time.Time{})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	// None of these covers the first watch.
	revoke(state.RevokeIssuance, b.GetIssuanceId(), "not named by the watch")
	revoke(state.RevokeIssuance, o.GetIssuanceId(), "another identity's issuance")
	clusterRev := revoke(state.RevokeCluster, "capi-b/one", "cluster deleted")
	revoke(state.RevokeIdentity, otherController.String(), "another identity")

	// The other watch hears of its issuance and of its cluster, in order.
	ev := nextEvent(t, theirs).GetRevoked()
	if ev.GetRevocation().GetTarget() != o.GetIssuanceId() || !slices.Equal(ev.GetIssuanceIds(), []string{o.GetIssuanceId()}) {
		t.Fatalf("other watch: first event %v, want its issuance", ev)
	}
	ev = nextEvent(t, theirs).GetRevoked()
	if ev.GetRevocation().GetRevocationId() != clusterRev.ID || !slices.Equal(ev.GetIssuanceIds(), []string{o.GetIssuanceId()}) {
		t.Fatalf("other watch: second event %v, want its issuance's cluster", ev)
	}

	rev := revoke(state.RevokeIssuance, a.GetIssuanceId(), "leaked in a CI log")
	ev = nextEvent(t, mine).GetRevoked()
	if ev.GetRevocation().GetRevocationId() != rev.ID || ev.GetRevocation().GetReason() != "leaked in a CI log" ||
		ev.GetRevocation().GetAdmin() != adminPrincipal || !slices.Equal(ev.GetIssuanceIds(), []string{a.GetIssuanceId()}) {
		t.Fatalf("first event %v, want the revocation of the named issuance (nothing about others before it)", ev)
	}
	if _, err := h.revoke.Lift(ctx, adminPrincipal, rev.ID); err != nil {
		t.Fatal(err)
	}
	if ev := nextEvent(t, mine).GetLifted(); ev.GetRevocation().GetRevocationId() != rev.ID {
		t.Fatalf("after the lift: %v", ev)
	}
	idRev := revoke(state.RevokeIdentity, controllerID.String(), "pod compromised")
	ev = nextEvent(t, mine).GetRevoked()
	if ev.GetRevocation().GetKind() != credbrokerv1.RevocationKind_REVOCATION_KIND_IDENTITY || ev.GetRevocation().GetRevocationId() != idRev.ID ||
		!slices.Equal(ev.GetIssuanceIds(), []string{a.GetIssuanceId()}) {
		t.Fatalf("identity revocation: %v", ev)
	}

	// A revoked identity is refused a new watch, naming the revocation.
	_, _, err = watch(t, ctx, conn)
	_, info := wantReason(t, err, credbrokerv1.ErrorReason_REVOKED)
	if info.GetMetadata()["revocation_id"] != idRev.ID {
		t.Fatalf("refusal %v, want revocation %s", info, idRev.ID)
	}
}

func policyRule(id, profile, clusters string) policy.Rule {
	return policy.Rule{ID: id, Profiles: []string{profile}, Clusters: []string{clusters}}
}

// TestWatchRevocationsRefusesOthersIssuances: a watch may name only
// issuances issued to its caller; another identity's is refused exactly like
// one that does not exist, and too many names are refused.
func TestWatchRevocationsRefusesOthersIssuances(t *testing.T) {
	h := newHarness(t, func(c *harnessConfig) {
		c.rules = append(c.rules, policyRule(otherController.String(), "capa-token", "capi-*/*"))
	})
	ctx := ctxT(t)
	conn := h.dial(h.mint(controllerID, time.Hour))
	o, err := issue(ctx, h.dial(h.mint(otherController, time.Hour)), &credbrokerv1.IssueCredentialRequest{Profile: "capa-token", Cluster: "capi-b/one"})
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = watch(t, ctx, conn, o.GetIssuanceId())
	theirs, _ := wantReason(t, err, credbrokerv1.ErrorReason_NOT_FOUND)
	_, _, err = watch(t, ctx, conn, "0190aaaa-0000-7000-8000-000000000000")
	unknown, _ := wantReason(t, err, credbrokerv1.ErrorReason_NOT_FOUND)
	if want := fmt.Sprintf("no credential %q was issued to %s", o.GetIssuanceId(), controllerID); theirs.Message() != want {
		t.Errorf("refusal %q, want %q", theirs.Message(), want)
	}
	if len(unknown.Message()) != len(theirs.Message()) {
		t.Errorf("another identity's issuance (%q) and an unknown one (%q) are told apart", theirs.Message(), unknown.Message())
	}
	ids := make([]string, broker.MaxWatchedIssuances+1)
	for i := range ids {
		ids[i] = fmt.Sprintf("id-%d", i)
	}
	_, _, err = watch(t, ctx, conn, ids...)
	wantReason(t, err, credbrokerv1.ErrorReason_INVALID_REQUEST)
	// No stream was left open by the refusals.
	if n := h.watches.Open(); n != 0 {
		t.Errorf("%d watches open after refusals", n)
	}
}

// TestWatchRevocationsStreamCaps: an identity holds at most its cap of
// watches open, the broker at most its total; past either the watch is
// RESOURCE_EXHAUSTED (RATE_LIMITED, limit watch_streams). Stopping the
// watches ends every stream with UNAVAILABLE, and the server then stops
// gracefully (goleak checks that nothing is left running).
func TestWatchRevocationsStreamCaps(t *testing.T) {
	h := newHarness(t, func(c *harnessConfig) {
		c.watch = broker.WatchConfig{PerIdentity: 2, Total: 3}
	})
	ctx := ctxT(t)
	conn := h.dial(h.mint(controllerID, time.Hour))
	other := h.dial(h.mint(otherController, time.Hour))
	var open []grpc.ServerStreamingClient[credbrokerv1.WatchRevocationsResponse]
	for range 2 {
		s, _, err := watch(t, ctx, conn)
		if err != nil {
			t.Fatal(err)
		}
		open = append(open, s)
	}
	_, _, err := watch(t, ctx, conn)
	_, info := wantReason(t, err, credbrokerv1.ErrorReason_RATE_LIMITED)
	if info.GetMetadata()["limit"] != broker.MetaLimitWatchStreams {
		t.Errorf("per-identity refusal %v", info)
	}
	s, _, err := watch(t, ctx, other)
	if err != nil {
		t.Fatalf("another identity's first watch: %v", err)
	}
	open = append(open, s)
	_, _, err = watch(t, ctx, other)
	if _, info := wantReason(t, err, credbrokerv1.ErrorReason_RATE_LIMITED); info.GetMetadata()["limit"] != broker.MetaLimitWatchStreams {
		t.Errorf("total refusal %v", info)
	}
	if n := h.watches.Open(); n != 3 || h.metricSum("credbroker_revocation_watches") != 3 || h.metricSum("credbroker_revocation_watches_refused_total") != 2 {
		t.Errorf("%d watches open, want 3; metrics: %v open, %v refused (want 2)", n,
			h.metricSum("credbroker_revocation_watches"), h.metricSum("credbroker_revocation_watches_refused_total"))
	}

	h.watches.Stop()
	for _, s := range open {
		var err error
		for err == nil {
			_, err = s.Recv()
		}
		wantReason(t, err, credbrokerv1.ErrorReason_UNAVAILABLE)
	}
	stopped := make(chan struct{})
	go func() { h.grpcServer.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-ctx.Done():
		t.Fatal("the server did not stop gracefully: a watch held it open")
	}
}

// TestWatchRevocationsHeartbeats: an idle watch hears a heartbeat every
// interval, which it is told.
func TestWatchRevocationsHeartbeats(t *testing.T) {
	h := newHarness(t, func(c *harnessConfig) { c.watch.Heartbeat = 5 * time.Millisecond })
	ctx, cancel := context.WithCancel(ctxT(t))
	stream, _, err := watch(t, ctx, h.dial(h.mint(controllerID, time.Hour)))
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		msg, err := stream.Recv()
		if err != nil || msg.GetHeartbeat().GetInterval().AsDuration() != 5*time.Millisecond {
			t.Fatalf("heartbeat %v, %v", msg, err)
		}
	}
	cancel()
	// Heartbeats already in flight may still arrive; the stream must then
	// end with the context's cancellation, not a clean EOF.
	var end error
	for end == nil {
		_, end = stream.Recv()
	}
	if end == io.EOF || wantCode(t, end, codes.Canceled) == nil {
		t.Fatal("the stream did not end with its context")
	}
}

// TestWatchRevocationsStartsAreRateLimited: watch starts take a token of
// the caller's own bucket (limits.requests.watch), before anything is read.
func TestWatchRevocationsStartsAreRateLimited(t *testing.T) {
	h := newHarness(t, func(c *harnessConfig) { c.requests.Watch = limits.Spec{Rate: 0.001, Burst: 1} })
	ctx := ctxT(t)
	conn := h.dial(h.mint(controllerID, time.Hour))
	if _, _, err := watch(t, ctx, conn); err != nil {
		t.Fatal(err)
	}
	_, _, err := watch(t, ctx, conn)
	if _, info := wantReason(t, err, credbrokerv1.ErrorReason_RATE_LIMITED); info.GetMetadata()["limit"] != "rate" {
		t.Fatalf("second start: %v", info)
	}
	// Another identity has its own bucket.
	if _, _, err := watch(t, ctx, h.dial(h.mint(otherController, time.Hour))); err != nil {
		t.Fatalf("another identity: %v", err)
	}
}
