package attest

import "errors"

// Node attestation methods recorded in audit records.
const (
	MethodJoinToken = "join-token"
	MethodK8sPSAT   = "k8s-psat"
	MethodAWSIID    = "aws-iid"
)

// NodeClaims is what a node attestor established about a node that has no
// SVID yet: which workload cluster it belongs to and its name there. The
// broker turns them into the node's SPIFFE ID (NodeID) and binds everything
// the node is later issued to Cluster (ConstraintsFor).
type NodeClaims struct {
	// Cluster is the workload cluster, "namespace/name".
	Cluster string
	// Node is the node's name, a Kubernetes node name: a DNS subdomain
	// (lowercase letters, digits, '-' and '.', at most 253 characters), e.g.
	// "ip-10-0-1-23.ec2.internal" or an EC2 instance id.
	Node string
	// Method is how the node proved itself, e.g. MethodK8sPSAT.
	Method string
	// Detail is a non-secret description for the audit record, e.g.
	// "instance i-0abc in account 123456789012, us-east-1".
	Detail string
}

// ErrNodeRejected wraps every reason a node attestor refuses evidence, so
// that the broker maps them to Unauthenticated without matching text.
var ErrNodeRejected = errors.New("attest: node evidence rejected")

// ValidNodeName reports whether s can name a node (a DNS subdomain, as the
// name of a cluster is).
func ValidNodeName(s string) bool { return objectRE.MatchString(s) }
