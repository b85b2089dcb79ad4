package broker_test

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	jwtlib "github.com/golang-jwt/jwt/v5"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/goleak"
	"golang.org/x/time/rate"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/credbroker/credbroker/attest/jointoken"
	"github.com/credbroker/credbroker/broker"
	"github.com/credbroker/credbroker/broker/audit"
	"github.com/credbroker/credbroker/broker/limits"
	"github.com/credbroker/credbroker/broker/nodeauth"
	"github.com/credbroker/credbroker/broker/state"
	"github.com/credbroker/credbroker/broker/state/boltstate"
	"github.com/credbroker/credbroker/internal/ca"
	"github.com/credbroker/credbroker/issuers"
	"github.com/credbroker/credbroker/issuers/jwt"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func wantCode(t *testing.T, err error, code codes.Code) *status.Status {
	t.Helper()
	st, _ := status.FromError(err)
	if st.Code() != code {
		t.Fatalf("got %v (%q), want %v", st.Code(), st.Message(), code)
	}
	return st
}

// wantReason checks that err is the broker's refusal with reason: the code
// the reason goes with, and ErrorInfo naming it in the broker's domain.
func wantReason(t *testing.T, err error, reason credbrokerv1.ErrorReason) (*status.Status, *errdetails.ErrorInfo) {
	t.Helper()
	st := wantCode(t, err, broker.ReasonCode(reason))
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			if info.GetReason() != reason.String() || info.GetDomain() != broker.ErrorDomain {
				t.Fatalf("ErrorInfo %v, want reason %s in %s", info, reason, broker.ErrorDomain)
			}
			return st, info
		}
	}
	t.Fatalf("%v (%q) carries no ErrorInfo; want reason %s", st.Code(), st.Message(), reason)
	return nil, nil
}

// verifyToken checks a token against the JWKS the issuer publishes.
func verifyToken(t *testing.T, h *harness, token string) jwtlib.MapClaims {
	t.Helper()
	claims, err := jwt.Verify(h.jwtIssuer.JWKS(), token, jwtlib.WithTimeFunc(h.clock.Now), jwtlib.WithIssuer("https://broker.example.test"))
	if err != nil {
		t.Fatal(err)
	}
	return claims
}

func TestIssueScopedTokenEndToEnd(t *testing.T) {
	h := newHarness(t)
	conn := h.dial(h.mint(controllerID, time.Hour))
	cred, err := issue(ctxT(t), conn, &credbrokerv1.IssueCredentialRequest{
		Profile: "capa-token", Cluster: "capi-prod/workload-1", Ttl: durationpb.New(10 * time.Minute), Audience: "sts.amazonaws.com",
	})
	if err != nil {
		t.Fatal(err)
	}
	claims := verifyToken(t, h, cred.GetToken().GetToken())
	if claims["sub"] != controllerID.String() || claims["cluster"] != "capi-prod/workload-1" || claims["jti"] != cred.GetIssuanceId() {
		t.Errorf("claims = %v", claims)
	}
	if aud, _ := claims.GetAudience(); len(aud) != 1 || aud[0] != "sts.amazonaws.com" {
		t.Errorf("aud = %v", aud)
	}
	if got, want := cred.GetExpiresAt().AsTime(), h.clock.Now().Add(10*time.Minute); got.Sub(want).Abs() > time.Second {
		t.Errorf("expires %v, want %v", got, want)
	}

	// The local issuer has no side effect outside the broker: its issuance
	// is one record, the issued one, naming the token's jti.
	recs := h.records()
	if len(recs) != 1 || recs[0].Decision != audit.DecisionIssued {
		t.Fatalf("audit records = %+v, want one issued record", recs)
	}
	r := recs[0]
	if r.UpstreamRef != claims["jti"] {
		t.Errorf("record's upstream_ref %q is not the token's jti %v", r.UpstreamRef, claims["jti"])
	}
	if r.IssuanceID != cred.GetIssuanceId() || r.Caller != controllerID.String() || r.Attestation != "x509-svid" ||
		r.Cluster != "capi-prod/workload-1" || r.UpstreamRef != cred.GetIssuanceId() || r.TTL != 10*time.Minute {
		t.Errorf("issued record = %+v", r)
	}

	// The admin API sees it, over the unix socket.
	adm := credbrokerv1.NewAdminServiceClient(h.dialAdminSocket())
	list, err := adm.ListIssuances(ctxT(t), &credbrokerv1.ListIssuancesRequest{Cluster: "capi-prod/workload-1"})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.GetIssuances()) != 1 || list.GetIssuances()[0].GetIssuanceId() != cred.GetIssuanceId() {
		t.Fatalf("ListIssuances = %v", list)
	}
	got, err := adm.GetIssuance(ctxT(t), &credbrokerv1.GetIssuanceRequest{IssuanceId: cred.GetIssuanceId()})
	if err != nil || len(got.GetRecords()) != 1 {
		t.Fatalf("GetIssuance = %v, %v", got, err)
	}
	v, err := verifyAudit(ctxT(t), adm)
	if err != nil || !v.GetOk() || v.GetRecords() != 1 {
		t.Fatalf("VerifyAudit = %v, %v", v, err)
	}
}

func TestUnauthenticatedCallersAreRefusedAndAudited(t *testing.T) {
	h := newHarness(t)
	req := &credbrokerv1.IssueCredentialRequest{Profile: "plain-token"}

	foreign, err := ca.New(spiffeid.RequireTrustDomainFromString("evil.test"))
	if err != nil {
		t.Fatal(err)
	}
	foreignSVID, err := foreign.MintX509SVID(spiffeid.RequireFromPath(foreign.TrustDomain(), controllerID.Path()), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	// An SVID for the right path signed by a CA that claims our trust domain.
	impostor, err := ca.New(td)
	if err != nil {
		t.Fatal(err)
	}
	impostorSVID, err := impostor.MintX509SVID(controllerID, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	expired := h.mint(controllerID, time.Hour)
	jwtWrongAud, err := h.ca.MintJWTSVID(controllerID, []string{"someone-else"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	jwtForeign, err := foreign.MintJWTSVID(spiffeid.RequireFromPath(foreign.TrustDomain(), "/x"), []string{"credbroker"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name    string
		call    func() error
		message string
	}{
		{"foreign trust domain", func() error {
			_, err := issue(ctxT(t), h.dial(foreignSVID), req)
			return err
		}, "evil.test"},
		{"unknown signer", func() error { _, err := issue(ctxT(t), h.dial(impostorSVID), req); return err }, "x509svid"},
		{"expired SVID", func() error {
			conn := h.dial(expired)
			h.clock.Advance(2 * time.Hour)
			defer h.clock.Advance(-2 * time.Hour)
			_, err := issue(ctxT(t), conn, req)
			return err
		}, "expired"},
		{"JWT-SVID wrong audience", func() error { return h.issueWithJWT(jwtWrongAud, req) }, "audience"},
		{"JWT-SVID foreign trust domain", func() error { return h.issueWithJWT(jwtForeign, req) }, "evil.test"},
		{"malformed JWT", func() error { return h.issueWithJWT("not.a.jwt", req) }, "jwtsvid"},
		{"no identity at all", func() error { _, err := issue(ctxT(t), h.dialNoCert(), req); return err }, "no X.509-SVID or JWT-SVID"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := len(h.records())
			st, _ := wantReason(t, tt.call(), credbrokerv1.ErrorReason_UNAUTHENTICATED)
			if !strings.Contains(st.Message(), tt.message) {
				t.Errorf("message %q does not mention %q", st.Message(), tt.message)
			}
			recs := h.records()
			if len(recs) != before+1 {
				t.Fatalf("want one new audit record, got %d", len(recs)-before)
			}
			if r := recs[len(recs)-1]; r.Decision != audit.DecisionDenied || !strings.HasPrefix(r.Reason, "unauthenticated:") || r.Caller != "" {
				t.Errorf("record = %+v", r)
			}
		})
	}
	if h.issuer.calls.Load() != 0 {
		t.Fatal("issuer was called for an unauthenticated request")
	}
}

func (h *harness) issueWithJWT(token string, req *credbrokerv1.IssueCredentialRequest) error {
	ctx := metadata.AppendToOutgoingContext(ctxT(h.t), "authorization", "Bearer "+token)
	_, err := issue(ctx, h.dialNoCert(), req)
	return err
}

func TestJWTSVIDCaller(t *testing.T) {
	h := newHarness(t)
	tok, err := h.ca.MintJWTSVID(controllerID, []string{"credbroker"}, 5*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	ctx := metadata.AppendToOutgoingContext(ctxT(t), "authorization", "Bearer "+tok)
	cred, err := issue(ctx, h.dialNoCert(), &credbrokerv1.IssueCredentialRequest{Profile: "plain-token"})
	if err != nil {
		t.Fatal(err)
	}
	if r := h.lastRecord(); r.Attestation != "jwt-svid" || r.Caller != controllerID.String() || r.IssuanceID != cred.GetIssuanceId() {
		t.Errorf("record = %+v", r)
	}
}

func TestPolicyDenial(t *testing.T) {
	h := newHarness(t)
	conn := h.dial(h.mint(controllerID, time.Hour))
	for _, tc := range []struct {
		req    *credbrokerv1.IssueCredentialRequest
		reason string
	}{
		{&credbrokerv1.IssueCredentialRequest{Profile: "capa-token", Cluster: "kube-system/other"}, `for cluster "kube-system/other"`},
	} {
		_, err := issue(ctxT(t), conn, tc.req)
		st, info := wantReason(t, err, credbrokerv1.ErrorReason_POLICY_DENIED)
		r := h.lastRecord()
		if md := info.GetMetadata(); md["issuance_id"] != r.IssuanceID || md["profile"] != tc.req.Profile || md["cluster"] != tc.req.Cluster {
			t.Errorf("ErrorInfo metadata %v, want the request's issuance id, profile and cluster", md)
		}
		if r.Decision != audit.DecisionDenied || !strings.Contains(r.Reason, tc.reason) || r.Caller != controllerID.String() || r.Profile != tc.req.Profile {
			t.Errorf("record = %+v", r)
		}
		if !strings.Contains(st.Message(), tc.reason) {
			t.Errorf("message = %q", st.Message())
		}
	}
	// Another identity in the trust domain that no rule names.
	other := h.dial(h.mint(spiffeid.RequireFromPath(td, "/ns/default/sa/random"), time.Hour))
	_, err := issue(ctxT(t), other, &credbrokerv1.IssueCredentialRequest{Profile: "plain-token"})
	wantReason(t, err, credbrokerv1.ErrorReason_POLICY_DENIED)
	if h.issuer.calls.Load() != 0 {
		t.Fatal("issuer called for a denied request")
	}
}

func TestInvalidRequests(t *testing.T) {
	h := newHarness(t)
	conn := h.dial(h.mint(controllerID, time.Hour))
	long := strings.Repeat("p", 5000)
	invalid, unknown, ttl := credbrokerv1.ErrorReason_INVALID_REQUEST, credbrokerv1.ErrorReason_UNKNOWN_PROFILE, credbrokerv1.ErrorReason_TTL_OUT_OF_RANGE
	for name, tc := range map[string]struct {
		req    *credbrokerv1.IssueCredentialRequest
		reason credbrokerv1.ErrorReason
		field  string
		msg    string
	}{
		"no profile":          {&credbrokerv1.IssueCredentialRequest{}, invalid, "profile", "profile is required"},
		"long profile":        {&credbrokerv1.IssueCredentialRequest{Profile: long}, invalid, "profile", "profile is required"},
		"unknown profile":     {&credbrokerv1.IssueCredentialRequest{Profile: "nope"}, unknown, "", `unknown profile "nope"`},
		"bad cluster":         {&credbrokerv1.IssueCredentialRequest{Profile: "capa-token", Cluster: "Not/A_Name"}, invalid, "cluster", "namespace/name"},
		"cluster required":    {&credbrokerv1.IssueCredentialRequest{Profile: "capa-token"}, invalid, "cluster", "requires a cluster"},
		"cluster refused":     {&credbrokerv1.IssueCredentialRequest{Profile: "plain-token", Cluster: "a/b"}, invalid, "cluster", "not cluster-scoped"},
		"ttl over max":        {&credbrokerv1.IssueCredentialRequest{Profile: "plain-token", Ttl: durationpb.New(time.Hour)}, ttl, "", "outside [1s, 15m0s]"},
		"ttl under a second":  {&credbrokerv1.IssueCredentialRequest{Profile: "plain-token", Ttl: durationpb.New(time.Millisecond)}, ttl, "", "outside [1s"},
		"negative ttl":        {&credbrokerv1.IssueCredentialRequest{Profile: "plain-token", Ttl: durationpb.New(-time.Second)}, ttl, "", "outside"},
		"audience not listed": {&credbrokerv1.IssueCredentialRequest{Profile: "plain-token", Audience: "evil"}, invalid, "audience", "audience"},
	} {
		t.Run(name, func(t *testing.T) {
			before := len(h.records())
			_, err := issue(ctxT(t), conn, tc.req)
			st, info := wantReason(t, err, tc.reason)
			if !strings.Contains(st.Message(), tc.msg) {
				t.Errorf("message %q does not contain %q", st.Message(), tc.msg)
			}
			if info.GetMetadata()["field"] != tc.field {
				t.Errorf("metadata %v, want field %q", info.GetMetadata(), tc.field)
			}
			{
				recs := h.records()
				if len(recs) != before+1 || recs[len(recs)-1].Decision != audit.DecisionDenied || len(recs[len(recs)-1].Profile) > 256 {
					t.Errorf("want one bounded denied record, got %+v", recs[before:])
				}
			}
		})
	}
	// gRPC itself refuses an oversized message before the broker sees it.
	_, err := issue(ctxT(t), conn, &credbrokerv1.IssueCredentialRequest{Profile: strings.Repeat("x", 100<<10)})
	if st := wantCode(t, err, codes.ResourceExhausted); !strings.Contains(st.Message(), "larger than max") {
		t.Errorf("oversized request: %q", st.Message())
	}
	if h.issuer.calls.Load() != 0 {
		t.Fatal("issuer called for an invalid request")
	}
}

func TestBurstIsThrottledWithRetryInfo(t *testing.T) {
	h := newHarness(t, func(c *harnessConfig) { c.limits = limits.Config{Rate: rate.Limit(1), Burst: 3} })
	conn := h.dial(h.mint(controllerID, time.Hour))
	req := &credbrokerv1.IssueCredentialRequest{Profile: "plain-token"}
	for i := 0; i < 3; i++ {
		if _, err := issue(ctxT(t), conn, req); err != nil {
			t.Fatalf("request %d within burst: %v", i, err)
		}
	}
	_, err := issue(ctxT(t), conn, req)
	st, info := wantReason(t, err, credbrokerv1.ErrorReason_RATE_LIMITED)
	var retry *errdetails.RetryInfo
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok {
			retry = ri
		}
	}
	if retry == nil || retry.GetRetryDelay().AsDuration() <= 0 || retry.GetRetryDelay().AsDuration() > time.Second {
		t.Fatalf("RetryInfo = %v, want a delay in (0, 1s]", retry)
	}
	if md := info.GetMetadata(); md["retry_after"] != retry.GetRetryDelay().AsDuration().String() || md["limit"] != "rate" {
		t.Errorf("ErrorInfo metadata %v, want retry_after and limit", md)
	}
	if r := h.lastRecord(); r.Decision != audit.DecisionThrottled || !strings.Contains(r.Reason, "rate") {
		t.Errorf("record = %+v", r)
	}
	h.clock.Advance(retry.GetRetryDelay().AsDuration())
	if _, err := issue(ctxT(t), conn, req); err != nil {
		t.Fatalf("after the retry delay: %v", err)
	}
	if got := h.issuer.calls.Load(); got != 4 {
		t.Fatalf("issuer calls = %d, want 4", got)
	}
}

func TestClusterQuotaIsSharedAndSurvivesRestart(t *testing.T) {
	quota := func(c *harnessConfig) {
		c.limits = limits.Config{ClusterQuota: limits.Quota{Max: 2, Window: time.Hour}}
	}
	h := newHarness(t, quota)
	nodeA := spiffeid.RequireFromPath(td, "/capi/cluster/capi-prod/w1/node/a")
	nodeB := spiffeid.RequireFromPath(td, "/capi/cluster/capi-prod/w1/node/b")
	for _, id := range []spiffeid.ID{nodeA, nodeB} {
		cred, err := issue(ctxT(t), h.dial(h.mint(id, time.Hour)), &credbrokerv1.IssueCredentialRequest{Profile: "capa-token"})
		if err != nil {
			t.Fatal(err)
		}
		// A node's credentials are bound to its own cluster without asking.
		if cred.GetCluster() != "capi-prod/w1" {
			t.Fatalf("node credential cluster = %q", cred.GetCluster())
		}
	}
	_, err := issue(ctxT(t), h.dial(h.mint(nodeA, time.Hour)), &credbrokerv1.IssueCredentialRequest{Profile: "capa-token"})
	if _, info := wantReason(t, err, credbrokerv1.ErrorReason_QUOTA_EXHAUSTED); info.GetMetadata()["limit"] != "cluster quota" {
		t.Errorf("metadata %v", info.GetMetadata())
	}
	// The local issuer's token is spent with its issued record, so the
	// refusal comes after signing: the token is discarded and the record
	// names none.
	if r := h.lastRecord(); r.Decision != audit.DecisionThrottled || r.UpstreamRef != "" || !r.ExpiresAt.IsZero() {
		t.Errorf("quota refusal record = %+v, want throttled naming no credential", r)
	}
	// A node cannot ask for another cluster.
	_, err = issue(ctxT(t), h.dial(h.mint(nodeA, time.Hour)), &credbrokerv1.IssueCredentialRequest{Profile: "capa-token", Cluster: "capi-prod/w2"})
	wantReason(t, err, credbrokerv1.ErrorReason_POLICY_DENIED)

	// Restart on the same database: the quota is still spent, and the two
	// issuances that spent it are on record.
	h.grpcServer.Stop()
	h.audit.Close()
	h.db.Close()
	db, err := boltstate.OpenDB(h.dbPath)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	st, err := boltstate.New(db)
	if err != nil {
		t.Fatal(err)
	}
	u, err := st.Usage(ctxT(t), h.clock.Now(), state.QuotaKey{Kind: state.QuotaCluster, Name: "capi-prod/w1"})
	if err != nil || u.Used != 2 {
		t.Fatalf("after a restart the cluster quota shows %+v, %v; want 2 used", u, err)
	}
	l, err := audit.Open(db)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	// The local issuer's issued record carries the spend (it has no intent).
	issued, err := l.List(audit.Query{Cluster: "capi-prod/w1", Decision: audit.DecisionIssued})
	if err != nil || len(issued) != 2 {
		t.Fatalf("%d issued records (%v), want one per unit spent", len(issued), err)
	}
}

func TestAuditUnwritableIssuesNothing(t *testing.T) {
	h := newHarness(t)
	conn := h.dial(h.mint(controllerID, time.Hour))
	h.upstream.set(issuers.Credential{Kind: issuers.KindToken, Token: "upstream-token", ExpiresAt: h.clock.Now().Add(time.Hour)}, nil)
	for _, p := range []string{"plain-token", "upstream"} {
		if _, err := issue(ctxT(t), conn, &credbrokerv1.IssueCredentialRequest{Profile: p}); err != nil {
			t.Fatal(err)
		}
	}
	h.audit.Close()
	// An issuer with an upstream side effect is not called at all: its
	// intent cannot be written.
	cred, err := issue(ctxT(t), conn, &credbrokerv1.IssueCredentialRequest{Profile: "upstream"})
	st, _ := wantReason(t, err, credbrokerv1.ErrorReason_AUDIT_UNAVAILABLE)
	if cred != nil || !strings.Contains(st.Message(), "nothing was issued") {
		t.Fatalf("credential %v, message %q", cred, st.Message())
	}
	if got := h.upstream.callCount(); got != 1 {
		t.Fatalf("upstream issuer calls = %d, want 1 (none after the audit store failed)", got)
	}
	// The local issuer signs (it has no intent record), but the token is
	// discarded when its issued record cannot be written.
	cred, err = issue(ctxT(t), conn, &credbrokerv1.IssueCredentialRequest{Profile: "plain-token"})
	st = wantCode(t, err, codes.Unavailable)
	if cred != nil || !strings.Contains(st.Message(), "credential withheld") {
		t.Fatalf("credential %v, message %q", cred, st.Message())
	}
	if got := h.issuer.calls.Load(); got != 2 {
		t.Fatalf("local issuer calls = %d, want 2", got)
	}
	if !strings.Contains(h.logs.String(), "level=ERROR msg=\"credential refused\"") {
		t.Errorf("an audit store failure is not logged as an error:\n%s", h.logs.String())
	}
}

func TestAdminAPIRefusesWorkloads(t *testing.T) {
	h := newHarness(t)
	_, err := verifyAudit(ctxT(t), credbrokerv1.NewAdminServiceClient(h.dial(h.mint(controllerID, time.Hour))))
	wantReason(t, err, credbrokerv1.ErrorReason_ADMIN_ONLY)
	_, err = verifyAudit(ctxT(t), credbrokerv1.NewAdminServiceClient(h.dialNoCert()))
	wantReason(t, err, credbrokerv1.ErrorReason_UNAUTHENTICATED)
	if _, err := verifyAudit(ctxT(t), credbrokerv1.NewAdminServiceClient(h.dial(h.mint(adminID, time.Hour)))); err != nil {
		t.Fatalf("admin SVID refused: %v", err)
	}
	// Admin stream over mTLS.
	stream, err := credbrokerv1.NewAdminServiceClient(h.dial(h.mint(controllerID, time.Hour))).ExportAudit(ctxT(t), &credbrokerv1.ExportAuditRequest{})
	if err == nil {
		_, err = stream.Recv()
	}
	wantReason(t, err, credbrokerv1.ErrorReason_ADMIN_ONLY)
}

// TestNodeSVIDsNeedCurrentState: while the shared state is not current (a
// replica on etcd whose revocations are not confirmed within
// max_staleness, checked from memory), node attestation and renewal are
// refused UNAVAILABLE with nothing issued and the join token not spent,
// as credentials are; once current again, the same token admits its node
// and the node renews.
func TestNodeSVIDsNeedCurrentState(t *testing.T) {
	var stale atomic.Bool
	h := newHarness(t, func(c *harnessConfig) {
		c.nodes = true
		c.nodesCurrent = func() error {
			if stale.Load() {
				return fmt.Errorf("%w: revocations last confirmed current 3s ago", state.ErrUnavailable)
			}
			return nil
		}
	})
	node := h.attestNode("w0")
	issued := func() int {
		n := 0
		for _, r := range h.records() {
			if r.Profile == nodeauth.NodeSVIDProfile && r.Decision == audit.DecisionIssued {
				n++
			}
		}
		return n
	}
	before := issued()

	stale.Store(true)
	wantReason(t, h.renew(node), credbrokerv1.ErrorReason_UNAVAILABLE)
	secret, tokKey, tok, err := jointoken.New(rand.Reader, h.clock.Now(), "capi-prod/w1", "w1", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.state.CreateJoinToken(ctxT(t), tokKey, tok); err != nil {
		t.Fatal(err)
	}
	attest := func() error {
		_, csr := newCSR(t)
		_, err := credbrokerv1.NewNodeServiceClient(h.dialNoCert()).AttestNode(ctxT(t), &credbrokerv1.AttestNodeRequest{
			Csr:      csr,
			Evidence: &credbrokerv1.AttestNodeRequest_JoinToken{JoinToken: &credbrokerv1.JoinTokenEvidence{Token: secret}},
		})
		return err
	}
	wantReason(t, attest(), credbrokerv1.ErrorReason_UNAVAILABLE)
	if n := issued(); n != before {
		t.Fatalf("%d node SVIDs issued while the state was not current, want none", n-before)
	}

	stale.Store(false)
	if err := attest(); err != nil {
		t.Fatalf("the join token refused while the state was not current, once it is: %v, want it admitted (not spent)", err)
	}
	if err := h.renew(node); err != nil {
		t.Fatalf("renewal once the state is current: %v", err)
	}
}

// TestNodeServiceWithoutNodeAttestation: a broker without node attestation
// still serves NodeService, answering FAILED_PRECONDITION (not UNIMPLEMENTED);
// the admin socket does not serve it at all.
func TestNodeServiceWithoutNodeAttestation(t *testing.T) {
	h := newHarness(t)
	disabled := credbrokerv1.ErrorReason_NODE_ATTESTATION_DISABLED
	_, err := credbrokerv1.NewNodeServiceClient(h.dialNoCert()).AttestNode(ctxT(t), &credbrokerv1.AttestNodeRequest{})
	wantReason(t, err, disabled)
	_, err = credbrokerv1.NewNodeServiceClient(h.dial(h.mint(controllerID, time.Hour))).RenewNodeSVID(ctxT(t), &credbrokerv1.RenewNodeSVIDRequest{})
	wantReason(t, err, disabled)
	_, err = credbrokerv1.NewNodeServiceClient(h.dialNoCert()).RenewNodeSVID(ctxT(t), &credbrokerv1.RenewNodeSVIDRequest{})
	wantReason(t, err, credbrokerv1.ErrorReason_UNAUTHENTICATED)
	_, err = credbrokerv1.NewAdminServiceClient(h.dial(h.mint(controllerID, time.Hour))).ListNodes(ctxT(t), &credbrokerv1.ListNodesRequest{})
	wantReason(t, err, credbrokerv1.ErrorReason_ADMIN_ONLY)
	_, err = credbrokerv1.NewAdminServiceClient(h.dialAdminSocket()).ListNodes(ctxT(t), &credbrokerv1.ListNodesRequest{})
	wantReason(t, err, disabled)
	_, err = credbrokerv1.NewNodeServiceClient(h.dialAdminSocket()).AttestNode(ctxT(t), &credbrokerv1.AttestNodeRequest{})
	wantCode(t, err, codes.Unimplemented)
}

func TestAdminSocketChecksPeerUID(t *testing.T) {
	h := newHarness(t, func(c *harnessConfig) { c.uids = []uint32{uint32(os.Getuid()) + 4242} })
	_, err := verifyAudit(ctxT(t), credbrokerv1.NewAdminServiceClient(h.dialAdminSocket()))
	st := wantCode(t, err, codes.PermissionDenied)
	if !strings.Contains(st.Message(), "uid") {
		t.Errorf("message = %q", st.Message())
	}
}

func TestSecretsNeverReachDiskOrLogs(t *testing.T) {
	h := newHarness(t)
	conn := h.dial(h.mint(controllerID, time.Hour))
	var tokens []string
	for i := 0; i < 5; i++ {
		cred, err := issue(ctxT(t), conn, &credbrokerv1.IssueCredentialRequest{Profile: "plain-token"})
		if err != nil {
			t.Fatal(err)
		}
		tokens = append(tokens, cred.GetToken().GetToken())
	}
	h.audit.Close()
	h.db.Close()
	db, err := os.ReadFile(h.dbPath)
	if err != nil {
		t.Fatal(err)
	}
	logs := h.logs.String()
	if !strings.Contains(logs, "credential issued") {
		t.Fatal("captured no logs")
	}
	for _, tok := range tokens {
		sig := tok[strings.LastIndexByte(tok, '.')+1:]
		for what, hay := range map[string]string{"database": string(db), "logs": logs} {
			if strings.Contains(hay, tok) || strings.Contains(hay, sig) {
				t.Fatalf("issued token found in %s", what)
			}
		}
	}
}

func TestAuditChainVerifiesAfterManyDecisions(t *testing.T) {
	h := newHarness(t)
	conn := h.dial(h.mint(controllerID, time.Hour))
	errs := make(chan error, 40)
	for i := 0; i < 40; i++ {
		go func(i int) {
			profile := "plain-token"
			if i%4 == 0 {
				profile = "capa-token" // denied: needs a cluster
			}
			_, err := issue(ctxT(t), conn, &credbrokerv1.IssueCredentialRequest{Profile: profile})
			errs <- err
		}(i)
	}
	for i := 0; i < 40; i++ {
		<-errs
	}
	v, err := h.audit.Verify()
	// 30 issued (one record each: the local issuer needs no intent), 10 denied.
	if err != nil || !v.OK || v.Records != 30+10 {
		t.Fatalf("Verify = %+v, %v (want 40 records)", v, err)
	}
}

func TestUnauthenticatedFloodIsRecordedAtABoundedRate(t *testing.T) {
	h := newHarness(t)
	conn := h.dialNoCert()
	req := &credbrokerv1.IssueCredentialRequest{Profile: "plain-token"}
	const attempts = 80
	for i := 0; i < attempts; i++ {
		_, err := issue(ctxT(t), conn, req)
		wantCode(t, err, codes.Unauthenticated)
	}
	recorded := len(h.records())
	if recorded == 0 || recorded >= attempts {
		t.Fatalf("%d of %d unauthenticated attempts recorded; want a bounded number", recorded, attempts)
	}
	// Once the source is back under the rate, the next record says what was left out.
	h.clock.Advance(time.Second)
	_, err := issue(ctxT(t), conn, req)
	wantCode(t, err, codes.Unauthenticated)
	r := h.lastRecord()
	want := fmt.Sprintf("(%d earlier refusals from this address were not recorded)", attempts-recorded)
	if !strings.Contains(r.Reason, want) || !strings.Contains(r.Reason, "from 127.0.0.1") {
		t.Fatalf("reason = %q, want it to contain %q", r.Reason, want)
	}
}

func TestExportFollowsTheChain(t *testing.T) {
	h := newHarness(t)
	conn := h.dial(h.mint(controllerID, time.Hour))
	req := &credbrokerv1.IssueCredentialRequest{Profile: "plain-token"}
	if _, err := issue(ctxT(t), conn, req); err != nil {
		t.Fatal(err)
	}
	admin := h.dialAdminSocket()
	ctx, cancel := context.WithCancel(ctxT(t))
	stream, err := credbrokerv1.NewAdminServiceClient(admin).ExportAudit(ctx, &credbrokerv1.ExportAuditRequest{Start: &credbrokerv1.ExportAuditRequest_LastRecords{LastRecords: 1}, Follow: true})
	if err != nil {
		t.Fatal(err)
	}
	next := func() *credbrokerv1.ExportAuditResponse {
		t.Helper()
		resp, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	if r := next(); r.GetRecord().GetSeq() != 1 || r.GetRecord().GetDecision() != credbrokerv1.Decision_DECISION_ISSUED {
		t.Fatalf("first record = %v, want the last existing one (seq 1, issued)", r.GetRecord())
	}
	// Records committed later arrive on the open stream, in order.
	for _, want := range []uint64{2, 3} {
		cred, err := issue(ctxT(t), conn, req)
		if err != nil {
			t.Fatal(err)
		}
		r := next()
		if r.GetRecord().GetSeq() != want || r.GetRecord().GetIssuanceId() != cred.GetIssuanceId() {
			t.Fatalf("record = %v, want seq %d of issuance %s", r.GetRecord(), want, cred.GetIssuanceId())
		}
		var stored audit.Record
		if err := json.Unmarshal([]byte(r.GetCanonicalJson()), &stored); err != nil || stored.Hash != r.GetRecord().GetHash() {
			t.Fatalf("canonical JSON %q does not match the record (%v)", r.GetCanonicalJson(), err)
		}
	}
	cancel()
	if _, err := stream.Recv(); status.Code(err) != codes.Canceled {
		t.Fatalf("after cancel: %v", err)
	}
}

func TestAdminStopEndsFollowers(t *testing.T) {
	h := newHarness(t)
	stream, err := credbrokerv1.NewAdminServiceClient(h.dialAdminSocket()).ExportAudit(ctxT(t), &credbrokerv1.ExportAuditRequest{Follow: true})
	if err != nil {
		t.Fatal(err)
	}
	// The log is empty: the stream is waiting for the first record. Stop must
	// end it so that a graceful shutdown is not held open.
	h.admin.Stop()
	if _, err := stream.Recv(); status.Code(err) != codes.Unavailable {
		t.Fatalf("follower after Stop: %v, want UNAVAILABLE", err)
	}
}

func TestPanicInIssuerIsContained(t *testing.T) {
	h := newHarness(t)
	conn := h.dial(h.mint(controllerID, time.Hour))
	_, err := issue(ctxT(t), conn, &credbrokerv1.IssueCredentialRequest{Profile: "boom"})
	st := wantCode(t, err, codes.Internal)
	if st.Message() != "internal error" {
		t.Errorf("message = %q: a panic's text must not reach the caller", st.Message())
	}
	if !strings.Contains(h.logs.String(), "panic in request handler") {
		t.Error("the panic was not logged")
	}
	// The broker keeps serving, and the interrupted issuance left its intent on record.
	if _, err := issue(ctxT(t), conn, &credbrokerv1.IssueCredentialRequest{Profile: "plain-token"}); err != nil {
		t.Fatalf("broker after a panic: %v", err)
	}
	if r := h.records()[0]; r.Profile != "boom" || r.Decision != audit.DecisionIntent {
		t.Errorf("first record = %+v, want the intent of the interrupted issuance", r)
	}
}

func TestUpstreamIssuerErrorsAreExplainedSafely(t *testing.T) {
	h := newHarness(t)
	conn := h.dial(h.mint(controllerID, time.Hour))
	upstreamText := errors.New("secret-ish upstream text arn:aws:iam::123456789012:role/x")
	for name, tc := range map[string]struct {
		err       *issuers.Error
		reason    credbrokerv1.ErrorReason
		retryInfo bool
	}{
		"throttled":     {&issuers.Error{Kind: issuers.ErrUnavailable, Code: "Throttling", RetryAfter: 2 * time.Second, Err: upstreamText}, credbrokerv1.ErrorReason_UPSTREAM_UNAVAILABLE, true},
		"rate limited":  {&issuers.Error{Kind: issuers.ErrThrottled, Code: "TooManyRequests", RetryAfter: time.Second, Err: upstreamText}, credbrokerv1.ErrorReason_UPSTREAM_THROTTLED, true},
		"access denied": {&issuers.Error{Kind: issuers.ErrRejected, Code: "AccessDenied", Err: upstreamText}, credbrokerv1.ErrorReason_UPSTREAM_REJECTED, false},
		"bad config":    {&issuers.Error{Kind: issuers.ErrMisconfigured, Code: "MalformedPolicyDocument", Err: upstreamText}, credbrokerv1.ErrorReason_MISCONFIGURED, false},
	} {
		t.Run(name, func(t *testing.T) {
			h.upstream.set(issuers.Credential{}, tc.err)
			_, err := issue(ctxT(t), conn, &credbrokerv1.IssueCredentialRequest{Profile: "upstream"})
			st, _ := wantReason(t, err, tc.reason)
			if !strings.Contains(st.Message(), tc.err.Code) || strings.Contains(st.Message(), "arn:aws") {
				t.Errorf("message %q: want the upstream code and none of the upstream text", st.Message())
			}
			var retry *errdetails.RetryInfo
			for _, d := range st.Details() {
				if ri, ok := d.(*errdetails.RetryInfo); ok {
					retry = ri
				}
			}
			if tc.retryInfo != (retry != nil) || (retry != nil && retry.GetRetryDelay().AsDuration() != tc.err.RetryAfter) {
				t.Errorf("RetryInfo = %v, want one: %v", retry, tc.retryInfo)
			}
			if r := h.lastRecord(); r.Decision != audit.DecisionFailed || !strings.Contains(r.Reason, tc.err.Code) {
				t.Errorf("last record %+v: want a failed decision naming %s", r, tc.err.Code)
			}
		})
	}
}

func TestUpstreamIssuanceHasIntentAndResult(t *testing.T) {
	h := newHarness(t, func(c *harnessConfig) {
		c.limits = limits.Config{IdentityQuota: limits.Quota{Max: 1, Window: time.Hour}}
	})
	conn := h.dial(h.mint(controllerID, time.Hour))
	h.upstream.set(issuers.Credential{Kind: issuers.KindAWS, AWS: &issuers.AWSCredentials{AccessKeyID: "ASIAEXAMPLE", SecretAccessKey: "s", SessionToken: "t"},
		ExpiresAt: h.clock.Now().Add(15 * time.Minute), UpstreamRef: "ASIAEXAMPLE"}, nil)
	cred, err := issue(ctxT(t), conn, &credbrokerv1.IssueCredentialRequest{Profile: "upstream"})
	if err != nil {
		t.Fatal(err)
	}
	recs, err := h.audit.ByIssuance(cred.GetIssuanceId())
	if err != nil || len(recs) != 2 || recs[0].Decision != audit.DecisionIntent || recs[1].Decision != audit.DecisionIssued ||
		recs[0].UpstreamRef != "" || recs[1].UpstreamRef != "ASIAEXAMPLE" {
		t.Fatalf("records of an upstream issuance = %+v, %v; want intent, then issued naming the AccessKeyId", recs, err)
	}
	// The intent spent the quota: the next request is refused before the
	// upstream is called.
	_, err = issue(ctxT(t), conn, &credbrokerv1.IssueCredentialRequest{Profile: "upstream"})
	wantCode(t, err, codes.ResourceExhausted)
	if got := h.upstream.callCount(); got != 1 {
		t.Errorf("upstream calls = %d, want 1", got)
	}
}

func TestIssuerMinimumTTLIsEnforcedAndNamed(t *testing.T) {
	h := newHarness(t)
	conn := h.dial(h.mint(controllerID, time.Hour))
	h.upstream.set(issuers.Credential{Kind: issuers.KindAWS, AWS: &issuers.AWSCredentials{AccessKeyID: "ASIAEXAMPLE", SecretAccessKey: "s", SessionToken: "t"},
		ExpiresAt: h.clock.Now().Add(15 * time.Minute), UpstreamRef: "ASIAEXAMPLE", SourceIdentity: "ns.x.sa.y@example.test", Reused: true}, nil)
	_, err := issue(ctxT(t), conn, &credbrokerv1.IssueCredentialRequest{Profile: "upstream", Ttl: durationpb.New(5 * time.Minute)})
	if st, _ := wantReason(t, err, credbrokerv1.ErrorReason_TTL_OUT_OF_RANGE); !strings.Contains(st.Message(), "[15m0s, 1h0m0s]") {
		t.Errorf("message %q does not name the allowed range", st.Message())
	}
	cred, err := issue(ctxT(t), conn, &credbrokerv1.IssueCredentialRequest{Profile: "upstream", Ttl: durationpb.New(20 * time.Minute)})
	if err != nil || cred.GetAws().GetAccessKeyId() != "ASIAEXAMPLE" {
		t.Fatalf("issue = %v, %v", cred, err)
	}
	// CloudTrail shows the AccessKeyId and SourceIdentity: the audit record names both.
	if r := h.lastRecord(); r.UpstreamRef != "ASIAEXAMPLE" || r.SourceIdentity != "ns.x.sa.y@example.test" || !r.Reused {
		t.Errorf("issued record = %+v", r)
	}
}

// TestVerifyAuditStreamsProgress: a chain longer than one chunk is verified
// with progress messages (records done of the chain's length), then the
// result, so that a client bounding the wait for each message is never cut
// off by the size of the chain.
func TestVerifyAuditStreamsProgress(t *testing.T) {
	h := newHarness(t)
	const n = 2500
	for i := 0; i < n; i++ {
		if _, err := h.audit.Append(audit.Record{IssuanceID: fmt.Sprintf("i-%d", i), Caller: controllerID.String(), Decision: audit.DecisionDenied}); err != nil {
			t.Fatal(err)
		}
	}
	stream, err := credbrokerv1.NewAdminServiceClient(h.dialAdminSocket()).VerifyAudit(ctxT(t), &credbrokerv1.VerifyAuditRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var done []uint64
	for {
		resp, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if r := resp.GetResult(); r != nil {
			if !r.GetOk() || r.GetRecords() != n {
				t.Fatalf("result = %v", r)
			}
			break
		}
		p := resp.GetProgress()
		if p.GetTotal() != n || p.GetDone() == 0 || (len(done) > 0 && p.GetDone() <= done[len(done)-1]) {
			t.Fatalf("progress %v after %v", p, done)
		}
		done = append(done, p.GetDone())
	}
	if len(done) < 2 {
		t.Fatalf("progress messages %v, want one per chunk before the result", done)
	}
	if _, err := stream.Recv(); err != io.EOF {
		t.Fatalf("after the result: %v, want the end of the stream", err)
	}
}

// TestAdminListsArePaged: ListIssuances and ExportAudit page with opaque
// tokens that cover every item exactly once, and refuse garbage, a token of
// another listing, or a token presented with other filters.
func TestAdminListsArePaged(t *testing.T) {
	h := newHarness(t)
	conn := h.dial(h.mint(controllerID, time.Hour))
	var want []string
	for range 7 {
		cred, err := issue(ctxT(t), conn, &credbrokerv1.IssueCredentialRequest{Profile: "plain-token"})
		if err != nil {
			t.Fatal(err)
		}
		want = append([]string{cred.GetIssuanceId()}, want...) // newest first
	}
	adm := credbrokerv1.NewAdminServiceClient(h.dialAdminSocket())
	req := &credbrokerv1.ListIssuancesRequest{Caller: controllerID.String(), PageSize: 3}
	var got []string
	pages := 0
	for {
		resp, err := adm.ListIssuances(ctxT(t), req)
		if err != nil {
			t.Fatal(err)
		}
		pages++
		for _, is := range resp.GetIssuances() {
			got = append(got, is.GetIssuanceId())
		}
		if resp.GetNextPageToken() == "" {
			break
		}
		req.PageToken = resp.GetNextPageToken()
	}
	if pages != 3 || !slices.Equal(got, want) {
		t.Fatalf("%d pages: %v, want 3 pages of %v", pages, got, want)
	}

	first, err := adm.ListIssuances(ctxT(t), &credbrokerv1.ListIssuancesRequest{PageSize: 2})
	if err != nil || first.GetNextPageToken() == "" {
		t.Fatalf("first page: %v, %v", first, err)
	}
	for name, bad := range map[string]*credbrokerv1.ListIssuancesRequest{
		"garbage":        {PageToken: "not a token!"},
		"base64 garbage": {PageToken: "eyJ2IjoxfQ"},
		"other filters":  {Cluster: "a/b", PageToken: first.GetNextPageToken()},
		"negative size":  {PageSize: -1},
	} {
		_, err := adm.ListIssuances(ctxT(t), bad)
		if _, info := wantReason(t, err, credbrokerv1.ErrorReason_INVALID_REQUEST); info.GetMetadata()["field"] == "" {
			t.Errorf("%s: no field in %v", name, info.GetMetadata())
		}
	}
	// A page size above the maximum is coerced, not refused.
	if _, err := adm.ListIssuances(ctxT(t), &credbrokerv1.ListIssuancesRequest{PageSize: 1 << 30}); err != nil {
		t.Errorf("huge page size: %v", err)
	}

	// The export: pages of 4 records cover the chain (7 records: a local
	// issuance is one record) once, in order.
	var seqs []uint64
	ereq := &credbrokerv1.ExportAuditRequest{PageSize: 4}
	for {
		stream, err := adm.ExportAudit(ctxT(t), ereq)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for {
			resp, err := stream.Recv()
			if err != nil {
				if !errors.Is(err, io.EOF) {
					t.Fatal(err)
				}
				break
			}
			n++
			seqs = append(seqs, resp.GetRecord().GetSeq())
			ereq.PageToken = resp.GetNextPageToken()
		}
		if n < 4 {
			break
		}
	}
	if len(seqs) != 7 || seqs[0] != 1 || seqs[6] != 7 || !slices.IsSorted(seqs) {
		t.Fatalf("exported seqs %v", seqs)
	}
	// An issuances token is not an export token.
	stream, err := adm.ExportAudit(ctxT(t), &credbrokerv1.ExportAuditRequest{PageToken: first.GetNextPageToken()})
	if err == nil {
		_, err = stream.Recv()
	}
	wantReason(t, err, credbrokerv1.ErrorReason_INVALID_REQUEST)
}
