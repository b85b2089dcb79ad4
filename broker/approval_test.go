package broker_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/credbroker/credbroker/broker"
	"github.com/credbroker/credbroker/broker/alerts"
	"github.com/credbroker/credbroker/broker/audit"
	"github.com/credbroker/credbroker/broker/config"
	"github.com/credbroker/credbroker/broker/page"
	"github.com/credbroker/credbroker/broker/policy"
	"github.com/credbroker/credbroker/broker/state"
	"github.com/credbroker/credbroker/issuers"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// waitingFor asserts that err is APPROVAL_REQUIRED and returns its approval
// id, after checking the metadata says how far it is.
func waitingFor(t *testing.T, err error, approvals int) string {
	t.Helper()
	st, info := wantReason(t, err, credbrokerv1.ErrorReason_APPROVAL_REQUIRED)
	md := info.GetMetadata()
	id := md[broker.MetaApprovalID]
	if id == "" || md[broker.MetaApproversNeeded] == "" || md[broker.MetaExpiresAt] == "" || md[broker.MetaApprovals] != fmt.Sprint(approvals) {
		t.Fatalf("APPROVAL_REQUIRED metadata %v; want approval_id, approvers_needed, expires_at and %d approvals", md, approvals)
	}
	if !strings.Contains(st.Message(), "credbrokerctl approvals approve "+id) {
		t.Fatalf("message %q does not say how to approve", st.Message())
	}
	return id
}

func countDecisions(h *harness, d audit.Decision) int {
	n := 0
	for _, r := range h.records() {
		if r.Decision == d {
			n++
		}
	}
	return n
}

// TestApprovalTwoPerson: a request for a profile that needs two approvals is
// refused with an approval id, the same for the identical request; one
// admin approving twice counts once; a socket admin completes it; another
// request is not covered; the identical request then gets the credential,
// once, and every step is on record naming the principals.
func TestApprovalTwoPerson(t *testing.T) {
	h := newHarness(t, withApprovalRules)
	conn := h.dial(h.mint(controllerID, time.Hour))
	req := &credbrokerv1.IssueCredentialRequest{Profile: "approved-token", Cluster: "team-a/alpha"}
	_, err := issue(ctxT(t), conn, req)
	id := waitingFor(t, err, 0)
	if r := h.lastRecord(); r.Decision != audit.DecisionPending || !strings.Contains(r.Reason, id) {
		t.Fatalf("the blocked request is on record as %+v; want pending, naming the approval", r)
	}
	_, err = issue(ctxT(t), conn, req)
	if again := waitingFor(t, err, 0); again != id {
		t.Fatalf("identical request got approval %s, want %s", again, id)
	}
	if n := countDecisions(h, audit.DecisionApprovalRequested); n != 1 {
		t.Fatalf("%d approval_requested records, want 1", n)
	}

	mtls := credbrokerv1.NewAdminServiceClient(h.dial(h.mint(adminID, time.Hour)))
	sock := credbrokerv1.NewAdminServiceClient(h.dialAdminSocket())
	resp, err := mtls.Approve(ctxT(t), &credbrokerv1.ApproveRequest{ApprovalId: id})
	if err != nil || !resp.GetCounted() || len(resp.GetApproval().GetApprovals()) != 1 {
		t.Fatalf("first approval: %v, %v", resp, err)
	}
	resp, err = mtls.Approve(ctxT(t), &credbrokerv1.ApproveRequest{ApprovalId: id})
	if err != nil || resp.GetCounted() || resp.GetApproval().GetStatus() != credbrokerv1.ApprovalStatus_APPROVAL_STATUS_PENDING {
		t.Fatalf("the same admin again: %v, %v; want not counted, still pending", resp, err)
	}
	_, err = issue(ctxT(t), conn, req)
	waitingFor(t, err, 1)

	resp, err = sock.Approve(ctxT(t), &credbrokerv1.ApproveRequest{ApprovalId: id})
	if err != nil || !resp.GetCounted() || resp.GetApproval().GetStatus() != credbrokerv1.ApprovalStatus_APPROVAL_STATUS_GRANTED {
		t.Fatalf("socket admin: %v, %v; want granted", resp, err)
	}
	// Another request (another TTL) is not covered by the approval.
	other := &credbrokerv1.IssueCredentialRequest{Profile: "approved-token", Cluster: "team-a/alpha", Ttl: durationpb.New(10 * time.Minute)}
	_, err = issue(ctxT(t), conn, other)
	if oid := waitingFor(t, err, 0); oid == id {
		t.Fatal("a request with another TTL got the granted approval")
	}

	cred, err := issue(ctxT(t), conn, req)
	if err != nil || cred.GetToken().GetToken() == "" {
		t.Fatalf("approved request: %v, %v", cred, err)
	}
	issued := h.lastRecord()
	if issued.Decision != audit.DecisionIssued || !strings.Contains(issued.Reason, "approval "+id+" consumed") || !strings.Contains(issued.Reason, adminID.String()) {
		t.Fatalf("issued record %+v; want it to name the approval and its approvers", issued)
	}
	// Single use.
	_, err = issue(ctxT(t), conn, req)
	if next := waitingFor(t, err, 0); next == id {
		t.Fatal("the consumed approval was offered again")
	}
	got, err := mtls.GetApproval(ctxT(t), &credbrokerv1.GetApprovalRequest{ApprovalId: id})
	if err != nil || got.GetApproval().GetStatus() != credbrokerv1.ApprovalStatus_APPROVAL_STATUS_CONSUMED || got.GetApproval().GetConsumedBy() != cred.GetIssuanceId() {
		t.Fatalf("GetApproval = %v, %v; want consumed by %s", got, err, cred.GetIssuanceId())
	}
	var steps []string
	for _, r := range h.records() {
		if r.IssuanceID == id {
			steps = append(steps, string(r.Decision)+" by "+r.Caller)
		}
	}
	uid := fmt.Sprintf("unix:uid=%d", uidOf(t))
	want := []string{
		"approval_requested by " + controllerID.String(),
		"approval_approved by " + adminID.String(),
		"approval_approved by " + uid,
		"approval_granted by " + uid,
	}
	if strings.Join(steps, "; ") != strings.Join(want, "; ") {
		t.Fatalf("approval records:\n got %v\nwant %v", steps, want)
	}
	// Approvers were told of the request and the grant (and of the other
	// requests), through the alert channels.
	alerted := strings.Join(h.alerts.rules(), "; ")
	for _, want := range []string{"approval_requested approval " + id, "approval_granted approval " + id} {
		if !strings.Contains(alerted, want) {
			t.Fatalf("alerts %q lack %q", alerted, want)
		}
	}
	list, err := sock.ListApprovals(ctxT(t), &credbrokerv1.ListApprovalsRequest{PageSize: 1})
	if err != nil || len(list.GetApprovals()) != 1 || list.GetApprovals()[0].GetApprovalId() != id || list.GetNextPageToken() == "" {
		t.Fatalf("first page of one: %v, %v", list, err)
	}
	list, err = sock.ListApprovals(ctxT(t), &credbrokerv1.ListApprovalsRequest{PageSize: 10, PageToken: list.GetNextPageToken()})
	if err != nil || len(list.GetApprovals()) != 2 || list.GetNextPageToken() != "" {
		t.Fatalf("second page: %v, %v; want the other two approvals", list, err)
	}
}

// TestApprovalRequesterCannotApprove: an admin identity that asked for the
// credential is refused when it approves its own request, and its approval
// is not counted.
func TestApprovalRequesterCannotApprove(t *testing.T) {
	h := newHarness(t, withApprovalRules)
	svid := h.mint(adminID, time.Hour)
	_, err := issue(ctxT(t), h.dial(svid), &credbrokerv1.IssueCredentialRequest{Profile: "approved-token"})
	id := waitingFor(t, err, 0)
	_, err = credbrokerv1.NewAdminServiceClient(h.dial(svid)).Approve(ctxT(t), &credbrokerv1.ApproveRequest{ApprovalId: id})
	st, _ := wantReason(t, err, credbrokerv1.ErrorReason_POLICY_DENIED)
	if !strings.Contains(st.Message(), "never approve its own request") {
		t.Fatalf("message %q", st.Message())
	}
	a, err := h.approvals.Get(context.Background(), id)
	if err != nil || len(a.Votes) != 0 {
		t.Fatalf("approval %+v, %v; want no votes", a, err)
	}
	if n := countDecisions(h, audit.DecisionApprovalApproved); n != 0 {
		t.Fatalf("%d approval_approved records, want 0", n)
	}
}

// TestApprovalDenyAndExpire: a denial ends an approval and the requester is
// told who denied and why; an approval whose window passed can no longer be
// approved, the identical request opens a new one, and housekeeping records
// the expiry.
func TestApprovalDenyAndExpire(t *testing.T) {
	h := newHarness(t, withApprovalRules)
	conn := h.dial(h.mint(controllerID, time.Hour))
	sock := credbrokerv1.NewAdminServiceClient(h.dialAdminSocket())
	req := &credbrokerv1.IssueCredentialRequest{Profile: "approved-token"}
	_, err := issue(ctxT(t), conn, req)
	id := waitingFor(t, err, 0)
	if _, err := sock.DenyApproval(ctxT(t), &credbrokerv1.DenyApprovalRequest{ApprovalId: id, Reason: "no change ticket"}); err != nil {
		t.Fatal(err)
	}
	_, err = issue(ctxT(t), conn, req)
	st, info := wantReason(t, err, credbrokerv1.ErrorReason_APPROVAL_DENIED)
	if info.GetMetadata()[broker.MetaApprovalID] != id || !strings.Contains(st.Message(), "no change ticket") || !strings.HasPrefix(info.GetMetadata()[broker.MetaDeniedBy], "unix:uid=") {
		t.Fatalf("denial %q %v", st.Message(), info.GetMetadata())
	}
	_, err = credbrokerv1.NewAdminServiceClient(h.dial(h.mint(adminID, time.Hour))).Approve(ctxT(t), &credbrokerv1.ApproveRequest{ApprovalId: id})
	wantReason(t, err, credbrokerv1.ErrorReason_INVALID_REQUEST)
	if alerted := strings.Join(h.alerts.rules(), "; "); !strings.Contains(alerted, "approval_denied approval "+id) {
		t.Fatalf("alerts %q lack the denial", alerted)
	}

	// Another request, approved once, expires.
	req2 := &credbrokerv1.IssueCredentialRequest{Profile: "approved-token", Cluster: "team-a/alpha"}
	_, err = issue(ctxT(t), conn, req2)
	id2 := waitingFor(t, err, 0)
	if _, err := sock.Approve(ctxT(t), &credbrokerv1.ApproveRequest{ApprovalId: id2}); err != nil {
		t.Fatal(err)
	}
	h.clock.Advance(10 * time.Minute)
	_, err = credbrokerv1.NewAdminServiceClient(h.dial(h.mint(adminID, time.Hour))).Approve(ctxT(t), &credbrokerv1.ApproveRequest{ApprovalId: id2})
	if st, _ := wantReason(t, err, credbrokerv1.ErrorReason_INVALID_REQUEST); !strings.Contains(st.Message(), "expired") {
		t.Fatalf("approving after the window: %q", st.Message())
	}
	got, err := sock.GetApproval(ctxT(t), &credbrokerv1.GetApprovalRequest{ApprovalId: id2})
	if err != nil || got.GetApproval().GetStatus() != credbrokerv1.ApprovalStatus_APPROVAL_STATUS_EXPIRED {
		t.Fatalf("GetApproval after the window = %v, %v; want expired", got, err)
	}
	_, err = issue(ctxT(t), conn, req2)
	if id3 := waitingFor(t, err, 0); id3 == id2 {
		t.Fatal("the expired approval was offered again")
	}
	n, err := h.approvals.Expire(context.Background(), h.clock.Now())
	if err != nil || n != 2 {
		t.Fatalf("Expire = %d, %v; want the denied and the expired approval purged", n, err)
	}
	var expired []string
	for _, r := range h.records() {
		if r.Decision == audit.DecisionApprovalExpired {
			expired = append(expired, r.IssuanceID)
		}
	}
	if len(expired) != 1 || expired[0] != id2 {
		t.Fatalf("approval_expired records for %v, want only %s (the denial is on record as such)", expired, id2)
	}
	if n := countDecisions(h, audit.DecisionApprovalDenied); n != 1 {
		t.Fatalf("%d approval_denied records, want 1", n)
	}
}

// grant has the two harness admins approve id.
func grant(t *testing.T, h *harness, id string) {
	t.Helper()
	for _, c := range []credbrokerv1.AdminServiceClient{
		credbrokerv1.NewAdminServiceClient(h.dial(h.mint(adminID, time.Hour))),
		credbrokerv1.NewAdminServiceClient(h.dialAdminSocket()),
	} {
		if _, err := c.Approve(ctxT(t), &credbrokerv1.ApproveRequest{ApprovalId: id}); err != nil {
			t.Fatal(err)
		}
	}
}

// TestApprovalUsedOnceUnderConcurrency: many identical requests racing with
// one granted approval get exactly one credential.
func TestApprovalUsedOnceUnderConcurrency(t *testing.T) {
	h := newHarness(t, withApprovalRules)
	conn := h.dial(h.mint(controllerID, time.Hour))
	req := &credbrokerv1.IssueCredentialRequest{Profile: "approved-token"}
	_, err := issue(ctxT(t), conn, req)
	grant(t, h, waitingFor(t, err, 0))
	var wg sync.WaitGroup
	var issued atomic.Int32
	for range 12 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := issue(ctxT(t), conn, req)
			switch st, _ := status.FromError(err); {
			case err == nil:
				issued.Add(1)
			case !strings.Contains(st.Message(), "approval"):
				t.Errorf("unexpected refusal: %v", err)
			}
		}()
	}
	wg.Wait()
	if issued.Load() != 1 {
		t.Fatalf("%d credentials for one approval, want 1", issued.Load())
	}
	if n := countDecisions(h, audit.DecisionIssued); n != 1 {
		t.Fatalf("%d issued records, want 1", n)
	}
}

// TestApprovalReleasedOnUpstreamFailure: an approval consumed by an intent
// whose issuer then fails is given back, so the retry gets the credential;
// once issued it is used.
func TestApprovalReleasedOnUpstreamFailure(t *testing.T) {
	h := newHarness(t, withApprovalRules)
	h.upstream.answer = func(call int, r issuers.Request) (issuers.Credential, error) {
		if call == 1 {
			return issuers.Credential{}, &issuers.Error{Kind: issuers.ErrUnavailable, Code: "ServiceUnavailable", Err: errors.New("sts down")}
		}
		return issuers.Credential{Kind: issuers.KindToken, Token: "t", ExpiresAt: h.clock.Now().Add(time.Hour), UpstreamRef: "ref", OriginIssuanceID: r.IssuanceID}, nil
	}
	conn := h.dial(h.mint(controllerID, time.Hour))
	req := &credbrokerv1.IssueCredentialRequest{Profile: "approved-upstream"}
	_, err := issue(ctxT(t), conn, req)
	id := waitingFor(t, err, 0)
	if _, err := credbrokerv1.NewAdminServiceClient(h.dialAdminSocket()).Approve(ctxT(t), &credbrokerv1.ApproveRequest{ApprovalId: id}); err != nil {
		t.Fatal(err)
	}
	_, err = issue(ctxT(t), conn, req)
	wantReason(t, err, credbrokerv1.ErrorReason_UPSTREAM_UNAVAILABLE)
	if a, err := h.approvals.Get(context.Background(), id); err != nil || a.Status != state.ApprovalGranted {
		t.Fatalf("after the failure: %+v, %v; want granted again", a, err)
	}
	if _, err := issue(ctxT(t), conn, req); err != nil {
		t.Fatalf("retry: %v", err)
	}
	if a, err := h.approvals.Get(context.Background(), id); err != nil || a.Status != state.ApprovalConsumed {
		t.Fatalf("after the issuance: %+v, %v; want consumed", a, err)
	}
	_, err = issue(ctxT(t), conn, req)
	waitingFor(t, err, 0)
}

// TestApprovalBoundPerIdentity: an identity has at most
// broker.MaxOpenApprovals approvals open; another request is refused with
// QUOTA_EXHAUSTED and stores nothing; identical requests cost nothing.
func TestApprovalBoundPerIdentity(t *testing.T) {
	h := newHarness(t, withApprovalRules)
	conn := h.dial(h.mint(controllerID, time.Hour))
	ask := func(i int) error {
		_, err := issue(ctxT(t), conn, &credbrokerv1.IssueCredentialRequest{Profile: "approved-token", Ttl: durationpb.New(time.Duration(i+1) * time.Minute)})
		return err
	}
	for i := range broker.MaxOpenApprovals {
		waitingFor(t, ask(i), 0)
		waitingFor(t, ask(i), 0)
	}
	_, info := wantReason(t, ask(broker.MaxOpenApprovals), credbrokerv1.ErrorReason_QUOTA_EXHAUSTED)
	if info.GetMetadata()["limit"] != "pending approvals" {
		t.Fatalf("metadata %v", info.GetMetadata())
	}
	as, err := h.approvals.List(context.Background(), "", 0)
	if err != nil || len(as) != broker.MaxOpenApprovals {
		t.Fatalf("%d approvals stored (%v), want %d", len(as), err, broker.MaxOpenApprovals)
	}
	if n := countDecisions(h, audit.DecisionApprovalRequested); n != broker.MaxOpenApprovals {
		t.Fatalf("%d approval_requested records, want %d", n, broker.MaxOpenApprovals)
	}
}

// TestApprovalBoundInTotal: identities each well within their own bound
// cannot make the broker hold more than limits.open_approvals approvals: the
// next identity is refused QUOTA_EXHAUSTED (limit "open approvals", with
// RetryInfo) and nothing is stored; the log says so once, not per refusal;
// a denial makes room for one more.
func TestApprovalBoundInTotal(t *testing.T) {
	const total = 3
	h := newHarness(t, func(c *harnessConfig) {
		c.openApprovals = total
		c.rules = append(c.rules, policy.Rule{ID: "spiffe://example.test/ns/*/sa/capi-controller", Profiles: []string{"approved-token"}})
	})
	ask := func(ns string) error {
		id := spiffeid.RequireFromPath(td, "/ns/"+ns+"/sa/capi-controller")
		_, err := issue(ctxT(t), h.dial(h.mint(id, time.Hour)), &credbrokerv1.IssueCredentialRequest{Profile: "approved-token"})
		return err
	}
	var ids []string
	for i := range total {
		ids = append(ids, waitingFor(t, ask(fmt.Sprintf("team-%d", i)), 0))
	}
	waitingFor(t, ask("team-0"), 0) // identical: still found at the bound
	for i := range 5 {
		_, info := wantReason(t, ask(fmt.Sprintf("late-%d", i)), credbrokerv1.ErrorReason_QUOTA_EXHAUSTED)
		if info.GetMetadata()["limit"] != "open approvals" {
			t.Fatalf("metadata %v", info.GetMetadata())
		}
	}
	_, err := issue(ctxT(t), h.dial(h.mint(spiffeid.RequireFromPath(td, "/ns/late-0/sa/capi-controller"), time.Hour)),
		&credbrokerv1.IssueCredentialRequest{Profile: "approved-token"})
	if d := retryDelay(t, err); d <= 0 {
		t.Fatalf("retry delay %v", d)
	}
	if as, err := h.approvals.List(context.Background(), "", 0); err != nil || len(as) != total {
		t.Fatalf("%d approvals stored (%v), want %d", len(as), err, total)
	}
	if n := strings.Count(h.logs.String(), "the broker holds its bound of open approvals"); n != 1 {
		t.Fatalf("the full bound was logged %d times for 6 refusals within a minute, want once", n)
	}
	if _, err := credbrokerv1.NewAdminServiceClient(h.dialAdminSocket()).DenyApproval(ctxT(t), &credbrokerv1.DenyApprovalRequest{ApprovalId: ids[0]}); err != nil {
		t.Fatal(err)
	}
	waitingFor(t, ask("late-0"), 0)
	wantReason(t, ask("late-1"), credbrokerv1.ErrorReason_QUOTA_EXHAUSTED)
}

// TestApprovalNeeded: the function policy explain asks.
func TestApprovalNeeded(t *testing.T) {
	h := newHarness(t, withApprovalRules)
	if r, ok := h.service().ApprovalNeeded("approved-token"); !ok || r.Approvers != 2 {
		t.Fatalf("approved-token: %+v, %v", r, ok)
	}
	if _, ok := h.service().ApprovalNeeded("plain-token"); ok {
		t.Fatal("plain-token needs no approval")
	}
}

func uidOf(*testing.T) int { return os.Getuid() }

// TestApprovalAdminRefusals: unknown ids, missing ids, oversized reasons
// and page tokens of another listing are refused with their reasons, and
// change nothing.
func TestApprovalAdminRefusals(t *testing.T) {
	h := newHarness(t, withApprovalRules)
	sock := credbrokerv1.NewAdminServiceClient(h.dialAdminSocket())
	_, err := sock.Approve(ctxT(t), &credbrokerv1.ApproveRequest{ApprovalId: "0190f0a0-0000-7000-8000-000000000001"})
	wantReason(t, err, credbrokerv1.ErrorReason_NOT_FOUND)
	_, err = sock.GetApproval(ctxT(t), &credbrokerv1.GetApprovalRequest{})
	wantReason(t, err, credbrokerv1.ErrorReason_INVALID_REQUEST)
	_, err = issue(ctxT(t), h.dial(h.mint(controllerID, time.Hour)), &credbrokerv1.IssueCredentialRequest{Profile: "approved-token"})
	id := waitingFor(t, err, 0)
	_, err = sock.DenyApproval(ctxT(t), &credbrokerv1.DenyApprovalRequest{ApprovalId: id, Reason: strings.Repeat("x", 513)})
	if _, info := wantReason(t, err, credbrokerv1.ErrorReason_INVALID_REQUEST); info.GetMetadata()["field"] != "reason" {
		t.Fatalf("metadata %v", info.GetMetadata())
	}
	if a, err := h.approvals.Get(context.Background(), id); err != nil || a.Status != state.ApprovalPending {
		t.Fatalf("after the refused denial: %+v, %v; want pending", a, err)
	}
	// A token of the revocations listing is not one of approvals.
	_, err = sock.ListApprovals(ctxT(t), &credbrokerv1.ListApprovalsRequest{PageToken: page.Encode("revocations", page.Filter(), page.Position{Key: id})})
	wantReason(t, err, credbrokerv1.ErrorReason_INVALID_REQUEST)
	_, err = sock.ListApprovals(ctxT(t), &credbrokerv1.ListApprovalsRequest{PageToken: "garbage"})
	wantReason(t, err, credbrokerv1.ErrorReason_INVALID_REQUEST)
	_, err = sock.ListApprovals(ctxT(t), &credbrokerv1.ListApprovalsRequest{PageSize: -1})
	wantReason(t, err, credbrokerv1.ErrorReason_INVALID_REQUEST)
}

// TestApprovalAlertsReachSignedWebhook: approvers hear of a request, its
// grant and a denial through a signed webhook (the receiver verifies each
// signature), naming the approval, the requester and how to approve.
func TestApprovalAlertsReachSignedWebhook(t *testing.T) {
	sink := newAlertSink(t, false)
	h := newHarness(t, withApprovalRules, func(c *harnessConfig) {
		c.alerts = alertConfig(t, sink.srv.URL, config.AlertRules{})
	})
	conn := h.dial(h.mint(controllerID, time.Hour))
	_, err := issue(ctxT(t), conn, &credbrokerv1.IssueCredentialRequest{Profile: "approved-token"})
	id := waitingFor(t, err, 0)
	p := sink.waitRule(t, alerts.ApprovalRequested)
	if p.Subject != "approval "+id || p.Fields["requester"] != controllerID.String() || !strings.Contains(p.Summary, "credbrokerctl approvals approve "+id) {
		t.Fatalf("approval_requested alert %+v", p)
	}
	grant(t, h, id)
	if p := sink.waitRule(t, alerts.ApprovalGranted); p.Subject != "approval "+id || !strings.Contains(p.Fields["approved_by"], adminID.String()) {
		t.Fatalf("approval_granted alert %+v", p)
	}
	_, err = issue(ctxT(t), conn, &credbrokerv1.IssueCredentialRequest{Profile: "approved-token", Ttl: durationpb.New(time.Minute)})
	other := waitingFor(t, err, 0)
	if _, err := credbrokerv1.NewAdminServiceClient(h.dialAdminSocket()).DenyApproval(ctxT(t), &credbrokerv1.DenyApprovalRequest{ApprovalId: other, Reason: "why a minute?"}); err != nil {
		t.Fatal(err)
	}
	if p := sink.waitRule(t, alerts.ApprovalDenied); p.Subject != "approval "+other || p.Fields["reason"] != "why a minute?" {
		t.Fatalf("approval_denied alert %+v", p)
	}
	sink.mu.Lock()
	defer sink.mu.Unlock()
	if sink.unverified != 0 {
		t.Fatalf("%d deliveries did not verify", sink.unverified)
	}
}
