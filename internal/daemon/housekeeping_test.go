package daemon

import (
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/credbroker/credbroker/attest/jointoken"
	"github.com/credbroker/credbroker/broker/state"
	"github.com/credbroker/credbroker/broker/state/boltstate"
	"github.com/credbroker/credbroker/test/fakeclock"
)

// TestHousekeepingPurgesWhatEnded: the daemon's housekeeping loop, driven
// by ticks and a fake clock over a real bbolt store, purges ended quota
// windows, expired join tokens, expired (not evicted) nodes and revocations
// that cover nothing any more — and nothing before its time.
func TestHousekeepingPurgesWhatEnded(t *testing.T) {
	ctx := context.Background()
	db, err := boltstate.OpenDB(filepath.Join(t.TempDir(), DBFile))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	st, err := boltstate.New(db)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	clock := fakeclock.New(t0)

	// Everything below ends at t0+1h, except what is meant to stay.
	if _, err := st.Spend(ctx, t0, []state.Charge{{Key: state.QuotaKey{Kind: state.QuotaIdentity, Name: "spiffe://td/a"}, Quota: state.Quota{Max: 5, Window: time.Hour}}}); err != nil {
		t.Fatal(err)
	}
	key := jointoken.Key(sha256.Sum256([]byte("hk")))
	if err := st.CreateJoinToken(ctx, key, jointoken.Token{ID: "hk", Cluster: "team-a/alpha", Node: "n1", CreatedAt: t0, ExpiresAt: t0.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	node := func(name string) state.Node {
		return state.Node{SPIFFEID: "spiffe://td/capi/cluster/team-a/alpha/node/" + name, Cluster: "team-a/alpha", Name: name,
			Attestation: "join-token", ExpiresAt: t0.Add(time.Hour)}
	}
	for _, n := range []state.Node{node("expired"), node("evicted")} {
		if _, err := st.RegisterNode(ctx, t0, n); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := st.EvictNode(ctx, t0, node("evicted").SPIFFEID); err != nil {
		t.Fatal(err)
	}
	revs := []state.Revocation{
		{ID: "r-until", Kind: state.RevokeIdentity, Target: "spiffe://td/a", Admin: "unix:uid=0", CreatedAt: t0, Until: t0.Add(time.Hour)},
		{ID: "r-issuance", Kind: state.RevokeIssuance, Target: "i-1", Admin: "unix:uid=0", CreatedAt: t0, CoveredUntil: t0.Add(time.Hour)},
		{ID: "r-forever", Kind: state.RevokeCluster, Target: "team-a/alpha", Admin: "unix:uid=0", CreatedAt: t0},
	}
	for _, r := range revs {
		if _, err := st.Revoke(ctx, r); err != nil {
			t.Fatal(err)
		}
	}

	tick := make(chan time.Time)
	swept := make(chan struct{})
	done := make(chan struct{})
	stopped := make(chan struct{})
	h := housekeeper{purges: purges(ctx, st), now: clock.Now, log: slog.New(slog.NewTextHandler(io.Discard, nil)), swept: func() { swept <- struct{}{} }}
	go func() { h.run(done, tick); close(stopped) }()
	defer func() { close(done); <-stopped }()
	sweep := func() {
		tick <- clock.Now()
		<-swept
	}

	clock.Set(t0.Add(time.Hour - time.Nanosecond))
	sweep()
	if n, err := st.PurgeQuotas(ctx, clock.Now()); err != nil || n != 0 {
		t.Fatalf("a window was left to purge before it ended: %d, %v", n, err)
	}
	if u, err := st.Usage(ctx, clock.Now(), state.QuotaKey{Kind: state.QuotaIdentity, Name: "spiffe://td/a"}); err != nil || u.Used != 1 {
		t.Fatalf("window before its end: %+v, %v", u, err)
	}
	if toks, err := st.ListJoinTokens(ctx); err != nil || len(toks) != 1 {
		t.Fatalf("join tokens before expiry: %v, %v", toks, err)
	}
	if rs, err := st.ListRevocations(ctx, state.RevocationFilter{}); err != nil || len(rs) != 3 {
		t.Fatalf("revocations before their end: %v, %v", rs, err)
	}

	clock.Set(t0.Add(time.Hour))
	sweep()
	if n, err := st.PurgeQuotas(ctx, clock.Now()); err != nil || n != 0 {
		t.Fatalf("housekeeping left %d ended windows (%v)", n, err)
	}
	if toks, err := st.ListJoinTokens(ctx); err != nil || len(toks) != 0 {
		t.Fatalf("expired join tokens left: %v, %v", toks, err)
	}
	if _, err := st.GetNode(ctx, node("expired").SPIFFEID); !errors.Is(err, state.ErrNotFound) {
		t.Fatalf("expired node: %v, want it purged", err)
	}
	if n, err := st.GetNode(ctx, node("evicted").SPIFFEID); err != nil || !n.Evicted() {
		t.Fatalf("evicted node: %+v, %v; want it kept", n, err)
	}
	rs, err := st.ListRevocations(ctx, state.RevocationFilter{})
	if err != nil || len(rs) != 1 || rs[0].ID != "r-forever" {
		t.Fatalf("revocations after their end: %+v, %v; want only r-forever", rs, err)
	}
}
