package e2e

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/credbroker/credbroker/test/vaulttest"
)

// TestVaultRevocationReachesVault revokes, through credbrokerctl, Vault
// tokens the broker handed out, and proves at the real Vault that each
// revoked token stops working there (lookup-self fails) while a token the
// revocation does not cover keeps working: an issuance revocation takes back
// its one token, an identity revocation every unexpired token of the
// identity.
func TestVaultRevocationReachesVault(t *testing.T) {
	t.Parallel()
	v := vaulttest.Start(t)
	v.WritePolicy(t, "credbroker", `path "auth/token/create/workload" { capabilities = ["create", "update"] }
path "auth/token/revoke-accessor" { capabilities = ["update"] }
path "sys/leases/revoke" { capabilities = ["update"] }`)
	b := startVaultTokenBroker(t, v)

	issue := func(cluster string) jsonCredential {
		t.Helper()
		r := runTool(t, "credbroker-credential-process", "--broker", b.grpcAddr, "--svid-dir", filepath.Join(b.dataDir, "dev", "controller"),
			"--profile", "workload-token", "--cluster", cluster)
		if r.code != 0 {
			t.Fatalf("credential-process: %s", r.stderr)
		}
		var cred jsonCredential
		if err := json.Unmarshal([]byte(r.stdout), &cred); err != nil || cred.Token == "" || cred.IssuanceID == "" {
			t.Fatalf("credential-process output %q (%v)", r.stdout, err)
		}
		return cred
	}
	works := func(cred jsonCredential) error {
		c := v.Client(t)
		c.SetToken(cred.Token)
		_, err := c.Auth().Token().LookupSelf()
		return err
	}
	first, second, third := issue("team-a/alpha"), issue("team-a/alpha"), issue("team-a/beta")
	for _, c := range []jsonCredential{first, second, third} {
		if err := works(c); err != nil {
			t.Fatalf("a fresh token does not work at Vault: %v", err)
		}
	}

	if r := b.ctl(t, "revoke", "issuance", first.IssuanceID, "--reason", "leaked in a CI log"); r.code != 0 {
		t.Fatalf("revoke issuance: %s%s", r.stdout, r.stderr)
	}
	if works(first) == nil {
		t.Error("the revoked issuance's token still works at Vault")
	}
	if err := works(second); err != nil {
		t.Errorf("a token the issuance revocation does not cover stopped working: %v", err)
	}
	if r := b.ctl(t, "audit", "tail", "-n", "1"); !strings.Contains(r.stdout, "1 of 1 covered credentials revoked, 0 failed") {
		t.Errorf("the upstream outcome is not on record: %s", r.stdout)
	}

	if r := b.ctl(t, "revoke", "identity", "spiffe://dev.credbroker.test/ns/capi-system/sa/demo-controller", "--reason", "pod compromised"); r.code != 0 {
		t.Fatalf("revoke identity: %s%s", r.stdout, r.stderr)
	}
	for _, c := range []jsonCredential{second, third} {
		if works(c) == nil {
			t.Errorf("token of issuance %s still works at Vault after the identity's revocation", c.IssuanceID)
		}
	}
	// The first token was already revoked: revoking it again is harmless.
	if r := b.ctl(t, "audit", "tail", "-n", "1"); !strings.Contains(r.stdout, "3 of 3 covered credentials revoked, 0 failed") {
		t.Errorf("the upstream outcome is not on record: %s", r.stdout)
	}
	b.stop(t)
	assertNotOnDiskOrInLogs(t, b.dataDir, first.Token, b.stdout.String()+b.stderr.String())
}
