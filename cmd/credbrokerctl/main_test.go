package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/goleak"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var testNow = time.Date(2026, 5, 6, 12, 0, 0, 0, time.UTC)

const (
	controller = "spiffe://example.org/ns/capi-system/sa/capa-controller-manager"
	nodeID     = "spiffe://example.org/capi/cluster/team-a/prod/node/n1"
)

// fakeAdmin is a small AdminService: the broker is a true external for the
// CLI. block makes every RPC wait for its context (a hung broker).
type fakeAdmin struct {
	credbrokerv1.UnimplementedAdminServiceServer

	issuances []*credbrokerv1.Issuance
	records   []*credbrokerv1.AuditRecord
	verify    *credbrokerv1.VerifyAuditResult
	err       error
	block     bool
	// progress is sent by VerifyAudit before its result, one message
	// every progressEvery.
	progress      []*credbrokerv1.AuditProgress
	progressEvery time.Duration
	// sendEvery paces ExportAudit: a broker slow to read its chain.
	sendEvery time.Duration

	mu         sync.Mutex
	lastList   *credbrokerv1.ListIssuancesRequest
	lastExport *credbrokerv1.ExportAuditRequest
}

func (f *fakeAdmin) wait(ctx context.Context) error {
	if f.block {
		<-ctx.Done()
		return ctx.Err()
	}
	return f.err
}

func (f *fakeAdmin) ListIssuances(ctx context.Context, req *credbrokerv1.ListIssuancesRequest) (*credbrokerv1.ListIssuancesResponse, error) {
	f.mu.Lock()
	f.lastList = req
	f.mu.Unlock()
	if err := f.wait(ctx); err != nil {
		return nil, err
	}
	var out []*credbrokerv1.Issuance
	for _, is := range f.issuances {
		if (req.Caller == "" || is.Caller == req.Caller) && (req.Cluster == "" || is.Cluster == req.Cluster) {
			out = append(out, is)
		}
	}
	items, next := fakePage(out, req.PageSize, req.PageToken)
	return &credbrokerv1.ListIssuancesResponse{Issuances: items, NextPageToken: next}, nil
}

func (f *fakeAdmin) GetIssuance(ctx context.Context, req *credbrokerv1.GetIssuanceRequest) (*credbrokerv1.GetIssuanceResponse, error) {
	if err := f.wait(ctx); err != nil {
		return nil, err
	}
	for _, is := range f.issuances {
		if is.IssuanceId == req.IssuanceId {
			resp := &credbrokerv1.GetIssuanceResponse{Issuance: is}
			for _, r := range f.records {
				if r.IssuanceId == req.IssuanceId {
					resp.Records = append(resp.Records, r)
				}
			}
			return resp, nil
		}
	}
	// A refused request has records but no issuance, as the broker reports it.
	resp := &credbrokerv1.GetIssuanceResponse{}
	for _, r := range f.records {
		if r.IssuanceId == req.IssuanceId {
			resp.Records = append(resp.Records, r)
		}
	}
	if len(resp.Records) > 0 {
		return resp, nil
	}
	return nil, brokerErr(codes.NotFound, credbrokerv1.ErrorReason_NOT_FOUND, "issuance "+req.IssuanceId+" not found")
}

// VerifyAudit streams f.progress, one message every f.progressEvery, then
// the result (or, with block, hangs after the progress).
func (f *fakeAdmin) VerifyAudit(_ *credbrokerv1.VerifyAuditRequest, stream grpc.ServerStreamingServer[credbrokerv1.VerifyAuditResponse]) error {
	for _, p := range f.progress {
		if err := stream.Send(&credbrokerv1.VerifyAuditResponse{Message: &credbrokerv1.VerifyAuditResponse_Progress{Progress: p}}); err != nil {
			return err
		}
		if f.progressEvery > 0 {
			select {
			case <-time.After(f.progressEvery): // a broker busy walking its chain
			case <-stream.Context().Done():
				return stream.Context().Err()
			}
		}
	}
	if err := f.wait(stream.Context()); err != nil {
		return err
	}
	return stream.Send(&credbrokerv1.VerifyAuditResponse{Message: &credbrokerv1.VerifyAuditResponse_Result{Result: f.verify}})
}

func (f *fakeAdmin) ExportAudit(req *credbrokerv1.ExportAuditRequest, stream grpc.ServerStreamingServer[credbrokerv1.ExportAuditResponse]) error {
	f.mu.Lock()
	f.lastExport = req
	f.mu.Unlock()
	if f.err != nil {
		return f.err
	}
	after := req.GetAfterSeq()
	if req.PageToken != "" {
		after, _ = strconv.ParseUint(req.PageToken, 10, 64)
	}
	sent := 0
	for _, r := range f.records {
		if r.Seq <= after {
			continue
		}
		if req.PageSize > 0 && sent == int(req.PageSize) {
			break
		}
		sent++
		if f.sendEvery > 0 {
			select {
			case <-time.After(f.sendEvery):
			case <-stream.Context().Done():
				return stream.Context().Err()
			}
		}
		head := f.records[len(f.records)-1].GetSeq()
		if err := stream.Send(&credbrokerv1.ExportAuditResponse{Record: r, CanonicalJson: canonicalOf(r), HeadSeq: head, NextPageToken: strconv.FormatUint(r.Seq, 10)}); err != nil {
			return err
		}
	}
	if f.block { // sent what it had, then hangs
		<-stream.Context().Done()
		return stream.Context().Err()
	}
	return nil
}

// brokerErr is an error as the broker sends it, with its ErrorInfo reason.
func brokerErr(code codes.Code, reason credbrokerv1.ErrorReason, msg string) error {
	st, err := status.New(code, msg).WithDetails(&errdetails.ErrorInfo{Reason: reason.String(), Domain: "credbroker.dev"})
	if err != nil {
		panic(err)
	}
	return st.Err()
}

// fakePage pages items as the broker does, with the index of the next item
// as the token.
func fakePage[T any](items []T, size int32, token string) ([]T, string) {
	start, _ := strconv.Atoi(token)
	items = items[min(start, len(items)):]
	if size <= 0 || int(size) >= len(items) {
		return items, ""
	}
	return items[:size], strconv.Itoa(start + int(size))
}

// serve starts a real gRPC server for f on a unix socket and returns its path.
func serve(t *testing.T, f *fakeAdmin) string {
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

type result struct {
	stdout, stderr string
	code           int
}

func cli(t *testing.T, env map[string]string, args ...string) result {
	t.Helper()
	return cliOn(t, &app{getenv: func(k string) string { return env[k] }}, args...)
}

// cliOn runs the CLI as a (with the test's clock), e.g. one whose stderr is
// taken for a terminal.
func cliOn(t *testing.T, a *app, args ...string) result {
	t.Helper()
	var stdout, stderr bytes.Buffer
	a.now = func() time.Time { return testNow }
	if a.getenv == nil {
		a.getenv = func(string) string { return "" }
	}
	code := runApp(context.Background(), a, args, &stdout, &stderr)
	return result{stdout.String(), stderr.String(), code}
}

// ctl runs the CLI against socket.
func ctl(t *testing.T, socket string, args ...string) result {
	t.Helper()
	return cli(t, nil, append([]string{"--socket", socket}, args...)...)
}

func ts(s string) *timestamppb.Timestamp {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		panic(err)
	}
	return timestamppb.New(t)
}

func sampleAdmin() *fakeAdmin {
	return &fakeAdmin{
		issuances: []*credbrokerv1.Issuance{
			{IssuanceId: "iss-2", IssuedAt: ts("2026-05-06T11:30:00Z"), ExpiresAt: ts("2026-05-06T11:45:00Z"), Caller: nodeID,
				Attestation: credbrokerv1.AttestationMethod_ATTESTATION_METHOD_X509_SVID, Profile: "node-ecr", Cluster: "team-a/prod", Issuer: "aws", UpstreamRef: "ASIAEXAMPLE"},
			{IssuanceId: "iss-1", IssuedAt: ts("2026-05-06T10:00:00Z"), ExpiresAt: ts("2026-05-06T10:15:00Z"), Caller: controller,
				Attestation: credbrokerv1.AttestationMethod_ATTESTATION_METHOD_JWT_SVID, Profile: "dev-token", Issuer: "jwt", UpstreamRef: "iss-1"},
		},
		records: []*credbrokerv1.AuditRecord{
			{RecordId: "rec-1", Seq: 1, Time: ts("2026-05-06T10:00:00Z"), IssuanceId: "iss-1", Caller: controller, Attestation: credbrokerv1.AttestationMethod_ATTESTATION_METHOD_JWT_SVID,
				Profile: "dev-token", Issuer: "jwt", Decision: credbrokerv1.Decision_DECISION_INTENT, Ttl: durationpb.New(15 * time.Minute),
				Hash: strings.Repeat("a", 64)},
			{RecordId: "rec-2", Seq: 2, Time: ts("2026-05-06T10:00:00Z"), IssuanceId: "iss-1", Caller: controller, Attestation: credbrokerv1.AttestationMethod_ATTESTATION_METHOD_JWT_SVID,
				Profile: "dev-token", Issuer: "jwt", Decision: credbrokerv1.Decision_DECISION_ISSUED, Ttl: durationpb.New(15 * time.Minute),
				ExpiresAt: ts("2026-05-06T10:15:00Z"), UpstreamRef: "iss-1", PrevHash: strings.Repeat("a", 64), Hash: strings.Repeat("b", 64)},
			{RecordId: "rec-3", Seq: 3, Time: ts("2026-05-06T10:05:00Z"), IssuanceId: "iss-9", Caller: controller,
				Profile: "admin", Decision: credbrokerv1.Decision_DECISION_DENIED, Reason: "no rule \x1b[31mallows\x1b[0m\tprofile",
				PrevHash: strings.Repeat("b", 64), Hash: strings.Repeat("c", 64)},
		},
		verify: &credbrokerv1.VerifyAuditResult{Ok: true, Records: 3, HeadHash: strings.Repeat("c", 64)},
	}
}

func wantCode(t *testing.T, r result, code int) {
	t.Helper()
	if r.code != code {
		t.Fatalf("exit code %d, want %d\nstdout:\n%s\nstderr:\n%s", r.code, code, r.stdout, r.stderr)
	}
}

func TestIssuancesListTable(t *testing.T) {
	f := sampleAdmin()
	r := ctl(t, serve(t, f), "issuances", "list")
	wantCode(t, r, 0)
	lines := strings.Split(strings.TrimRight(r.stdout, "\n"), "\n")
	if len(lines) != 3 {
		t.Fatalf("want header + 2 rows, got:\n%s", r.stdout)
	}
	if got := strings.Fields(lines[0]); strings.Join(got, " ") != "ID ISSUED EXPIRES CALLER PROFILE CLUSTER ISSUER REF" {
		t.Errorf("header = %q", lines[0])
	}
	want := [][]string{
		{"iss-2", "2026-05-06T11:30:00Z", "2026-05-06T11:45:00Z", nodeID, "node-ecr", "team-a/prod", "aws", "ASIAEXAMPLE"},
		{"iss-1", "2026-05-06T10:00:00Z", "2026-05-06T10:15:00Z", controller, "dev-token", "-", "jwt", "iss-1"},
	}
	for i, w := range want {
		if got := strings.Fields(lines[i+1]); strings.Join(got, "|") != strings.Join(w, "|") {
			t.Errorf("row %d = %q, want %q", i, got, w)
		}
	}
	// Columns are aligned: every row's CALLER starts where the header's does.
	col := strings.Index(lines[0], "CALLER")
	for _, l := range lines[1:] {
		if !strings.HasPrefix(l[col:], "spiffe://") {
			t.Errorf("misaligned row %q", l)
		}
	}
	if r.stderr != "" {
		t.Errorf("stderr = %q", r.stderr)
	}
}

func TestIssuancesListJSON(t *testing.T) {
	f := sampleAdmin()
	r := ctl(t, serve(t, f), "issuances", "list", "-o", "json")
	wantCode(t, r, 0)
	var got []map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil {
		t.Fatalf("output is not a JSON array: %v\n%s", err, r.stdout)
	}
	if len(got) != 2 {
		t.Fatalf("got %d objects", len(got))
	}
	want := map[string]any{
		"issuance_id": "iss-1", "issued_at": "2026-05-06T10:00:00Z", "expires_at": "2026-05-06T10:15:00Z",
		"caller": controller, "attestation": "ATTESTATION_METHOD_JWT_SVID", "profile": "dev-token", "cluster": "",
		"issuer": "jwt", "upstream_ref": "iss-1", "source_identity": "", "reused": false,
	}
	if len(got[1]) != len(want) {
		t.Errorf("object keys = %v, want %v", got[1], want)
	}
	for k, v := range want {
		if got[1][k] != v {
			t.Errorf("%s = %v, want %v", k, got[1][k], v)
		}
	}
	// Output is byte-stable (protojson randomises whitespace; we normalise).
	if again := ctl(t, serve(t, f), "issuances", "list", "-o", "json"); again.stdout != r.stdout {
		t.Error("JSON output differs between runs")
	}

	f.issuances = nil
	if empty := ctl(t, serve(t, f), "issuances", "list", "-o", "json"); strings.TrimSpace(empty.stdout) != "[]" {
		t.Errorf("empty list = %q, want []", empty.stdout)
	}
}

func TestIssuancesListFilters(t *testing.T) {
	f := sampleAdmin()
	sock := serve(t, f)
	for _, tc := range []struct {
		args []string
		want *credbrokerv1.ListIssuancesRequest
	}{
		{[]string{"--caller", controller, "--limit", "5"}, &credbrokerv1.ListIssuancesRequest{Caller: controller, PageSize: 5}},
		{[]string{"--cluster", "team-a/prod", "--since", "1h"}, &credbrokerv1.ListIssuancesRequest{Cluster: "team-a/prod", Since: timestamppb.New(testNow.Add(-time.Hour)), PageSize: 100}},
		{[]string{"--since", "7d"}, &credbrokerv1.ListIssuancesRequest{Since: timestamppb.New(testNow.Add(-7 * 24 * time.Hour)), PageSize: 100}},
		{[]string{"--since", "2026-01-02T03:04:05+02:00", "--limit", "0"}, &credbrokerv1.ListIssuancesRequest{Since: ts("2026-01-02T01:04:05Z"), PageSize: 1000}},
	} {
		r := ctl(t, sock, append([]string{"issuances", "list"}, tc.args...)...)
		wantCode(t, r, 0)
		f.mu.Lock()
		got := f.lastList
		f.mu.Unlock()
		if !proto.Equal(got, tc.want) {
			t.Errorf("%v: request = %v, want %v", tc.args, got, tc.want)
		}
	}
	r := ctl(t, sock, "issuances", "list", "--cluster", "team-a/prod")
	if strings.Contains(r.stdout, "iss-1") || !strings.Contains(r.stdout, "iss-2") {
		t.Errorf("cluster filter output:\n%s", r.stdout)
	}
}

func TestIssuancesShow(t *testing.T) {
	f := sampleAdmin()
	sock := serve(t, f)
	r := ctl(t, sock, "issuances", "show", "iss-1")
	wantCode(t, r, 0)
	for _, want := range []string{"CALLER", controller, "ATTESTATION", "jwt-svid", "AUDIT RECORDS (2)", "intent", "issued", "15m0s", strings.Repeat("b", 16)} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("show output lacks %q:\n%s", want, r.stdout)
		}
	}
	if strings.Contains(r.stdout, strings.Repeat("b", 17)) {
		t.Error("table shows the full hash; want it abbreviated")
	}

	r = ctl(t, sock, "issuances", "show", "iss-1", "-o", "json")
	wantCode(t, r, 0)
	var got credbrokerv1.GetIssuanceResponse
	if err := protojson.Unmarshal([]byte(r.stdout), &got); err != nil {
		t.Fatalf("json: %v\n%s", err, r.stdout)
	}
	want := &credbrokerv1.GetIssuanceResponse{Issuance: f.issuances[1], Records: f.records[:2]}
	if !proto.Equal(&got, want) {
		t.Errorf("json round trip = %v, want %v", &got, want)
	}
	if !strings.Contains(r.stdout, `"issuance_id"`) || !strings.Contains(r.stdout, `"prev_hash"`) {
		t.Errorf("json field names are not snake_case:\n%s", r.stdout)
	}

	r = ctl(t, sock, "issuances", "show", "nope")
	wantCode(t, r, 1)
	if r.stderr != "credbrokerctl: not found: issuance nope not found\n" {
		t.Errorf("stderr = %q", r.stderr)
	}
}

func TestTableEscapesControlCharacters(t *testing.T) {
	f := sampleAdmin()
	f.issuances = append(f.issuances, &credbrokerv1.Issuance{IssuanceId: "iss-9", Caller: controller})
	r := ctl(t, serve(t, f), "issuances", "show", "iss-9")
	wantCode(t, r, 0)
	if strings.ContainsRune(r.stdout, 0x1b) {
		t.Fatalf("raw escape character reached the terminal:\n%q", r.stdout)
	}
	if !strings.Contains(r.stdout, `no rule \x1b[31mallows\x1b[0m\x09profile`) {
		t.Errorf("reason not shown escaped:\n%s", r.stdout)
	}
}

func TestAuditVerify(t *testing.T) {
	f := sampleAdmin()
	sock := serve(t, f)
	r := ctl(t, sock, "audit", "verify")
	wantCode(t, r, 0)
	if want := "audit chain OK: 3 records, head " + strings.Repeat("c", 64) + "\n"; r.stdout != want {
		t.Errorf("stdout = %q, want %q", r.stdout, want)
	}

	f.verify = &credbrokerv1.VerifyAuditResult{Records: 2, HeadHash: strings.Repeat("b", 64),
		FirstBreak: &credbrokerv1.ChainBreak{Seq: 2, RecordId: "rec-2", Problem: "hash mismatch"}}
	r = ctl(t, sock, "audit", "verify")
	wantCode(t, r, 1)
	if want := "audit chain BROKEN at record seq 2 (id rec-2): hash mismatch\n"; r.stdout != want {
		t.Errorf("stdout = %q, want %q", r.stdout, want)
	}
	if r.stderr != "" {
		t.Errorf("stderr = %q, want nothing (the verdict is on stdout)", r.stderr)
	}

	r = ctl(t, sock, "audit", "verify", "-o", "json")
	wantCode(t, r, 1)
	var got map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil {
		t.Fatal(err)
	}
	brk, _ := got["first_break"].(map[string]any)
	if got["ok"] != false || brk["seq"] != "2" || brk["record_id"] != "rec-2" || brk["problem"] != "hash mismatch" {
		t.Errorf("json = %v", got)
	}

	f.verify = &credbrokerv1.VerifyAuditResult{Ok: true, Records: 3, HeadHash: "h"}
	r = ctl(t, sock, "-o", "json", "audit", "verify")
	wantCode(t, r, 0)
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil || got["ok"] != true || got["head_hash"] != "h" {
		t.Errorf("json = %v (%v)", got, err)
	}
}

// TestAuditVerifyProgress: the broker's progress messages become a bar on
// stderr when it is a terminal, and nothing in a pipe or with -o json; the
// verdict on stdout is the same either way.
func TestAuditVerifyProgress(t *testing.T) {
	f := sampleAdmin()
	f.progress = []*credbrokerv1.AuditProgress{{Done: 1024, Total: 3000}, {Done: 2048, Total: 3000}}
	sock := serve(t, f)
	terminal := func(io.Writer) bool { return true }
	want := "audit chain OK: 3 records, head " + strings.Repeat("c", 64) + "\n"

	r := cliOn(t, &app{isTerminal: terminal}, "--socket", sock, "audit", "verify")
	wantCode(t, r, 0)
	if r.stdout != want {
		t.Errorf("stdout = %q, want %q", r.stdout, want)
	}
	for _, s := range []string{"\rverify [", "] 1024/3000 records  34%", "] 2048/3000 records  68%", "\r\x1b[K"} {
		if !strings.Contains(r.stderr, s) {
			t.Errorf("stderr on a terminal lacks %q: %q", s, r.stderr)
		}
	}
	if !strings.HasSuffix(r.stderr, "\r\x1b[K") {
		t.Errorf("the bar is not cleared at the end: %q", r.stderr)
	}

	for _, args := range [][]string{{"audit", "verify"}, {"-o", "json", "audit", "verify"}} {
		a := &app{isTerminal: func(io.Writer) bool { return false }}
		if args[0] == "-o" {
			a.isTerminal = terminal // -o json: no bar even on a terminal
		}
		r := cliOn(t, a, append([]string{"--socket", sock}, args...)...)
		wantCode(t, r, 0)
		if r.stderr != "" {
			t.Errorf("%v: stderr = %q, want nothing", args, r.stderr)
		}
	}
}

// TestAuditVerifyOutlivesTheTimeout: a walk that takes longer than --timeout
// in all, with the broker sending progress more often than that, succeeds;
// a broker that stops sending fails it once --timeout passes.
func TestAuditVerifyOutlivesTheTimeout(t *testing.T) {
	f := sampleAdmin()
	for i := uint64(1); i <= 6; i++ {
		f.progress = append(f.progress, &credbrokerv1.AuditProgress{Done: i * 500, Total: 3000})
	}
	f.progressEvery = 300 * time.Millisecond // 1.8 s in all
	sock := serve(t, f)
	r := ctl(t, sock, "--timeout", "1s", "audit", "verify")
	wantCode(t, r, 0)
	if !strings.HasPrefix(r.stdout, "audit chain OK: 3 records") {
		t.Errorf("stdout = %q", r.stdout)
	}

	f = sampleAdmin()
	f.progress = []*credbrokerv1.AuditProgress{{Done: 1024, Total: 3000}}
	f.block = true
	r = ctl(t, serve(t, f), "--timeout", "300ms", "audit", "verify")
	wantCode(t, r, 1)
	if r.stderr != "credbrokerctl: broker sent nothing for 300ms (see --timeout)\n" {
		t.Errorf("stderr = %q", r.stderr)
	}
}

// canonicalOf stands in for the broker's stored form of a record: the CLI
// must print it unchanged, whatever it is.
func canonicalOf(r *credbrokerv1.AuditRecord) string {
	return fmt.Sprintf(`{"id":%q,"seq":%d,"time":%q,"replica":%q,"hash":%q}`, r.GetRecordId(), r.GetSeq(),
		r.GetTime().AsTime().Format(time.RFC3339Nano), r.GetReplica(), r.GetHash())
}

func TestAuditExport(t *testing.T) {
	f := sampleAdmin()
	sock := serve(t, f)
	r := ctl(t, sock, "audit", "export")
	wantCode(t, r, 0)
	lines := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
	if len(lines) != len(f.records) {
		t.Fatalf("%d lines, want %d:\n%s", len(lines), len(f.records), r.stdout)
	}
	for i, l := range lines {
		if want := canonicalOf(f.records[i]); l != want {
			t.Errorf("line %d = %s, want the canonical form %s", i, l, want)
		}
	}

	// On a terminal, the progress toward the chain's head is drawn on
	// stderr; the records on stdout are the same.
	r2 := cliOn(t, &app{isTerminal: func(io.Writer) bool { return true }}, "--socket", sock, "audit", "export")
	wantCode(t, r2, 0)
	if r2.stdout != r.stdout || !strings.Contains(r2.stderr, "\rexport [") || !strings.Contains(r2.stderr, "] 3/3 records 100%") {
		t.Errorf("export on a terminal: stdout %q, stderr %q", r2.stdout, r2.stderr)
	}

	r = ctl(t, sock, "audit", "export", "--after-seq", "2")
	wantCode(t, r, 0)
	if f.lastExport.GetAfterSeq() != 2 || strings.Count(r.stdout, "\n") != 1 || !strings.Contains(r.stdout, `"rec-3"`) {
		t.Errorf("after-seq 2: request %v, output:\n%s", f.lastExport, r.stdout)
	}
}

// TestAuditExportIdleTimeout: a broker that stops sending mid-export makes
// the CLI fail once --timeout passes without a record, after writing what it
// received.
func TestAuditExportIdleTimeout(t *testing.T) {
	f := sampleAdmin()
	f.block = true
	r := ctl(t, serve(t, f), "--timeout", "300ms", "audit", "export")
	wantCode(t, r, 1)
	if strings.Count(r.stdout, "\n") != 3 {
		t.Errorf("records received before the stall were not written:\n%s", r.stdout)
	}
	if !strings.Contains(r.stderr, "export stopped after 3 records") || !strings.Contains(r.stderr, "sent nothing for 300ms") {
		t.Errorf("stderr = %q", r.stderr)
	}
}

func TestUnaryTimeout(t *testing.T) {
	f := sampleAdmin()
	f.block = true
	r := ctl(t, serve(t, f), "--timeout", "50ms", "issuances", "list")
	wantCode(t, r, 1)
	if r.stderr != "credbrokerctl: broker did not answer within 50ms (see --timeout)\n" {
		t.Errorf("stderr = %q", r.stderr)
	}
}

func TestUnreachableSocket(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "admin.sock")
	want := "credbrokerctl: cannot reach broker admin socket " + missing + ": is `credbroker serve` running?\n"
	for _, args := range [][]string{{"issuances", "list"}, {"issuances", "show", "x"}, {"audit", "verify"}, {"audit", "export"}} {
		r := ctl(t, missing, args...)
		wantCode(t, r, 1)
		if r.stderr != want || r.stdout != "" {
			t.Errorf("%v: stdout %q stderr %q, want %q", args, r.stdout, r.stderr, want)
		}
	}

	// A socket file left behind by a dead broker: connection refused.
	stale := staleSocket(t)
	r := ctl(t, stale, "audit", "verify")
	wantCode(t, r, 1)
	if want := "credbrokerctl: cannot reach broker admin socket " + stale + ": is `credbroker serve` running?\n"; r.stderr != want {
		t.Errorf("stale socket: stderr %q, want %q", r.stderr, want)
	}

	notSock := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(notSock, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	r = ctl(t, notSock, "audit", "verify")
	wantCode(t, r, 1)
	if !strings.Contains(r.stderr, "is not a unix socket") {
		t.Errorf("regular file: stderr %q", r.stderr)
	}
}

// staleSocket returns the path of a unix socket file nothing listens on
// any more, as a dead broker leaves it: connecting is refused.
func staleSocket(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "admin.sock")
	lis, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	lis.SetUnlinkOnClose(false)
	lis.Close()
	return path
}

func TestSocketFromEnvironment(t *testing.T) {
	sock := serve(t, sampleAdmin())
	r := cli(t, map[string]string{socketEnv: sock}, "audit", "verify")
	wantCode(t, r, 0)
	// The flag wins over the environment.
	r = cli(t, map[string]string{socketEnv: sock}, "--socket", filepath.Join(t.TempDir(), "x.sock"), "audit", "verify")
	wantCode(t, r, 1)
}

func TestBrokerErrorsMapped(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{brokerErr(codes.PermissionDenied, credbrokerv1.ErrorReason_ADMIN_ONLY, "peer uid 1001 is not an admin"),
			"credbrokerctl: permission denied by broker: peer uid 1001 is not an admin (the admin socket accepts only the broker's own uid and root)\n"},
		{brokerErr(codes.Unavailable, credbrokerv1.ErrorReason_AUDIT_UNAVAILABLE, "audit store closed"), "credbrokerctl: broker unavailable: audit store closed\n"},
		{brokerErr(codes.Internal, credbrokerv1.ErrorReason_INTERNAL, "boom"), "credbrokerctl: broker refused (INTERNAL): boom\n"},
		{brokerErr(codes.InvalidArgument, credbrokerv1.ErrorReason_INVALID_REQUEST, "page_token is not a page token"), "credbrokerctl: invalid request: page_token is not a page token\n"},
		{brokerErr(codes.FailedPrecondition, credbrokerv1.ErrorReason_NODE_ATTESTATION_DISABLED, "node attestation is not enabled"),
			"credbrokerctl: node attestation is not enabled (set node_attestation in the broker's configuration)\n"},
		// The message says permission denied, but without the broker's
		// reason this is a transport failure, judged by its code.
		{status.Error(codes.PermissionDenied, "permission denied"), "credbrokerctl: broker error (PermissionDenied): permission denied\n"},
		{status.Error(codes.Internal, "boom"), "credbrokerctl: broker error (Internal): boom\n"},
		{status.Error(codes.Unimplemented, "x"), "credbrokerctl: the broker does not support this command (is it older than credbrokerctl?): x\n"},
	} {
		f := sampleAdmin()
		f.err = tc.err
		r := ctl(t, serve(t, f), "issuances", "list")
		wantCode(t, r, 1)
		if r.stderr != tc.want {
			t.Errorf("stderr = %q, want %q", r.stderr, tc.want)
		}
	}
}

func TestUsageErrors(t *testing.T) {
	sock := serve(t, sampleAdmin())
	for _, args := range [][]string{
		{"frobnicate"},
		{"issuances"},
		{"issuances", "lst"},
		{"audit"},
		{"--bogus", "audit", "verify"},
		{"issuances", "list", "--limit", "x"},
		{"issuances", "list", "--limit", "-1"},
		{"issuances", "list", "--limit", "-1"},
		{"nodes", "list", "--limit", "-1"},
		{"issuances", "list", "--since", "yesterday"},
		{"issuances", "list", "--since", "-1h"},
		{"issuances", "list", "--cluster", "prod"},
		{"issuances", "list", "--cluster", "a/b/c"},
		{"issuances", "list", "--cluster", "Team_A/prod"}, // the broker's rule: Kubernetes names
		{"nodes", "list", "--cluster", "team-a/Prod"},
		{"join-token", "create", "--cluster", "team-a/-prod"},
		{"issuances", "list", "extra"},
		{"issuances", "show"},
		{"issuances", "show", "a", "b"},
		{"audit", "verify", "-o", "yaml"},
		{"audit", "verify", "--timeout", "0s"},
		{"audit", "export", "--after-seq", "-3"},
	} {
		r := ctl(t, sock, args...)
		if r.code != 2 {
			t.Errorf("%v: exit %d, want 2 (stderr %q)", args, r.code, r.stderr)
			continue
		}
		if !strings.HasPrefix(r.stderr, "credbrokerctl: ") || !strings.Contains(r.stderr, "--help' for usage.") {
			t.Errorf("%v: stderr %q", args, r.stderr)
		}
	}
}

// TestHelpEverywhere runs --help on every command: it must succeed, explain
// the command and show an example.
func TestHelpEverywhere(t *testing.T) {
	var walk func(c *cobra.Command)
	var paths [][]string
	walk = func(c *cobra.Command) {
		if c.Name() == "help" {
			return
		}
		if c.Example == "" || c.Short == "" {
			t.Errorf("%s has no Example or Short", c.CommandPath())
		}
		paths = append(paths, strings.Fields(c.CommandPath())[1:])
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(newRootCmd(&app{getenv: func(string) string { return "" }}))
	if len(paths) < 7 {
		t.Fatalf("found only %d commands", len(paths))
	}
	for _, p := range paths {
		r := cli(t, nil, append(p, "--help")...)
		wantCode(t, r, 0)
		if !strings.Contains(r.stdout, "Examples:") || !strings.Contains(r.stdout, "Usage:") {
			t.Errorf("%v --help:\n%s", p, r.stdout)
		}
	}
	if r := cli(t, nil, "--help"); !strings.Contains(r.stdout, "--socket") || !strings.Contains(r.stdout, socketEnv) {
		t.Errorf("root help does not document --socket and %s:\n%s", socketEnv, r.stdout)
	}
}

func TestParseSince(t *testing.T) {
	for in, want := range map[string]time.Time{
		"90m":                  testNow.Add(-90 * time.Minute),
		"1d":                   testNow.Add(-24 * time.Hour),
		"2026-05-01T00:00:00Z": time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC),
	} {
		got, err := parseSince(in, testNow)
		if err != nil || !got.Equal(want) {
			t.Errorf("parseSince(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "0s", "0d", "-2d", "d", "1w", "99999999d"} {
		if _, err := parseSince(in, testNow); err == nil {
			t.Errorf("parseSince(%q) succeeded", in)
		}
	}
}

func TestAuditTail(t *testing.T) {
	f := sampleAdmin()
	sock := serve(t, f)
	r := ctl(t, sock, "audit", "tail", "-n", "2")
	wantCode(t, r, 0)
	if f.lastExport.GetLastRecords() != 2 || f.lastExport.GetFollow() {
		t.Errorf("request = %v, want last 2 without follow", f.lastExport)
	}
	lines := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
	if len(lines) != len(f.records) {
		t.Fatalf("%d lines:\n%s", len(lines), r.stdout)
	}
	for i, l := range lines {
		rec := f.records[i]
		if !strings.HasPrefix(l, fmt.Sprintf("%d ", rec.GetSeq())) || !strings.Contains(l, "caller=") || strings.ContainsAny(l, "\x1b\r") {
			t.Errorf("line %d = %q", i, l)
		}
	}
	r = ctl(t, sock, "-o", "json", "audit", "tail", "-f")
	wantCode(t, r, 0) // the fake ends the stream; a real broker keeps it open
	if !f.lastExport.GetFollow() || !strings.HasPrefix(r.stdout, canonicalOf(f.records[0])) {
		t.Errorf("request %v, output %s", f.lastExport, r.stdout)
	}
}

func TestIssuancesShowRefusedRequest(t *testing.T) {
	f := sampleAdmin()
	f.records = append(f.records, &credbrokerv1.AuditRecord{RecordId: "rec-9", Seq: 9, IssuanceId: "req-9",
		Decision: credbrokerv1.Decision_DECISION_DENIED, Reason: "no policy rule matches the caller"})
	r := ctl(t, serve(t, f), "issuances", "show", "req-9")
	wantCode(t, r, 0)
	for _, want := range []string{"No credential was issued for request req-9", "AUDIT RECORDS (1)", "denied", "no policy rule matches"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("output lacks %q:\n%s", want, r.stdout)
		}
	}
}

// TestListsFollowPages: lists follow the broker's pages up to --limit (and
// say when more were left out), or to the end with --limit 0; the export
// follows pages until one comes back short.
func TestListsFollowPages(t *testing.T) {
	f := sampleAdmin()
	for i := range 2500 {
		f.issuances = append(f.issuances, &credbrokerv1.Issuance{IssuanceId: fmt.Sprintf("bulk-%04d", i), Caller: controller})
	}
	sock := serve(t, f)
	r := ctl(t, sock, "-o", "json", "issuances", "list", "--limit", "0")
	wantCode(t, r, 0)
	var all []map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &all); err != nil || len(all) != 2502 || r.stderr != "" {
		t.Fatalf("--limit 0: %d issuances (%v), stderr %q", len(all), err, r.stderr)
	}
	r = ctl(t, sock, "-o", "json", "issuances", "list", "--limit", "1500")
	wantCode(t, r, 0)
	if err := json.Unmarshal([]byte(r.stdout), &all); err != nil || len(all) != 1500 || !strings.Contains(r.stderr, "showing the first 1500; there are more") {
		t.Fatalf("--limit 1500: %d issuances (%v), stderr %q", len(all), err, r.stderr)
	}
	if all[1499]["issuance_id"] != "bulk-1497" {
		t.Errorf("last = %v", all[1499]["issuance_id"])
	}

	defer func(n int32) { exportPageSize = n }(exportPageSize)
	exportPageSize = 2
	r = ctl(t, sock, "audit", "export")
	wantCode(t, r, 0)
	if got := strings.Count(r.stdout, "\n"); got != len(f.records) || !strings.Contains(r.stdout, `"rec-3"`) {
		t.Errorf("paged export: %d lines\n%s", got, r.stdout)
	}
	if f.lastExport.GetPageToken() != "2" || f.lastExport.GetPageSize() != 2 {
		t.Errorf("last export request %v, want the token after seq 2", f.lastExport)
	}
}
