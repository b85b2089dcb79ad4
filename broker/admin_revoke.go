package broker

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/credbroker/credbroker/attest"
	"github.com/credbroker/credbroker/broker/audit"
	"github.com/credbroker/credbroker/broker/page"
	"github.com/credbroker/credbroker/broker/state"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// AdminState is the state the admin API changes directly: the node registry
// and join tokens of a deleted cluster, and quota windows.
type AdminState interface {
	ListClusters(ctx context.Context, f state.ClusterFilter) ([]state.ClusterSummary, error)
	ListNodes(ctx context.Context, f state.NodeFilter) ([]state.Node, error)
	EvictNode(ctx context.Context, now time.Time, id string) (state.Node, error)
	VoidJoinTokens(ctx context.Context, cluster string) (int, error)
	Usage(ctx context.Context, now time.Time, key state.QuotaKey) (state.Usage, error)
	ResetQuota(ctx context.Context, key state.QuotaKey) error
}

// AdminOption configures an Admin.
type AdminOption func(*Admin)

// WithRevocations serves revocation, cluster deletion and quota admin:
// rev makes and lifts revocations and records every change; st is the state
// those change directly. Without it, those methods answer
// FAILED_PRECONDITION.
func WithRevocations(rev *Revocations, st AdminState) AdminOption {
	return func(a *Admin) { a.rev, a.st = rev, st }
}

// WithDecisions lets the admin API answer from the issuance path's own
// decisions (policy, limits): the quotas quota show reports.
func WithDecisions(svc *Service) AdminOption {
	return func(a *Admin) { a.decide = svc }
}

var errRevocationsDisabled = errorf(credbrokerv1.ErrorReason_MISCONFIGURED, "revocation is not wired into this broker")

// Listings of the page tokens (broker/page) of revocations and clusters.
const (
	listRevocations = "revocations"
	listClusters    = "clusters"
)

// pageRequest returns the page size and the key to resume after of a
// listing by key with no filters.
func pageRequest(list string, size int32, token string) (int, string, error) {
	n, err := page.Size(size, defaultPageSize, maxPageSize)
	if err != nil {
		return 0, "", pageError(err, "page_size")
	}
	if token == "" {
		return n, "", nil
	}
	pos, err := page.Decode(token, list, page.Filter())
	if err != nil {
		return 0, "", pageError(err, "page_token")
	}
	return n, pos.Key, nil
}

// nextPage is the token that resumes a listing by key after key.
func nextPage(list, key string) string {
	return page.Encode(list, page.Filter(), page.Position{Key: key})
}

// Revoke implements AdminService.Revoke.
func (a *Admin) Revoke(ctx context.Context, req *credbrokerv1.RevokeRequest) (*credbrokerv1.RevokeResponse, error) {
	if a.rev == nil {
		return nil, toStatus(errRevocationsDisabled)
	}
	var kind state.RevocationKind
	var target string
	switch t := req.GetTarget().(type) {
	case *credbrokerv1.RevokeRequest_IssuanceId:
		kind, target = state.RevokeIssuance, t.IssuanceId
	case *credbrokerv1.RevokeRequest_SpiffeId:
		kind, target = state.RevokeIdentity, t.SpiffeId
	case *credbrokerv1.RevokeRequest_Cluster:
		kind, target = state.RevokeCluster, t.Cluster
	default:
		return nil, toStatus(errorf(credbrokerv1.ErrorReason_INVALID_REQUEST, "name an issuance_id, a spiffe_id or a cluster to revoke"))
	}
	var until time.Time
	if u := req.GetUntil(); u != nil {
		if err := u.CheckValid(); err != nil {
			return nil, toStatus(errorf(credbrokerv1.ErrorReason_INVALID_REQUEST, "until is not a valid time"))
		}
		until = u.AsTime()
	}
	r, up, err := a.rev.RevokeUpstream(ctx, AdminPrincipal(ctx), kind, target, req.GetReason(), until)
	if err != nil {
		return nil, toStatus(err)
	}
	out := &credbrokerv1.RevokeResponse{Revocation: RevocationProto(r), Upstream: UpstreamProto(up)}
	if a.rev.aws != nil {
		// The revocation is in force whatever happens here; a document that
		// cannot be compiled is in the broker's log, and
		// GetAWSRevocationPolicy says why.
		if p, err := a.rev.awsPolicy(ctx, r.ID); err == nil && p.GetDocument() != "" {
			out.AwsPolicy = p
		} else if err != nil {
			a.rev.log.Error("revocation: cannot compile its AWS deny policy", slog.String("revocation", r.ID), slog.Any("err", err))
		}
	}
	return out, nil
}

// ListRevocations implements AdminService.ListRevocations.
func (a *Admin) ListRevocations(ctx context.Context, req *credbrokerv1.ListRevocationsRequest) (*credbrokerv1.ListRevocationsResponse, error) {
	if a.rev == nil {
		return nil, toStatus(errRevocationsDisabled)
	}
	size, after, err := pageRequest(listRevocations, req.GetPageSize(), req.GetPageToken())
	if err != nil {
		return nil, toStatus(err)
	}
	rs, err := a.rev.List(ctx, after, size+1)
	if err != nil {
		return nil, toStatus(err)
	}
	out := &credbrokerv1.ListRevocationsResponse{}
	if len(rs) > size {
		rs = rs[:size]
		out.NextPageToken = nextPage(listRevocations, rs[size-1].ID)
	}
	for _, r := range rs {
		out.Revocations = append(out.Revocations, RevocationProto(r))
	}
	return out, nil
}

// LiftRevocation implements AdminService.LiftRevocation.
func (a *Admin) LiftRevocation(ctx context.Context, req *credbrokerv1.LiftRevocationRequest) (*credbrokerv1.LiftRevocationResponse, error) {
	if a.rev == nil {
		return nil, toStatus(errRevocationsDisabled)
	}
	r, err := a.rev.Lift(ctx, AdminPrincipal(ctx), req.GetRevocationId())
	if err != nil {
		return nil, toStatus(err)
	}
	return &credbrokerv1.LiftRevocationResponse{Revocation: RevocationProto(r)}, nil
}

// ListClusters implements AdminService.ListClusters: the clusters named by
// nodes, join tokens and cluster revocations, by name, one page of the
// state's cluster index per call.
func (a *Admin) ListClusters(ctx context.Context, req *credbrokerv1.ListClustersRequest) (*credbrokerv1.ListClustersResponse, error) {
	if a.rev == nil {
		return nil, toStatus(errRevocationsDisabled)
	}
	size, after, err := pageRequest(listClusters, req.GetPageSize(), req.GetPageToken())
	if err != nil {
		return nil, toStatus(err)
	}
	// One page from the store's cluster index: the cost is the page's.
	sums, err := a.st.ListClusters(ctx, state.ClusterFilter{After: after, Limit: size + 1})
	if err != nil {
		return nil, toStatus(wrapf(credbrokerv1.ErrorReason_UNAVAILABLE, err, "cluster index unavailable"))
	}
	out := &credbrokerv1.ListClustersResponse{}
	if len(sums) > size {
		sums = sums[:size]
		out.NextPageToken = nextPage(listClusters, sums[size-1].Cluster)
	}
	for _, sum := range sums {
		c := &credbrokerv1.Cluster{Cluster: sum.Cluster, Nodes: clamp32(sum.Nodes), EvictedNodes: clamp32(sum.EvictedNodes),
			UnusedJoinTokens: clamp32(sum.UnusedJoinTokens)}
		if r, ok := a.rev.Covering("", "", sum.Cluster); ok && r.Kind == state.RevokeCluster {
			c.Revocation = RevocationProto(r)
		}
		out.Clusters = append(out.Clusters, c)
	}
	return out, nil
}

// DeleteCluster implements AdminService.DeleteCluster.
func (a *Admin) DeleteCluster(ctx context.Context, req *credbrokerv1.DeleteClusterRequest) (*credbrokerv1.DeleteClusterResponse, error) {
	if a.rev == nil {
		return nil, toStatus(errRevocationsDisabled)
	}
	out, err := a.rev.DeleteCluster(ctx, a.st, AdminPrincipal(ctx), req.GetCluster(), req.GetReason())
	return out, toStatus(err)
}

// quotaKey returns the quota key a request names.
func quotaKey(spiffeID, cluster string, isCluster bool) (state.QuotaKey, error) {
	if isCluster {
		if _, err := parseCluster(cluster); err != nil {
			return state.QuotaKey{}, err
		}
		return state.QuotaKey{Kind: state.QuotaCluster, Name: cluster}, nil
	}
	if spiffeID == "" || len(spiffeID) > audit.MaxFieldLen {
		return state.QuotaKey{}, errorf(credbrokerv1.ErrorReason_INVALID_REQUEST, "name a spiffe_id or a cluster")
	}
	return state.QuotaKey{Kind: state.QuotaIdentity, Name: spiffeID}, nil
}

func parseCluster(cluster string) (string, error) {
	if _, err := attest.ParseClusterRef(cluster); err != nil {
		return "", errorf(credbrokerv1.ErrorReason_INVALID_REQUEST, "%v", err)
	}
	return cluster, nil
}

// GetQuota implements AdminService.GetQuota.
func (a *Admin) GetQuota(ctx context.Context, req *credbrokerv1.GetQuotaRequest) (*credbrokerv1.GetQuotaResponse, error) {
	if a.rev == nil {
		return nil, toStatus(errRevocationsDisabled)
	}
	_, isCluster := req.GetKey().(*credbrokerv1.GetQuotaRequest_Cluster)
	key, err := quotaKey(req.GetSpiffeId(), req.GetCluster(), isCluster)
	if err != nil {
		return nil, toStatus(err)
	}
	now := a.rev.now()
	u, err := a.st.Usage(ctx, now, key)
	if err != nil {
		return nil, toStatus(wrapf(credbrokerv1.ErrorReason_UNAVAILABLE, err, "quota store unavailable"))
	}
	out := &credbrokerv1.GetQuotaResponse{Usage: UsageProto(u)}
	if a.decide != nil {
		for _, l := range a.decide.QuotaLimits(key) {
			out.Limits = append(out.Limits, QuotaLimitProto(l, u, now))
		}
	}
	return out, nil
}

// ResetQuota implements AdminService.ResetQuota.
func (a *Admin) ResetQuota(ctx context.Context, req *credbrokerv1.ResetQuotaRequest) (*credbrokerv1.ResetQuotaResponse, error) {
	if a.rev == nil {
		return nil, toStatus(errRevocationsDisabled)
	}
	_, isCluster := req.GetKey().(*credbrokerv1.ResetQuotaRequest_Cluster)
	key, err := quotaKey(req.GetSpiffeId(), req.GetCluster(), isCluster)
	if err != nil {
		return nil, toStatus(err)
	}
	u, err := a.rev.ResetQuota(ctx, a.st, AdminPrincipal(ctx), key)
	if err != nil {
		return nil, toStatus(err)
	}
	return &credbrokerv1.ResetQuotaResponse{Forgotten: UsageProto(u)}, nil
}

var revocationKinds = map[state.RevocationKind]credbrokerv1.RevocationKind{
	state.RevokeIssuance: credbrokerv1.RevocationKind_REVOCATION_KIND_ISSUANCE,
	state.RevokeIdentity: credbrokerv1.RevocationKind_REVOCATION_KIND_IDENTITY,
	state.RevokeCluster:  credbrokerv1.RevocationKind_REVOCATION_KIND_CLUSTER,
}

// RevocationProto converts a revocation to its API form.
func RevocationProto(r state.Revocation) *credbrokerv1.Revocation {
	return &credbrokerv1.Revocation{
		RevocationId: r.ID, Kind: revocationKinds[r.Kind], Target: r.Target, Reason: r.Reason, Admin: r.Admin,
		CreatedAt: ProtoTime(r.CreatedAt), Until: ProtoTime(r.Until), CoveredUntil: ProtoTime(r.CoveredUntil),
	}
}

// UpstreamProto converts a revocation's upstream outcomes to their API form.
func UpstreamProto(up []UpstreamOutcome) []*credbrokerv1.UpstreamRevocation {
	var out []*credbrokerv1.UpstreamRevocation
	for _, o := range up {
		out = append(out, &credbrokerv1.UpstreamRevocation{
			Issuer: o.Issuer, Covered: clamp32(o.Candidates), Revoked: clamp32(o.Revoked), Failed: clamp32(o.Failed),
			OverCap: clamp32(o.Skipped), FirstError: o.FirstError, ScanLimited: o.ScanLimited,
		})
	}
	return out
}

func clamp32(n int) int32 { return int32(min(n, 1<<31-1)) }

// QuotaLimitProto converts a quota that applies to u's key to its API form,
// with what is left of it at now.
func QuotaLimitProto(l QuotaLimit, u state.Usage, now time.Time) *credbrokerv1.QuotaLimit {
	out := &credbrokerv1.QuotaLimit{Max: clamp32(l.Quota.Max), AppliesTo: l.AppliesTo}
	if l.Quota.Max > 0 {
		out.Window = durationpb.New(l.Quota.Window)
		used := 0
		if now.Before(u.ResetAt) {
			used = u.Used
		}
		out.Remaining = clamp32(max(l.Quota.Max-used, 0))
	}
	return out
}

// UsageProto converts a quota key's usage to its API form.
func UsageProto(u state.Usage) *credbrokerv1.QuotaUsage {
	out := &credbrokerv1.QuotaUsage{Used: int32(min(u.Used, 1<<31-1)), WindowStart: ProtoTime(u.WindowStart), ResetAt: ProtoTime(u.ResetAt)}
	if u.Key.Kind == state.QuotaCluster {
		out.Key = &credbrokerv1.QuotaUsage_Cluster{Cluster: u.Key.Name}
	} else {
		out.Key = &credbrokerv1.QuotaUsage_SpiffeId{SpiffeId: u.Key.Name}
	}
	return out
}

// DeleteCluster takes a deleted cluster's credentials back for admin: a
// cluster revocation without end (unless one is in effect already), each
// node evicted, its unused join tokens voided; every step on record.
func (v *Revocations) DeleteCluster(ctx context.Context, st AdminState, admin, cluster, reason string) (*credbrokerv1.DeleteClusterResponse, error) {
	if _, err := parseCluster(cluster); err != nil {
		return nil, err
	}
	if reason == "" {
		reason = "cluster deleted"
	}
	out := &credbrokerv1.DeleteClusterResponse{}
	r, ok := v.index.Covering(v.now(), "", "", cluster)
	if !ok || r.Kind != state.RevokeCluster || !r.Until.IsZero() {
		var err error
		var up []UpstreamOutcome
		if r, up, err = v.RevokeUpstream(ctx, admin, state.RevokeCluster, cluster, reason, time.Time{}); err != nil {
			return nil, err
		}
		out.Upstream = UpstreamProto(up)
	}
	out.Revocation = RevocationProto(r)
	nodes, err := st.ListNodes(ctx, state.NodeFilter{Cluster: cluster})
	if err != nil {
		return out, wrapf(credbrokerv1.ErrorReason_UNAVAILABLE, err, "node registry unavailable; the cluster is revoked (revocation %s) but its nodes are not evicted yet: repeat the deletion", r.ID)
	}
	for _, n := range nodes {
		if n.Evicted() {
			continue
		}
		ev, err := st.EvictNode(ctx, v.now(), n.SPIFFEID)
		if err != nil {
			return out, wrapf(credbrokerv1.ErrorReason_UNAVAILABLE, err, "node registry unavailable while evicting %s; repeat the deletion", n.SPIFFEID)
		}
		rec := audit.Record{IssuanceID: r.ID, Caller: clip(admin), Attestation: attestAdmin, Cluster: cluster, Decision: audit.DecisionRevoked,
			UpstreamRef: ev.Serial, Reason: clip(fmt.Sprintf("node %s evicted by %s: cluster deleted (revocation %s)", n.SPIFFEID, admin, r.ID))}
		if _, err := v.audit.Append(rec); err != nil {
			return out, wrapf(credbrokerv1.ErrorReason_AUDIT_UNAVAILABLE, err, "audit store unavailable; node %s is evicted but not on record", n.SPIFFEID)
		}
		out.EvictedNodes = append(out.EvictedNodes, NodeProto(ev))
	}
	voided, err := st.VoidJoinTokens(ctx, cluster)
	if err != nil {
		return out, wrapf(credbrokerv1.ErrorReason_UNAVAILABLE, err, "join token store unavailable; the cluster's unused join tokens are not voided yet: repeat the deletion")
	}
	out.VoidedJoinTokens = int32(min(voided, 1<<31-1))
	if voided > 0 {
		rec := audit.Record{IssuanceID: r.ID, Caller: clip(admin), Attestation: attestAdmin, Cluster: cluster, Decision: audit.DecisionRevoked,
			Reason: clip(fmt.Sprintf("%d unused join tokens of %s voided by %s: cluster deleted (revocation %s)", voided, cluster, admin, r.ID))}
		if _, err := v.audit.Append(rec); err != nil {
			return out, wrapf(credbrokerv1.ErrorReason_AUDIT_UNAVAILABLE, err, "audit store unavailable; the join tokens are voided but not on record")
		}
	}
	return out, nil
}

// ResetQuota forgets key's window for admin, on record as a reset decision,
// and returns the usage it forgot.
func (v *Revocations) ResetQuota(ctx context.Context, st AdminState, admin string, key state.QuotaKey) (state.Usage, error) {
	now := v.now()
	u, err := st.Usage(ctx, now, key)
	if err != nil {
		return state.Usage{}, wrapf(credbrokerv1.ErrorReason_UNAVAILABLE, err, "quota store unavailable")
	}
	if err := st.ResetQuota(ctx, key); err != nil {
		return state.Usage{}, wrapf(credbrokerv1.ErrorReason_UNAVAILABLE, err, "quota store unavailable; nothing was reset")
	}
	id, err := v.newID()
	if err != nil {
		return u, wrapf(credbrokerv1.ErrorReason_UNAVAILABLE, err, "cannot allocate a record id; the quota is reset but not on record")
	}
	rec := audit.Record{IssuanceID: id, Caller: clip(admin), Attestation: attestAdmin, Decision: audit.DecisionReset,
		Reason: clip(fmt.Sprintf("%s quota of %s reset by %s (%d used in the window forgotten)", key.Kind, key.Name, admin, u.Used))}
	if key.Kind == state.QuotaCluster {
		rec.Cluster = key.Name
	}
	if _, err := v.audit.Append(rec); err != nil {
		return u, wrapf(credbrokerv1.ErrorReason_AUDIT_UNAVAILABLE, err, "audit store unavailable; the quota is reset but not on record")
	}
	return u, nil
}

// NodeProto converts a registered node to its API form.
func NodeProto(n state.Node) *credbrokerv1.Node {
	return &credbrokerv1.Node{
		SpiffeId: n.SPIFFEID, Cluster: n.Cluster, NodeName: n.Name, Attestation: AttestationProto(n.Attestation), Detail: n.Detail,
		AttestedAt: ProtoTime(n.AttestedAt), RenewedAt: ProtoTime(n.RenewedAt), ExpiresAt: ProtoTime(n.ExpiresAt),
		EvictedAt: ProtoTime(n.EvictedAt),
	}
}
