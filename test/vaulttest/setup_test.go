package vaulttest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	vaultapi "github.com/hashicorp/vault/api"
)

// readA allows reading the KV v2 secrets under secret/a/ and nothing else.
const readA = `path "secret/data/a/*" { capabilities = ["read"] }`

// writeSecrets writes secret/a/x and secret/b/x as root.
func writeSecrets(t *testing.T, s *Server) {
	t.Helper()
	kv := s.Client(t).KVv2("secret")
	for _, p := range []string{"a/x", "b/x"} {
		if _, err := kv.Put(t.Context(), p, map[string]any{"v": p}); err != nil {
			t.Fatalf("put secret/%s: %v", p, err)
		}
	}
}

// checkReadsOnlyA proves that token may read secret/a/x and is refused
// secret/b/x and writes.
func checkReadsOnlyA(t *testing.T, s *Server, token string) {
	t.Helper()
	c := s.Client(t)
	c.SetToken(token)
	kv := c.KVv2("secret")
	got, err := kv.Get(t.Context(), "a/x")
	if err != nil {
		t.Fatalf("read secret/a/x with the scoped token: %v", err)
	}
	if got.Data["v"] != "a/x" {
		t.Errorf("secret/a/x = %v, want v=a/x", got.Data)
	}
	if _, err := kv.Get(t.Context(), "b/x"); !isStatus(err, http.StatusForbidden) {
		t.Errorf("read secret/b/x with the scoped token: %v, want 403", err)
	}
	if _, err := kv.Put(t.Context(), "a/x", map[string]any{"v": "overwritten"}); !isStatus(err, http.StatusForbidden) {
		t.Errorf("write secret/a/x with the scoped token: %v, want 403", err)
	}
}

func TestTokenWithPolicyReadsOnlyWhatThePolicyAllows(t *testing.T) {
	t.Parallel()
	s := Start(t)
	writeSecrets(t, s)
	s.WritePolicy(t, "read-a", readA)

	sec, err := s.Client(t).Logical().WriteWithContext(t.Context(), "auth/token/create", map[string]any{
		"policies": []string{"read-a"}, "ttl": "5m", "no_default_policy": true,
	})
	if err != nil {
		t.Fatalf("auth/token/create: %v", err)
	}
	if sec.Auth == nil || sec.Auth.ClientToken == "" || sec.Auth.LeaseDuration != 300 {
		t.Fatalf("auth/token/create returned %+v, want a token with a 300s lease", sec.Auth)
	}
	checkReadsOnlyA(t, s, sec.Auth.ClientToken)
}

func TestEnableKVMountsAVersion2Engine(t *testing.T) {
	t.Parallel()
	s := Start(t)
	s.EnableKV(t, "kv-test")
	kv := s.Client(t).KVv2("kv-test")
	if _, err := kv.Put(t.Context(), "k", map[string]any{"v": "1"}); err != nil {
		t.Fatalf("put kv-test/k: %v", err)
	}
	got, err := kv.Get(t.Context(), "k")
	if err != nil || got.Data["v"] != "1" || got.VersionMetadata == nil || got.VersionMetadata.Version != 1 {
		t.Fatalf("get kv-test/k = %+v, %v; want v=1 at version 1", got, err)
	}
}

// jwtIssuer signs ES256 tokens and serves its JWKS over TLS.
type jwtIssuer struct {
	key  *ecdsa.PrivateKey
	kid  string
	srv  *httptest.Server
	name string // the iss claim
}

func newJWTIssuer(t *testing.T) *jwtIssuer {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	iss := &jwtIssuer{key: key, kid: "test-key-1", name: "https://issuer.test"}
	iss.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/jwks" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"keys": []any{iss.jwk()}})
	}))
	t.Cleanup(iss.srv.Close)
	return iss
}

// jwk is the public key as a JSON Web Key.
func (iss *jwtIssuer) jwk() map[string]string {
	pub, err := iss.key.PublicKey.Bytes() // 0x04 || X || Y
	if err != nil {
		panic(err)
	}
	b64 := base64.RawURLEncoding.EncodeToString
	return map[string]string{
		"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": iss.kid,
		"x": b64(pub[1:33]), "y": b64(pub[33:]),
	}
}

// caPEM is the PEM of the certificate the JWKS server presents.
func (iss *jwtIssuer) caPEM() string {
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: iss.srv.Certificate().Raw}))
}

// publicKeyPEM is the PKIX public key, PEM encoded.
func (iss *jwtIssuer) publicKeyPEM(t *testing.T) string {
	der, err := x509.MarshalPKIXPublicKey(&iss.key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
}

// sign returns an ES256 token for sub and aud, valid for five minutes,
// overridden by extra.
func (iss *jwtIssuer) sign(t *testing.T, key *ecdsa.PrivateKey, extra jwt.MapClaims) string {
	t.Helper()
	now := time.Now()
	claims := jwt.MapClaims{
		"iss": iss.name, "sub": "spiffe://example.org/broker", "aud": "vault",
		"iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(5 * time.Minute).Unix(),
	}
	for k, v := range extra {
		claims[k] = v
	}
	tok := jwt.NewWithClaims(jwt.SigningMethodES256, claims)
	tok.Header["kid"] = iss.kid
	signed, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return signed
}

func TestJWTLoginWithAnES256TokenSignedInTheTest(t *testing.T) {
	t.Parallel()
	iss := newJWTIssuer(t)
	for name, keys := range map[string]func() JWTKeys{
		"jwks_url": func() JWTKeys { return JWTKeys{JWKSURL: iss.srv.URL + "/jwks", JWKSCAPEM: iss.caPEM()} },
		"pem_keys": func() JWTKeys { return JWTKeys{PublicKeysPEM: []string{iss.publicKeyPEM(t)}} },
	} {
		t.Run(name, func(t *testing.T) {
			s := Start(t)
			writeSecrets(t, s)
			s.WritePolicy(t, "read-a", readA)
			s.EnableJWTAuth(t, "jwt", keys(), iss.name)
			s.JWTRole(t, "jwt", "broker", JWTRoleConfig{
				BoundAudiences: []string{"vault"},
				BoundSubject:   "spiffe://example.org/broker",
				TokenPolicies:  []string{"read-a"},
				TokenTTL:       10 * time.Minute,
			})
			login := func(jwtToken string) (*vaultapi.Secret, error) {
				c := s.Client(t)
				c.ClearToken()
				return c.Logical().WriteWithContext(t.Context(), "auth/jwt/login", map[string]any{"role": "broker", "jwt": jwtToken})
			}

			sec, err := login(iss.sign(t, iss.key, nil))
			if err != nil {
				t.Fatalf("login: %v", err)
			}
			if !slices.Contains(sec.Auth.Policies, "read-a") || sec.Auth.LeaseDuration != 600 {
				t.Errorf("login gave policies %v, lease %ds; want read-a, 600s", sec.Auth.Policies, sec.Auth.LeaseDuration)
			}
			checkReadsOnlyA(t, s, sec.Auth.ClientToken)

			other, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			for what, tok := range map[string]string{
				"signed by another key": iss.sign(t, other, nil),
				"other issuer":          iss.sign(t, iss.key, jwt.MapClaims{"iss": "https://evil.test"}),
				"other audience":        iss.sign(t, iss.key, jwt.MapClaims{"aud": "not-vault"}),
				"other subject":         iss.sign(t, iss.key, jwt.MapClaims{"sub": "spiffe://example.org/other"}),
				"expired":               iss.sign(t, iss.key, jwt.MapClaims{"exp": time.Now().Add(-time.Hour).Unix()}),
			} {
				if _, err := login(tok); !isStatus(err, http.StatusBadRequest) {
					t.Errorf("login with a token %s: %v, want 400", what, err)
				}
			}
		})
	}
}

func TestSealFailsRequestsWith503(t *testing.T) {
	t.Parallel()
	s := Start(t)
	writeSecrets(t, s)
	c := s.Client(t)
	s.Seal(t)
	_, err := c.KVv2("secret").Get(t.Context(), "a/x")
	if !isStatus(err, http.StatusServiceUnavailable) {
		t.Fatalf("read while sealed: %v, want 503", err)
	}
	t.Logf("sealed read: %v", err)
	// The API client asks sys/health to answer 200 whatever the state, and
	// reads the state from the body.
	if h, err := c.Sys().HealthWithContext(t.Context()); err != nil || !h.Sealed {
		t.Errorf("sys/health while sealed = %+v, %v; want sealed", h, err)
	}
}

func TestRateLimitQuotaAnswers429(t *testing.T) {
	t.Parallel()
	s := Start(t)
	writeSecrets(t, s)
	s.RateLimitQuota(t, "one-per-hour", "secret/", 1, time.Hour)
	kv := s.Client(t).KVv2("secret")
	if _, err := kv.Get(t.Context(), "a/x"); err != nil {
		t.Fatalf("first read under the quota: %v", err)
	}
	_, err := kv.Get(t.Context(), "a/x")
	if !isStatus(err, http.StatusTooManyRequests) {
		t.Fatalf("second read under a quota of 1: %v, want 429", err)
	}
	t.Logf("throttled read: %v", err)
	// Paths outside the quota are not throttled.
	if _, err := s.Client(t).Sys().ListPoliciesWithContext(t.Context()); err != nil {
		t.Errorf("sys/policies outside the quota: %v", err)
	}
}
