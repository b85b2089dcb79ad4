package vaulttest

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// write writes data to path as root, failing the test on error. what names
// the step in the failure message.
func (s *Server) write(t testing.TB, what, path string, data map[string]any) {
	t.Helper()
	if _, err := s.Client(t).Logical().WriteWithContext(t.Context(), path, data); err != nil {
		t.Fatalf("vaulttest: %s: write %s: %v", what, path, err)
	}
}

// mount enables the secrets engine kind at path.
func (s *Server) mount(t testing.TB, kind, path string, options map[string]string) {
	t.Helper()
	data := map[string]any{"type": kind}
	if options != nil {
		data["options"] = options
	}
	s.write(t, "enable "+kind+" secrets engine", "sys/mounts/"+strings.Trim(path, "/"), data)
}

// WritePolicy creates or replaces the ACL policy name with the HCL rules.
func (s *Server) WritePolicy(t testing.TB, name, hcl string) {
	t.Helper()
	s.write(t, "write policy", "sys/policies/acl/"+name, map[string]any{"policy": hcl})
}

// EnableKV enables a KV version 2 secrets engine (the kind the dev server
// already has at secret/) at mount. Its data lives under mount/data/.
func (s *Server) EnableKV(t testing.TB, mount string) {
	t.Helper()
	s.mount(t, "kv", mount, map[string]string{"version": "2"})
}

// JWTKeys says where Vault's JWT auth method gets the keys that verify
// tokens. Set JWKSURL or PublicKeysPEM, not both.
type JWTKeys struct {
	// JWKSURL is fetched by Vault when the method is configured (it must be
	// serving by then) and again when a token's key id is unknown.
	JWKSURL string
	// JWKSCAPEM is the CA bundle that verifies an https JWKSURL, e.g. an
	// httptest TLS server's certificate.
	JWKSCAPEM string
	// PublicKeysPEM are PKIX public keys, PEM encoded, verified locally.
	PublicKeysPEM []string
}

// EnableJWTAuth enables the JWT auth method at mount (e.g. "jwt") with keys,
// accepting only tokens whose iss is boundIssuer ("" accepts any issuer).
// Roles are added with JWTRole; tokens log in at auth/MOUNT/login.
func (s *Server) EnableJWTAuth(t testing.TB, mount string, keys JWTKeys, boundIssuer string) {
	t.Helper()
	mount = strings.Trim(mount, "/")
	s.write(t, "enable jwt auth", "sys/auth/"+mount, map[string]any{"type": "jwt"})
	config := map[string]any{"bound_issuer": boundIssuer}
	switch {
	case keys.JWKSURL != "" && len(keys.PublicKeysPEM) == 0:
		config["jwks_url"] = keys.JWKSURL
		config["jwks_ca_pem"] = keys.JWKSCAPEM
	case keys.JWKSURL == "" && len(keys.PublicKeysPEM) > 0:
		config["jwt_validation_pubkeys"] = keys.PublicKeysPEM
	default:
		t.Fatalf("vaulttest: EnableJWTAuth: set exactly one of JWTKeys.JWKSURL and JWTKeys.PublicKeysPEM")
	}
	s.write(t, "configure jwt auth", "auth/"+mount+"/config", config)
}

// JWTRoleConfig is a role of the JWT auth method: which tokens may log in
// with it, and what Vault token they get.
type JWTRoleConfig struct {
	// BoundAudiences must include one of the token's aud values. Required
	// when tokens carry aud.
	BoundAudiences []string
	// BoundSubject, when set, must equal the token's sub.
	BoundSubject string
	// BoundClaims, when set, maps claim names to the value (or any of the
	// values) each must have.
	BoundClaims map[string]any
	// UserClaim names the claim that identifies the user; "sub" if empty.
	UserClaim string
	// TokenPolicies are the policies of the Vault token a login returns.
	TokenPolicies []string
	// TokenTTL is the Vault token's TTL; Vault's default (32 days in dev)
	// if zero.
	TokenTTL time.Duration
}

// JWTRole creates or replaces the role name of the JWT auth method at mount.
func (s *Server) JWTRole(t testing.TB, mount, name string, r JWTRoleConfig) {
	t.Helper()
	userClaim := r.UserClaim
	if userClaim == "" {
		userClaim = "sub"
	}
	data := map[string]any{
		"role_type":       "jwt", // the method's default is "oidc", a browser flow
		"user_claim":      userClaim,
		"bound_audiences": r.BoundAudiences,
		"bound_subject":   r.BoundSubject,
		"token_policies":  r.TokenPolicies,
	}
	if r.BoundClaims != nil {
		data["bound_claims"] = r.BoundClaims
	}
	if r.TokenTTL > 0 {
		data["token_ttl"] = seconds(r.TokenTTL)
	}
	s.write(t, "write jwt role", "auth/"+strings.Trim(mount, "/")+"/role/"+name, data)
}

// EnableAWSEngine enables the AWS secrets engine at mount and configures the
// credentials Vault calls AWS with, the STS and IAM endpoints (e.g. a MinIO
// server's URL; empty means AWS's own) and the region Vault signs for. Vault
// calls AWS with max_retries 0, so that an unavailable endpoint fails a
// request at once.
func (s *Server) EnableAWSEngine(t testing.TB, mount, accessKey, secretKey, stsEndpoint, iamEndpoint, region string) {
	t.Helper()
	s.mount(t, "aws", mount, nil)
	s.write(t, "configure aws secrets engine", strings.Trim(mount, "/")+"/config/root", map[string]any{
		"access_key":   accessKey,
		"secret_key":   secretKey,
		"sts_endpoint": stsEndpoint,
		"iam_endpoint": iamEndpoint,
		"region":       region,
		"sts_region":   region,
		"max_retries":  0,
	})
}

// AWS credential types of AWSRole.
const (
	// AWSAssumedRole makes Vault call sts:AssumeRole for one of the role's
	// ARNs, with the policy document as session policy.
	AWSAssumedRole = "assumed_role"
	// AWSFederationToken makes Vault call sts:GetFederationToken with the
	// policy document.
	AWSFederationToken = "federation_token"
)

// AWSRole creates or replaces the role name of the AWS secrets engine at
// mount. credentialType is AWSAssumedRole or AWSFederationToken; roleARNs
// are the roles an assumed_role credential may assume (none for
// federation_token); policyDocument, if not empty, is the IAM policy JSON
// that scopes the credentials. Credentials are read at MOUNT/creds/NAME
// (or MOUNT/sts/NAME).
func (s *Server) AWSRole(t testing.TB, mount, name, credentialType string, roleARNs []string, policyDocument string) {
	t.Helper()
	if credentialType != AWSAssumedRole && credentialType != AWSFederationToken {
		t.Fatalf("vaulttest: AWSRole: credential type %q, want %q or %q", credentialType, AWSAssumedRole, AWSFederationToken)
	}
	data := map[string]any{"credential_type": credentialType}
	if len(roleARNs) > 0 {
		data["role_arns"] = roleARNs
	}
	if policyDocument != "" {
		data["policy_document"] = policyDocument
	}
	s.write(t, "write aws role", strings.Trim(mount, "/")+"/roles/"+name, data)
}

// RateLimitQuota creates or replaces the rate limit quota name: at most rate
// requests per interval to path (a mount such as "secret/", or a path under
// one), after which Vault answers 429 until the interval ends. Use a long
// interval, so that no refill happens while a test runs. The quota counts
// requests with any token, root's too, so scope it away from the paths the
// test still needs.
func (s *Server) RateLimitQuota(t testing.TB, name, path string, rate float64, interval time.Duration) {
	t.Helper()
	s.write(t, "write rate limit quota", "sys/quotas/rate-limit/"+name, map[string]any{
		"path":     path,
		"rate":     rate,
		"interval": seconds(interval),
	})
}

// Seal seals the server: from then on every request fails with 503 "Vault
// is sealed" (sys/health too). There is no Unseal: the dev server prints its
// unseal key only when it shuts down.
func (s *Server) Seal(t testing.TB) {
	t.Helper()
	if err := s.Client(t).Sys().SealWithContext(t.Context()); err != nil {
		t.Fatalf("vaulttest: seal: %v", err)
	}
}

// Stop stops the server now (SIGTERM, then SIGKILL), for tests of a Vault
// that is down: requests to Addr are refused from then on. The server's
// data is gone; it cannot be started again.
func (s *Server) Stop(t testing.TB) {
	t.Helper()
	s.proc.Stop()
}

// seconds formats d as Vault's duration strings, in whole seconds.
func seconds(d time.Duration) string {
	return fmt.Sprintf("%ds", int64(d/time.Second))
}
