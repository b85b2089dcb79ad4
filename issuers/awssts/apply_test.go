package awssts_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/credentials"

	"github.com/credbroker/credbroker/internal/backoff"
	"github.com/credbroker/credbroker/issuers/awssts"
	"github.com/credbroker/credbroker/test/fakeclock"
	"github.com/credbroker/credbroker/test/iamfront"
)

const (
	capaRoleARN  = "arn:aws:iam::123456789012:role/capi/capa-controller"
	capaRoleName = "capa-controller"
)

// applierUnderTest is a RevocationApplier talking to a recording IAM front
// through the real SDK client, with its reports on a channel.
type applierUnderTest struct {
	*awssts.RevocationApplier
	front   *iamfront.Front
	reports chan awssts.ApplyReport
}

func startApplier(t *testing.T, front *iamfront.Front, maxChars int) *applierUnderTest {
	t.Helper()
	// Reports past the buffer are dropped, so that a worker retrying after
	// the test has read what it wanted never blocks.
	reports := make(chan awssts.ApplyReport, 1000)
	a, err := awssts.NewRevocationApplier(context.Background(), awssts.ApplierConfig{
		Region: "us-east-1", Endpoint: front.URL(), Roles: map[string]int{capaRoleARN: maxChars},
		Debounce: time.Millisecond, Backoff: backoff.Policy{Min: time.Millisecond, Max: 2 * time.Millisecond},
		Clock: fakeclock.New(revokedAt).Now,
		Report: func(r awssts.ApplyReport) {
			select {
			case reports <- r:
			default:
			}
		},
		CredentialsProvider: credentials.NewStaticCredentialsProvider("AKIDBROKER", "secret", ""),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { a.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return &applierUnderTest{a, front, reports}
}

// next waits for the next report.
func (a *applierUnderTest) next(t *testing.T) awssts.ApplyReport {
	t.Helper()
	select {
	case r := <-a.reports:
		return r
	case <-time.After(30 * time.Second):
		t.Fatal("no report from the applier")
	}
	return awssts.ApplyReport{}
}

func issuances(n int) []awssts.Deny {
	var ds []awssts.Deny
	for i := range n {
		ds = append(ds, awssts.Deny{Ref: fmt.Sprintf("r%03d", i), Kind: awssts.DenyIssuance,
			Target: fmt.Sprintf("0190f0a0-0000-7000-8000-%012d", i), Made: revokedAt.Add(time.Duration(i) * time.Second)})
	}
	return ds
}

// TestApplierPutsTheMergedPolicyThroughTheSDK: the applier writes the deny
// document to the role's inline policy credbroker-revocations with
// PutRolePolicy, signed, through the real SDK client; the document the
// front recorded denies the covered session; applying the same entries
// again makes no write; an empty set deletes the policy.
func TestApplierPutsTheMergedPolicyThroughTheSDK(t *testing.T) {
	front := iamfront.Start()
	defer front.Close()
	a := startApplier(t, front, 0)
	bound := awssts.DenyBound(revokedAt, time.Time{})
	ds := append(issuances(1), awssts.Deny{Ref: "id", Kind: awssts.DenyIdentity, Target: aliceID, IssuedBefore: bound, Made: revokedAt})
	a.Set(capaRoleARN, ds)
	r := a.next(t)
	if r.Err != nil || r.Action != awssts.ApplyPut || r.Entries != 2 || r.RoleARN != capaRoleARN || r.PolicyName != "credbroker-revocations" {
		t.Fatalf("report %+v", r)
	}
	doc, ok := front.Policy(capaRoleName, "credbroker-revocations")
	if !ok {
		t.Fatalf("no policy on the role; calls %+v", front.Calls())
	}
	if err := awssts.CheckPolicyDocument(doc); err != nil {
		t.Fatal(err)
	}
	if !denies(t, doc, session(t, aliceID, "", "x", revokedAt.Add(-time.Minute))) || !denies(t, doc, session(t, bobID, "", ds[0].Target, revokedAt)) {
		t.Fatalf("applied document does not deny the covered sessions:\n%s", doc)
	}
	if denies(t, doc, session(t, bobID, "", "other", revokedAt)) {
		t.Fatal("applied document denies an uncovered session")
	}
	if s := a.Status(capaRoleARN); !s.InSync || s.Entries != 2 || s.Error != "" || !s.AppliedAt.Equal(revokedAt) {
		t.Fatalf("status %+v", s)
	}

	// The same entries, in another order: found up to date, no IAM call.
	calls := len(front.Calls())
	a.Set(capaRoleARN, []awssts.Deny{ds[1], ds[0]})
	if r := a.next(t); r.Action != awssts.ApplyUnchanged || r.Err != nil {
		t.Fatalf("report %+v", r)
	}
	if n := len(front.Calls()); n != calls {
		t.Fatalf("%d IAM calls for an unchanged policy: %+v", n-calls, front.Calls()[calls:])
	}

	a.Set(capaRoleARN, nil)
	if r := a.next(t); r.Action != awssts.ApplyDelete || r.Err != nil {
		t.Fatalf("report %+v", r)
	}
	if _, ok := front.Policy(capaRoleName, "credbroker-revocations"); ok {
		t.Fatal("policy still on the role after every entry ended")
	}
	for _, c := range front.Calls() {
		if c.Action != "PutRolePolicy" && c.Action != "DeleteRolePolicy" && c.Action != "GetRolePolicy" || c.RoleName != capaRoleName {
			t.Errorf("unexpected call %+v", c)
		}
	}
}

// TestApplierReadsWhatTheRoleHoldsFirst: a new applier (a broker restart)
// finds the role already holding the document and writes nothing.
func TestApplierReadsWhatTheRoleHoldsFirst(t *testing.T) {
	front := iamfront.Start()
	defer front.Close()
	p, err := awssts.CompileDenyPolicy(issuances(3), 0)
	if err != nil {
		t.Fatal(err)
	}
	front.SetPolicy(capaRoleName, "credbroker-revocations", p.Document)
	a := startApplier(t, front, 0)
	a.Set(capaRoleARN, issuances(3))
	if r := a.next(t); r.Action != awssts.ApplyUnchanged || r.Err != nil {
		t.Fatalf("report %+v", r)
	}
	if calls := front.Calls(); len(calls) != 1 || calls[0].Action != "GetRolePolicy" {
		t.Fatalf("calls %+v, want one GetRolePolicy", calls)
	}
}

// TestApplierRetriesFailuresAndReportsThem: a refused write is reported
// with IAM's error code (not its text) and retried after the backoff with
// the latest entries, and the status says so meanwhile.
func TestApplierRetriesFailuresAndReportsThem(t *testing.T) {
	front := iamfront.Start()
	defer front.Close()
	a := startApplier(t, front, 0)
	front.FailNext("AccessDenied", "AccessDenied")
	a.Set(capaRoleARN, issuances(2))
	for i := 1; i <= 2; i++ {
		r := a.next(t)
		if r.Err == nil || r.Code != "AccessDenied" || r.Failures != i {
			t.Fatalf("attempt %d: report %+v", i, r)
		}
	}
	r := a.next(t)
	if r.Err != nil || r.Action != awssts.ApplyPut || r.Entries != 2 {
		t.Fatalf("after the failures: %+v", r)
	}
	if s := a.Status(capaRoleARN); !s.InSync || s.Error != "" {
		t.Fatalf("status %+v", s)
	}
}

// TestApplierOverTheLimitKeepsTheOldestAndSaysSo: entries beyond the
// role's budget are reported as omitted (not enforced), the oldest are
// applied, and the document stays within the budget; when the role's other
// inline policies leave too little room, IAM's LimitExceeded is reported
// and the role keeps what it had.
func TestApplierOverTheLimitKeepsTheOldestAndSaysSo(t *testing.T) {
	front := iamfront.Start()
	defer front.Close()
	a := startApplier(t, front, 2000)
	a.Set(capaRoleARN, issuances(100))
	r := a.next(t)
	if r.Err != nil || r.Action != awssts.ApplyPut || len(r.Omitted) == 0 || r.Entries+len(r.Omitted) != 100 || r.Chars > 2000 {
		t.Fatalf("report %+v", r)
	}
	if r.Omitted[0] != fmt.Sprintf("r%03d", r.Entries) {
		t.Fatalf("omitted %v: not the newest", r.Omitted)
	}
	if s := a.Status(capaRoleARN); s.Omitted != len(r.Omitted) {
		t.Fatalf("status %+v", s)
	}
	before, _ := front.Policy(capaRoleName, "credbroker-revocations")

	front.SetPolicy(capaRoleName, "operator-policy", `{"Version":"2012-10-17","Statement":[{"Effect":"Deny","Action":"s3:*","Resource":"arn:aws:s3:::`+
		fmt.Sprintf("%09000d", 0)+`"}]}`)
	a.Set(capaRoleARN, issuances(101)[1:])
	r = a.next(t)
	if r.Err == nil || r.Code != "LimitExceeded" {
		t.Fatalf("report %+v, want LimitExceeded", r)
	}
	if doc, _ := front.Policy(capaRoleName, "credbroker-revocations"); doc != before {
		t.Fatal("a refused write changed the role's policy")
	}
}

func TestRoleName(t *testing.T) {
	for arn, want := range map[string]string{
		"arn:aws:iam::123456789012:role/capa":            "capa",
		"arn:aws:iam::123456789012:role/path/to/capa":    "capa",
		"arn:aws-us-gov:iam::123456789012:role/x/node-1": "node-1",
	} {
		if got, err := awssts.RoleName(arn); err != nil || got != want {
			t.Errorf("RoleName(%s) = %q, %v", arn, got, err)
		}
	}
	for _, bad := range []string{"capa", "arn:aws:iam::123456789012:user/capa", "arn:aws:iam::123456789012:role/"} {
		if _, err := awssts.RoleName(bad); err == nil {
			t.Errorf("RoleName(%s) accepted", bad)
		}
	}
}

// TestApplierCoalescesABurstWithOneCallInFlight: while one write to a role
// is in flight, a burst of changes waits and becomes a single write of the
// latest entries — one IAM call at a time per role, however many
// revocations are made.
func TestApplierCoalescesABurstWithOneCallInFlight(t *testing.T) {
	front := iamfront.Start()
	defer front.Close()
	a := startApplier(t, front, 0)
	release := front.Hold()
	a.Set(capaRoleARN, issuances(1))
	if got := <-front.Arrived(); got != "GetRolePolicy" {
		t.Fatalf("first call %s, want GetRolePolicy", got)
	}
	for n := 2; n <= 100; n++ {
		a.Set(capaRoleARN, issuances(n))
	}
	release()
	for {
		r := a.next(t)
		if r.Err != nil {
			t.Fatalf("report %+v", r)
		}
		if r.Entries == 100 {
			break
		}
	}
	var puts int
	for _, c := range front.Calls() {
		if c.Action == "PutRolePolicy" {
			puts++
		}
	}
	// The call in flight (with one entry) and one for the whole burst.
	if puts > 2 || front.MaxInFlight() != 1 {
		t.Fatalf("%d PutRolePolicy calls for 100 changes, %d at once; want at most 2, one at a time", puts, front.MaxInFlight())
	}
}

// TestApplierVerifyPutsBackAChangedPolicy: Set trusts what it last wrote
// (no IAM call for the same entries), Verify reads the role again and puts
// back a policy someone else changed.
func TestApplierVerifyPutsBackAChangedPolicy(t *testing.T) {
	front := iamfront.Start()
	defer front.Close()
	a := startApplier(t, front, 0)
	a.Set(capaRoleARN, issuances(2))
	if r := a.next(t); r.Err != nil || r.Action != awssts.ApplyPut {
		t.Fatalf("report %+v", r)
	}
	want, _ := front.Policy(capaRoleName, "credbroker-revocations")
	front.SetPolicy(capaRoleName, "credbroker-revocations", `{"Version":"2012-10-17","Statement":[{"Effect":"Deny","Action":"none:none","Resource":"*"}]}`)
	a.Set(capaRoleARN, issuances(2))
	if r := a.next(t); r.Action != awssts.ApplyUnchanged {
		t.Fatalf("report %+v", r)
	}
	a.Verify(capaRoleARN, issuances(2))
	if r := a.next(t); r.Err != nil || r.Action != awssts.ApplyPut {
		t.Fatalf("report %+v", r)
	}
	if doc, _ := front.Policy(capaRoleName, "credbroker-revocations"); doc != want {
		t.Fatalf("policy not put back:\n%s", doc)
	}
}
