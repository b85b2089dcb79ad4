package main

import (
	"path/filepath"
	"strings"
	"testing"
)

// TestPolicyExplainAtTheRealBroker: policy explain says, from the real
// broker, that the dev controller would get dev-token (exit 0, each step
// passing, the rule named) and why an unknown profile or an identity no
// rule matches would be refused (exit 1, the reason issuance would give);
// explaining spends no quota; bad flags are usage errors.
func TestPolicyExplainAtTheRealBroker(t *testing.T) {
	b := startDevBroker(t)
	controller := b.dial(t, filepath.Join(b.dir, "dev", "controller"))
	if _, err := issueDev(controller, "capi-a/c1"); err != nil {
		t.Fatal(err)
	}
	r := ctl(t, b.socket, "policy", "explain", "--id", devController, "--profile", "dev-token", "--cluster", "capi-a/c1")
	wantCode(t, r, 0)
	for _, want := range []string{"GRANTED: " + devController + " would get profile dev-token", "policy rule 0", "STEP", "rate limit", "quota", "identity " + devController} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("explain output lacks %q:\n%s", want, r.stdout)
		}
	}
	type explained struct {
		Granted bool `json:"granted"`
		Quotas  []struct {
			Used int `json:"used"`
		} `json:"quotas"`
		RefusalReason string `json:"refusal_reason"`
	}
	for range 2 {
		// Explaining again spends nothing: one issuance counted.
		if e := ctlJSON[explained](t, b.socket, "policy", "explain", "--id", devController, "--profile", "dev-token", "--cluster", "capi-a/c1"); !e.Granted || len(e.Quotas) == 0 || e.Quotas[0].Used != 1 {
			t.Fatalf("explain -o json: %+v", e)
		}
	}

	r = ctl(t, b.socket, "policy", "explain", "--id", devController, "--profile", "nope")
	wantCode(t, r, 1)
	if !strings.Contains(r.stdout, "REFUSED [UNKNOWN_PROFILE]") {
		t.Errorf("unknown profile:\n%s", r.stdout)
	}
	r = ctl(t, b.socket, "policy", "explain", "--id", "spiffe://dev.credbroker.test/ns/x/sa/y", "--profile", "dev-token")
	wantCode(t, r, 1)
	if !strings.Contains(r.stdout, "REFUSED [POLICY_DENIED]: no policy rule matches the caller") {
		t.Errorf("stranger:\n%s", r.stdout)
	}
	wantCode(t, ctl(t, b.socket, "policy", "explain", "--id", "capa", "--profile", "dev-token"), 2)
	wantCode(t, ctl(t, b.socket, "policy", "explain", "--id", devController), 2)
}
