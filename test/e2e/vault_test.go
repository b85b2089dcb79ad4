package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/credbroker/credbroker/issuers/jwt"
	"github.com/credbroker/credbroker/test/vaulttest"
)

// TestVaultTokensThroughTheBroker runs the real broker against a real Vault
// dev server. The broker logs in with Vault's JWT auth method trusting the
// broker's own OIDC issuer (no static Vault token anywhere), and hands out
// Vault tokens that Vault's policies scope; the audit names each token by
// its accessor. A sealed Vault is UNAVAILABLE for callers and audited.
func TestVaultTokensThroughTheBroker(t *testing.T) {
	t.Parallel()
	v := vaulttest.Start(t)
	v.WritePolicy(t, "credbroker", `path "auth/token/create/workload" { capabilities = ["create", "update"] }`)
	b := startVaultTokenBroker(t, v)
	root := v.Client(t)
	for path, value := range map[string]string{"secret/data/team-a/db": "a", "secret/data/team-b/db": "b"} {
		if _, err := root.Logical().Write(path, map[string]any{"data": map[string]any{"password": value}}); err != nil {
			t.Fatal(err)
		}
	}

	r := runTool(t, "credbroker-credential-process", "--broker", b.grpcAddr, "--svid-dir", filepath.Join(b.dataDir, "dev", "controller"),
		"--profile", "workload-token", "--cluster", "team-a/alpha")
	if r.code != 0 {
		t.Fatalf("credential-process: %s", r.stderr)
	}
	var cred jsonCredential
	json.Unmarshal([]byte(r.stdout), &cred)
	c := v.Client(t)
	c.SetToken(cred.Token)
	if _, err := c.Logical().Read("secret/data/team-a/db"); err != nil {
		t.Errorf("team-a read with the broker's Vault token: %v", err)
	}
	if _, err := c.Logical().Read("secret/data/team-b/db"); err == nil {
		t.Error("team-b read with the broker's Vault token succeeded")
	}
	self, err := c.Auth().Token().LookupSelf()
	if err != nil {
		t.Fatal(err)
	}
	r = b.ctl(t, "-o", "json", "issuances", "list")
	if !strings.Contains(r.stdout, `"upstream_ref": "accessor:`+self.Data["accessor"].(string)+`"`) {
		t.Errorf("the audit does not name the token's accessor %v:\n%s", self.Data["accessor"], r.stdout)
	}

	// Vault sealed: the caller gets UNAVAILABLE (reason UPSTREAM_UNAVAILABLE,
	// exit 3: worth retrying), and the failure is on record.
	v.Seal(t)
	r = runTool(t, "credbroker-credential-process", "--broker", b.grpcAddr, "--svid-dir", filepath.Join(b.dataDir, "dev", "controller"),
		"--profile", "workload-token", "--cluster", "team-a/alpha")
	if r.code != 3 || !strings.Contains(r.stderr, "unavailable") || !strings.Contains(r.stderr, "503") || !strings.Contains(r.stderr, "[UPSTREAM_UNAVAILABLE]") {
		t.Errorf("sealed Vault: exit %d, %q", r.code, r.stderr)
	}
	if r := b.ctl(t, "audit", "tail", "-n", "1"); !strings.Contains(r.stdout, "failed") || !strings.Contains(r.stdout, "503") {
		t.Errorf("last audit record: %s", r.stdout)
	}
	if m := metrics(t, b); !strings.Contains(m, `credbroker_upstream_failures_total{issuer="vault",kind="unavailable"} 1`) {
		t.Errorf("metrics do not count the upstream failure:\n%s", grepLines(m, "credbroker_upstream"))
	}
	b.stop(t)
	assertNotOnDiskOrInLogs(t, b.dataDir, cred.Token, b.stdout.String()+b.stderr.String())
}

// startVaultTokenBroker starts the broker binary with a Vault issuer that
// logs in to v with Vault's JWT auth trusting the broker's own OIDC issuer,
// and a cluster-scoped profile workload-token (Vault token role "workload",
// policy team-a-read) for the demo controller. The caller has written the
// broker's Vault policy "credbroker".
func startVaultTokenBroker(t *testing.T, v *vaulttest.Server) *broker {
	t.Helper()
	return startVaultBroker(t, v, "")
}

// startVaultBroker is startVaultTokenBroker with more profiles on the Vault
// issuer: extraProfiles is YAML indented as entries of profiles; the demo
// controller may use every profile.
func startVaultBroker(t *testing.T, v *vaulttest.Server, extraProfiles string) *broker {
	t.Helper()
	v.WritePolicy(t, "team-a-read", `path "secret/data/team-a/*" { capabilities = ["read"] }`)
	if _, err := v.Client(t).Logical().Write("auth/token/roles/workload", map[string]any{"allowed_policies": []string{"team-a-read"}, "orphan": true}); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cfg := filepath.Join(dir, "vault.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`trust_domain: dev.credbroker.test
admin:
  spiffe_ids: [spiffe://dev.credbroker.test/credbroker/admin]
issuers:
  local: {type: jwt}
  vault:
    type: vault
    vault:
      address: %s
      auth: {method: jwt, mount: jwt, role: credbroker, issuer: local}
profiles:
  workload-token:
    issuer: vault
    max_ttl: 1h
    cluster: required
    vault: {kind: token, token_role: workload, policies: [team-a-read]}
%s
policy:
  - id: spiffe://dev.credbroker.test/ns/capi-system/sa/demo-controller
    profiles: ["*"]
    clusters: ["*"]
`, v.Addr, extraProfiles)), 0o600)
	b := startBrokerWith(t, filepath.Join(dir, "data"), []string{"PATH=" + os.Getenv("PATH"), "HOME=" + dir}, "--config", cfg)

	// Vault trusts the broker's issuer, whose address is known now.
	issuerURL := "http://" + b.http
	v.EnableJWTAuth(t, "jwt", vaulttest.JWTKeys{JWKSURL: issuerURL + jwt.JWKSPath}, issuerURL)
	v.JWTRole(t, "jwt", "credbroker", vaulttest.JWTRoleConfig{
		BoundAudiences: []string{"vault"}, BoundSubject: "spiffe://dev.credbroker.test/credbroker/server",
		TokenPolicies: []string{"credbroker"}, TokenTTL: time.Hour,
	})
	b.stderr.waitFor(t, "logged in to vault", 60*time.Second)
	return b
}
