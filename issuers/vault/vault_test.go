package vault_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go"
	vaultapi "github.com/hashicorp/vault/api"

	"github.com/credbroker/credbroker/issuers"
	"github.com/credbroker/credbroker/issuers/jwt"
	"github.com/credbroker/credbroker/issuers/vault"
	"github.com/credbroker/credbroker/test/miniotest"
	"github.com/credbroker/credbroker/test/vaulttest"
)

const (
	brokerID = "spiffe://example.test/credbroker"
	caller   = "spiffe://example.test/ns/capi-system/sa/capa-controller-manager"
)

// env is a real Vault dev server whose JWT auth trusts a real broker OIDC
// issuer (its discovery and JWKS served over loopback), with a policy for
// the broker and an orphan token role for workloads.
type env struct {
	vault  *vaulttest.Server
	signer *jwt.Issuer
}

func newEnv(t *testing.T) *env {
	t.Helper()
	oidc := httptest.NewUnstartedServer(nil)
	issuerURL := "http://" + oidc.Listener.Addr().String()
	signer, err := jwt.New(jwt.Config{IssuerURL: issuerURL, KeyFile: filepath.Join(t.TempDir(), "key.pem")})
	if err != nil {
		t.Fatal(err)
	}
	oidc.Config.Handler = signer.Handler()
	oidc.Start()
	t.Cleanup(oidc.Close)

	v := vaulttest.Start(t)
	v.WritePolicy(t, "credbroker", `
path "auth/token/create/workload" { capabilities = ["create", "update"] }
path "aws/sts/*"   { capabilities = ["read", "update"] }
path "aws/creds/*" { capabilities = ["read", "update"] }
path "sys/leases/revoke" { capabilities = ["update"] }
path "auth/token/revoke-accessor" { capabilities = ["update"] }
`)
	v.WritePolicy(t, "team-a-read", `path "secret/data/team-a/*" { capabilities = ["read"] }`)
	v.EnableJWTAuth(t, "jwt", vaulttest.JWTKeys{JWKSURL: issuerURL + jwt.JWKSPath}, issuerURL)
	v.JWTRole(t, "jwt", "credbroker", vaulttest.JWTRoleConfig{
		BoundAudiences: []string{vault.DefaultJWTAudience}, BoundSubject: brokerID,
		TokenPolicies: []string{"credbroker"}, TokenTTL: time.Hour,
	})
	root := v.Client(t)
	if _, err := root.Logical().Write("auth/token/roles/workload", map[string]any{
		"allowed_policies": []string{"team-a-read"}, "orphan": true, "token_explicit_max_ttl": "3600",
	}); err != nil {
		t.Fatal(err)
	}
	for path, value := range map[string]string{"secret/data/team-a/db": "a", "secret/data/team-b/db": "b"} {
		if _, err := root.Logical().Write(path, map[string]any{"data": map[string]any{"password": value}}); err != nil {
			t.Fatal(err)
		}
	}
	return &env{vault: v, signer: signer}
}

// issuer starts an Issuer logged in with the broker's own JWTs.
func (e *env) issuer(t *testing.T, profiles map[string]vault.Profile, mutate ...func(*vault.Config)) *vault.Issuer {
	t.Helper()
	cfg := vault.Config{
		Address:  e.vault.Addr,
		Auth:     vault.JWTAuth{Mount: "jwt", Role: "credbroker", Signer: e.signer, Subject: brokerID, Audience: vault.DefaultJWTAudience},
		Profiles: profiles,
	}
	for _, m := range mutate {
		m(&cfg)
	}
	iss, err := vault.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { iss.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case <-iss.Ready():
	case <-time.After(30 * time.Second):
		t.Fatal("the issuer never logged in to Vault")
	}
	return iss
}

var ids atomic.Int64

func request(profile string, ttl time.Duration) issuers.Request {
	return issuers.Request{IssuanceID: fmt.Sprintf("issuance-%d", ids.Add(1)), Subject: caller, Profile: profile, Cluster: "team-a/alpha", TTL: ttl}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func tokenProfiles() map[string]vault.Profile {
	return map[string]vault.Profile{"workload-token": {Kind: vault.KindToken, TokenRole: "workload", Policies: []string{"team-a-read"}}}
}

func (e *env) as(t *testing.T, token string) *vaultapi.Client {
	t.Helper()
	c := e.vault.Client(t)
	c.SetToken(token)
	return c
}

func TestTokenProfileIsScopedByVaultPolicyAndExpires(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	iss := e.issuer(t, tokenProfiles())
	req := request("workload-token", 3*time.Second)
	cred, err := iss.Issue(ctxT(t), req)
	if err != nil {
		t.Fatal(err)
	}
	if cred.Kind != issuers.KindToken || cred.TokenType != vault.TokenType || !strings.HasPrefix(cred.UpstreamRef, vault.AccessorRefPrefix) {
		t.Fatalf("credential = %+v", cred)
	}
	c := e.as(t, cred.Token)
	if s, err := c.Logical().Read("secret/data/team-a/db"); err != nil || s == nil {
		t.Fatalf("team-a read with the issued token: %v", err)
	}
	if _, err := c.Logical().Read("secret/data/team-b/db"); !isStatus(err, http.StatusForbidden) {
		t.Fatalf("team-b read with the issued token: %v, want 403", err)
	}
	// Vault records who it is for.
	self, err := c.Auth().Token().LookupSelf()
	if err != nil {
		t.Fatal(err)
	}
	meta := self.Data["meta"].(map[string]any)
	if meta["spiffe_id"] != caller || meta["cluster"] != "team-a/alpha" || meta["issuance_id"] != req.IssuanceID {
		t.Errorf("token metadata = %v", meta)
	}
	if orphan, _ := self.Data["orphan"].(bool); !orphan {
		t.Error("the token is a child of the broker's token: it would die with it")
	}
	// Vault enforces the lifetime: this waits out the 3 s TTL at the server,
	// whose clock cannot be injected.
	time.Sleep(time.Until(cred.ExpiresAt) + time.Second)
	if _, err := c.Logical().Read("secret/data/team-a/db"); !isStatus(err, http.StatusForbidden) {
		t.Fatalf("read after expiry: %v, want 403", err)
	}
}

func TestIssuedTokenIsRevokedByItsAccessor(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	iss := e.issuer(t, tokenProfiles())
	cred, err := iss.Issue(ctxT(t), request("workload-token", time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if err := iss.Revoke(ctxT(t), cred.UpstreamRef); err != nil {
		t.Fatal(err)
	}
	if _, err := e.as(t, cred.Token).Logical().Read("secret/data/team-a/db"); !isStatus(err, http.StatusForbidden) {
		t.Fatalf("read with a revoked token: %v, want 403", err)
	}
	// Revoking again (an admin re-running a revocation) is harmless.
	if err := iss.Revoke(ctxT(t), cred.UpstreamRef); err != nil {
		t.Errorf("revoking a revoked token again: %v", err)
	}
}

func TestPolicyOutsideTheTokenRoleIsRefused(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	iss := e.issuer(t, map[string]vault.Profile{"greedy": {Kind: vault.KindToken, TokenRole: "workload", Policies: []string{"root"}}})
	_, err := iss.Issue(ctxT(t), request("greedy", time.Hour))
	var ie *issuers.Error
	if !errors.As(err, &ie) || !errors.Is(err, issuers.ErrMisconfigured) && !errors.Is(err, issuers.ErrRejected) {
		t.Fatalf("err = %v", err)
	}
	if strings.Contains(ie.Code, "root") {
		t.Errorf("code %q repeats Vault's message", ie.Code)
	}
}

func TestVaultSealedOrDownIsUnavailable(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	iss := e.issuer(t, tokenProfiles())
	e.vault.Seal(t)
	_, err := iss.Issue(ctxT(t), request("workload-token", time.Hour))
	var ie *issuers.Error
	if !errors.As(err, &ie) || !errors.Is(err, issuers.ErrUnavailable) || ie.RetryAfter <= 0 || !strings.Contains(ie.Code, "503") {
		t.Fatalf("sealed: %v", err)
	}
	e.vault.Stop(t)
	if _, err := iss.Issue(ctxT(t), request("workload-token", time.Hour)); !errors.Is(err, issuers.ErrUnavailable) {
		t.Fatalf("stopped: %v", err)
	}
}

func TestVaultRateLimitIsThrottledWithADelay(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	iss := e.issuer(t, tokenProfiles(), func(c *vault.Config) { c.MaxRetries = -1 })
	e.vault.RateLimitQuota(t, "token-create", "auth/token/create/workload", 1, time.Hour)
	if _, err := iss.Issue(ctxT(t), request("workload-token", time.Hour)); err != nil {
		t.Fatalf("first request: %v", err)
	}
	_, err := iss.Issue(ctxT(t), request("workload-token", time.Hour))
	var ie *issuers.Error
	if !errors.As(err, &ie) || !errors.Is(err, issuers.ErrThrottled) || ie.RetryAfter <= 0 || ie.Code != "HTTP 429" {
		t.Fatalf("second request: %v", err)
	}
}

func TestNotLoggedInIsUnavailable(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	iss, err := vault.New(vault.Config{Address: e.vault.Addr, Profiles: tokenProfiles(),
		Auth: vault.JWTAuth{Mount: "jwt", Role: "credbroker", Signer: e.signer, Subject: "spiffe://example.test/impostor", Audience: vault.DefaultJWTAudience}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := iss.Issue(ctxT(t), request("workload-token", time.Hour)); !errors.Is(err, issuers.ErrUnavailable) {
		t.Fatalf("before any login: %v", err)
	}
}

func TestAWSEngineCredentialsKeepTheirScopeAtS3(t *testing.T) {
	t.Parallel()
	m := miniotest.Start(t)
	m.CreateBucket(t, "capi")
	e := newEnv(t)
	e.vault.EnableAWSEngine(t, "aws", m.RootUser, m.RootPassword, vaulttest.STSProxy(t, m.Endpoint), m.Endpoint, m.Region)
	e.vault.AWSRole(t, "aws", "capa-team-a", vaulttest.AWSAssumedRole, []string{"arn:aws:iam::123456789012:role/capa"},
		`{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["s3:PutObject","s3:GetObject"],"Resource":["arn:aws:s3:::capi/team-a/alpha/*"]}]}`)
	iss := e.issuer(t, map[string]vault.Profile{
		"capa":     {Kind: vault.KindAWS, Path: "aws/sts/capa-team-a"},
		"capa-raw": {Kind: vault.KindSecret, Path: "aws/sts/capa-team-a"},
	})
	cred, err := iss.Issue(ctxT(t), request("capa", 15*time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if cred.Kind != issuers.KindAWS || cred.UpstreamRef == "" || time.Until(cred.ExpiresAt) > 15*time.Minute+time.Second {
		t.Fatalf("credential kind %s, lease %q, expires %v", cred.Kind, cred.UpstreamRef, cred.ExpiresAt)
	}
	s3c := m.S3(t, credentials.NewStaticCredentialsProvider(cred.AWS.AccessKeyID, cred.AWS.SecretAccessKey, cred.AWS.SessionToken))
	put := func(key string) string {
		_, err := s3c.PutObject(ctxT(t), &s3.PutObjectInput{Bucket: aws.String("capi"), Key: aws.String(key), Body: strings.NewReader("x")})
		var api smithy.APIError
		if errors.As(err, &api) {
			return api.ErrorCode()
		}
		if err != nil {
			t.Fatal(err)
		}
		return ""
	}
	if code := put("team-a/alpha/x"); code != "" {
		t.Errorf("own prefix: %s", code)
	}
	if code := put("team-b/beta/x"); code != "AccessDenied" {
		t.Errorf("other prefix: %q, want AccessDenied", code)
	}
	// The lease the audit records is revocable in Vault.
	if err := iss.Revoke(ctxT(t), cred.UpstreamRef); err != nil {
		t.Fatalf("revoke lease %s: %v", cred.UpstreamRef, err)
	}
	// The same path as a generic leased secret: the JSON Vault returned.
	raw, err := iss.Issue(ctxT(t), request("capa-raw", 15*time.Minute))
	if err != nil || raw.Kind != issuers.KindSecret || !bytes.Contains(raw.Secret, []byte(`"access_key"`)) || raw.UpstreamRef == "" {
		t.Fatalf("secret profile: %+v, %v", raw.Kind, err)
	}
}

func isStatus(err error, code int) bool {
	var re *vaultapi.ResponseError
	return errors.As(err, &re) && re.StatusCode == code
}

// TestRevokedBrokerTokenIsReplaced: when Vault stops accepting the broker's
// own token, callers get UNAVAILABLE (not a denial they caused) and the
// broker logs in again by itself.
func TestRevokedBrokerTokenIsReplaced(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	iss := e.issuer(t, tokenProfiles())
	vault.AwaitLogins(t, iss, 1)
	root := e.vault.Client(t)
	list, err := root.Logical().List("auth/token/accessors")
	if err != nil {
		t.Fatal(err)
	}
	self, err := root.Auth().Token().LookupSelf()
	if err != nil {
		t.Fatal(err)
	}
	for _, acc := range list.Data["keys"].([]any) {
		if acc == self.Data["accessor"] {
			continue // everyone's but root's
		}
		if _, err := root.Logical().Write("auth/token/revoke-accessor", map[string]any{"accessor": acc}); err != nil {
			t.Fatal(err)
		}
	}
	_, err = iss.Issue(ctxT(t), request("workload-token", time.Hour))
	if !errors.Is(err, issuers.ErrUnavailable) {
		t.Fatalf("with the broker's token revoked: %v, want Unavailable", err)
	}
	vault.AwaitLogins(t, iss, 2)
	if _, err := iss.Issue(ctxT(t), request("workload-token", time.Hour)); err != nil {
		t.Fatalf("after logging in again: %v", err)
	}
}
