package e2e

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/credbroker/credbroker/test/miniotest"
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

// TestVaultClusterRevocationReachesVault revokes a workload cluster, then
// deletes another, through credbrokerctl, and proves at the real Vault that
// both kinds of Vault credential the broker handed out for each cluster are
// taken back there: the token stops working (lookup-self fails) and the
// lease of an AWS secrets engine credential is gone (sys/leases/lookup
// fails), while the credentials of a third cluster keep working. The
// output says per issuer what was revoked upstream, as text and as JSON,
// and a request for a revoked cluster is refused.
func TestVaultClusterRevocationReachesVault(t *testing.T) {
	t.Parallel()
	m := miniotest.Start(t)
	v := vaulttest.Start(t)
	v.EnableAWSEngine(t, "aws", m.RootUser, m.RootPassword, vaulttest.STSProxy(t, m.Endpoint), m.Endpoint, m.Region)
	v.AWSRole(t, "aws", "capa", vaulttest.AWSAssumedRole, []string{"arn:aws:iam::123456789012:role/capa"},
		`{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["s3:GetObject"],"Resource":["arn:aws:s3:::capi/*"]}]}`)
	v.WritePolicy(t, "credbroker", `path "auth/token/create/workload" { capabilities = ["create", "update"] }
path "aws/sts/capa" { capabilities = ["read", "update"] }
path "auth/token/revoke-accessor" { capabilities = ["update"] }
path "sys/leases/revoke" { capabilities = ["update"] }`)
	b := startVaultBroker(t, v, `  capa-vault:
    issuer: vault
    default_ttl: 15m
    max_ttl: 1h
    cluster: required
    vault: {kind: aws, path: aws/sts/capa}`)

	issue := func(profile, cluster string) (*result, jsonCredential) {
		t.Helper()
		r := runTool(t, "credbroker-credential-process", "--broker", b.grpcAddr, "--svid-dir", filepath.Join(b.dataDir, "dev", "controller"),
			"--profile", profile, "--cluster", cluster, "--format", "json")
		var cred jsonCredential
		if r.code == 0 {
			if err := json.Unmarshal([]byte(r.stdout), &cred); err != nil || cred.IssuanceID == "" {
				t.Fatalf("credential-process output %q (%v)", r.stdout, err)
			}
		}
		return &r, cred
	}
	must := func(profile, cluster string) jsonCredential {
		t.Helper()
		r, cred := issue(profile, cluster)
		if r.code != 0 {
			t.Fatalf("credential-process %s for %s: %s", profile, cluster, r.stderr)
		}
		return cred
	}
	tokenWorks := func(cred jsonCredential) error {
		c := v.Client(t)
		c.SetToken(cred.Token)
		_, err := c.Auth().Token().LookupSelf()
		return err
	}
	// The lease id is the issuance's upstream reference, on record.
	leaseOf := func(cred jsonCredential) string {
		t.Helper()
		r := b.ctl(t, "-o", "json", "issuances", "show", cred.IssuanceID)
		var show struct {
			Records []struct {
				Decision    string `json:"decision"`
				UpstreamRef string `json:"upstream_ref"`
			} `json:"records"`
		}
		json.Unmarshal([]byte(r.stdout), &show)
		for _, rec := range show.Records {
			if rec.Decision == "DECISION_ISSUED" && rec.UpstreamRef != "" {
				return rec.UpstreamRef
			}
		}
		t.Fatalf("no lease on record for issuance %s: %s", cred.IssuanceID, r.stdout)
		return ""
	}
	leaseLive := func(lease string) error {
		_, err := v.Client(t).Logical().Write("sys/leases/lookup", map[string]any{"lease_id": lease})
		return err
	}

	type clusterCreds struct {
		token jsonCredential
		lease string
	}
	creds := map[string]clusterCreds{}
	for _, c := range []string{"team-a/alpha", "team-a/beta", "team-b/gamma"} {
		cc := clusterCreds{token: must("workload-token", c), lease: leaseOf(must("capa-vault", c))}
		if err := tokenWorks(cc.token); err != nil {
			t.Fatalf("a fresh token for %s does not work at Vault: %v", c, err)
		}
		if err := leaseLive(cc.lease); err != nil {
			t.Fatalf("a fresh lease for %s is not live at Vault: %v", c, err)
		}
		creds[c] = cc
	}
	taken := func(c string) {
		t.Helper()
		if tokenWorks(creds[c].token) == nil {
			t.Errorf("the token for %s still works at Vault", c)
		}
		if leaseLive(creds[c].lease) == nil {
			t.Errorf("the lease for %s is still live at Vault", c)
		}
	}
	kept := func(c string) {
		t.Helper()
		if err := tokenWorks(creds[c].token); err != nil {
			t.Errorf("the token for %s, not covered, stopped working: %v", c, err)
		}
		if err := leaseLive(creds[c].lease); err != nil {
			t.Errorf("the lease for %s, not covered, is gone: %v", c, err)
		}
	}

	r := b.ctl(t, "revoke", "cluster", "team-a/alpha", "--reason", "cluster compromised")
	if r.code != 0 || !strings.Contains(r.stdout, "upstream vault: 2 of 2 covered credentials revoked, 0 failed, 0 over the cap") {
		t.Fatalf("revoke cluster: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	taken("team-a/alpha")
	kept("team-a/beta")
	kept("team-b/gamma")
	if r, _ := issue("workload-token", "team-a/alpha"); r.code == 0 || !strings.Contains(r.stderr, "[REVOKED]") {
		t.Errorf("a request for the revoked cluster: exit %d, %q", r.code, r.stderr)
	}

	r = b.ctl(t, "-o", "json", "clusters", "delete", "team-b/gamma")
	var deleted struct {
		Upstream []struct {
			Issuer  string `json:"issuer"`
			Covered int    `json:"covered"`
			Revoked int    `json:"revoked"`
		} `json:"upstream"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &deleted); r.code != 0 || err != nil || len(deleted.Upstream) != 1 ||
		deleted.Upstream[0].Issuer != "vault" || deleted.Upstream[0].Covered != 2 || deleted.Upstream[0].Revoked != 2 {
		t.Fatalf("clusters delete -o json: exit %d (%v)\n%s%s", r.code, err, r.stdout, r.stderr)
	}
	taken("team-b/gamma")
	kept("team-a/beta")
	b.stop(t)
	assertNotOnDiskOrInLogs(t, b.dataDir, creds["team-a/alpha"].token.Token, b.stdout.String()+b.stderr.String())
}
