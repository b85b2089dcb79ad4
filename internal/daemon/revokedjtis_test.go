package daemon

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/credbroker/credbroker/broker/config"
	"github.com/credbroker/credbroker/broker/state"
	"github.com/credbroker/credbroker/broker/state/boltstate"
	"github.com/credbroker/credbroker/issuers/jwt"
)

// TestRevokedJTIsFromRevocations: the local JWT issuer's revoked-token list,
// served over HTTP, follows the revocations in a real store through the
// index's watch: a revoked issuance's jti appears until the token's exp; an
// identity or cluster revocation appears as itself (sub / cluster and
// issued_before) until the longest token issued before it has expired; other
// issuers' issuances and lifted revocations do not appear.
func TestRevokedJTIsFromRevocations(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	db, err := boltstate.OpenDB(filepath.Join(dir, "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	st, err := boltstate.New(db)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	now := time.Date(2026, 11, 30, 12, 0, 0, 250_000_000, time.UTC)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }

	iss, err := jwt.New(jwt.Config{IssuerURL: "https://broker.test/oidc", KeyFile: filepath.Join(dir, "jwt.key"), Clock: clock})
	if err != nil {
		t.Fatal(err)
	}
	set := &issuerSet{jwtName: "oidc", jwt: iss}
	x, err := state.NewRevocationIndex(ctx, st, set.forget)
	if err != nil {
		t.Fatal(err)
	}
	defer x.Close()
	cfg := &config.Config{Profiles: map[string]config.Profile{
		"short": {Issuer: "oidc", MaxTTL: 15 * time.Minute},
		"long":  {Issuer: "oidc", MaxTTL: time.Hour},
		"sts":   {Issuer: "aws", MaxTTL: 12 * time.Hour},
	}}
	if got := jwtMaxTTL(cfg, "oidc"); got != time.Hour {
		t.Fatalf("jwtMaxTTL = %s, want 1h", got)
	}
	iss.SetRevokedSource(revokedJTIs(x, "oidc", jwtMaxTTL(cfg, "oidc"), clock))
	srv := httptest.NewServer(iss.Handler())
	defer srv.Close()
	list := func() []jwt.RevokedToken {
		t.Helper()
		resp, err := http.Get(srv.URL + "/oidc" + jwt.RevokedPath)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var d struct {
			Complete bool               `json:"complete"`
			Revoked  []jwt.RevokedToken `json:"revoked"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&d); err != nil || !d.Complete {
			t.Fatalf("decoding the list: %v, complete %v", err, d.Complete)
		}
		return d.Revoked
	}
	revoke := func(r state.Revocation) {
		t.Helper()
		r.Admin, r.CreatedAt = "unix:uid=0", clock()
		if _, err := st.Revoke(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	if got := list(); len(got) != 0 {
		t.Fatalf("before any revocation: %+v", got)
	}

	tokenExp := clock().Add(10 * time.Minute).Truncate(time.Second)
	revoke(state.Revocation{ID: "r1", Kind: state.RevokeIssuance, Target: "jti-1", Issuer: "oidc", CoveredUntil: tokenExp})
	revoke(state.Revocation{ID: "r2", Kind: state.RevokeIssuance, Target: "sts-1", Issuer: "aws", CoveredUntil: tokenExp})
	if got := list(); len(got) != 1 || got[0].JTI != "jti-1" || got[0].Exp != tokenExp.Unix() {
		t.Fatalf("after revoking an issuance: %+v", got)
	}

	advance(time.Minute)
	made := clock()
	revoke(state.Revocation{ID: "r3", Kind: state.RevokeIdentity, Target: "spiffe://example.org/w"})
	revoke(state.Revocation{ID: "r4", Kind: state.RevokeCluster, Target: "team-a/c1"})
	got := list()
	if len(got) != 3 {
		t.Fatalf("after identity and cluster revocations: %+v", got)
	}
	before, until := made.Add(time.Second-1).Truncate(time.Second).Unix(), made.Add(time.Hour+time.Second-1).Truncate(time.Second).Unix()
	var sawIdentity, sawCluster bool
	for _, e := range got {
		switch {
		case e.Subject == "spiffe://example.org/w":
			sawIdentity = e.IssuedBefore == before && e.Exp == until && e.JTI == ""
		case e.Cluster == "team-a/c1":
			sawCluster = e.IssuedBefore == before && e.Exp == until && e.JTI == ""
		}
	}
	if !sawIdentity || !sawCluster {
		t.Errorf("identity/cluster entries (issued_before %d, exp %d): %+v", before, until, got)
	}

	// Lifting takes the entry out at once.
	if _, err := st.LiftRevocation(ctx, "r4"); err != nil {
		t.Fatal(err)
	}
	if got := list(); len(got) != 2 {
		t.Errorf("after lifting the cluster revocation: %+v", got)
	}
	// The token's exp passes: its jti is gone; the identity's stays.
	advance(9 * time.Minute)
	if got := list(); len(got) != 1 || got[0].Subject != "spiffe://example.org/w" {
		t.Errorf("after the token's exp: %+v", got)
	}
	// Every token issued before the identity revocation has expired.
	advance(time.Hour)
	if got := list(); len(got) != 0 {
		t.Errorf("after the longest lifetime: %+v", got)
	}
}
