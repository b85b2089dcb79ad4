package etcdstate

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/credbroker/credbroker/broker/state"
	"github.com/credbroker/credbroker/broker/state/internal/record"
)

// nodeClusterKey is the key of a node's entry in its cluster's range: the
// cluster, a NUL (which no cluster name holds), then the SPIFFE ID, so that
// one cluster's nodes sort together, by SPIFFE ID.
func (s *Store) nodeClusterKey(cluster, id string) string {
	return s.key(dirNodeCluster, cluster+"\x00"+id)
}

// RegisterNode implements state.Nodes.
func (s *Store) RegisterNode(ctx context.Context, now time.Time, n state.Node) (state.Node, error) {
	if err := state.ValidateNode(n); err != nil {
		return state.Node{}, err
	}
	var stored state.Node
	err := s.updateNode(ctx, "register node", n.SPIFFEID, func(old state.Node, found bool) (state.Node, error) {
		var err error
		stored, err = state.Registered(old, found, n, now)
		return stored, err
	})
	if err != nil && !errors.Is(err, state.ErrEvicted) {
		return state.Node{}, err
	}
	return stored, err
}

// RenewNode implements state.Nodes.
func (s *Store) RenewNode(ctx context.Context, now time.Time, id, serial string, expiresAt time.Time) (state.Node, error) {
	var stored state.Node
	err := s.updateNode(ctx, "renew node", id, func(old state.Node, found bool) (state.Node, error) {
		var err error
		stored, err = state.Renewed(old, found, id, serial, expiresAt, now)
		return stored, err
	})
	if err != nil && !errors.Is(err, state.ErrEvicted) {
		return state.Node{}, err
	}
	return stored, err
}

// EvictNode implements state.Nodes.
func (s *Store) EvictNode(ctx context.Context, now time.Time, id string) (state.Node, error) {
	var stored state.Node
	err := s.updateNode(ctx, "evict node", id, func(old state.Node, found bool) (state.Node, error) {
		var err error
		stored, err = state.EvictedAt(old, found, id, now)
		return stored, err
	})
	if err != nil {
		return state.Node{}, err
	}
	return stored, nil
}

// GetNode implements state.Nodes: one linearizable read, so an eviction
// committed on any replica is seen.
func (s *Store) GetNode(ctx context.Context, id string) (state.Node, error) {
	ctx, cancel := s.opCtx(ctx)
	defer cancel()
	resp, err := s.cli.Get(ctx, s.key(dirNode, id))
	if err != nil {
		return state.Node{}, unavailable("read node", err)
	}
	if len(resp.Kvs) == 0 {
		return state.Node{}, fmt.Errorf("%w: node %s", state.ErrNotFound, id)
	}
	return record.DecodeNode(resp.Kvs[0].Value)
}

// ListNodes implements state.Nodes: a range of the node keys, or of one
// cluster's entries, from After.
func (s *Store) ListNodes(ctx context.Context, f state.NodeFilter) ([]state.Node, error) {
	if f.Cluster == "" {
		return listPage(ctx, s, "list nodes", dirNode, f.After, f.Limit, record.DecodeNode, nil)
	}
	dir := dirNodeCluster + f.Cluster + "\x00"
	return listPage(ctx, s, "list nodes", dir, f.After, f.Limit, record.DecodeNode, nil)
}

// updateNode runs change on the stored node id (found false when there is
// none) and stores what it returns, under the node's key and its cluster's,
// if the node did not change meanwhile. An error from change stores
// nothing.
func (s *Store) updateNode(ctx context.Context, what, id string, change func(old state.Node, found bool) (state.Node, error)) error {
	key := s.key(dirNode, id)
	_, err := s.cas(ctx, what, []string{key}, nil, func(kvs []*mvccpb.KeyValue) ([]clientv3.Op, error) {
		var old state.Node
		if kvs[0] != nil {
			var err error
			if old, err = record.DecodeNode(kvs[0].Value); err != nil {
				return nil, err
			}
		}
		n, err := change(old, kvs[0] != nil)
		if err != nil {
			return nil, err
		}
		v, err := record.EncodeNode(n)
		if err != nil {
			return nil, err
		}
		flag := ""
		if n.Evicted() {
			flag = flagEvicted
		}
		// The cluster is part of the SPIFFE ID (ValidateNode), so a node
		// never moves between clusters.
		return []clientv3.Op{
			clientv3.OpPut(key, string(v)),
			clientv3.OpPut(s.nodeClusterKey(n.Cluster, id), string(v)),
			s.putRef(n.Cluster, refNode, id, flag),
		}, nil
	})
	return err
}

// PurgeNodes implements state.Nodes.
func (s *Store) PurgeNodes(ctx context.Context, now time.Time) (int, error) {
	count, _, err := s.deleteWhere(ctx, "purge nodes", dirNode, func(kv *mvccpb.KeyValue) ([]clientv3.Op, bool, error) {
		n, err := record.DecodeNode(kv.Value)
		if err != nil || n.Evicted() || n.ExpiresAt.After(now) {
			return nil, false, err
		}
		return []clientv3.Op{clientv3.OpDelete(s.nodeClusterKey(n.Cluster, n.SPIFFEID)), s.deleteRef(n.Cluster, refNode, n.SPIFFEID)}, true, nil
	}, nil)
	return count, err
}
