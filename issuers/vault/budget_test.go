package vault_test

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/credbroker/credbroker/broker"
	"github.com/credbroker/credbroker/broker/state"
	"github.com/credbroker/credbroker/issuers/vault"
)

// TestBudgetRefusalMakesNoVaultCall: with an upstream budget of one call
// (the next a day away), the first token is created in Vault, the second
// request is refused by the budget (RESOURCE_EXHAUSTED) and creates
// nothing: Vault's token accessors grow by exactly one.
func TestBudgetRefusalMakesNoVaultCall(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	var store state.MemoryBudgets
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	budget, err := broker.NewUpstreamBudget("vault-prod", state.BudgetSpec{Rate: 1.0 / 86400, Burst: 1}, 1, &store,
		func() time.Time { return now }, broker.NewMetrics(prometheus.NewRegistry()))
	if err != nil {
		t.Fatal(err)
	}
	iss := e.issuer(t, tokenProfiles(), func(c *vault.Config) { c.Budget = budget })
	root := e.vault.Client(t)
	accessors := func() int {
		s, err := root.Logical().List("auth/token/accessors")
		if err != nil {
			t.Fatal(err)
		}
		keys, _ := s.Data["keys"].([]any)
		return len(keys)
	}
	before := accessors()
	if _, err := iss.Issue(ctxT(t), request("workload-token", time.Hour)); err != nil {
		t.Fatal(err)
	}
	_, err = iss.Issue(ctxT(t), request("workload-token", time.Hour))
	if st := status.Convert(broker.ToStatus(err)); st.Code() != codes.ResourceExhausted {
		t.Fatalf("second issue: %v, want the budget's RESOURCE_EXHAUSTED", err)
	}
	if got := accessors() - before; got != 1 {
		t.Fatalf("%d tokens created in Vault, want 1 (the refused request must create none)", got)
	}
}
