package broker_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/credbroker/credbroker/broker/audit"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// TestMarkAuditExported: only admins mark the chain exported; the mark is
// an exported record naming the admin, moves only forward and cannot pass
// the head.
func TestMarkAuditExported(t *testing.T) {
	h := newHarness(t)
	for i := range 3 {
		if _, err := h.audit.Append(audit.Record{IssuanceID: fmt.Sprint(i), Decision: audit.DecisionDenied}); err != nil {
			t.Fatal(err)
		}
	}
	req := &credbrokerv1.MarkAuditExportedRequest{ThroughSeq: 2}
	_, err := credbrokerv1.NewAdminServiceClient(h.dial(h.mint(controllerID, time.Hour))).MarkAuditExported(ctxT(t), req)
	wantReason(t, err, credbrokerv1.ErrorReason_ADMIN_ONLY)

	admin := credbrokerv1.NewAdminServiceClient(h.dialAdminSocket())
	head, _ := h.audit.Head() // the refusal above is on record too
	for _, bad := range []uint64{0, head + 1} {
		_, err := admin.MarkAuditExported(ctxT(t), &credbrokerv1.MarkAuditExportedRequest{ThroughSeq: bad})
		wantReason(t, err, credbrokerv1.ErrorReason_INVALID_REQUEST)
	}
	resp, err := admin.MarkAuditExported(ctxT(t), req)
	if err != nil {
		t.Fatal(err)
	}
	rec := resp.GetRecord()
	if resp.GetExportedThrough() != 2 || rec.GetDecision() != credbrokerv1.Decision_DECISION_EXPORTED ||
		!strings.HasPrefix(rec.GetCaller(), "unix:uid=") || !strings.Contains(rec.GetReason(), "audit exported through seq 2 by unix:uid=") {
		t.Fatalf("MarkAuditExported = %v", resp)
	}
	if m, err := h.audit.ExportedThrough(); err != nil || m != 2 {
		t.Fatalf("mark = %d, %v", m, err)
	}
	resp, err = admin.MarkAuditExported(ctxT(t), &credbrokerv1.MarkAuditExportedRequest{ThroughSeq: 1})
	if err != nil || resp.GetExportedThrough() != 2 {
		t.Fatalf("a lower mark: %v, %v; want the mark kept at 2", resp, err)
	}
}

// TestVerifyAuditAnchor: an anchor the chain reaches verifies; one past the
// head is a break; a malformed one is refused.
func TestVerifyAuditAnchor(t *testing.T) {
	h := newHarness(t)
	for i := range 3 {
		if _, err := h.audit.Append(audit.Record{IssuanceID: fmt.Sprint(i), Decision: audit.DecisionDenied}); err != nil {
			t.Fatal(err)
		}
	}
	seq, hash := h.audit.Head()
	admin := credbrokerv1.NewAdminServiceClient(h.dialAdminSocket())
	verify := func(an *credbrokerv1.AuditAnchor) (*credbrokerv1.VerifyAuditResult, error) {
		stream, err := admin.VerifyAudit(ctxT(t), &credbrokerv1.VerifyAuditRequest{Anchor: an})
		if err != nil {
			return nil, err
		}
		for {
			resp, err := stream.Recv()
			if err != nil {
				return nil, err
			}
			if r := resp.GetResult(); r != nil {
				return r, nil
			}
		}
	}
	if r, err := verify(&credbrokerv1.AuditAnchor{Seq: seq, Hash: hash}); err != nil || !r.GetOk() || !r.GetAnchorChecked() || r.GetHeadSeq() != 3 || r.GetFirstSeq() != 1 {
		t.Fatalf("anchor at the head: %v, %v", r, err)
	}
	if r, err := verify(&credbrokerv1.AuditAnchor{Seq: seq + 1, Hash: hash}); err != nil || r.GetOk() || !strings.Contains(r.GetFirstBreak().GetProblem(), "anchor not reached") {
		t.Fatalf("anchor past the head: %v, %v", r, err)
	}
	_, err := verify(&credbrokerv1.AuditAnchor{Seq: seq, Hash: "not-a-hash"})
	wantReason(t, err, credbrokerv1.ErrorReason_INVALID_REQUEST)
}
