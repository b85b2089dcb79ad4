package state

import (
	"context"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/credbroker/credbroker/attest"
)

// Node is an attested node. An evicted node's SVID may still be
// cryptographically valid, so the broker checks Evicted on every request
// from a node identity.
type Node struct {
	// SPIFFEID is the node's identity, as attest.NodeID builds it.
	SPIFFEID string
	// Cluster is the node's workload cluster, "namespace/name".
	Cluster string
	// Name is the node's name in its cluster.
	Name string
	// Attestation is the method the node attested with, e.g.
	// attest.MethodJoinToken.
	Attestation string
	// Detail holds non-secret facts from attestation, for admins.
	Detail string
	// AttestedAt is when the node first attested.
	AttestedAt time.Time
	// RenewedAt is when the node's last SVID was issued, by attestation or
	// renewal.
	RenewedAt time.Time
	// ExpiresAt is when the node's last SVID expires.
	ExpiresAt time.Time
	// Serial is the serial number of the node's last SVID.
	Serial string
	// EvictedAt is when the node was evicted; zero unless it was.
	EvictedAt time.Time
}

// Evicted reports whether the node was evicted.
func (n Node) Evicted() bool { return !n.EvictedAt.IsZero() }

// NodeFilter selects nodes for ListNodes.
type NodeFilter struct {
	// Cluster keeps the nodes of one cluster ("namespace/name"); "" keeps
	// all.
	Cluster string
	// After keeps the nodes whose SPIFFE ID sorts after it, for paging.
	After string
	// Limit bounds how many are returned; 0 means no bound.
	Limit int
}

// Nodes is the registry of attested nodes. Eviction is permanent for a
// SPIFFE ID: RegisterNode and RenewNode refuse an evicted node, even with
// fresh evidence, so an evicted machine can only return under a new name.
type Nodes interface {
	// RegisterNode records that n has attested at now and been issued an
	// SVID (n.ExpiresAt, n.Serial), and returns the stored node. A node seen
	// before keeps its first AttestedAt and has the rest replaced; an
	// evicted one is refused with ErrEvicted, unchanged (the stored node is
	// returned with the error). n.AttestedAt, RenewedAt and EvictedAt are
	// ignored. n must pass ValidateNode.
	RegisterNode(ctx context.Context, now time.Time, n Node) (Node, error)
	// RenewNode records that node id was issued a new SVID at now and
	// returns the stored node: ErrNotFound for an unknown node, ErrEvicted
	// (with the stored node) for an evicted one, changing nothing.
	RenewNode(ctx context.Context, now time.Time, id, serial string, expiresAt time.Time) (Node, error)
	// EvictNode marks node id evicted at now and returns it; evicting again
	// keeps the first EvictedAt. ErrNotFound for an unknown node.
	EvictNode(ctx context.Context, now time.Time, id string) (Node, error)
	// GetNode returns node id, or ErrNotFound. It is on the path of every
	// request from a node identity, so it must be cheap.
	GetNode(ctx context.Context, id string) (Node, error)
	// ListNodes returns the nodes f selects, evicted ones included, sorted
	// by SPIFFE ID.
	ListNodes(ctx context.Context, f NodeFilter) ([]Node, error)
	// PurgeNodes deletes the nodes whose SVID has expired at now (ExpiresAt
	// not after now) and returns how many; such a node must attest again
	// anyway. Evicted nodes are kept: they are what makes eviction
	// permanent for their SPIFFE ID.
	PurgeNodes(ctx context.Context, now time.Time) (int, error)
}

// ValidateNode checks that n names a node consistently: its SPIFFE ID is the
// node ID of its own cluster and name, so that listing and eviction by
// cluster cannot miss a node bound to that cluster.
func ValidateNode(n Node) error {
	id, err := spiffeid.FromString(n.SPIFFEID)
	if err != nil {
		return fmt.Errorf("state: invalid node SPIFFE ID %q: %w", n.SPIFFEID, err)
	}
	if !attest.ValidCluster(n.Cluster) {
		return fmt.Errorf("state: invalid cluster %q for %s", n.Cluster, n.SPIFFEID)
	}
	if !attest.ValidNodeName(n.Name) {
		return fmt.Errorf("state: invalid node name %q for %s", n.Name, n.SPIFFEID)
	}
	if c := attest.ConstraintsFor(id); c.Cluster != n.Cluster || c.Node != n.Name {
		return fmt.Errorf("state: %s is not the node ID of %s node %s", n.SPIFFEID, n.Cluster, n.Name)
	}
	return nil
}

// The node transitions below are the rules every store applies inside its
// own atomic update of one node: old is the stored node (found false: none),
// and the node returned is what the store writes. On ErrEvicted and
// ErrNotFound nothing is written; the node returned with ErrEvicted is the
// stored one, which callers report.

// Registered is old after n attested at now: the first attestation time is
// kept, renewal and expiry start again, and an evicted node stays evicted.
func Registered(old Node, found bool, n Node, now time.Time) (Node, error) {
	if found && old.Evicted() {
		return old, evictedError(old)
	}
	now = NormTime(now)
	next := n
	next.AttestedAt = now
	if found {
		next.AttestedAt = old.AttestedAt
	}
	next.RenewedAt = now
	next.ExpiresAt = NormTime(n.ExpiresAt)
	next.EvictedAt = time.Time{}
	return next, nil
}

// Renewed is old after node id renewed its SVID (serial, expiresAt) at now.
func Renewed(old Node, found bool, id, serial string, expiresAt, now time.Time) (Node, error) {
	if !found {
		return Node{}, fmt.Errorf("%w: node %s", ErrNotFound, id)
	}
	if old.Evicted() {
		return old, evictedError(old)
	}
	next := old
	next.RenewedAt = NormTime(now)
	next.ExpiresAt = NormTime(expiresAt)
	next.Serial = serial
	return next, nil
}

// EvictedAt is old after node id was evicted at now; evicting again keeps
// the first eviction's time.
func EvictedAt(old Node, found bool, id string, now time.Time) (Node, error) {
	if !found {
		return Node{}, fmt.Errorf("%w: node %s", ErrNotFound, id)
	}
	next := old
	if !old.Evicted() {
		next.EvictedAt = NormTime(now)
	}
	return next, nil
}

func evictedError(n Node) error {
	return fmt.Errorf("%w: %s (at %s)", ErrEvicted, n.SPIFFEID, n.EvictedAt.Format(time.RFC3339))
}

// NormTime drops t's monotonic reading and location, so that a value
// returned by a change equals the one a store reads back later.
func NormTime(t time.Time) time.Time {
	if t.IsZero() {
		return time.Time{}
	}
	return t.Round(0).UTC()
}
