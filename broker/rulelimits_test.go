package broker_test

import (
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
