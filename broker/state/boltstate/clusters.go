package boltstate

import (
	"bytes"
	"context"
	"fmt"
	"strings"

	"go.etcd.io/bbolt"

	"github.com/credbroker/credbroker/broker/state"
	"github.com/credbroker/credbroker/broker/state/internal/record"
)

// bucketClusterRefs indexes the items that name a workload cluster, by
// cluster name first, so that a page of clusters is one cursor walk over
// the references of the clusters in it (see ListClusters).
var bucketClusterRefs = []byte("clusters.refs")

// Kinds of item a cluster reference names, and the value flags of a
// reference: a node's is "e" when it is evicted, a join token's "u" when
// it is used; otherwise empty.
const (
	refNode       = 'n'
	refToken      = 't'
	refRevocation = 'r'

	flagEvicted = "e"
	flagUsed    = "u"
)

// clusterRef is the index key of item key of kind in cluster:
// cluster "\x00" kind "\x00" key. Cluster names hold no NUL, so the keys of
// one cluster are contiguous and clusters sort by name.
func clusterRef(cluster string, kind byte, key []byte) []byte {
	k := make([]byte, 0, len(cluster)+3+len(key))
	k = append(k, cluster...)
	k = append(k, 0, kind, 0)
	return append(k, key...)
}

// putClusterRef records in tx that item key of kind names cluster, with
// the item's flag.
func putClusterRef(tx *bbolt.Tx, cluster string, kind byte, key []byte, flag string) error {
	b, err := bucket(tx, bucketClusterRefs)
	if err != nil {
		return err
	}
	if err := b.Put(clusterRef(cluster, kind, key), []byte(flag)); err != nil {
		return fmt.Errorf("boltstate: index cluster %s: %w", cluster, err)
	}
	return nil
}

// deleteClusterRef drops in tx the reference of item key of kind to
// cluster.
func deleteClusterRef(tx *bbolt.Tx, cluster string, kind byte, key []byte) error {
	b, err := bucket(tx, bucketClusterRefs)
	if err != nil {
		return err
	}
	if err := b.Delete(clusterRef(cluster, kind, key)); err != nil {
		return fmt.Errorf("boltstate: unindex cluster %s: %w", cluster, err)
	}
	return nil
}

// nodeRef, tokenRef and revocationRef are the references the items of each
// bucket hold; ok is false for an item that names no cluster.
func nodeRef(k, v []byte) (cluster string, flag string, ok bool, err error) {
	n, err := record.DecodeNode(v)
	if err != nil {
		return "", "", false, err
	}
	if n.Evicted() {
		flag = flagEvicted
	}
	return n.Cluster, flag, n.Cluster != "", nil
}

func tokenRef(k, v []byte) (string, string, bool, error) {
	t, err := record.DecodeToken(v)
	if err != nil {
		return "", "", false, err
	}
	flag := ""
	if !t.UsedAt.IsZero() {
		flag = flagUsed
	}
	return t.Cluster, flag, t.Cluster != "", nil
}

func revocationRef(k, v []byte) (string, string, bool, error) {
	r, err := record.DecodeRevocation(v)
	if err != nil {
		return "", "", false, err
	}
	return r.Target, "", r.Kind == state.RevokeCluster, nil
}

// indexed lists, for each bucket whose items name clusters, the kind of
// reference and how to read it from an item.
var indexed = []struct {
	bucket []byte
	kind   byte
	ref    func(k, v []byte) (cluster, flag string, ok bool, err error)
}{
	{bucketNodes, refNode, nodeRef},
	{bucketTokens, refToken, tokenRef},
	{bucketRevocations, refRevocation, revocationRef},
}

// buildClusterRefs fills the cluster index from the items already stored
// (a database written before the index existed).
func buildClusterRefs(tx *bbolt.Tx) error {
	for _, ix := range indexed {
		b, err := bucket(tx, ix.bucket)
		if err != nil {
			return err
		}
		err = b.ForEach(func(k, v []byte) error {
			cluster, flag, ok, err := ix.ref(k, v)
			if err != nil || !ok {
				return err
			}
			return putClusterRef(tx, cluster, ix.kind, k, flag)
		})
		if err != nil {
			return fmt.Errorf("boltstate: build the cluster index: %w", err)
		}
	}
	return nil
}

// ListClusters implements state.Clusters: one cursor walk from the first
// reference after f.After, over the references of the clusters returned and
// the first key of the next one.
func (s *Store) ListClusters(_ context.Context, f state.ClusterFilter) ([]state.ClusterSummary, error) {
	var out []state.ClusterSummary
	err := s.db.View(func(tx *bbolt.Tx) error {
		out = out[:0]
		b, err := bucket(tx, bucketClusterRefs)
		if err != nil {
			return err
		}
		c := b.Cursor()
		k, v := c.First()
		if f.After != "" {
			// Past every reference of After: its keys continue with NUL.
			k, v = c.Seek(append([]byte(f.After), 1))
		}
		for ; k != nil; k, v = c.Next() {
			s.visited()
			cluster, rest, ok := bytes.Cut(k, []byte{0})
			if !ok || len(rest) < 2 {
				return fmt.Errorf("boltstate: malformed cluster index key %q", k)
			}
			if len(out) == 0 || out[len(out)-1].Cluster != string(cluster) {
				if f.Limit > 0 && len(out) == f.Limit {
					break
				}
				out = append(out, state.ClusterSummary{Cluster: strings.Clone(string(cluster))})
			}
			sum := &out[len(out)-1]
			switch rest[0] {
			case refNode:
				sum.Nodes++
				if string(v) == flagEvicted {
					sum.EvictedNodes++
				}
			case refToken:
				sum.JoinTokens++
				if string(v) != flagUsed {
					sum.UnusedJoinTokens++
				}
			case refRevocation:
				sum.Revocations++
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// visited counts one index key read by ListClusters, for the test that
// bounds a page's cost.
func (s *Store) visited() {
	if s.onVisit != nil {
		s.onVisit()
	}
}

// reindex keeps the cluster index in step with item key of bucket name in
// tx: old is its value before the change (nil: none), v after (nil:
// deleted). A bucket whose items name no cluster is left alone.
func reindex(tx *bbolt.Tx, name, key, old, v []byte) error {
	for _, ix := range indexed {
		if !bytes.Equal(ix.bucket, name) {
			continue
		}
		if old != nil {
			cluster, _, ok, err := ix.ref(key, old)
			if err != nil {
				return err
			}
			if ok {
				if err := deleteClusterRef(tx, cluster, ix.kind, key); err != nil {
					return err
				}
			}
		}
		if v != nil {
			cluster, flag, ok, err := ix.ref(key, v)
			if err != nil {
				return err
			}
			if ok {
				return putClusterRef(tx, cluster, ix.kind, key, flag)
			}
		}
	}
	return nil
}
