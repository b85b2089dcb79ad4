package attest

import (
	"fmt"
	"regexp"
	"strings"
)

// ClusterRef names a workload cluster: the namespace and name of its Cluster
// API object, written "namespace/name". Every place that accepts a cluster —
// issuance requests, policy, join tokens, node attestors, the node registry,
// configuration, the clients' flags — parses it with ParseClusterRef, so a
// value one of them accepts is one all of them accept.
type ClusterRef struct {
	// Namespace is a Kubernetes namespace name (an RFC 1123 label: lowercase
	// letters, digits and '-', at most 63 characters).
	Namespace string
	// Name is a Kubernetes object name (an RFC 1123 subdomain: lowercase
	// letters, digits, '-' and '.', at most 253 characters).
	Name string
}

var (
	namespaceRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)
	objectRE    = regexp.MustCompile(`^[a-z0-9]([-.a-z0-9]{0,251}[a-z0-9])?$`)
)

// ParseClusterRef parses "namespace/name" with Kubernetes names. Its error
// quotes s and says what is wanted, for a caller to show as it is.
func ParseClusterRef(s string) (ClusterRef, error) {
	ns, name, ok := strings.Cut(s, "/")
	if !ok || !namespaceRE.MatchString(ns) || !objectRE.MatchString(name) {
		return ClusterRef{}, fmt.Errorf("cluster %q: want NAMESPACE/NAME with Kubernetes names (lowercase letters, digits, '-'; '.' in the name)", s)
	}
	return ClusterRef{Namespace: ns, Name: name}, nil
}

// String returns "namespace/name", or "" for the zero ClusterRef.
func (c ClusterRef) String() string {
	if c == (ClusterRef{}) {
		return ""
	}
	return c.Namespace + "/" + c.Name
}

// ValidCluster reports whether s is "namespace/name" with Kubernetes names
// (whether ParseClusterRef accepts it).
func ValidCluster(s string) bool {
	_, err := ParseClusterRef(s)
	return err == nil
}
