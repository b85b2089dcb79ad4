package etcdstate

import (
	"context"
	"fmt"
	"strings"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/credbroker/credbroker/broker/state"
)

// Kinds of item a cluster reference names, and the value flags of a
// reference: a node's is "e" when it is evicted, a join token's "u" when it
// is used; otherwise empty.
const (
	refNode       = 'n'
	refToken      = 't'
	refRevocation = 'r'

	flagEvicted = "e"
	flagUsed    = "u"
)

// clusterRef is the key of the reference of item (of kind) to cluster:
// cluster "\x00" kind "\x00" item. Cluster names hold no NUL, so one
// cluster's references are contiguous and clusters sort by name.
func (s *Store) clusterRef(cluster string, kind byte, item string) string {
	return s.key(dirClusterRef, cluster+"\x00"+string(kind)+"\x00"+item)
}

// putRef records, in the transaction it is part of, that item names cluster.
func (s *Store) putRef(cluster string, kind byte, item, flag string) clientv3.Op {
	return clientv3.OpPut(s.clusterRef(cluster, kind, item), flag)
}

// deleteRef drops the reference of item to cluster.
func (s *Store) deleteRef(cluster string, kind byte, item string) clientv3.Op {
	return clientv3.OpDelete(s.clusterRef(cluster, kind, item))
}

// ListClusters implements state.Clusters: one range over the references,
// from the first key past f.After's own, that stops at the first reference
// of the cluster one past the page.
func (s *Store) ListClusters(ctx context.Context, f state.ClusterFilter) ([]state.ClusterSummary, error) {
	from := ""
	if f.After != "" {
		// Past every "After\x00..." key, and not into a name After prefixes.
		from = f.After + "\x01"
	}
	var out []state.ClusterSummary
	_, err := s.scan(ctx, "list clusters", dirClusterRef, from, func(kv *mvccpb.KeyValue) (bool, error) {
		rest := strings.TrimPrefix(string(kv.Key), s.key(dirClusterRef, ""))
		cluster, item, ok := strings.Cut(rest, "\x00")
		if !ok || len(item) < 2 || item[1] != 0 {
			return false, fmt.Errorf("etcdstate: malformed cluster reference %q", kv.Key)
		}
		if len(out) == 0 || out[len(out)-1].Cluster != cluster {
			if f.Limit > 0 && len(out) == f.Limit {
				return false, nil
			}
			out = append(out, state.ClusterSummary{Cluster: cluster})
		}
		c := &out[len(out)-1]
		flag := string(kv.Value)
		switch item[0] {
		case refNode:
			c.Nodes++
			if flag == flagEvicted {
				c.EvictedNodes++
			}
		case refToken:
			c.JoinTokens++
			if flag != flagUsed {
				c.UnusedJoinTokens++
			}
		case refRevocation:
			c.Revocations++
		}
		return true, nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}
