package attest_test

import (
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/credbroker/credbroker/attest"
)

func TestParseClusterRef(t *testing.T) {
	long := strings.Repeat("a", 63)
	longer := strings.Repeat("b", 253)
	for _, s := range []string{"team-a/prod-1", "default/prod.eu-1", "a/b", "0/9", long + "/" + longer} {
		ref, err := attest.ParseClusterRef(s)
		if err != nil {
			t.Errorf("ParseClusterRef(%q): %v", s, err)
			continue
		}
		ns, name, _ := strings.Cut(s, "/")
		if ref.Namespace != ns || ref.Name != name || ref.String() != s || !attest.ValidCluster(s) {
			t.Errorf("ParseClusterRef(%q) = %+v (%q)", s, ref, ref)
		}
	}
	for _, s := range []string{
		"", "/", "prod", "team-a/", "/prod", "team-a/prod/x", "Team-A/prod", "team_a/prod", "team-a/Prod",
		"-a/prod", "a-/prod", "team.a/prod", "a/-prod", "a/prod-", "a/.prod", "a/prod.", "a/pr od", "a/prod\n",
		long + "a/prod", "a/" + longer + "b", "ns/c\x00",
	} {
		ref, err := attest.ParseClusterRef(s)
		if err == nil || ref != (attest.ClusterRef{}) || attest.ValidCluster(s) {
			t.Errorf("ParseClusterRef(%q) = %+v, %v; want an error", s, ref, err)
			continue
		}
		if !strings.Contains(err.Error(), "NAMESPACE/NAME") || !strings.Contains(err.Error(), `"`) {
			t.Errorf("ParseClusterRef(%q): error %q does not say what is wanted", s, err)
		}
	}
	if s := (attest.ClusterRef{}).String(); s != "" {
		t.Errorf("zero ClusterRef = %q, want empty", s)
	}
}

// TestClusterRefRoundTripsThroughNodeIDs: the cluster a node ID is made from
// is the cluster its constraints bind it to.
func TestClusterRefRoundTripsThroughNodeIDs(t *testing.T) {
	ref, err := attest.ParseClusterRef("capi-team-a/prod.eu-1")
	if err != nil {
		t.Fatal(err)
	}
	id, err := attest.NodeID(spiffeid.RequireTrustDomainFromString("example.org"), ref, "worker-1")
	if err != nil {
		t.Fatal(err)
	}
	if c := attest.ConstraintsFor(id); c.Cluster != ref.String() || c.Node != "worker-1" {
		t.Errorf("ConstraintsFor(%s) = %+v, want cluster %s, node worker-1", id, c, ref)
	}
}
