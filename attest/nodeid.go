package attest

import (
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// NodeID returns the SPIFFE ID the broker gives a node of a workload cluster:
// spiffe://TD/capi/cluster/<namespace>/<cluster>/node/<node>. Each part must
// be a valid SPIFFE ID path segment (Kubernetes names are).
func NodeID(td spiffeid.TrustDomain, cluster ClusterRef, node string) (spiffeid.ID, error) {
	return spiffeid.FromSegments(td, "capi", "cluster", cluster.Namespace, cluster.Name, "node", node)
}

// ConstraintsFor returns the constraints implied by a verified SPIFFE ID. A
// node ID (see NodeID) binds the caller to its own cluster and node, whatever
// policy says, so a node can never obtain credentials for another cluster.
// Any other ID, including one that merely starts with /capi/, yields the zero
// Constraints; binding it is left to policy.
func ConstraintsFor(id spiffeid.ID) Constraints {
	// Path is "/capi/cluster/<ns>/<cluster>/node/<node>"; spiffeid has already
	// rejected empty, "." and ".." segments.
	seg := strings.Split(id.Path(), "/")
	if len(seg) != 7 || seg[0] != "" || seg[1] != "capi" || seg[2] != "cluster" || seg[5] != "node" {
		return Constraints{}
	}
	return Constraints{Cluster: ClusterRef{Namespace: seg[3], Name: seg[4]}.String(), Node: seg[6]}
}
