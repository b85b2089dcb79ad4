package broker_test

import (
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/credbroker/credbroker/broker/limits"
	"github.com/credbroker/credbroker/issuers"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// reasonOf is the ErrorReason of a refusal (UNSPECIFIED for none).
func errReason(err error) credbrokerv1.ErrorReason {
	for _, d := range status.Convert(err).Details() {
		if info, ok := d.(interface{ GetReason() string }); ok {
			return credbrokerv1.ErrorReason(credbrokerv1.ErrorReason_value[info.GetReason()])
		}
	}
	return credbrokerv1.ErrorReason_ERROR_REASON_UNSPECIFIED
}

// TestExplainAgreesWithIssuance: for a table of requests — granted ones,
// and ones refused by validation, revocation, policy, the rate limit and
// the quota, as the broker's state moves — policy explain, asked just
// before, says granted exactly when the request is then served, and
// otherwise names the reason and message the refusal carries. Explaining
// spends nothing: explaining every request twice changes no outcome.
func TestExplainAgreesWithIssuance(t *testing.T) {
	h := newHarness(t, withApprovalRules, func(c *harnessConfig) {
		c.profileLimits = map[string]limits.Override{"capa-token": {IdentityQuota: &limits.Quota{Max: 2, Window: time.Hour}}}
		// Rule 2 (the controller's plain-token, boom, upstream): a burst of 2.
		c.ruleLimits = []limits.Override{2: {Rate: ptr(rate.Limit(0.001)), Burst: ptr(2)}}
	})
	h.upstream.set(issuers.Credential{Kind: issuers.KindToken, Token: "upstream-token", ExpiresAt: h.clock.Now().Add(time.Hour)}, nil)
	admin := credbrokerv1.NewAdminServiceClient(h.dialAdminSocket())
	node := func(cluster, name string) spiffeid.ID {
		return spiffeid.RequireFromPath(td, "/capi/cluster/"+cluster+"/node/"+name)
	}
	stranger := spiffeid.RequireFromPath(td, "/ns/other/sa/someone")
	conns := map[spiffeid.ID]*grpc.ClientConn{}
	conn := func(id spiffeid.ID) *grpc.ClientConn {
		if conns[id] == nil {
			conns[id] = h.dial(h.mint(id, 2*time.Hour))
		}
		return conns[id]
	}
	if _, err := admin.Revoke(ctxT(t), &credbrokerv1.RevokeRequest{Target: &credbrokerv1.RevokeRequest_Cluster{Cluster: "capi-a/c9"}, Reason: "incident"}); err != nil {
		t.Fatal(err)
	}
	// The approval the last refusal named, and admins to decide it.
	var approvalID string
	mtls := credbrokerv1.NewAdminServiceClient(h.dial(h.mint(adminID, time.Hour)))
	approveTwice := func(t *testing.T) {
		for _, a := range []credbrokerv1.AdminServiceClient{mtls, admin} {
			if _, err := a.Approve(ctxT(t), &credbrokerv1.ApproveRequest{ApprovalId: approvalID}); err != nil {
				t.Fatal(err)
			}
		}
	}
	type row struct {
		name   string
		caller spiffeid.ID
		req    *credbrokerv1.IssueCredentialRequest
		want   credbrokerv1.ErrorReason // UNSPECIFIED: served
		// before runs first; firstAsk marks a request that opens an
		// approval, whose id explain cannot know (only reasons compared).
		before   func(t *testing.T)
		firstAsk bool
	}
	const ok = credbrokerv1.ErrorReason_ERROR_REASON_UNSPECIFIED
	capa := func(cluster string) *credbrokerv1.IssueCredentialRequest {
		return &credbrokerv1.IssueCredentialRequest{Profile: "capa-token", Cluster: cluster}
	}
	plain := &credbrokerv1.IssueCredentialRequest{Profile: "plain-token"}
	approved := &credbrokerv1.IssueCredentialRequest{Profile: "approved-token", Cluster: "team-a/alpha"}
	rows := []row{
		{"upstream issuer", controllerID, &credbrokerv1.IssueCredentialRequest{Profile: "upstream"}, ok, nil, false},
		{"plain, the burst's second", controllerID, plain, ok, nil, false},
		{"plain over the rule's burst", controllerID, plain, credbrokerv1.ErrorReason_RATE_LIMITED, nil, false},
		{"capa 1", controllerID, capa("capi-a/c1"), ok, nil, false},
		{"capa 2", controllerID, capa("capi-a/c1"), ok, nil, false},
		{"capa over the profile's quota", controllerID, capa("capi-a/c2"), credbrokerv1.ErrorReason_QUOTA_EXHAUSTED, nil, false},
		{"cluster no rule grants", controllerID, capa("team-x/c1"), credbrokerv1.ErrorReason_POLICY_DENIED, nil, false},
		{"unknown profile", controllerID, &credbrokerv1.IssueCredentialRequest{Profile: "nope"}, credbrokerv1.ErrorReason_UNKNOWN_PROFILE, nil, false},
		{"ttl over the maximum", controllerID, &credbrokerv1.IssueCredentialRequest{Profile: "capa-token", Cluster: "capi-a/c1", Ttl: durationpb.New(time.Hour)}, credbrokerv1.ErrorReason_TTL_OUT_OF_RANGE, nil, false},
		{"cluster for a profile without", controllerID, &credbrokerv1.IssueCredentialRequest{Profile: "plain-token", Cluster: "capi-a/c1"}, credbrokerv1.ErrorReason_INVALID_REQUEST, nil, false},
		{"no cluster where required", controllerID, capa(""), credbrokerv1.ErrorReason_INVALID_REQUEST, nil, false},
		{"audience not allowed", controllerID, &credbrokerv1.IssueCredentialRequest{Profile: "capa-token", Cluster: "capi-a/c1", Audience: "evil"}, credbrokerv1.ErrorReason_INVALID_REQUEST, nil, false},
		{"identity no rule matches", stranger, plain, credbrokerv1.ErrorReason_POLICY_DENIED, nil, false},
		{"node, its own cluster implied", node("capi-a/c1", "n1"), capa(""), ok, nil, false},
		{"node, another cluster", node("capi-a/c1", "n1"), capa("capi-b/c2"), credbrokerv1.ErrorReason_POLICY_DENIED, nil, false},
		{"node of a revoked cluster", node("capi-a/c9", "n1"), capa(""), credbrokerv1.ErrorReason_REVOKED, nil, false},
		{"node, second", node("capi-a/c1", "n1"), capa("capi-a/c1"), ok, nil, false},
		{"node over the profile's quota", node("capi-a/c1", "n1"), capa("capi-a/c1"), credbrokerv1.ErrorReason_QUOTA_EXHAUSTED, nil, false},
		{name: "approval: none open yet", caller: controllerID, req: approved, want: credbrokerv1.ErrorReason_APPROVAL_REQUIRED, firstAsk: true},
		{name: "approval: pending", caller: controllerID, req: approved, want: credbrokerv1.ErrorReason_APPROVAL_REQUIRED},
		{name: "approval: granted", caller: controllerID, req: approved, want: ok, before: approveTwice},
		{name: "approval: used, a new one opened", caller: controllerID, req: approved, want: credbrokerv1.ErrorReason_APPROVAL_REQUIRED, firstAsk: true},
		{name: "approval: denied", caller: controllerID, req: approved, want: credbrokerv1.ErrorReason_APPROVAL_DENIED, before: func(t *testing.T) {
			if _, err := admin.DenyApproval(ctxT(t), &credbrokerv1.DenyApprovalRequest{ApprovalId: approvalID, Reason: "not today"}); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "approval: another request, not covered", caller: controllerID, req: &credbrokerv1.IssueCredentialRequest{Profile: "approved-token",
			Cluster: "team-a/alpha", Ttl: durationpb.New(10 * time.Minute)}, want: credbrokerv1.ErrorReason_APPROVAL_REQUIRED, firstAsk: true},
	}
	for _, r := range rows {
		t.Run(r.name, func(t *testing.T) {
			if r.before != nil {
				r.before(t)
			}
			ask := &credbrokerv1.ExplainPolicyRequest{SpiffeId: r.caller.String(), Profile: r.req.GetProfile(), Cluster: r.req.GetCluster(),
				Ttl: r.req.GetTtl(), Audience: r.req.GetAudience()}
			var ex *credbrokerv1.ExplainPolicyResponse
			for range 2 { // explaining twice spends nothing
				var err error
				if ex, err = admin.ExplainPolicy(ctxT(t), ask); err != nil {
					t.Fatal(err)
				}
			}
			_, err := issue(ctxT(t), conn(r.caller), r.req)
			if id := errMeta(err, "approval_id"); id != "" {
				approvalID = id
			}
			if got := errReason(err); got != r.want {
				t.Fatalf("issuance: %v (reason %v), want %v", err, got, r.want)
			}
			if ex.GetGranted() != (err == nil) {
				t.Fatalf("explain says granted=%t, issuance: %v\n%s", ex.GetGranted(), err, steps(ex))
			}
			// The refusal's message adds the request's id.
			msg := requestSuffix.ReplaceAllString(status.Convert(err).Message(), "")
			if err != nil && (ex.GetRefusalReason() != r.want || (ex.GetRefusal() != msg && !r.firstAsk)) {
				t.Fatalf("explain refuses with %v %q, issuance with %v %q\n%s", ex.GetRefusalReason(), ex.GetRefusal(), r.want, status.Convert(err).Message(), steps(ex))
			}
		})
	}
}

// errMeta is the ErrorInfo metadata value key of a refusal.
func errMeta(err error, key string) string {
	for _, d := range status.Convert(err).Details() {
		if info, ok := d.(interface{ GetMetadata() map[string]string }); ok {
			return info.GetMetadata()[key]
		}
	}
	return ""
}

var requestSuffix = regexp.MustCompile(` \(request [0-9a-f-]+\)$`)

func steps(ex *credbrokerv1.ExplainPolicyResponse) string {
	var b strings.Builder
	for _, s := range ex.GetSteps() {
		fmt.Fprintf(&b, "  %s: %s: %s\n", s.GetStep(), s.GetOutcome(), s.GetDetail())
	}
	return b.String()
}
