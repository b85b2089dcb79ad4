package statetest

import (
	"crypto/sha256"
	"reflect"
	"testing"
	"time"

	"github.com/credbroker/credbroker/attest/jointoken"
	"github.com/credbroker/credbroker/broker/state"
)

// clusterToken returns a key and an unused token for cluster.
func clusterToken(name, cluster string) (jointoken.Key, jointoken.Token) {
	_, tok := newToken(name, "", 0, time.Hour)
	tok.Cluster = cluster
	return jointoken.Key(sha256.Sum256([]byte("clusters " + name))), tok
}

func wantClusters(t *testing.T, s state.Clusters, f state.ClusterFilter, want ...state.ClusterSummary) {
	t.Helper()
	got, err := s.ListClusters(ctx, f)
	if err != nil {
		t.Fatalf("ListClusters(%+v): %v", f, err)
	}
	if len(got) == 0 && len(want) == 0 {
		return
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("ListClusters(%+v)\n got %+v\nwant %+v", f, got, want)
	}
}

// testClusters: the clusters named by nodes, join tokens and cluster
// revocations, by name, paged, with counts that follow every change of
// those items (evict, consume, void, purge, lift) and survive reopening.
func testClusters(t *testing.T, h Harness) {
	dir := t.TempDir()
	alpha := state.ClusterSummary{Cluster: "team-a/alpha", Nodes: 2, EvictedNodes: 1, JoinTokens: 1, UnusedJoinTokens: 1}
	alpha2 := state.ClusterSummary{Cluster: "team-a/alpha-2", Nodes: 1}
	beta := state.ClusterSummary{Cluster: "team-b/beta", JoinTokens: 1}
	gamma := state.ClusterSummary{Cluster: "team-c/gamma", Revocations: 1}
	t.Run("write", func(t *testing.T) {
		s := h.Open(t, dir)
		wantClusters(t, s, state.ClusterFilter{})
		for _, n := range []state.Node{node(t, "team-a/alpha", "w1"), node(t, "team-a/alpha", "w2"), node(t, "team-a/alpha-2", "w1")} {
			if _, err := s.RegisterNode(ctx, epoch, n); err != nil {
				t.Fatal(err)
			}
		}
		// Renewing changes nothing the index counts; evicting does.
		if _, err := s.RenewNode(ctx, epoch.Add(time.Minute), node(t, "team-a/alpha", "w1").SPIFFEID, "x509:02", epoch.Add(2*time.Hour)); err != nil {
			t.Fatal(err)
		}
		if _, err := s.EvictNode(ctx, epoch, node(t, "team-a/alpha", "w2").SPIFFEID); err != nil {
			t.Fatal(err)
		}
		k1, t1 := clusterToken("t1", "team-b/beta")
		k2, t2 := clusterToken("t2", "team-b/beta")
		k3, t3 := clusterToken("t3", "team-a/alpha")
		mustCreate(t, s, k1, t1)
		mustCreate(t, s, k2, t2)
		mustCreate(t, s, k3, t3)
		if _, err := s.ConsumeJoinToken(ctx, k1, "w9", epoch); err != nil {
			t.Fatal(err)
		}
		mustRevoke(t, s, revocation("r-gamma", state.RevokeCluster, "team-c/gamma", 0))
		mustRevoke(t, s, revocation("r-alice", state.RevokeIdentity, aliceID, 0)) // names no cluster

		beta2 := state.ClusterSummary{Cluster: "team-b/beta", JoinTokens: 2, UnusedJoinTokens: 1}
		wantClusters(t, s, state.ClusterFilter{}, alpha, alpha2, beta2, gamma)
		wantClusters(t, s, state.ClusterFilter{Limit: 2}, alpha, alpha2)
		// After a name: past all of its items, not into a name it prefixes.
		wantClusters(t, s, state.ClusterFilter{After: "team-a/alpha", Limit: 2}, alpha2, beta2)
		wantClusters(t, s, state.ClusterFilter{After: "team-b/beta"}, gamma)
		wantClusters(t, s, state.ClusterFilter{After: "team-c/gamma"})
		// Voiding drops beta's unused token; the used one stays until purged.
		if n, err := s.VoidJoinTokens(ctx, "team-b/beta"); err != nil || n != 1 {
			t.Fatalf("VoidJoinTokens = %d, %v", n, err)
		}
		wantClusters(t, s, state.ClusterFilter{After: "team-a/alpha-2", Limit: 1}, beta)
	})

	// Reopened: the index is as it was.
	s := h.Open(t, dir)
	wantClusters(t, s, state.ClusterFilter{}, alpha, alpha2, beta, gamma)

	// Purging and lifting take a cluster out of the list once nothing names it.
	if _, err := s.PurgeJoinTokens(ctx, epoch.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.PurgeNodes(ctx, epoch.Add(3*time.Hour)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.LiftRevocation(ctx, "r-gamma"); err != nil {
		t.Fatal(err)
	}
	// The evicted node stays for the record; the others expired.
	wantClusters(t, s, state.ClusterFilter{}, state.ClusterSummary{Cluster: "team-a/alpha", Nodes: 1, EvictedNodes: 1})
	until := revocation("r-until", state.RevokeCluster, "team-d/delta", 0)
	until.Until = epoch.Add(time.Minute)
	mustRevoke(t, s, until)
	wantClusters(t, s, state.ClusterFilter{After: "team-a/alpha"}, state.ClusterSummary{Cluster: "team-d/delta", Revocations: 1})
	if _, err := s.PurgeRevocations(ctx, epoch.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	wantClusters(t, s, state.ClusterFilter{After: "team-a/alpha"})
}
