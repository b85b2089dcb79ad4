package broker

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/credbroker/credbroker/attest"
	"github.com/credbroker/credbroker/broker/audit"
	"github.com/credbroker/credbroker/broker/page"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// AuditReader is what the admin API reads from the audit log.
type AuditReader interface {
	List(q audit.Query) ([]audit.Record, error)
	ByIssuance(issuanceID string) ([]audit.Record, error)
	// VerifyWith walks the chain, calling o.Progress between chunks, and
	// checks that it reaches o.Anchor.
	VerifyWith(o audit.VerifyOptions) (audit.VerifyResult, error)
	// MarkExported records an admin's export mark with its record.
	MarkExported(through uint64, rec audit.Record) (audit.Record, uint64, error)
	// ExportStored calls fn with each record after afterSeq and its stored
	// (canonical) bytes, in chain order.
	ExportStored(afterSeq uint64, fn func(r audit.Record, stored []byte) error) error
	Head() (seq uint64, hash string)
	// Advanced returns a channel closed once the chain grows past seq.
	Advanced(seq uint64) <-chan struct{}
}

// Admin implements AdminService. Who may call it is decided before it runs
// (Gate on the mTLS listener, uid check on the admin socket).
type Admin struct {
	credbrokerv1.UnimplementedAdminServiceServer
	audit  AuditReader
	nodes  NodeAdmin
	rev    *Revocations
	st     AdminState
	decide *Service
	// approvals serves two-person approval (WithApprovals).
	approvals *Approvals
	// keys serves the signing keys (WithSigningKeys).
	keys     *signingKeys
	stop     chan struct{}
	stopOnce sync.Once
}

// NodeAdmin serves the node and join-token part of the admin API
// (broker/nodeauth).
type NodeAdmin interface {
	CreateJoinToken(context.Context, *credbrokerv1.CreateJoinTokenRequest) (*credbrokerv1.CreateJoinTokenResponse, error)
	ListNodes(context.Context, *credbrokerv1.ListNodesRequest) (*credbrokerv1.ListNodesResponse, error)
	EvictNode(context.Context, *credbrokerv1.EvictNodeRequest) (*credbrokerv1.EvictNodeResponse, error)
}

// NewAdmin returns the admin API over the audit log. nodes, when not nil,
// serves join tokens and the node registry; when nil, those methods answer
// FAILED_PRECONDITION.
func NewAdmin(a AuditReader, nodes NodeAdmin, opts ...AdminOption) *Admin {
	adm := &Admin{audit: a, nodes: nodes, stop: make(chan struct{})}
	for _, o := range opts {
		o(adm)
	}
	return adm
}

// Stop ends following exports, so that a graceful shutdown is not held open
// by clients tailing the audit log. Call it before stopping the servers.
func (a *Admin) Stop() { a.stopOnce.Do(func() { close(a.stop) }) }

// Page sizes of the lists and the export (see AdminService).
const (
	defaultPageSize   = 100
	maxPageSize       = 1000
	defaultExportPage = 1000
	maxExportPage     = 10000
)

// Listings named in page tokens, so that a token of one is refused by another.
const (
	listIssuances = "issuances"
	listExport    = "audit-export"
)

// pageError maps a bad page size or token to INVALID_REQUEST.
func pageError(err error, field string) error {
	if errors.Is(err, page.ErrInvalid) {
		return invalid(field, "%s", strings.TrimSuffix(err.Error(), ": "+page.ErrInvalid.Error()))
	}
	return err
}

// ListIssuances lists issued credentials, newest first, one page at a time.
func (a *Admin) ListIssuances(_ context.Context, req *credbrokerv1.ListIssuancesRequest) (*credbrokerv1.ListIssuancesResponse, error) {
	size, err := page.Size(req.GetPageSize(), defaultPageSize, maxPageSize)
	if err != nil {
		return nil, toStatus(pageError(err, "page_size"))
	}
	q := audit.Query{Caller: req.GetCaller(), Cluster: req.GetCluster(), Decision: audit.DecisionIssued, Limit: size + 1}
	var since string
	if req.GetSince() != nil {
		if err := req.GetSince().CheckValid(); err != nil {
			return nil, toStatus(invalid("since", "since is not a valid time"))
		}
		q.Since = req.GetSince().AsTime()
		since = q.Since.UTC().Format(time.RFC3339Nano)
	}
	filter := page.Filter(req.GetCaller(), req.GetCluster(), since)
	if tok := req.GetPageToken(); tok != "" {
		pos, err := page.Decode(tok, listIssuances, filter)
		if err != nil {
			return nil, toStatus(pageError(err, "page_token"))
		}
		q.BeforeSeq = pos.Seq
	}
	recs, err := a.audit.List(q)
	if err != nil {
		return nil, toStatus(wrapf(credbrokerv1.ErrorReason_AUDIT_UNAVAILABLE, err, "audit store unavailable"))
	}
	out := &credbrokerv1.ListIssuancesResponse{}
	if len(recs) > size {
		// One more than a page was read: there is a next page.
		recs = recs[:size]
		last := recs[size-1]
		out.NextPageToken = page.Encode(listIssuances, filter, page.Position{Seq: last.Seq})
	}
	for _, r := range recs {
		out.Issuances = append(out.Issuances, IssuanceProto(r))
	}
	return out, nil
}

// GetIssuance returns an issuance and all its audit records.
func (a *Admin) GetIssuance(_ context.Context, req *credbrokerv1.GetIssuanceRequest) (*credbrokerv1.GetIssuanceResponse, error) {
	id := req.GetIssuanceId()
	if id == "" {
		return nil, toStatus(invalid("issuance_id", "issuance_id is required"))
	}
	recs, err := a.audit.ByIssuance(id)
	if err != nil {
		return nil, toStatus(wrapf(credbrokerv1.ErrorReason_AUDIT_UNAVAILABLE, err, "audit store unavailable"))
	}
	if len(recs) == 0 {
		return nil, toStatus(errorf(credbrokerv1.ErrorReason_NOT_FOUND, "no issuance %q", clip(id)))
	}
	out := &credbrokerv1.GetIssuanceResponse{}
	for _, r := range recs {
		out.Records = append(out.Records, RecordProto(r))
		if r.Decision == audit.DecisionIssued {
			out.Issuance = IssuanceProto(r)
		}
	}
	return out, nil
}

// VerifyAudit checks the hash chain, streaming its progress (a message per
// chunk of records, so that a client waiting for the next message is never
// idle for long, however large the chain) and then the result; with an
// anchor, the chain must also reach it.
func (a *Admin) VerifyAudit(req *credbrokerv1.VerifyAuditRequest, stream grpc.ServerStreamingServer[credbrokerv1.VerifyAuditResponse]) error {
	ctx := stream.Context()
	o := audit.VerifyOptions{Progress: func(done, total uint64) error {
		return stream.Send(&credbrokerv1.VerifyAuditResponse{Message: &credbrokerv1.VerifyAuditResponse_Progress{Progress: &credbrokerv1.AuditProgress{Done: done, Total: total}}})
	}}
	if an := req.GetAnchor(); an != nil {
		if an.GetSeq() > 0 && !isHexHash(an.GetHash()) {
			return toStatus(invalid("anchor.hash", "anchor.hash must be 64 lowercase hex digits"))
		}
		o.Anchor = &audit.Anchor{Seq: an.GetSeq(), Hash: an.GetHash(), Time: an.GetTime().AsTime(), BrokerID: an.GetBrokerId()}
	}
	v, err := a.audit.VerifyWith(o)
	switch {
	case err != nil && ctx.Err() != nil:
		return toStatus(ctx.Err())
	case err != nil:
		return toStatus(wrapf(credbrokerv1.ErrorReason_AUDIT_UNAVAILABLE, err, "audit store unavailable"))
	}
	out := &credbrokerv1.VerifyAuditResult{Ok: v.OK, Records: v.Records, HeadHash: v.HeadHash, HeadSeq: v.HeadSeq,
		FirstSeq: v.FirstSeq, PrunedThrough: v.PrunedThrough, CheckpointSeq: v.CheckpointSeq, AnchorChecked: v.AnchorChecked}
	if !v.OK {
		out.FirstBreak = &credbrokerv1.ChainBreak{Seq: v.FirstBadSeq, RecordId: v.FirstBadID, Problem: v.Problem}
	}
	return stream.Send(&credbrokerv1.VerifyAuditResponse{Message: &credbrokerv1.VerifyAuditResponse_Result{Result: out}})
}

// isHexHash reports whether s is a chain hash: 64 lowercase hex digits.
func isHexHash(s string) bool {
	if len(s) != 64 {
		return false
	}
	for _, c := range s {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// MarkAuditExported records that the chain has been exported through a seq,
// which lets housekeeping prune that far when audit.require_export is set.
func (a *Admin) MarkAuditExported(ctx context.Context, req *credbrokerv1.MarkAuditExportedRequest) (*credbrokerv1.MarkAuditExportedResponse, error) {
	through := req.GetThroughSeq()
	if through == 0 {
		return nil, toStatus(invalid("through_seq", "through_seq is required"))
	}
	if head, _ := a.audit.Head(); through > head {
		return nil, toStatus(invalid("through_seq", "through_seq %d is past the chain's head %d", through, head))
	}
	admin := AdminPrincipal(ctx)
	rec := audit.Record{Caller: clip(admin), Attestation: attestAdmin,
		Reason: clip(fmt.Sprintf("audit exported through seq %d by %s", through, admin))}
	stored, mark, err := a.audit.MarkExported(through, rec)
	if err != nil {
		return nil, toStatus(wrapf(credbrokerv1.ErrorReason_AUDIT_UNAVAILABLE, err, "audit store unavailable; the export is not marked"))
	}
	return &credbrokerv1.MarkAuditExportedResponse{ExportedThrough: mark, Record: RecordProto(stored)}, nil
}

// errPageFull ends an export whose page is complete.
var errPageFull = errors.New("page full")

// ExportAudit streams records in chain order and, with follow, keeps
// streaming new ones as they are committed until the client goes away or
// the page is full.
func (a *Admin) ExportAudit(req *credbrokerv1.ExportAuditRequest, stream grpc.ServerStreamingServer[credbrokerv1.ExportAuditResponse]) error {
	ctx := stream.Context()
	size := 0 // no bound: a follower without page_size
	if req.GetPageSize() != 0 || !req.GetFollow() {
		var err error
		if size, err = page.Size(req.GetPageSize(), defaultExportPage, maxExportPage); err != nil {
			return toStatus(pageError(err, "page_size"))
		}
	}
	var filter string
	switch start := req.GetStart().(type) {
	case *credbrokerv1.ExportAuditRequest_AfterSeq:
		filter = page.Filter("after_seq", strconv.FormatUint(start.AfterSeq, 10))
	case *credbrokerv1.ExportAuditRequest_LastRecords:
		filter = page.Filter("last_records", strconv.FormatUint(start.LastRecords, 10))
	default:
		filter = page.Filter()
	}
	head, _ := a.audit.Head()
	after := min(req.GetAfterSeq(), head) // past the head: follow from the head
	if n := req.GetLastRecords(); n > 0 {
		after = head - min(n, head)
	}
	if tok := req.GetPageToken(); tok != "" {
		pos, err := page.Decode(tok, listExport, filter)
		if err != nil {
			return toStatus(pageError(err, "page_token"))
		}
		after = min(pos.Seq, head)
	}
	sent := 0
	for {
		// Take the wake-up channel before reading, so a commit between the
		// export and the wait is not missed.
		advanced := a.audit.Advanced(after)
		err := a.audit.ExportStored(after, func(r audit.Record, stored []byte) error {
			if size > 0 && sent == size {
				return errPageFull
			}
			after = r.Seq
			sent++
			return stream.Send(&credbrokerv1.ExportAuditResponse{
				Record: RecordProto(r), CanonicalJson: string(stored), HeadSeq: head,
				NextPageToken: page.Encode(listExport, filter, page.Position{Seq: r.Seq}),
			})
		})
		switch {
		case errors.Is(err, errPageFull):
			return nil
		case err != nil && ctx.Err() != nil:
			return toStatus(ctx.Err())
		case errors.Is(err, audit.ErrPrunedDuringExport):
			// Retention pruned what this stream was about to send: say so
			// rather than leave a gap in the export.
			return toStatus(wrapf(credbrokerv1.ErrorReason_UNAVAILABLE, err, "%s; the export stops before the gap", clip(err.Error())))
		case err != nil:
			return toStatus(wrapf(credbrokerv1.ErrorReason_AUDIT_UNAVAILABLE, err, "audit export failed"))
		case !req.GetFollow(), size > 0 && sent == size:
			return nil
		}
		select {
		case <-ctx.Done():
			return toStatus(ctx.Err())
		case <-a.stop:
			return toStatus(errorf(credbrokerv1.ErrorReason_UNAVAILABLE, "broker is shutting down"))
		case <-advanced:
		}
	}
}

// IssuanceProto converts the issued record of an issuance to its API form.
func IssuanceProto(r audit.Record) *credbrokerv1.Issuance {
	return &credbrokerv1.Issuance{
		IssuanceId:     r.IssuanceID,
		IssuedAt:       timestamppb.New(r.Time),
		ExpiresAt:      ProtoTime(r.ExpiresAt),
		Caller:         r.Caller,
		Attestation:    AttestationProto(r.Attestation),
		Profile:        r.Profile,
		Cluster:        r.Cluster,
		Issuer:         r.Issuer,
		UpstreamRef:    r.UpstreamRef,
		SourceIdentity: r.SourceIdentity,
		Reused:         r.Reused,
	}
}

var decisions = map[audit.Decision]credbrokerv1.Decision{
	audit.DecisionIntent:    credbrokerv1.Decision_DECISION_INTENT,
	audit.DecisionIssued:    credbrokerv1.Decision_DECISION_ISSUED,
	audit.DecisionDenied:    credbrokerv1.Decision_DECISION_DENIED,
	audit.DecisionThrottled: credbrokerv1.Decision_DECISION_THROTTLED,
	audit.DecisionFailed:    credbrokerv1.Decision_DECISION_FAILED,
	audit.DecisionRevoked:   credbrokerv1.Decision_DECISION_REVOKED,
	audit.DecisionLifted:    credbrokerv1.Decision_DECISION_LIFTED,
	audit.DecisionReset:     credbrokerv1.Decision_DECISION_RESET,

	audit.DecisionApprovalRequested: credbrokerv1.Decision_DECISION_APPROVAL_REQUESTED,
	audit.DecisionApprovalApproved:  credbrokerv1.Decision_DECISION_APPROVAL_APPROVED,
	audit.DecisionApprovalGranted:   credbrokerv1.Decision_DECISION_APPROVAL_GRANTED,
	audit.DecisionApprovalDenied:    credbrokerv1.Decision_DECISION_APPROVAL_DENIED,
	audit.DecisionApprovalExpired:   credbrokerv1.Decision_DECISION_APPROVAL_EXPIRED,
	audit.DecisionCheckpoint:        credbrokerv1.Decision_DECISION_CHECKPOINT,
	audit.DecisionPending:           credbrokerv1.Decision_DECISION_PENDING,
	audit.DecisionKeyRotated:        credbrokerv1.Decision_DECISION_KEY_ROTATED,
	audit.DecisionExported:          credbrokerv1.Decision_DECISION_EXPORTED,
}

var attestationMethods = map[string]credbrokerv1.AttestationMethod{
	attest.MethodX509SVID:  credbrokerv1.AttestationMethod_ATTESTATION_METHOD_X509_SVID,
	attest.MethodJWTSVID:   credbrokerv1.AttestationMethod_ATTESTATION_METHOD_JWT_SVID,
	attest.MethodJoinToken: credbrokerv1.AttestationMethod_ATTESTATION_METHOD_JOIN_TOKEN,
	attest.MethodK8sPSAT:   credbrokerv1.AttestationMethod_ATTESTATION_METHOD_K8S_PSAT,
	attest.MethodAWSIID:    credbrokerv1.AttestationMethod_ATTESTATION_METHOD_AWS_IID,
	attest.MethodAdmin:     credbrokerv1.AttestationMethod_ATTESTATION_METHOD_ADMIN,
}

// AttestationProto converts an attestation method as audit records store it
// to its API form (UNSPECIFIED when none was established).
func AttestationProto(method string) credbrokerv1.AttestationMethod {
	return attestationMethods[method]
}

// RecordProto converts an audit record to its API form.
func RecordProto(r audit.Record) *credbrokerv1.AuditRecord {
	out := &credbrokerv1.AuditRecord{
		RecordId: r.ID, Seq: r.Seq, Time: timestamppb.New(r.Time), IssuanceId: r.IssuanceID,
		Caller: r.Caller, Attestation: AttestationProto(r.Attestation), Profile: r.Profile, Cluster: r.Cluster,
		Issuer: r.Issuer, Decision: decisions[r.Decision], Reason: r.Reason,
		ExpiresAt: ProtoTime(r.ExpiresAt), UpstreamRef: r.UpstreamRef, PrevHash: r.PrevHash, Hash: r.Hash,
		SourceIdentity: r.SourceIdentity, Reused: r.Reused, Replica: r.Replica,
	}
	if r.TTL > 0 {
		out.Ttl = durationpb.New(r.TTL)
	}
	if cp := r.Checkpoint; cp != nil {
		out.Checkpoint = &credbrokerv1.AuditCheckpoint{FromSeq: cp.FromSeq, ThroughSeq: cp.ThroughSeq, ThroughHash: cp.ThroughHash,
			Count: cp.Count, FirstTime: ProtoTime(cp.FirstTime), LastTime: ProtoTime(cp.LastTime)}
	}
	return out
}

// ProtoTime converts t to its API form; the zero time is absent (nil).
func ProtoTime(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

// CreateJoinToken implements AdminService.CreateJoinToken.
func (a *Admin) CreateJoinToken(ctx context.Context, req *credbrokerv1.CreateJoinTokenRequest) (*credbrokerv1.CreateJoinTokenResponse, error) {
	if a.nodes == nil {
		return nil, toStatus(errNodesDisabled)
	}
	return a.nodes.CreateJoinToken(ctx, req)
}

// ListNodes implements AdminService.ListNodes.
func (a *Admin) ListNodes(ctx context.Context, req *credbrokerv1.ListNodesRequest) (*credbrokerv1.ListNodesResponse, error) {
	if a.nodes == nil {
		return nil, toStatus(errNodesDisabled)
	}
	return a.nodes.ListNodes(ctx, req)
}

// EvictNode implements AdminService.EvictNode.
func (a *Admin) EvictNode(ctx context.Context, req *credbrokerv1.EvictNodeRequest) (*credbrokerv1.EvictNodeResponse, error) {
	if a.nodes == nil {
		return nil, toStatus(errNodesDisabled)
	}
	return a.nodes.EvictNode(ctx, req)
}

var errNodesDisabled = errorf(credbrokerv1.ErrorReason_NODE_ATTESTATION_DISABLED, "node attestation is not enabled on this broker (node_attestation in its configuration)")

// disabledNodes serves NodeService on a broker without node attestation.
type disabledNodes struct {
	credbrokerv1.UnimplementedNodeServiceServer
}

func (disabledNodes) AttestNode(context.Context, *credbrokerv1.AttestNodeRequest) (*credbrokerv1.AttestNodeResponse, error) {
	return nil, toStatus(errNodesDisabled)
}

func (disabledNodes) RenewNodeSVID(context.Context, *credbrokerv1.RenewNodeSVIDRequest) (*credbrokerv1.RenewNodeSVIDResponse, error) {
	return nil, toStatus(errNodesDisabled)
}
