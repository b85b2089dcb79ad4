package main

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// retentionAdmin is fakeAdmin with what audit retention and anchors add:
// it remembers the verification asked for and the export marks made.
type retentionAdmin struct {
	*fakeAdmin
	mu         sync.Mutex
	lastVerify *credbrokerv1.VerifyAuditRequest
	marks      []uint64
}

func (f *retentionAdmin) VerifyAudit(req *credbrokerv1.VerifyAuditRequest, stream grpc.ServerStreamingServer[credbrokerv1.VerifyAuditResponse]) error {
	f.mu.Lock()
	f.lastVerify = req
	f.mu.Unlock()
	return f.fakeAdmin.VerifyAudit(req, stream)
}

func (f *retentionAdmin) MarkAuditExported(_ context.Context, req *credbrokerv1.MarkAuditExportedRequest) (*credbrokerv1.MarkAuditExportedResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.marks = append(f.marks, req.GetThroughSeq())
	return &credbrokerv1.MarkAuditExportedResponse{ExportedThrough: req.GetThroughSeq(), Record: &credbrokerv1.AuditRecord{Seq: 4}}, nil
}

func (f *retentionAdmin) verified() *credbrokerv1.VerifyAuditRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.lastVerify
}

func (f *retentionAdmin) marked() []uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]uint64(nil), f.marks...)
}

func serveRetention(t *testing.T, f *retentionAdmin) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "admin.sock")
	lis, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	credbrokerv1.RegisterAdminServiceServer(srv, f)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return path
}

// TestAuditVerifyAnchorAndPruned: --anchor sends the file's head with the
// verification and the output says it was reached and what was pruned; a
// file that is not an anchor is refused before anything is asked.
func TestAuditVerifyAnchorAndPruned(t *testing.T) {
	f := &retentionAdmin{fakeAdmin: sampleAdmin()}
	f.verify = &credbrokerv1.VerifyAuditResult{Ok: true, Records: 3, HeadHash: strings.Repeat("c", 64), HeadSeq: 603,
		FirstSeq: 601, PrunedThrough: 600, CheckpointSeq: 603, AnchorChecked: true}
	sock := serveRetention(t, f)
	dir := t.TempDir()
	anchor := filepath.Join(dir, "anchor.json")
	hash := strings.Repeat("b", 64)
	if err := os.WriteFile(anchor, []byte(`{"seq":602,"hash":"`+hash+`","time":"2026-05-06T10:00:00Z","broker_id":"spiffe://td/b","host":"h"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	r := ctl(t, sock, "audit", "verify", "--anchor", anchor)
	wantCode(t, r, 0)
	for _, want := range []string{"audit chain OK: 3 records", "records 1 to 600 pruned: verified from the checkpoint at seq 603, records 601 to 603",
		"anchor reached: seq 602 has the hash published at 2026-05-06"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("stdout lacks %q:\n%s", want, r.stdout)
		}
	}
	if an := f.verified().GetAnchor(); an.GetSeq() != 602 || an.GetHash() != hash || an.GetBrokerId() != "spiffe://td/b" {
		t.Fatalf("anchor sent = %v", an)
	}

	bad := filepath.Join(dir, "bad.json")
	if err := os.WriteFile(bad, []byte(`{"hash":"`+hash+`"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	f.lastVerify = nil
	f.mu.Unlock()
	r = ctl(t, sock, "audit", "verify", "--anchor", bad)
	if r.code == 0 || !strings.Contains(r.stderr, "no seq") || f.verified() != nil {
		t.Fatalf("a file without a seq: exit %d, %q; asked %v", r.code, r.stderr, f.verified())
	}
}

// TestAuditExported: `audit exported` needs --through and marks it.
func TestAuditExported(t *testing.T) {
	f := &retentionAdmin{fakeAdmin: sampleAdmin()}
	sock := serveRetention(t, f)
	wantCode(t, ctl(t, sock, "audit", "exported"), 2)
	r := ctl(t, sock, "audit", "exported", "--through", "3")
	wantCode(t, r, 0)
	if m := f.marked(); len(m) != 1 || m[0] != 3 || !strings.Contains(r.stderr, "audit marked exported through seq 3 (record seq 4)") {
		t.Fatalf("marks %v, stderr %q", m, r.stderr)
	}
}
