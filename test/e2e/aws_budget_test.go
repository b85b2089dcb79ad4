package e2e

import (
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/credbroker/credbroker/internal/brokerclient"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// TestUpstreamBudgetRefusesAtTheBroker: with a budget of two STS calls (a
// third would free only after 1000s), two requests for different clusters
// reach MinIO, the third is refused by the broker with RATE_LIMITED,
// RetryInfo and the budget's name, and never reaches STS (counted at a
// pass-through front); once the broker knows the budget spent, a fourth is
// refused before its intent record, spending no quota; a repeat of the
// first request is still served from the reused credential, spending no
// budget, and counts against the caller's identity quota.
func TestUpstreamBudgetRefusesAtTheBroker(t *testing.T) {
	t.Parallel()
	var assumeRoles atomic.Int64
	b := startAWSBrokerConf(t, countingFront(t, &assumeRoles), "",
		"\n    budget: {name: aws-123456789012, rate: 0.001, burst: 2}",
		"limits:\n  identity_quota: {max: 10, window: 1h}\n")
	conn, err := brokerclient.Dial(b.grpcAddr, filepath.Join(b.dataDir, "dev", "controller"), "")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := credbrokerv1.NewBrokerServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	issue := func(cluster string) (*credbrokerv1.Credential, error) {
		resp, err := client.IssueCredential(ctx, &credbrokerv1.IssueCredentialRequest{Profile: "capa", Cluster: cluster})
		return resp.GetCredential(), err
	}

	first, err := issue(clusterA)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := issue("team-b/beta"); err != nil {
		t.Fatal(err)
	}
	_, err = issue("team-c/gamma")
	budgetRefusal(t, err)
	if got := assumeRoles.Load(); got != 2 {
		t.Fatalf("%d AssumeRole calls reached STS, want 2 (the refused request must make none)", got)
	}
	_, err = issue("team-d/delta")
	budgetRefusal(t, err)

	again, err := issue(clusterA)
	if err != nil {
		t.Fatalf("a repeat served from the reused credential must not need the budget: %v", err)
	}
	if again.GetAws().GetAccessKeyId() != first.GetAws().GetAccessKeyId() {
		t.Fatalf("repeat got key %s, want the reused %s", again.GetAws().GetAccessKeyId(), first.GetAws().GetAccessKeyId())
	}
	if got := assumeRoles.Load(); got != 2 {
		t.Fatalf("%d AssumeRole calls after the reused hand-out, want still 2", got)
	}

	// The issued and reused hand-outs spent their identity quota units, and
	// so did the third request (its intent was recorded before the store
	// refused its token); the fourth, refused before its intent, did not.
	r := b.ctl(t, "-o", "json", "quota", "show", "--identity", "spiffe://dev.credbroker.test/ns/capi-system/sa/demo-controller")
	var q struct {
		Usage struct {
			Used int `json:"used"`
		} `json:"usage"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &q); err != nil {
		t.Fatalf("quota show: %v\n%s%s", err, r.stdout, r.stderr)
	}
	if q.Usage.Used != 4 {
		t.Fatalf("identity quota used %d, want 4", q.Usage.Used)
	}
	m := metrics(t, b.broker)
	for _, want := range []string{
		`credbroker_upstream_budget_refusals_total{budget="aws-123456789012"} 2`,
		`credbroker_upstream_budget_tokens_total{budget="aws-123456789012",from="store"} 2`,
		`credbroker_decisions_total{decision="throttled",profile="capa"} 2`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %s:\n%s", want, grepLines(m, "credbroker_"))
		}
	}
	if r := b.ctl(t, "audit", "verify"); r.code != 0 {
		t.Errorf("audit verify: %s%s", r.stdout, r.stderr)
	}
}

// budgetRefusal checks that err is the budget's refusal: RATE_LIMITED
// naming it, with a RetryInfo just under the 1000s the budget takes to free
// its next token (taken a moment ago).
func budgetRefusal(t *testing.T, err error) {
	t.Helper()
	st := status.Convert(err)
	if st.Code() != codes.ResourceExhausted {
		t.Fatalf("%v, want RESOURCE_EXHAUSTED", err)
	}
	var info *errdetails.ErrorInfo
	var retry *errdetails.RetryInfo
	for _, d := range st.Details() {
		switch d := d.(type) {
		case *errdetails.ErrorInfo:
			info = d
		case *errdetails.RetryInfo:
			retry = d
		}
	}
	if info == nil || info.Reason != "RATE_LIMITED" || info.Metadata["budget"] != "aws-123456789012" || info.Metadata["limit"] != "upstream budget" {
		t.Fatalf("ErrorInfo: %v", info)
	}
	if d := retry.GetRetryDelay().AsDuration(); d <= 900*time.Second || d > 1000*time.Second {
		t.Fatalf("RetryInfo delay %s, want just under 1000s", d)
	}
}
