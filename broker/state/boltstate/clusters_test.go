package boltstate_test

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.etcd.io/bbolt"

	"github.com/credbroker/credbroker/attest"
	"github.com/credbroker/credbroker/broker/state"
	"github.com/credbroker/credbroker/broker/state/boltstate"
)

var (
	ctx = context.Background()
	td  = spiffeid.RequireTrustDomainFromString("example.test")
)

func registerNodes(t *testing.T, s *boltstate.Store, cluster string, n int) {
	t.Helper()
	ref, err := attest.ParseClusterRef(cluster)
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		id, err := attest.NodeID(td, ref, fmt.Sprintf("w%d", i))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.RegisterNode(ctx, epoch, state.Node{SPIFFEID: id.String(), Cluster: cluster, Name: fmt.Sprintf("w%d", i),
			Attestation: attest.MethodJoinToken, ExpiresAt: epoch.Add(time.Hour)}); err != nil {
			t.Fatal(err)
		}
	}
}

// TestListClustersReadsOnlyItsPage: a page of clusters reads the index keys
// of the clusters in it and one more, however much else is stored.
func TestListClustersReadsOnlyItsPage(t *testing.T) {
	db, err := boltstate.OpenDB(filepath.Join(t.TempDir(), "credbroker.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	s, err := boltstate.New(db)
	if err != nil {
		t.Fatal(err)
	}
	registerNodes(t, s, "team-a/small", 2)
	registerNodes(t, s, "team-b/small", 1)
	for i := range 50 {
		registerNodes(t, s, fmt.Sprintf("team-z/big-%02d", i), 20)
	}
	var visits int
	boltstate.CountVisits(s, &visits)
	page, err := s.ListClusters(ctx, state.ClusterFilter{Limit: 2})
	if err != nil || len(page) != 2 || page[1].Cluster != "team-b/small" {
		t.Fatalf("first page: %+v, %v", page, err)
	}
	if visits != 2+1+1 {
		t.Fatalf("a page of 2 clusters with 3 nodes read %d index keys, want 4 (its own and the next cluster's first)", visits)
	}
	visits = 0
	page, err = s.ListClusters(ctx, state.ClusterFilter{After: "team-z/big-48", Limit: 5})
	if err != nil || len(page) != 1 || page[0].Nodes != 20 || visits != 20 {
		t.Fatalf("last page: %+v, %v, %d index keys read, want 20", page, err, visits)
	}
}

// TestClusterIndexIsBuiltForAnOlderDatabase: a database written before the
// cluster index existed gets it built when the store opens.
func TestClusterIndexIsBuiltForAnOlderDatabase(t *testing.T) {
	path := filepath.Join(t.TempDir(), "credbroker.db")
	db, err := boltstate.OpenDB(path)
	if err != nil {
		t.Fatal(err)
	}
	s, err := boltstate.New(db)
	if err != nil {
		t.Fatal(err)
	}
	registerNodes(t, s, "team-a/alpha", 3)
	if _, err := s.Revoke(ctx, state.Revocation{ID: "r1", Kind: state.RevokeCluster, Target: "team-c/gamma", Reason: "x", Admin: "unix:uid=0", CreatedAt: epoch}); err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bbolt.Tx) error { return tx.DeleteBucket([]byte("clusters.refs")) }); err != nil {
		t.Fatal(err)
	}
	if s, err = boltstate.New(db); err != nil {
		t.Fatal(err)
	}
	got, err := s.ListClusters(ctx, state.ClusterFilter{})
	want := []state.ClusterSummary{{Cluster: "team-a/alpha", Nodes: 3}, {Cluster: "team-c/gamma", Revocations: 1}}
	if err != nil || fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("after rebuilding: %+v, %v; want %+v", got, err, want)
	}
	db.Close()
}
