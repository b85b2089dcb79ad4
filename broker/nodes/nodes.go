// Package nodes is the broker's registry of attested nodes: which node
// identities it has issued SVIDs to, when, and whether an admin has evicted
// them. An evicted node's SVID may still be cryptographically valid, so the
// broker checks Evicted on every request from a node identity. Eviction is
// permanent for that SPIFFE ID: Attested and Renewed refuse it, even with a
// fresh join token, so an evicted machine can only return under a new name.
//
// # Storage layout
//
// One top-level bucket, prefixed so that it can share the broker's bbolt
// file with other state:
//
//	nodes.byid   SPIFFE ID -> JSON of the node
//
// Keys sort by SPIFFE ID, which is the order List returns.
package nodes

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.etcd.io/bbolt"

	"github.com/credbroker/credbroker/attest"
)

// bucketByID holds the nodes; see the package documentation.
var bucketByID = []byte("nodes.byid")

// Sentinel errors, possibly wrapped; match them with errors.Is.
var (
	// ErrEvicted means the node was evicted: it may neither attest again
	// under the same SPIFFE ID nor renew.
	ErrEvicted = errors.New("nodes: node evicted")
	// ErrNotFound means no node with that SPIFFE ID was ever attested.
	ErrNotFound = errors.New("nodes: node not found")
)

// Node is an attested node.
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
	// Serial is the hex serial number of the node's last SVID.
	Serial string
	// EvictedAt is when the node was evicted; zero unless it was.
	EvictedAt time.Time
}

// Evicted reports whether the node was evicted.
func (n Node) Evicted() bool { return !n.EvictedAt.IsZero() }

// Option configures a Registry.
type Option func(*Registry)

// WithClock makes the Registry read time from now instead of time.Now.
func WithClock(now func() time.Time) Option {
	return func(r *Registry) { r.now = now }
}

// Registry keeps nodes in a bbolt database. It is safe for concurrent use;
// every change is one bbolt transaction, which bbolt serializes.
type Registry struct {
	db  *bbolt.DB
	now func() time.Time
}

// Open returns a Registry keeping its nodes in db, creating the nodes.byid
// bucket if needed. The caller keeps ownership of db.
func Open(db *bbolt.DB, opts ...Option) (*Registry, error) {
	if db == nil {
		return nil, errors.New("nodes: nil database")
	}
	r := &Registry{db: db, now: time.Now}
	for _, o := range opts {
		o(r)
	}
	err := db.Update(func(tx *bbolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(bucketByID)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("nodes: create bucket: %w", err)
	}
	return r, nil
}

// Attested records that n has just attested and been issued an SVID (n's
// ExpiresAt and Serial), and returns the stored node. n.SPIFFEID must be a
// node ID (attest.NodeID) naming n.Cluster and n.Name.
//
// For a node seen before, the first AttestedAt is kept and the rest is
// replaced; an evicted node is refused with ErrEvicted and left unchanged
// (the stored node is returned with the error). RenewedAt, and for a new
// node AttestedAt, are set from the clock; n's own AttestedAt, RenewedAt and
// EvictedAt are ignored.
func (r *Registry) Attested(n Node) (Node, error) {
	if err := validate(n); err != nil {
		return Node{}, err
	}
	var stored Node
	err := r.update(n.SPIFFEID, func(old Node, found bool) (Node, error) {
		if found && old.Evicted() {
			stored = old
			return Node{}, fmt.Errorf("%w: %s (at %s)", ErrEvicted, old.SPIFFEID, old.EvictedAt.Format(time.RFC3339))
		}
		now := normTime(r.now())
		stored = n
		stored.AttestedAt = now
		if found {
			stored.AttestedAt = old.AttestedAt
		}
		stored.RenewedAt = now
		stored.ExpiresAt = normTime(n.ExpiresAt)
		stored.EvictedAt = time.Time{}
		return stored, nil
	})
	if err != nil && !errors.Is(err, ErrEvicted) {
		return Node{}, err
	}
	return stored, err
}

// Renewed records that the node spiffeID was issued a new SVID with the
// given serial and expiry, and returns the stored node. It fails with
// ErrNotFound for an unknown node and ErrEvicted (returning the stored node)
// for an evicted one, changing nothing.
func (r *Registry) Renewed(spiffeID, serial string, expiresAt time.Time) (Node, error) {
	var stored Node
	err := r.update(spiffeID, func(old Node, found bool) (Node, error) {
		if !found {
			return Node{}, fmt.Errorf("%w: %s", ErrNotFound, spiffeID)
		}
		stored = old
		if old.Evicted() {
			return Node{}, fmt.Errorf("%w: %s (at %s)", ErrEvicted, old.SPIFFEID, old.EvictedAt.Format(time.RFC3339))
		}
		stored.RenewedAt = normTime(r.now())
		stored.ExpiresAt = normTime(expiresAt)
		stored.Serial = serial
		return stored, nil
	})
	if err != nil && !errors.Is(err, ErrEvicted) {
		return Node{}, err
	}
	return stored, err
}

// Evict marks the node spiffeID evicted and returns it. Evicting an evicted
// node changes nothing (the first EvictedAt is kept). It fails with
// ErrNotFound for an unknown node. Eviction is permanent for that SPIFFE ID.
func (r *Registry) Evict(spiffeID string) (Node, error) {
	var stored Node
	err := r.update(spiffeID, func(old Node, found bool) (Node, error) {
		if !found {
			return Node{}, fmt.Errorf("%w: %s", ErrNotFound, spiffeID)
		}
		stored = old
		if !old.Evicted() {
			stored.EvictedAt = normTime(r.now())
		}
		return stored, nil
	})
	if err != nil {
		return Node{}, err
	}
	return stored, nil
}

// Get returns the node spiffeID, or ErrNotFound.
func (r *Registry) Get(spiffeID string) (Node, error) {
	var n Node
	err := r.db.View(func(tx *bbolt.Tx) error {
		b, err := bucket(tx)
		if err != nil {
			return err
		}
		v := b.Get([]byte(spiffeID))
		if v == nil {
			return fmt.Errorf("%w: %s", ErrNotFound, spiffeID)
		}
		n, err = decode(v)
		return err
	})
	if err != nil {
		return Node{}, err
	}
	return n, nil
}

// Evicted reports whether the node spiffeID was evicted: one bbolt read,
// cheap enough for every request from a node identity. An unknown ID is not
// evicted (false, nil): it is not a node this registry knows. On error it
// reports true as well, so a caller that forgets the error still fails
// closed.
func (r *Registry) Evicted(spiffeID string) (bool, error) {
	var evicted bool
	err := r.db.View(func(tx *bbolt.Tx) error {
		b, err := bucket(tx)
		if err != nil {
			return err
		}
		v := b.Get([]byte(spiffeID))
		if v == nil {
			return nil
		}
		// Decode only the eviction time: this is the hot path.
		var rec struct {
			EvictedAt time.Time `json:"evicted_at"`
		}
		if err := json.Unmarshal(v, &rec); err != nil {
			return fmt.Errorf("nodes: malformed record for %s: %w", spiffeID, err)
		}
		evicted = !rec.EvictedAt.IsZero()
		return nil
	})
	if err != nil {
		return true, err
	}
	return evicted, nil
}

// List returns the nodes of cluster ("namespace/name"), or every node when
// cluster is "", evicted ones included, sorted by SPIFFE ID.
func (r *Registry) List(cluster string) ([]Node, error) {
	var ns []Node
	err := r.db.View(func(tx *bbolt.Tx) error {
		b, err := bucket(tx)
		if err != nil {
			return err
		}
		return b.ForEach(func(_, v []byte) error {
			n, err := decode(v)
			if err != nil {
				return err
			}
			if cluster == "" || n.Cluster == cluster {
				ns = append(ns, n)
			}
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	return ns, nil
}

// update runs change on the stored node spiffeID (found false when there is
// none) inside one bbolt Update transaction, and stores what it returns. An
// error from change aborts the transaction.
func (r *Registry) update(spiffeID string, change func(old Node, found bool) (Node, error)) error {
	return r.db.Update(func(tx *bbolt.Tx) error {
		b, err := bucket(tx)
		if err != nil {
			return err
		}
		key := []byte(spiffeID)
		var old Node
		v := b.Get(key)
		if v != nil {
			if old, err = decode(v); err != nil {
				return err
			}
		}
		n, err := change(old, v != nil)
		if err != nil {
			return err
		}
		enc, err := json.Marshal(record(n))
		if err != nil {
			return fmt.Errorf("nodes: encode %s: %w", spiffeID, err)
		}
		if err := b.Put(key, enc); err != nil {
			return fmt.Errorf("nodes: store %s: %w", spiffeID, err)
		}
		return nil
	})
}

// validate checks that n names a node consistently: its SPIFFE ID is a node
// ID for its own cluster and name, so that List(cluster) and eviction by
// cluster cannot miss a node bound to that cluster.
func validate(n Node) error {
	id, err := spiffeid.FromString(n.SPIFFEID)
	if err != nil {
		return fmt.Errorf("nodes: invalid SPIFFE ID %q: %w", n.SPIFFEID, err)
	}
	if !attest.ValidCluster(n.Cluster) {
		return fmt.Errorf("nodes: invalid cluster %q for %s", n.Cluster, n.SPIFFEID)
	}
	if !attest.ValidNodeName(n.Name) {
		return fmt.Errorf("nodes: invalid node name %q for %s", n.Name, n.SPIFFEID)
	}
	if c := attest.ConstraintsFor(id); c.Cluster != n.Cluster || c.Node != n.Name {
		return fmt.Errorf("nodes: %s is not the node ID of %s node %s", n.SPIFFEID, n.Cluster, n.Name)
	}
	return nil
}

// bucket returns the nodes bucket, which Open created.
func bucket(tx *bbolt.Tx) (*bbolt.Bucket, error) {
	b := tx.Bucket(bucketByID)
	if b == nil {
		return nil, fmt.Errorf("nodes: bucket %s missing", bucketByID)
	}
	return b, nil
}

// record is the stored form of a Node. It is separate from Node so that the
// on-disk encoding does not change when Node does.
type record struct {
	SPIFFEID    string    `json:"spiffe_id"`
	Cluster     string    `json:"cluster"`
	Name        string    `json:"name"`
	Attestation string    `json:"attestation"`
	Detail      string    `json:"detail,omitempty"`
	AttestedAt  time.Time `json:"attested_at"`
	RenewedAt   time.Time `json:"renewed_at"`
	ExpiresAt   time.Time `json:"expires_at,omitzero"`
	Serial      string    `json:"serial,omitempty"`
	EvictedAt   time.Time `json:"evicted_at,omitzero"`
}

func decode(v []byte) (Node, error) {
	var rec record
	if err := json.Unmarshal(v, &rec); err != nil {
		return Node{}, fmt.Errorf("nodes: malformed record: %w", err)
	}
	return Node(rec), nil
}

// normTime drops the monotonic reading and location of t, so that a Node
// returned by a change equals the one Get reads back.
func normTime(t time.Time) time.Time {
	if t.IsZero() {
		return time.Time{}
	}
	return t.Round(0).UTC()
}
