// Package nodeauth is the broker's node authority: it admits the nodes of
// workload clusters by attestation evidence, signs and renews their
// X.509-SVIDs, and serves NodeService and the node and join-token part of the
// admin API.
package nodeauth

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/credbroker/credbroker/attest"
	"github.com/credbroker/credbroker/attest/jointoken"
	"github.com/credbroker/credbroker/broker"
	"github.com/credbroker/credbroker/broker/alerts"
	"github.com/credbroker/credbroker/broker/audit"
	"github.com/credbroker/credbroker/broker/page"
	"github.com/credbroker/credbroker/broker/state"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// Audit records of node SVIDs and join tokens name these pseudo-profiles and
// issuers, so that `credbrokerctl issuances list` shows them beside
// credentials.
const (
	NodeSVIDProfile  = "node-svid"
	NodeCAIssuer     = "node-ca"
	JoinTokenProfile = "join-token"
	JoinTokenIssuer  = "jointoken"
)

// PSATVerifier verifies a projected service account token of a workload
// cluster (attest/psat).
type PSATVerifier interface {
	Verify(ctx context.Context, cluster, token string) (attest.NodeClaims, error)
}

// IIDVerifier verifies an AWS instance identity document (attest/awsiid).
type IIDVerifier interface {
	Verify(ctx context.Context, cluster string, document, signature []byte) (attest.NodeClaims, error)
}

// NodeCA signs node SVIDs for CSRs (internal/ca). CheckCSR refuses what
// SignCSR would refuse, without signing, so that a request is checked
// whole before its evidence is spent.
type NodeCA interface {
	CheckCSR(csrDER []byte) error
	SignCSR(csrDER []byte, id spiffeid.ID, ttl time.Duration) ([]*x509.Certificate, error)
}

// State is the part of the broker's state (broker/state) the node
// authority keeps: the node registry and the join tokens.
type State interface {
	state.Nodes
	CreateJoinToken(ctx context.Context, key jointoken.Key, t jointoken.Token) error
	ConsumeJoinToken(ctx context.Context, key jointoken.Key, node string, now time.Time) (jointoken.Token, error)
}

// AuditLog is what the node authority records decisions in and reads a
// node's issuances from.
type AuditLog interface {
	broker.AuditLog
	List(q audit.Query) ([]audit.Record, error)
}

// NodeDeps are what a NodeAuthority is built from. PSAT and IID are
// optional: a nil verifier refuses that kind of evidence.
type NodeDeps struct {
	TrustDomain spiffeid.TrustDomain
	// State keeps the join tokens and the node registry.
	State State
	PSAT  PSATVerifier
	IID   IIDVerifier
	CA    NodeCA
	// Bundle returns the X.509 authorities of the trust domain, handed to
	// nodes so that they can verify the broker and each other.
	Bundle func() ([]*x509.Certificate, error)
	Audit  AuditLog
	// SVIDTTL is the lifetime of node SVIDs.
	SVIDTTL time.Duration
	NewID   func() (string, error)
	Log     *slog.Logger
	Clock   func() time.Time
	// Refusals records refusals at a bounded rate (share the Gate's): per
	// node identity once one is known, per source address before.
	Refusals *broker.Refusals
	// Rand is the source of join token secrets; nil means crypto/rand.
	Rand io.Reader
	// Revocations, when set, refuses attestation for a revoked node
	// identity or cluster, and makes an eviction a revocation of the node's
	// identity (broker.Revocations), so that the Gate refuses it everywhere
	// like any other revoked identity.
	Revocations Revoker
	// Alerts raises node_evicted for every eviction and counts every node
	// SVID issued by attestation (not renewal) for mass_issuance, per node
	// identity and per cluster like credentials; nil: none.
	Alerts Alerter
	// Current, when set, fails while the shared state cannot be relied on
	// (state.etcd: the revocations not confirmed current within
	// max_staleness). Revocations are checked from memory, so a replica
	// whose watch may have missed some issues no node SVID then, as it
	// issues no credential: attestation (before a join token is spent) and
	// renewal are refused UNAVAILABLE. nil: always current (bbolt).
	Current func() error
}

// Alerter is what the node authority tells the alert rules
// (broker/alerts.Alerter): evictions, and node SVIDs issued, which count
// toward mass_issuance as credentials do, so that a bootstrap path minting
// node SVIDs in bulk for a cluster is noticed.
type Alerter interface {
	alerts.Emitter
	Issued(ctx context.Context, is alerts.Issuance)
}

// Revoker is the part of broker.Revocations the node authority uses.
type Revoker interface {
	Revoke(ctx context.Context, admin string, kind state.RevocationKind, target, reason string, until time.Time) (state.Revocation, error)
	Covering(issuanceID, identity, cluster string) (state.Revocation, bool)
}

// NodeAuthority admits nodes (attestation → node SVID), renews their SVIDs,
// and serves NodeService and the node and join-token parts of the admin API
// (broker.NodeAdmin).
type NodeAuthority struct {
	credbrokerv1.UnimplementedNodeServiceServer
	d NodeDeps
}

// New checks d and returns a NodeAuthority.
func New(d NodeDeps) (*NodeAuthority, error) {
	if d.State == nil || d.CA == nil || d.Bundle == nil || d.Audit == nil || d.NewID == nil || d.Log == nil || d.Refusals == nil || d.SVIDTTL <= 0 {
		return nil, errors.New("nodeauth: New: missing dependency")
	}
	if d.Clock == nil {
		d.Clock = time.Now
	}
	if d.Rand == nil {
		d.Rand = rand.Reader
	}
	return &NodeAuthority{d: d}, nil
}

// Evicted reports whether id is an evicted node; the Gate refuses such
// callers everywhere. An unknown ID is not a node this broker admitted, so
// not evicted; on a storage error it reports true as well, so a caller that
// forgets the error still fails closed.
func (n *NodeAuthority) Evicted(id string) (bool, error) {
	node, err := n.d.State.GetNode(context.Background(), id)
	switch {
	case errors.Is(err, state.ErrNotFound):
		return false, nil
	case err != nil:
		return true, err
	}
	return node.Evicted(), nil
}

// AttestNode implements NodeService.AttestNode.
func (n *NodeAuthority) AttestNode(ctx context.Context, req *credbrokerv1.AttestNodeRequest) (*credbrokerv1.AttestNodeResponse, error) {
	svid, err := n.attest(ctx, req)
	if err != nil {
		return nil, broker.ToStatus(err)
	}
	return &credbrokerv1.AttestNodeResponse{Svid: svid}, nil
}

// RenewNodeSVID implements NodeService.RenewNodeSVID.
func (n *NodeAuthority) RenewNodeSVID(ctx context.Context, req *credbrokerv1.RenewNodeSVIDRequest) (*credbrokerv1.RenewNodeSVIDResponse, error) {
	svid, err := n.renew(ctx, req)
	if err != nil {
		return nil, broker.ToStatus(err)
	}
	return &credbrokerv1.RenewNodeSVIDResponse{Svid: svid}, nil
}

func (n *NodeAuthority) attest(ctx context.Context, req *credbrokerv1.AttestNodeRequest) (*credbrokerv1.NodeSVID, error) {
	id, err := n.d.NewID()
	if err != nil {
		return nil, broker.Wrapf(credbrokerv1.ErrorReason_UNAVAILABLE, err, "cannot allocate an issuance id")
	}
	rec := audit.Record{IssuanceID: id, Profile: NodeSVIDProfile, Issuer: NodeCAIssuer, TTL: n.d.SVIDTTL}
	if err := n.current(); err != nil {
		return nil, n.refuse(ctx, &rec, audit.DecisionFailed, err)
	}
	claims, err := n.verify(ctx, req, &rec)
	if err != nil {
		return nil, n.refuseEvidence(ctx, &rec, err)
	}
	cluster, err := attest.ParseClusterRef(claims.Cluster)
	if err != nil {
		return nil, n.refuse(ctx, &rec, audit.DecisionDenied, broker.Invalid("cluster", "cluster must be \"namespace/name\" with Kubernetes names"))
	}
	nodeID, err := attest.NodeID(n.d.TrustDomain, cluster, claims.Node)
	if err != nil {
		return nil, n.refuse(ctx, &rec, audit.DecisionDenied, broker.Invalid("node_name", "node name %q cannot form a SPIFFE ID", claims.Node))
	}
	rec.Caller, rec.Cluster = nodeID.String(), claims.Cluster
	if evicted, err := n.Evicted(nodeID.String()); err != nil {
		return nil, n.refuse(ctx, &rec, audit.DecisionFailed, broker.Wrapf(credbrokerv1.ErrorReason_UNAVAILABLE, err, "node registry unavailable"))
	} else if evicted {
		return nil, n.refuse(ctx, &rec, audit.DecisionDenied, broker.Errorf(credbrokerv1.ErrorReason_NODE_EVICTED, "node %s was evicted", nodeID))
	}
	if n.d.Revocations != nil {
		if r, ok := n.d.Revocations.Covering("", nodeID.String(), claims.Cluster); ok {
			return nil, n.refuse(ctx, &rec, audit.DecisionDenied, broker.RevokedError(r))
		}
	}
	svid, err := n.sign(ctx, req.GetCsr(), nodeID, &rec)
	if err != nil {
		return nil, err
	}
	if _, err := n.d.State.RegisterNode(ctx, n.d.Clock(), state.Node{
		SPIFFEID: nodeID.String(), Cluster: claims.Cluster, Name: claims.Node, Attestation: claims.Method,
		Detail: claims.Detail, ExpiresAt: svid.GetExpiresAt().AsTime(), Serial: rec.UpstreamRef,
	}); err != nil {
		if errors.Is(err, state.ErrEvicted) {
			return nil, n.refuse(ctx, &rec, audit.DecisionDenied, broker.Errorf(credbrokerv1.ErrorReason_NODE_EVICTED, "node %s was evicted", nodeID))
		}
		return nil, n.refuse(ctx, &rec, audit.DecisionFailed, broker.Wrapf(credbrokerv1.ErrorReason_UNAVAILABLE, err, "node registry unavailable"))
	}
	if err := n.issued(ctx, &rec, claims.Detail, true); err != nil {
		return nil, err
	}
	return svid, nil
}

// verify checks the evidence in req and records in rec how it was presented.
func (n *NodeAuthority) verify(ctx context.Context, req *credbrokerv1.AttestNodeRequest, rec *audit.Record) (attest.NodeClaims, error) {
	switch ev := req.GetEvidence().(type) {
	case *credbrokerv1.AttestNodeRequest_JoinToken:
		rec.Attestation = attest.MethodJoinToken
		// A malformed name is refused before the token is spent.
		if want := ev.JoinToken.GetNodeName(); want != "" && !attest.ValidNodeName(want) {
			return attest.NodeClaims{}, fmt.Errorf("node name %q is not a valid node name (lowercase DNS subdomain): %w", broker.Clip(want), attest.ErrNodeRejected)
		}
		key, err := jointoken.Parse(ev.JoinToken.GetToken())
		if err != nil {
			return attest.NodeClaims{}, err
		}
		// Everything that can be checked is checked before the token is
		// spent: a bad request must not lock the rightful node out.
		if err := n.checkCSR(req.GetCsr()); err != nil {
			return attest.NodeClaims{}, err
		}
		// The store checks the node name against the token's binding in
		// the step that consumes it: a wrong name leaves the token unspent.
		tok, err := n.d.State.ConsumeJoinToken(ctx, key, ev.JoinToken.GetNodeName(), n.d.Clock())
		if tok.ID != "" {
			rec.UpstreamRef, rec.Cluster = "jointoken:"+tok.ID, tok.Cluster
		}
		if err != nil {
			return attest.NodeClaims{}, err
		}
		return attest.NodeClaims{Cluster: tok.Cluster, Node: tok.UsedBy, Method: attest.MethodJoinToken, Detail: "join token " + tok.ID}, nil
	case *credbrokerv1.AttestNodeRequest_K8SPsat:
		rec.Attestation, rec.Cluster = attest.MethodK8sPSAT, broker.Clip(ev.K8SPsat.GetCluster())
		if n.d.PSAT == nil {
			return attest.NodeClaims{}, fmt.Errorf("this broker does not accept Kubernetes service account tokens: %w", attest.ErrNodeRejected)
		}
		return n.d.PSAT.Verify(ctx, ev.K8SPsat.GetCluster(), ev.K8SPsat.GetToken())
	case *credbrokerv1.AttestNodeRequest_AwsIid:
		rec.Attestation, rec.Cluster = attest.MethodAWSIID, broker.Clip(ev.AwsIid.GetCluster())
		if n.d.IID == nil {
			return attest.NodeClaims{}, fmt.Errorf("this broker does not accept AWS instance identity documents: %w", attest.ErrNodeRejected)
		}
		return n.d.IID.Verify(ctx, ev.AwsIid.GetCluster(), ev.AwsIid.GetDocument(), ev.AwsIid.GetSignature())
	default:
		return attest.NodeClaims{}, fmt.Errorf("no attestation evidence in the request: %w", attest.ErrNodeRejected)
	}
}

func (n *NodeAuthority) renew(ctx context.Context, req *credbrokerv1.RenewNodeSVIDRequest) (*credbrokerv1.NodeSVID, error) {
	caller, ok := attest.CallerFrom(ctx)
	if !ok {
		return nil, broker.Errorf(credbrokerv1.ErrorReason_UNAUTHENTICATED, "caller identity not established")
	}
	id, err := n.d.NewID()
	if err != nil {
		return nil, broker.Wrapf(credbrokerv1.ErrorReason_UNAVAILABLE, err, "cannot allocate an issuance id")
	}
	c := attest.ConstraintsFor(caller.ID)
	rec := audit.Record{IssuanceID: id, Caller: caller.ID.String(), Attestation: caller.Method, Profile: NodeSVIDProfile,
		Issuer: NodeCAIssuer, Cluster: c.Cluster, TTL: n.d.SVIDTTL}
	switch {
	case c.Node == "" || caller.ID.TrustDomain() != n.d.TrustDomain:
		return nil, n.refuse(ctx, &rec, audit.DecisionDenied, broker.Errorf(credbrokerv1.ErrorReason_NOT_A_NODE, "%s is not a node identity of this broker", caller.ID))
	case caller.Method != attest.MethodX509SVID:
		return nil, n.refuse(ctx, &rec, audit.DecisionDenied, broker.Errorf(credbrokerv1.ErrorReason_NOT_A_NODE, "renewal needs the node's current X.509-SVID over mTLS"))
	}
	if err := n.current(); err != nil {
		return nil, n.refuse(ctx, &rec, audit.DecisionFailed, err)
	}
	node, err := n.d.State.GetNode(ctx, caller.ID.String())
	switch {
	case errors.Is(err, state.ErrNotFound):
		return nil, n.refuse(ctx, &rec, audit.DecisionDenied, broker.Errorf(credbrokerv1.ErrorReason_NOT_A_NODE, "node %s never attested to this broker", caller.ID))
	case err != nil:
		return nil, n.refuse(ctx, &rec, audit.DecisionFailed, broker.Wrapf(credbrokerv1.ErrorReason_UNAVAILABLE, err, "node registry unavailable"))
	case node.Evicted():
		return nil, n.refuse(ctx, &rec, audit.DecisionDenied, broker.Errorf(credbrokerv1.ErrorReason_NODE_EVICTED, "node %s was evicted", caller.ID))
	}
	svid, err := n.sign(ctx, req.GetCsr(), caller.ID, &rec)
	if err != nil {
		return nil, err
	}
	if _, err := n.d.State.RenewNode(ctx, n.d.Clock(), caller.ID.String(), rec.UpstreamRef, svid.GetExpiresAt().AsTime()); err != nil {
		if errors.Is(err, state.ErrEvicted) {
			return nil, n.refuse(ctx, &rec, audit.DecisionDenied, broker.Errorf(credbrokerv1.ErrorReason_NODE_EVICTED, "node %s was evicted", caller.ID))
		}
		return nil, n.refuse(ctx, &rec, audit.DecisionFailed, broker.Wrapf(credbrokerv1.ErrorReason_UNAVAILABLE, err, "node registry unavailable"))
	}
	if err := n.issued(ctx, &rec, "renewal", false); err != nil {
		return nil, err
	}
	return svid, nil
}

// current refuses (UNAVAILABLE) while NodeDeps.Current fails.
func (n *NodeAuthority) current() error {
	if n.d.Current == nil {
		return nil
	}
	if err := n.d.Current(); err != nil {
		return broker.Wrapf(credbrokerv1.ErrorReason_UNAVAILABLE, err, "shared state unavailable; no node SVID issued")
	}
	return nil
}

// sign certifies the CSR's key as id and fills in rec's expiry and serial.
func (n *NodeAuthority) sign(ctx context.Context, csr []byte, id spiffeid.ID, rec *audit.Record) (*credbrokerv1.NodeSVID, error) {
	if len(csr) == 0 {
		return nil, n.refuse(ctx, rec, audit.DecisionDenied, broker.Invalid("csr", "csr is required (PKCS#10, DER)"))
	}
	chain, err := n.d.CA.SignCSR(csr, id, n.d.SVIDTTL)
	if err != nil {
		return nil, n.refuse(ctx, rec, audit.DecisionDenied, broker.Invalid("csr", "csr: %v", err))
	}
	bundle, err := n.d.Bundle()
	if err != nil {
		return nil, n.refuse(ctx, rec, audit.DecisionFailed, broker.Wrapf(credbrokerv1.ErrorReason_UNAVAILABLE, err, "trust bundle unavailable"))
	}
	leaf := chain[0]
	rec.ExpiresAt = leaf.NotAfter
	rec.UpstreamRef = "x509:" + leaf.SerialNumber.Text(16)
	out := &credbrokerv1.NodeSVID{SpiffeId: id.String(), ExpiresAt: timestamppb.New(leaf.NotAfter)}
	for _, c := range chain {
		out.CertChain = append(out.CertChain, c.Raw)
	}
	for _, c := range bundle {
		out.Bundle = append(out.Bundle, c.Raw)
	}
	return out, nil
}

// issued records the issued SVID (nothing is returned unless it is on
// record) and, for an attestation, counts it for mass_issuance. A renewal
// is not counted: it only extends the SVID of a node already admitted (and
// is bounded by the nodes there are), while a cluster's routine renewals
// alone would cross any threshold sized for bulk admissions.
func (n *NodeAuthority) issued(ctx context.Context, rec *audit.Record, detail string, admission bool) error {
	rec.Decision, rec.Reason = audit.DecisionIssued, ""
	if _, err := n.d.Audit.Append(*rec); err != nil {
		return broker.Wrapf(credbrokerv1.ErrorReason_AUDIT_UNAVAILABLE, err, "audit store unavailable; SVID withheld (issuance %s)", rec.IssuanceID)
	}
	n.d.Log.LogAttrs(ctx, slog.LevelInfo, "node SVID issued", slog.String("issuance_id", rec.IssuanceID),
		slog.String("node", rec.Caller), slog.String("attestation", rec.Attestation), slog.String("detail", detail),
		slog.String("serial", rec.UpstreamRef), slog.Time("expires_at", rec.ExpiresAt))
	if admission && n.d.Alerts != nil {
		n.d.Alerts.Issued(ctx, alerts.Issuance{Identity: rec.Caller, Cluster: rec.Cluster, Profile: NodeSVIDProfile})
	}
	return nil
}

// refuse records a refusal and returns err (see broker.Refusals.Refuse).
func (n *NodeAuthority) refuse(ctx context.Context, rec *audit.Record, d audit.Decision, err error) error {
	return n.d.Refusals.Refuse(ctx, rec, d, err)
}

// errBadRequest marks a malformed attestation request (its CSR), refused
// before a join token is spent.
var errBadRequest = errors.New("invalid node attestation request")

// checkCSR refuses a CSR the node CA would not sign.
func (n *NodeAuthority) checkCSR(csr []byte) error {
	if len(csr) == 0 {
		return fmt.Errorf("%w: csr is required (PKCS#10, DER)", errBadRequest)
	}
	if err := n.d.CA.CheckCSR(csr); err != nil {
		return fmt.Errorf("%w: csr: %v", errBadRequest, err)
	}
	return nil
}

// refuseEvidence answers rejected attestation evidence with Unauthenticated,
// and a malformed request with InvalidArgument. Anyone who can reach the
// port can send either, so refusals are recorded at the bounded rate per
// source address, like unauthenticated calls (the record names no caller
// yet).
func (n *NodeAuthority) refuseEvidence(ctx context.Context, rec *audit.Record, err error) error {
	reason, msg := credbrokerv1.ErrorReason_UNAUTHENTICATED, "node attestation failed: "+err.Error()
	switch {
	case errors.Is(err, errBadRequest):
		reason, msg = credbrokerv1.ErrorReason_INVALID_REQUEST, err.Error()
	case !errors.Is(err, attest.ErrNodeRejected):
		// Not the evidence's fault: a verifier's dependency failed.
		return n.refuse(ctx, rec, audit.DecisionFailed, broker.Wrapf(credbrokerv1.ErrorReason_UNAVAILABLE, err, "node attestation unavailable"))
	}
	out := n.refuse(ctx, rec, audit.DecisionDenied, broker.Errorf(reason, "%s", msg))
	n.d.Log.LogAttrs(ctx, broker.RefusalLogLevel(out, slog.LevelInfo), "node attestation refused", slog.String("issuance_id", rec.IssuanceID),
		slog.String("attestation", rec.Attestation), slog.String("error", err.Error()))
	return out
}

// CreateJoinToken implements AdminService.CreateJoinToken.
func (n *NodeAuthority) CreateJoinToken(ctx context.Context, req *credbrokerv1.CreateJoinTokenRequest) (*credbrokerv1.CreateJoinTokenResponse, error) {
	resp, err := n.createJoinToken(ctx, req)
	return resp, broker.ToStatus(err)
}

// createJoinToken makes a one-time token and records who made it, for what.
func (n *NodeAuthority) createJoinToken(ctx context.Context, req *credbrokerv1.CreateJoinTokenRequest) (*credbrokerv1.CreateJoinTokenResponse, error) {
	id, err := n.d.NewID()
	if err != nil {
		return nil, broker.Wrapf(credbrokerv1.ErrorReason_UNAVAILABLE, err, "cannot allocate an issuance id")
	}
	var ttl time.Duration
	if d := req.GetTtl(); d != nil {
		if err := d.CheckValid(); err != nil {
			return nil, broker.Invalid("ttl", "ttl is not a valid duration")
		}
		ttl = d.AsDuration()
	}
	switch {
	case !attest.ValidCluster(req.GetCluster()):
		return nil, broker.Invalid("cluster", "cluster must be \"namespace/name\" with Kubernetes names")
	case req.GetNodeName() != "" && !attest.ValidNodeName(req.GetNodeName()):
		return nil, broker.Invalid("node_name", "node_name must be a Kubernetes node name (lowercase DNS subdomain)")
	case ttl < 0 || ttl > jointoken.MaxTTL:
		return nil, broker.Errorf(credbrokerv1.ErrorReason_TTL_OUT_OF_RANGE, "ttl must be between 0 (default %s) and %s", jointoken.DefaultTTL, jointoken.MaxTTL)
	}
	secret, key, tok, err := jointoken.New(n.d.Rand, n.d.Clock(), req.GetCluster(), req.GetNodeName(), ttl)
	if err != nil {
		return nil, broker.Wrapf(credbrokerv1.ErrorReason_UNAVAILABLE, err, "cannot generate a join token")
	}
	if err := n.d.State.CreateJoinToken(ctx, key, tok); err != nil {
		// ErrExists too: 256 random bits do not collide, so the random
		// source is broken, and overwriting would revive a token.
		return nil, broker.Wrapf(credbrokerv1.ErrorReason_UNAVAILABLE, err, "join token store unavailable")
	}
	rec := audit.Record{IssuanceID: id, Caller: broker.AdminPrincipal(ctx), Attestation: attest.MethodAdmin, Profile: JoinTokenProfile, Issuer: JoinTokenIssuer,
		Cluster: tok.Cluster, Decision: audit.DecisionIssued, TTL: tok.ExpiresAt.Sub(tok.CreatedAt), ExpiresAt: tok.ExpiresAt,
		UpstreamRef: "jointoken:" + tok.ID}
	if tok.Node != "" {
		rec.Reason = "for node " + tok.Node
	}
	if _, err := n.d.Audit.Append(rec); err != nil {
		// The token exists but was never shown to anyone; it expires unused.
		return nil, broker.Wrapf(credbrokerv1.ErrorReason_AUDIT_UNAVAILABLE, err, "audit store unavailable; token withheld")
	}
	return &credbrokerv1.CreateJoinTokenResponse{Token: secret, TokenId: tok.ID, ExpiresAt: timestamppb.New(tok.ExpiresAt)}, nil
}

// EvictNode implements AdminService.EvictNode: it marks a node evicted,
// records it, and returns its issuances that have not expired.
func (n *NodeAuthority) EvictNode(ctx context.Context, req *credbrokerv1.EvictNodeRequest) (*credbrokerv1.EvictNodeResponse, error) {
	resp, err := n.evict(ctx, req.GetSpiffeId())
	return resp, broker.ToStatus(err)
}

func (n *NodeAuthority) evict(ctx context.Context, id string) (*credbrokerv1.EvictNodeResponse, error) {
	node, err := n.d.State.EvictNode(ctx, n.d.Clock(), id)
	switch {
	case errors.Is(err, state.ErrNotFound):
		return nil, broker.Errorf(credbrokerv1.ErrorReason_NOT_FOUND, "no attested node %q", broker.Clip(id))
	case err != nil:
		return nil, broker.Wrapf(credbrokerv1.ErrorReason_UNAVAILABLE, err, "node registry unavailable")
	}
	if n.d.Revocations != nil {
		// Eviction is one case of revocation: the node's identity is revoked
		// (on record as a revoked decision) and refused on its next request.
		if _, ok := n.d.Revocations.Covering("", node.SPIFFEID, ""); !ok {
			if _, err := n.d.Revocations.Revoke(ctx, broker.AdminPrincipal(ctx), state.RevokeIdentity, node.SPIFFEID, "node evicted", time.Time{}); err != nil {
				return nil, err
			}
		}
		n.alertEvicted(ctx, node)
		return n.evicted(node)
	}
	rid, err := n.d.NewID()
	if err != nil {
		return nil, broker.Wrapf(credbrokerv1.ErrorReason_UNAVAILABLE, err, "cannot allocate an issuance id")
	}
	rec := audit.Record{IssuanceID: rid, Caller: node.SPIFFEID, Attestation: node.Attestation, Profile: NodeSVIDProfile,
		Issuer: NodeCAIssuer, Cluster: node.Cluster, Decision: audit.DecisionRevoked, Reason: broker.Clip("node evicted by " + broker.AdminPrincipal(ctx)),
		UpstreamRef: node.Serial}
	n.alertEvicted(ctx, node)
	if _, err := n.d.Audit.Append(rec); err != nil {
		return nil, broker.Wrapf(credbrokerv1.ErrorReason_AUDIT_UNAVAILABLE, err, "audit store unavailable; the node is evicted but the eviction is not on record")
	}
	return n.evicted(node)
}

// alertEvicted raises node_evicted for a node that is now evicted.
func (n *NodeAuthority) alertEvicted(ctx context.Context, node state.Node) {
	if n.d.Alerts == nil {
		return
	}
	admin := broker.AdminPrincipal(ctx)
	n.d.Alerts.Emit(ctx, alerts.Event{Rule: alerts.NodeEvicted, Subject: "node " + node.SPIFFEID,
		Summary: "node " + node.SPIFFEID + " of cluster " + node.Cluster + " evicted by " + admin,
		Fields:  map[string]string{"node": node.SPIFFEID, "cluster": node.Cluster, "admin": admin, "serial": node.Serial}})
}

// evicted answers an eviction: the node and its issuances that have not
// expired.
func (n *NodeAuthority) evicted(node state.Node) (*credbrokerv1.EvictNodeResponse, error) {
	recs, err := n.d.Audit.List(audit.Query{Caller: node.SPIFFEID, Decision: audit.DecisionIssued})
	if err != nil {
		return nil, broker.Wrapf(credbrokerv1.ErrorReason_AUDIT_UNAVAILABLE, err, "audit store unavailable")
	}
	out := &credbrokerv1.EvictNodeResponse{Node: broker.NodeProto(node)}
	now := n.d.Clock()
	for _, r := range recs {
		if r.Profile != NodeSVIDProfile && r.ExpiresAt.After(now) {
			out.Issuances = append(out.Issuances, broker.IssuanceProto(r))
		}
	}
	return out, nil
}

// Page sizes of ListNodes (see AdminService).
const (
	defaultPageSize = 100
	maxPageSize     = 1000
	listNodes       = "nodes"
)

// ListNodes implements AdminService.ListNodes: one page of nodes, by SPIFFE
// ID.
func (n *NodeAuthority) ListNodes(ctx context.Context, req *credbrokerv1.ListNodesRequest) (*credbrokerv1.ListNodesResponse, error) {
	resp, err := n.listNodes(ctx, req)
	return resp, broker.ToStatus(err)
}

func (n *NodeAuthority) listNodes(ctx context.Context, req *credbrokerv1.ListNodesRequest) (*credbrokerv1.ListNodesResponse, error) {
	size, err := page.Size(req.GetPageSize(), defaultPageSize, maxPageSize)
	if err != nil {
		return nil, broker.Invalid("page_size", "page_size must not be negative")
	}
	filter := page.Filter(req.GetCluster())
	f := state.NodeFilter{Cluster: req.GetCluster(), Limit: size + 1}
	if tok := req.GetPageToken(); tok != "" {
		pos, err := page.Decode(tok, listNodes, filter)
		if err != nil {
			return nil, broker.Invalid("page_token", "%s", strings.TrimSuffix(err.Error(), ": "+page.ErrInvalid.Error()))
		}
		f.After = pos.Key
	}
	list, err := n.d.State.ListNodes(ctx, f)
	if err != nil {
		return nil, broker.Wrapf(credbrokerv1.ErrorReason_UNAVAILABLE, err, "node registry unavailable")
	}
	out := &credbrokerv1.ListNodesResponse{}
	if len(list) > size {
		// One more than a page was read: there is a next page.
		list = list[:size]
		out.NextPageToken = page.Encode(listNodes, filter, page.Position{Key: list[size-1].SPIFFEID})
	}
	for _, node := range list {
		out.Nodes = append(out.Nodes, broker.NodeProto(node))
	}
	return out, nil
}
