package statetest

import (
	"errors"
	"fmt"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/credbroker/credbroker/attest/jointoken"
	"github.com/credbroker/credbroker/broker/state"
)

const (
	aliceID   = "spiffe://example.test/ns/capi-system/sa/alice"
	revAdmin  = "spiffe://example.test/admin/alice"
	revTarget = "team-a/alpha"
)

// revocation returns a revocation made at epoch+at.
func revocation(id string, kind state.RevocationKind, target string, at time.Duration) state.Revocation {
	return state.Revocation{ID: id, Kind: kind, Target: target, Reason: "compromised " + id, Admin: revAdmin, CreatedAt: epoch.Add(at)}
}

func mustRevoke(t *testing.T, s state.Revocations, r state.Revocation) {
	t.Helper()
	if _, err := s.Revoke(ctx, r); err != nil {
		t.Fatalf("Revoke(%s): %v", r.ID, err)
	}
}

func wantRevocations(t *testing.T, s state.Revocations, want ...state.Revocation) {
	t.Helper()
	got, err := s.ListRevocations(ctx, state.RevocationFilter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) == 0 && len(want) == 0 {
		return
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("revocations:\n got %+v\nwant %+v", got, want)
	}
}

// testRevocations: revoke each kind, refuse malformed and duplicate ones,
// list in id order with paging, lift exactly once.
func testRevocations(t *testing.T, h Harness) {
	s := open(t, h)
	iss := revocation("r1", state.RevokeIssuance, "0190f0a0-0000-7000-8000-000000000001", 0)
	iss.CoveredUntil = epoch.Add(time.Hour)
	iss.UpstreamRef = "ASIAEXAMPLE"
	iss.Issuer = "sts"
	iss.Profile = "capa"
	iss.Origin = "0190f0a0-0000-7000-8000-000000000000"
	id := revocation("r2", state.RevokeIdentity, aliceID, time.Second)
	id.Until = epoch.Add(time.Hour)
	cl := revocation("r3", state.RevokeCluster, revTarget, 2*time.Second)
	for _, r := range []state.Revocation{cl, iss, id} {
		stored, err := s.Revoke(ctx, r)
		if err != nil || !reflect.DeepEqual(stored, r) {
			t.Fatalf("Revoke(%s) = %+v, %v; want it stored as given", r.ID, stored, err)
		}
	}
	dup := cl
	dup.Target = "team-b/beta"
	if _, err := s.Revoke(ctx, dup); !errors.Is(err, state.ErrExists) {
		t.Fatalf("revoking under a taken id: err = %v, want ErrExists", err)
	}
	for name, bad := range map[string]state.Revocation{
		"unknown kind":         revocation("b1", "node", revTarget, 0),
		"identity not SPIFFE":  revocation("b2", state.RevokeIdentity, "alice", 0),
		"cluster not ns/name":  revocation("b3", state.RevokeCluster, "alpha", 0),
		"no target":            revocation("b4", state.RevokeIssuance, "", 0),
		"no id":                revocation("", state.RevokeIssuance, "x", 0),
		"no admin":             {ID: "b5", Kind: state.RevokeCluster, Target: revTarget, CreatedAt: epoch},
		"no creation time":     {ID: "b6", Kind: state.RevokeCluster, Target: revTarget, Admin: revAdmin},
		"ends before it began": {ID: "b7", Kind: state.RevokeCluster, Target: revTarget, Admin: revAdmin, CreatedAt: epoch, Until: epoch},
	} {
		if _, err := s.Revoke(ctx, bad); err == nil {
			t.Errorf("%s: revocation accepted", name)
		}
	}
	wantRevocations(t, s, iss, id, cl)

	page, err := s.ListRevocations(ctx, state.RevocationFilter{After: "r1", Limit: 1})
	if err != nil || !reflect.DeepEqual(page, []state.Revocation{id}) {
		t.Fatalf("page after r1 of 1 = %+v, %v; want r2", page, err)
	}

	lifted, err := s.LiftRevocation(ctx, "r2")
	if err != nil || !reflect.DeepEqual(lifted, id) {
		t.Fatalf("LiftRevocation(r2) = %+v, %v; want r2", lifted, err)
	}
	if _, err := s.LiftRevocation(ctx, "r2"); !errors.Is(err, state.ErrNotFound) {
		t.Fatalf("lifting twice: err = %v, want ErrNotFound", err)
	}
	wantRevocations(t, s, iss, cl)
}

// testRevocationsExpiry: a revocation covers nothing once its Until or
// CoveredUntil has passed (by the time passed in), and only then is it
// purged; one without either stays until lifted.
func testRevocationsExpiry(t *testing.T, h Harness) {
	s := open(t, h)
	until := revocation("r1", state.RevokeIdentity, aliceID, 0)
	until.Until = epoch.Add(time.Hour)
	covered := revocation("r2", state.RevokeIssuance, "issuance-1", 0)
	covered.CoveredUntil = epoch.Add(2 * time.Hour)
	forever := revocation("r3", state.RevokeCluster, revTarget, 0)
	for _, r := range []state.Revocation{until, covered, forever} {
		mustRevoke(t, s, r)
	}
	x, err := state.NewRevocationIndex(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	defer x.Close()
	justBefore := epoch.Add(time.Hour - time.Nanosecond)
	if r, ok := x.Covering(justBefore, "", aliceID, ""); !ok || r.ID != "r1" {
		t.Fatalf("identity just before until: %+v, %v; want r1", r, ok)
	}
	if _, ok := x.Covering(epoch.Add(time.Hour), "", aliceID, ""); ok {
		t.Fatal("identity still covered at its until")
	}
	if n, err := s.PurgeRevocations(ctx, justBefore); err != nil || n != 0 {
		t.Fatalf("purge before any ended = %d, %v; want 0", n, err)
	}
	if n, err := s.PurgeRevocations(ctx, epoch.Add(time.Hour)); err != nil || n != 1 {
		t.Fatalf("purge at +1h = %d, %v; want r1", n, err)
	}
	if r, ok := x.Covering(epoch.Add(time.Hour), "issuance-1", "", ""); !ok || r.ID != "r2" {
		t.Fatalf("issuance before its credential expired: %+v, %v; want r2", r, ok)
	}
	if n, err := s.PurgeRevocations(ctx, epoch.Add(2*time.Hour)); err != nil || n != 1 {
		t.Fatalf("purge at +2h = %d, %v; want r2", n, err)
	}
	if n, err := s.PurgeRevocations(ctx, epoch.Add(1000*time.Hour)); err != nil || n != 0 {
		t.Fatalf("purge at +1000h = %d, %v; want 0 (r3 has no end)", n, err)
	}
	wantRevocations(t, s, forever)
	if x.Len() != 1 {
		t.Fatalf("index holds %d after the purges, want 1", x.Len())
	}
	if r, ok := x.Covering(epoch.Add(1000*time.Hour), "", "", revTarget); !ok || r.ID != "r3" {
		t.Fatalf("cluster: %+v, %v; want r3", r, ok)
	}
}

// testRevocationIndex: an index built over the store answers from the
// revocations made before it and sees each later revoke and lift before the
// call returns; its hooks see every change in order.
func testRevocationIndex(t *testing.T, h Harness) {
	s := open(t, h)
	mustRevoke(t, s, revocation("r1", state.RevokeCluster, revTarget, 0))
	var mu sync.Mutex
	var seen []string
	x, err := state.NewRevocationIndex(ctx, s, func(c state.RevocationChange) {
		mu.Lock()
		defer mu.Unlock()
		seen = append(seen, fmt.Sprintf("%s removed=%v", c.Revocation.ID, c.Removed))
	})
	if err != nil {
		t.Fatal(err)
	}
	defer x.Close()
	if _, ok := x.Covering(epoch, "i1", "spiffe://example.test/other", "team-b/beta"); ok {
		t.Fatal("a request naming nothing revoked is covered")
	}
	if r, ok := x.Covering(epoch, "i1", aliceID, revTarget); !ok || r.ID != "r1" {
		t.Fatalf("cluster revoked before the index: %+v, %v", r, ok)
	}
	mustRevoke(t, s, revocation("r2", state.RevokeIdentity, aliceID, 0))
	if r, ok := x.Covering(epoch, "", aliceID, ""); !ok || r.ID != "r2" {
		t.Fatalf("identity revoked after the index: %+v, %v", r, ok)
	}
	mustRevoke(t, s, revocation("r3", state.RevokeIssuance, "i1", 0))
	if r, ok := x.Covering(epoch, "i1", "", ""); !ok || r.ID != "r3" {
		t.Fatalf("issuance: %+v, %v", r, ok)
	}
	if _, err := s.LiftRevocation(ctx, "r2"); err != nil {
		t.Fatal(err)
	}
	if r, ok := x.Covering(epoch, "", aliceID, ""); ok {
		t.Fatalf("identity covered after the lift: %+v", r)
	}
	mu.Lock()
	defer mu.Unlock()
	if want := []string{"r2 removed=false", "r3 removed=false", "r2 removed=true"}; !reflect.DeepEqual(seen, want) {
		t.Fatalf("hook saw %q, want %q", seen, want)
	}
}

// testRevocationsConcurrent: revokes and lifts racing each other and an
// index being built end with the index holding exactly what the store
// lists, and each revocation lifted at most once.
func testRevocationsConcurrent(t *testing.T, h Harness) {
	s := open(t, h)
	const workers, each = 8, 20
	var lifts sync.Map
	var wg sync.WaitGroup
	indexes := make(chan *state.RevocationIndex, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if w%2 == 0 {
				x, err := state.NewRevocationIndex(ctx, s)
				if err != nil {
					t.Error(err)
					return
				}
				indexes <- x
			}
			for i := range each {
				id := fmt.Sprintf("w%d-%02d", w, i)
				if _, err := s.Revoke(ctx, revocation(id, state.RevokeIdentity, fmt.Sprintf("%s-%d-%d", aliceID, w, i), 0)); err != nil {
					t.Error(err)
					return
				}
				if i%2 == 1 {
					// Every worker tries to lift its neighbour's previous one too.
					for _, victim := range []string{id, fmt.Sprintf("w%d-%02d", (w+1)%workers, i-1)} {
						if _, err := s.LiftRevocation(ctx, victim); err == nil {
							if _, dup := lifts.LoadOrStore(victim, true); dup {
								t.Errorf("%s lifted twice", victim)
							}
						} else if !errors.Is(err, state.ErrNotFound) {
							t.Error(err)
						}
					}
				}
			}
		}()
	}
	wg.Wait()
	close(indexes)
	list, err := s.ListRevocations(ctx, state.RevocationFilter{})
	if err != nil {
		t.Fatal(err)
	}
	for x := range indexes {
		if x.Len() != len(list) {
			t.Errorf("an index holds %d revocations, the store %d", x.Len(), len(list))
		}
		for _, r := range list {
			if got, ok := x.Covering(epoch, "", r.Target, ""); !ok || got.ID != r.ID {
				t.Errorf("index misses %s", r.ID)
			}
		}
		x.Close()
	}
	lifted := 0
	lifts.Range(func(any, any) bool { lifted++; return true })
	if len(list)+lifted != workers*each {
		t.Fatalf("%d listed + %d lifted, want %d made", len(list), lifted, workers*each)
	}
}

// testVoidJoinTokens: voiding a cluster's join tokens deletes its unused
// ones only.
func testVoidJoinTokens(t *testing.T, h Harness) {
	s := open(t, h)
	k1, t1 := newToken("void-unused", "n1", 0, time.Hour)
	k2, t2 := newToken("void-used", "n2", 0, time.Hour)
	k3, t3 := newToken("void-other", "n3", 0, time.Hour)
	t3.Cluster = "team-b/beta"
	for _, c := range []struct {
		k jointoken.Key
		t jointoken.Token
	}{{k1, t1}, {k2, t2}, {k3, t3}} {
		mustCreate(t, s, c.k, c.t)
	}
	if _, err := s.ConsumeJoinToken(ctx, k2, "", epoch); err != nil {
		t.Fatal(err)
	}
	if n, err := s.VoidJoinTokens(ctx, "team-a/alpha"); err != nil || n != 1 {
		t.Fatalf("VoidJoinTokens = %d, %v; want 1 (the unused one)", n, err)
	}
	if _, err := s.ConsumeJoinToken(ctx, k1, "", epoch); !errors.Is(err, jointoken.ErrUnknown) {
		t.Fatalf("voided token: err = %v, want ErrUnknown", err)
	}
	if _, err := s.ConsumeJoinToken(ctx, k3, "", epoch); err != nil {
		t.Fatalf("another cluster's token: %v", err)
	}
	list, err := s.ListJoinTokens(ctx)
	if err != nil || len(list) != 2 {
		t.Fatalf("after voiding: %+v, %v; want the used one and the other cluster's", list, err)
	}
}

// testNodesPurge: nodes whose SVID expired are purged, evicted ones kept.
func testNodesPurge(t *testing.T, h Harness) {
	s := open(t, h)
	live := node(t, "team-a/alpha", "live")
	live.ExpiresAt = epoch.Add(2 * time.Hour)
	gone := node(t, "team-a/alpha", "gone")
	ev := node(t, "team-a/alpha", "evicted")
	for _, n := range []state.Node{live, gone, ev} {
		if _, err := s.RegisterNode(ctx, epoch, n); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.EvictNode(ctx, epoch, ev.SPIFFEID); err != nil {
		t.Fatal(err)
	}
	if n, err := s.PurgeNodes(ctx, epoch.Add(time.Hour-time.Nanosecond)); err != nil || n != 0 {
		t.Fatalf("purge before expiry = %d, %v; want 0", n, err)
	}
	if n, err := s.PurgeNodes(ctx, epoch.Add(time.Hour)); err != nil || n != 1 {
		t.Fatalf("purge at expiry = %d, %v; want 1", n, err)
	}
	if _, err := s.GetNode(ctx, gone.SPIFFEID); !errors.Is(err, state.ErrNotFound) {
		t.Fatalf("purged node: err = %v, want ErrNotFound", err)
	}
	if _, err := s.RegisterNode(ctx, epoch.Add(2*time.Hour), ev); !errors.Is(err, state.ErrEvicted) {
		t.Fatalf("evicted node after purges: err = %v, want ErrEvicted", err)
	}
}
