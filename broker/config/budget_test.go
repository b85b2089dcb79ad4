package config

import (
	"strings"
	"testing"
)

// TestIssuerBudget: a budget defaults its name to the issuer's and its
// lease to 1; two issuers on one AWS account share a budget by naming it.
func TestIssuerBudget(t *testing.T) {
	cfg := strings.Replace(awsBase, "      credentials: default\n", `      credentials: default
    budget: {rate: 50, burst: 100}
  aws2:
    type: aws_sts
    aws_sts: {region: eu-west-1, credentials: default}
    budget: {name: account-1234, rate: 10, burst: 20, lease: 5}
  aws3:
    type: aws_sts
    aws_sts: {region: eu-west-2, credentials: default}
    budget: {name: account-1234, rate: 10, burst: 20, lease: 5}
`, 1)
	c, err := Parse(strings.NewReader(cfg))
	if err != nil {
		t.Fatal(err)
	}
	b := c.Issuers["aws"].Budget
	if b.Key("aws") != "aws" || b.LeaseSize() != 1 || b.Spec().Rate != 50 || b.Spec().Burst != 100 {
		t.Errorf("aws budget = %+v", b)
	}
	if b2, b3 := c.Issuers["aws2"].Budget, c.Issuers["aws3"].Budget; b2.Key("aws2") != "account-1234" || b3.Key("aws3") != "account-1234" || b2.LeaseSize() != 5 {
		t.Errorf("shared budgets = %+v, %+v", b2, b3)
	}
}

func TestIssuerBudgetMistakes(t *testing.T) {
	const at = "      credentials: default\n"
	for name, tc := range map[string]struct{ budget, want string }{
		"unknown key":         {"budget: {rate: 1, burst: 1, brust: 2}", "field brust not found"},
		"no rate":             {"budget: {burst: 10}", "issuers.aws.budget: rate must be at least"},
		"no burst":            {"budget: {rate: 10}", "burst at least 1"},
		"infinite rate":       {"budget: {rate: .inf, burst: 10}", "issuers.aws.budget: rate"},
		"nan rate":            {"budget: {rate: .nan, burst: 10}", "issuers.aws.budget: rate"},
		"lease over half":     {"budget: {rate: 10, burst: 10, lease: 6}", "budget.lease 6: want 1 to 100 and at most (burst+1)/2 = 5"},
		"lease over the cap":  {"budget: {rate: 10, burst: 1000, lease: 101}", "budget.lease 101"},
		"negative lease":      {"budget: {rate: 10, burst: 10, lease: -1}", "budget.lease -1"},
		"bad name":            {"budget: {name: Account/1, rate: 10, burst: 10}", `budget.name "Account/1"`},
		"budget on jwt":       {"budget: {rate: 10, burst: 10}\n  oidc2:\n    type: jwt\n    budget: {rate: 1, burst: 1}", `issuers.oidc2.budget: a "jwt" issuer makes no upstream call`},
		"shared, disagreeing": {"budget: {name: acct, rate: 10, burst: 10}\n  aws2:\n    type: aws_sts\n    aws_sts: {region: eu-west-1, credentials: default}\n    budget: {name: acct, rate: 20, burst: 10}", `budget "acct" is shared with issuer aws, which gives it another rate`},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := Parse(strings.NewReader(strings.Replace(awsBase, at, at+"    "+tc.budget+"\n", 1)))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tc.want)
			}
		})
	}
}
