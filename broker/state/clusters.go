package state

import "context"

// ClusterFilter pages the workload clusters the state names.
type ClusterFilter struct {
	// After keeps the clusters whose name sorts after it, for paging.
	After string
	// Limit bounds how many are returned; 0 means no bound.
	Limit int
}

// ClusterSummary is what the state holds for one workload cluster.
type ClusterSummary struct {
	// Cluster is "namespace/name".
	Cluster string
	// Nodes registered for the cluster, EvictedNodes of them evicted.
	Nodes, EvictedNodes int
	// JoinTokens stored for the cluster, UnusedJoinTokens of them unused.
	JoinTokens, UnusedJoinTokens int
	// Revocations of the cluster itself that are stored (in effect or not
	// yet purged).
	Revocations int
}

// Clusters lists the workload clusters the state names — by nodes, join
// tokens and cluster revocations — by name, from an index the store keeps
// with each change, so that a page costs what is in it, not a scan of
// everything stored.
type Clusters interface {
	// ListClusters returns the clusters after f.After, by name, at most
	// f.Limit of them.
	ListClusters(ctx context.Context, f ClusterFilter) ([]ClusterSummary, error)
}
