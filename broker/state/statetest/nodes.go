package statetest

import (
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/credbroker/credbroker/attest"
	"github.com/credbroker/credbroker/broker/state"
)

var td = spiffeid.RequireTrustDomainFromString("example.test")

// node returns the Node attestation reports for cluster/name.
func node(t *testing.T, cluster, name string) state.Node {
	t.Helper()
	ref, err := attest.ParseClusterRef(cluster)
	if err != nil {
		t.Fatal(err)
	}
	id, err := attest.NodeID(td, ref, name)
	if err != nil {
		t.Fatal(err)
	}
	return state.Node{
		SPIFFEID: id.String(), Cluster: cluster, Name: name, Attestation: attest.MethodJoinToken,
		Detail: "join token 0123456789abcdef", ExpiresAt: epoch.Add(time.Hour), Serial: "x509:01",
	}
}

// testNodes: register, re-register, renew and evict, with eviction
// permanent for the SPIFFE ID.
func testNodes(t *testing.T, h Harness) {
	s := open(t, h)
	n := node(t, "team-a/alpha", "worker-1")
	if _, err := s.GetNode(ctx, n.SPIFFEID); !errors.Is(err, state.ErrNotFound) {
		t.Fatalf("unknown node: err = %v, want ErrNotFound", err)
	}
	bad := n
	bad.Name = "worker-2" // not the node its SPIFFE ID names
	if _, err := s.RegisterNode(ctx, epoch, bad); err == nil {
		t.Fatal("a node whose SPIFFE ID names another node was registered")
	}

	stored, err := s.RegisterNode(ctx, epoch, n)
	if err != nil {
		t.Fatal(err)
	}
	want := n
	want.AttestedAt, want.RenewedAt = epoch, epoch
	if !reflect.DeepEqual(stored, want) {
		t.Fatalf("registered %+v, want %+v", stored, want)
	}
	if got, err := s.GetNode(ctx, n.SPIFFEID); err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("GetNode = %+v, %v; want %+v", got, err, want)
	}

	// Attesting again keeps the first AttestedAt.
	again := n
	again.Serial, again.Attestation = "x509:02", attest.MethodK8sPSAT
	stored, err = s.RegisterNode(ctx, epoch.Add(time.Hour), again)
	if err != nil || !stored.AttestedAt.Equal(epoch) || !stored.RenewedAt.Equal(epoch.Add(time.Hour)) || stored.Serial != "x509:02" {
		t.Fatalf("re-registered %+v, %v", stored, err)
	}

	stored, err = s.RenewNode(ctx, epoch.Add(2*time.Hour), n.SPIFFEID, "x509:03", epoch.Add(3*time.Hour))
	if err != nil || stored.Serial != "x509:03" || !stored.ExpiresAt.Equal(epoch.Add(3*time.Hour)) || !stored.RenewedAt.Equal(epoch.Add(2*time.Hour)) {
		t.Fatalf("renewed %+v, %v", stored, err)
	}
	if _, err := s.RenewNode(ctx, epoch, node(t, "team-a/alpha", "ghost").SPIFFEID, "x509:04", epoch); !errors.Is(err, state.ErrNotFound) {
		t.Fatalf("renewing an unknown node: err = %v, want ErrNotFound", err)
	}

	evicted, err := s.EvictNode(ctx, epoch.Add(3*time.Hour), n.SPIFFEID)
	if err != nil || !evicted.Evicted() || !evicted.EvictedAt.Equal(epoch.Add(3*time.Hour)) {
		t.Fatalf("evicted %+v, %v", evicted, err)
	}
	if again, err := s.EvictNode(ctx, epoch.Add(4*time.Hour), n.SPIFFEID); err != nil || !again.EvictedAt.Equal(evicted.EvictedAt) {
		t.Fatalf("second eviction %+v, %v; want the first EvictedAt kept", again, err)
	}
	if _, err := s.EvictNode(ctx, epoch, node(t, "team-a/alpha", "ghost").SPIFFEID); !errors.Is(err, state.ErrNotFound) {
		t.Fatalf("evicting an unknown node: err = %v, want ErrNotFound", err)
	}
	got, err := s.RenewNode(ctx, epoch.Add(5*time.Hour), n.SPIFFEID, "x509:05", epoch.Add(6*time.Hour))
	if !errors.Is(err, state.ErrEvicted) || !reflect.DeepEqual(got, evicted) {
		t.Fatalf("renewing an evicted node: %+v, %v; want ErrEvicted and the node unchanged", got, err)
	}
	got, err = s.RegisterNode(ctx, epoch.Add(5*time.Hour), n)
	if !errors.Is(err, state.ErrEvicted) || !reflect.DeepEqual(got, evicted) {
		t.Fatalf("re-attesting an evicted node: %+v, %v; want ErrEvicted and the node unchanged", got, err)
	}
	if got, err := s.GetNode(ctx, n.SPIFFEID); err != nil || !reflect.DeepEqual(got, evicted) {
		t.Fatalf("GetNode after eviction = %+v, %v", got, err)
	}
}

// testNodesList: sorted by SPIFFE ID, filtered by cluster, paged by After
// and Limit.
func testNodesList(t *testing.T, h Harness) {
	s := open(t, h)
	var ids []string
	for _, c := range []struct{ cluster, name string }{
		{"team-b/beta", "w2"}, {"team-a/alpha", "w3"}, {"team-a/alpha", "w1"}, {"team-b/beta", "w1"}, {"team-a/alpha", "w2"},
	} {
		n, err := s.RegisterNode(ctx, epoch, node(t, c.cluster, c.name))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, n.SPIFFEID)
	}
	list := func(f state.NodeFilter) []string {
		t.Helper()
		ns, err := s.ListNodes(ctx, f)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, n := range ns {
			out = append(out, n.SPIFFEID)
		}
		return out
	}
	alpha := []string{ids[2], ids[4], ids[1]}
	all := append(append([]string{}, alpha...), ids[3], ids[0])
	for name, c := range map[string]struct {
		f    state.NodeFilter
		want []string
	}{
		"all":             {state.NodeFilter{}, all},
		"cluster":         {state.NodeFilter{Cluster: "team-a/alpha"}, alpha},
		"first page":      {state.NodeFilter{Limit: 2}, all[:2]},
		"next page":       {state.NodeFilter{After: all[1], Limit: 2}, all[2:4]},
		"last page":       {state.NodeFilter{After: all[3], Limit: 2}, all[4:]},
		"cluster page":    {state.NodeFilter{Cluster: "team-a/alpha", After: alpha[0], Limit: 1}, alpha[1:2]},
		"after a gap":     {state.NodeFilter{After: all[0] + "0"}, all[1:]},
		"nothing after":   {state.NodeFilter{After: all[4]}, nil},
		"unknown cluster": {state.NodeFilter{Cluster: "team-c/gamma"}, nil},
	} {
		if got := list(c.f); !reflect.DeepEqual(got, c.want) {
			t.Errorf("%s: %v, want %v", name, got, c.want)
		}
	}
}
