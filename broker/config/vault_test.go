package config

import (
	"strings"
	"testing"
)

const vaultBase = `
trust_domain: example.org
issuers:
  oidc: {type: jwt}
  vault:
    type: vault
    vault:
      address: https://vault.example.org:8200
      auth: {method: jwt, role: credbroker, issuer: oidc}
profiles:
  db:
    issuer: vault
    max_ttl: 1h
    vault: {kind: secret, path: database/creds/readonly}
  tok:
    issuer: vault
    max_ttl: 1h
    vault: {kind: token, token_role: workload, policies: [team-a]}
`

func TestVaultConfigIsValid(t *testing.T) {
	c, err := Parse(strings.NewReader(vaultBase))
	if err != nil {
		t.Fatal(err)
	}
	if c.Issuers["vault"].Vault.Auth.Method != VaultAuthJWT || c.Profiles["tok"].Vault.TokenRole != "workload" {
		t.Errorf("config = %+v", c.Issuers["vault"].Vault)
	}
}

func TestVaultConfigMistakesAreRejectedAtLoad(t *testing.T) {
	for name, tc := range map[string]struct{ old, new, want string }{
		"unknown key":           {"address: https", "adress: https", "field adress not found"},
		"bad address":           {"https://vault.example.org:8200", "vault.example.org", "absolute http(s) URL"},
		"unknown auth method":   {"method: jwt", "method: ldap", `auth.method "ldap"`},
		"jwt without role":      {"role: credbroker, ", "", "auth.role is required"},
		"jwt issuer not jwt":    {"issuer: oidc}", "issuer: vault}", `auth.issuer "vault" must name an issuer of type "jwt"`},
		"approle without ids":   {"method: jwt, role: credbroker, issuer: oidc", "method: approle", "role_id_file and auth.secret_id_file"},
		"token file missing":    {"method: jwt, role: credbroker, issuer: oidc", "method: token_file", "auth.token_file is required"},
		"unknown kind":          {"kind: secret", "kind: database", `kind "database"`},
		"secret without path":   {"kind: secret, path: database/creds/readonly", "kind: secret", "path is required"},
		"token without role":    {"token_role: workload, ", "", "token_role is required"},
		"token with a path":     {"kind: token, token_role", "kind: token, path: x, token_role", "path is not for kind token"},
		"vault block on jwt":    {"profiles:\n", "profiles:\n  j: {issuer: oidc, max_ttl: 1h, vault: {kind: token}}\n", "profiles.j.vault is only for"},
		"profile without vault": {"    vault: {kind: secret, path: database/creds/readonly}\n", "", "profiles.db.vault is required"},
	} {
		t.Run(name, func(t *testing.T) {
			if !strings.Contains(vaultBase, tc.old) {
				t.Fatalf("test bug: %q not in the base config", tc.old)
			}
			_, err := Parse(strings.NewReader(strings.Replace(vaultBase, tc.old, tc.new, 1)))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tc.want)
			}
		})
	}
}
