package broker_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/time/rate"
	"google.golang.org/grpc/status"

	"github.com/credbroker/credbroker/broker/limits"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

func ptr[T any](v T) *T { return &v }

// TestRuleAndProfileLimitsOverrideTheDefaults: the controller's rule gives it
// a higher rate than the default a node gets; a profile's quota applies to
// whoever asks for it, unless the granting rule sets its own.
func TestRuleAndProfileLimitsOverrideTheDefaults(t *testing.T) {
	h := newHarness(t, func(c *harnessConfig) {
		c.limits = limits.Config{Rate: 1, Burst: 1}
		c.profileLimits = map[string]limits.Override{
			"capa-token": {IdentityQuota: &limits.Quota{Max: 2, Window: time.Hour}},
		}
		// Rules (see newHarness): 0 controllers × capa-token, 1 nodes ×
		// capa-token, 2 the controller × plain-token, boom, upstream.
		c.ruleLimits = []limits.Override{
			0: {Rate: ptr(rate.Limit(100)), Burst: ptr(10), IdentityQuota: &limits.Quota{Max: 4, Window: time.Hour}},
			2: {Rate: ptr(rate.Limit(100)), Burst: ptr(5)},
		}
	})
	controller := h.dial(h.mint(controllerID, time.Hour))
	// Rule 2's rate: 5 at once, where the default allows 1.
	for i := 0; i < 5; i++ {
		if _, err := issue(ctxT(t), controller, &credbrokerv1.IssueCredentialRequest{Profile: "plain-token"}); err != nil {
			t.Fatalf("controller request %d within its rule's burst: %v", i, err)
		}
	}
	_, err := issue(ctxT(t), controller, &credbrokerv1.IssueCredentialRequest{Profile: "plain-token"})
	retryDelay(t, err)

	// Rule 0 over the profile: 4 capa-tokens, with its own bucket.
	for i := 0; i < 4; i++ {
		if _, err := issue(ctxT(t), controller, &credbrokerv1.IssueCredentialRequest{Profile: "capa-token", Cluster: "capi-a/c1"}); err != nil {
			t.Fatalf("controller capa-token %d within rule 0's quota: %v", i, err)
		}
	}
	_, err = issue(ctxT(t), controller, &credbrokerv1.IssueCredentialRequest{Profile: "capa-token", Cluster: "capi-a/c1"})
	if retryDelay(t, err); !strings.Contains(status.Convert(err).Message(), "identity quota") {
		t.Fatalf("want the identity quota of rule 0, got %q", status.Convert(err).Message())
	}

	// A node (rule 1, no limits of its own): the default rate, the profile's quota.
	node := h.dial(h.mint(spiffeid.RequireFromPath(td, "/capi/cluster/capi-prod/w1/node/a"), time.Hour))
	if _, err := issue(ctxT(t), node, &credbrokerv1.IssueCredentialRequest{Profile: "capa-token"}); err != nil {
		t.Fatal(err)
	}
	_, err = issue(ctxT(t), node, &credbrokerv1.IssueCredentialRequest{Profile: "capa-token"})
	if retryDelay(t, err); !strings.Contains(status.Convert(err).Message(), "rate of 1/s") {
		t.Fatalf("want the default rate, got %q", status.Convert(err).Message())
	}
	h.clock.Advance(time.Second)
	if _, err := issue(ctxT(t), node, &credbrokerv1.IssueCredentialRequest{Profile: "capa-token"}); err != nil {
		t.Fatal(err)
	}
	h.clock.Advance(time.Second)
	_, err = issue(ctxT(t), node, &credbrokerv1.IssueCredentialRequest{Profile: "capa-token"})
	if retryDelay(t, err); !strings.Contains(status.Convert(err).Message(), "identity quota of 2") {
		t.Fatalf("want the profile's identity quota, got %q", status.Convert(err).Message())
	}
}

// TestQuotaShowNamesTheLimitsThatApply: GetQuota reports, beside a key's
// window, each distinct quota the broker would apply to it — the one the
// issuance path resolves for each rule and profile that may govern the
// key — with what is left of it, tightest first.
func TestQuotaShowNamesTheLimitsThatApply(t *testing.T) {
	h := newHarness(t, func(c *harnessConfig) {
		c.profileLimits = map[string]limits.Override{
			"capa-token": {IdentityQuota: &limits.Quota{Max: 2, Window: time.Hour}},
		}
		c.ruleLimits = []limits.Override{
			0: {IdentityQuota: &limits.Quota{Max: 4, Window: time.Hour}},
			1: {ClusterQuota: &limits.Quota{Max: 10, Window: 30 * time.Minute}},
		}
	})
	controller := h.dial(h.mint(controllerID, time.Hour))
	if _, err := issue(ctxT(t), controller, &credbrokerv1.IssueCredentialRequest{Profile: "capa-token", Cluster: "capi-a/c1"}); err != nil {
		t.Fatal(err)
	}
	admin := credbrokerv1.NewAdminServiceClient(h.dialAdminSocket())
	show := func(req *credbrokerv1.GetQuotaRequest) []string {
		t.Helper()
		resp, err := admin.GetQuota(ctxT(t), req)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, l := range resp.GetLimits() {
			out = append(out, fmt.Sprintf("%d per %s, %d left: %s", l.GetMax(), l.GetWindow().AsDuration(), l.GetRemaining(), strings.Join(l.GetAppliesTo(), "; ")))
		}
		return out
	}
	for name, c := range map[string]struct {
		req  *credbrokerv1.GetQuotaRequest
		want []string
	}{
		"controller": {&credbrokerv1.GetQuotaRequest{Key: &credbrokerv1.GetQuotaRequest_SpiffeId{SpiffeId: controllerID.String()}}, []string{
			"4 per 1h0m0s, 3 left: profile capa-token (rule 0)",
			"0 per 0s, 0 left: profile boom (rule 2); profile plain-token (rule 2); profile upstream (rule 2)",
		}},
		"node": {&credbrokerv1.GetQuotaRequest{Key: &credbrokerv1.GetQuotaRequest_SpiffeId{SpiffeId: "spiffe://example.test/capi/cluster/capi-a/c1/node/n1"}}, []string{
			"2 per 1h0m0s, 2 left: profile capa-token (rule 1)",
		}},
		"stranger": {&credbrokerv1.GetQuotaRequest{Key: &credbrokerv1.GetQuotaRequest_SpiffeId{SpiffeId: "spiffe://example.test/ns/x/sa/y"}}, []string{
			"0 per 0s, 0 left: defaults",
		}},
		// The controller's issuance came under rule 0, whose cluster quota
		// is unlimited: nothing was charged to the cluster.
		"cluster": {&credbrokerv1.GetQuotaRequest{Key: &credbrokerv1.GetQuotaRequest_Cluster{Cluster: "capi-a/c1"}}, []string{
			"10 per 30m0s, 10 left: profile capa-token (rule 1)",
			"0 per 0s, 0 left: profile capa-token (rule 0)",
		}},
	} {
		if got := show(c.req); !slices.Equal(got, c.want) {
			t.Errorf("%s: limits\n got %q\nwant %q", name, got, c.want)
		}
	}
}
