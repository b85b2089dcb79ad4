package psat

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/credbroker/credbroker/attest"
)

const (
	issuerA  = "https://oidc.example.com/cluster-a"
	issuerB  = "https://oidc.example.com/cluster-b"
	audience = "credbroker"
	agentSA  = "credbroker-system:node-agent"
)

var t0 = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

// clock is a settable test clock.
type clock struct{ t time.Time }

func (c *clock) now() time.Time          { return c.t }
func (c *clock) advance(d time.Duration) { c.t = c.t.Add(d) }

type signer struct {
	kid string
	key crypto.Signer
}

func newRSA(t *testing.T, kid string) signer {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return signer{kid: kid, key: k}
}

func newEC(t *testing.T, kid string, curve elliptic.Curve) signer {
	t.Helper()
	k, err := ecdsa.GenerateKey(curve, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return signer{kid: kid, key: k}
}

// jwksOf returns the JWKS publishing the signers' public keys.
func jwksOf(t *testing.T, signers ...signer) []byte {
	t.Helper()
	b64 := base64.RawURLEncoding.EncodeToString
	var keys []map[string]string
	for _, s := range signers {
		switch pub := s.key.Public().(type) {
		case *rsa.PublicKey:
			keys = append(keys, map[string]string{
				"kty": "RSA", "kid": s.kid, "use": "sig",
				"n": b64(pub.N.Bytes()), "e": b64(big.NewInt(int64(pub.E)).Bytes()),
			})
		case *ecdsa.PublicKey:
			size := (pub.Curve.Params().BitSize + 7) / 8
			raw, err := pub.Bytes()
			if err != nil {
				t.Fatal(err)
			}
			keys = append(keys, map[string]string{
				"kty": "EC", "kid": s.kid, "use": "sig", "crv": pub.Curve.Params().Name,
				"x": b64(raw[1 : 1+size]), "y": b64(raw[1+size:]),
			})
		}
	}
	out, err := json.Marshal(map[string]any{"keys": keys})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// podClaims are the claims of a projected token as kube-apiserver mints it.
func podClaims(iss string, now time.Time) jwt.MapClaims {
	return jwt.MapClaims{
		"iss": iss,
		"aud": []string{audience},
		"sub": "system:serviceaccount:credbroker-system:node-agent",
		"iat": now.Add(-time.Minute).Unix(),
		"nbf": now.Add(-time.Minute).Unix(),
		"exp": now.Add(9 * time.Minute).Unix(),
		"kubernetes.io": map[string]any{
			"namespace":      "credbroker-system",
			"serviceaccount": map[string]any{"name": "node-agent", "uid": "sa-uid-1"},
			"pod":            map[string]any{"name": "node-agent-x7k2p", "uid": "pod-uid-1"},
			"node":           map[string]any{"name": "ip-10-0-1-23.ec2.internal", "uid": "node-uid-1"},
		},
	}
}

func mint(t *testing.T, method jwt.SigningMethod, s signer, claims jwt.MapClaims) string {
	t.Helper()
	tok := jwt.NewWithClaims(method, claims)
	if s.kid != "" {
		tok.Header["kid"] = s.kid
	}
	out, err := tok.SignedString(s.key)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

type fixture struct {
	v     *Verifier
	clock *clock
	a, b  signer // cluster A (RSA) and cluster B (EC P-256) keys
	a384  signer // a second, P-384 key of cluster A
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{
		clock: &clock{t: t0},
		a:     newRSA(t, "a-rsa"),
		b:     newEC(t, "b-ec", elliptic.P256()),
		a384:  newEC(t, "a-ec384", elliptic.P384()),
	}
	var err error
	f.v, err = New(map[string]ClusterConfig{
		"fleet/cluster-a": {Issuer: issuerA, Audience: audience, JWKS: jwksOf(t, f.a, f.a384), ServiceAccounts: []string{agentSA}},
		"fleet/cluster-b": {Issuer: issuerB, Audience: audience, JWKS: jwksOf(t, f.b), ServiceAccounts: []string{agentSA}},
	}, WithClock(f.clock.now))
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func TestVerifyValid(t *testing.T) {
	f := newFixture(t)
	want := attest.NodeClaims{
		Cluster: "fleet/cluster-a",
		Node:    "ip-10-0-1-23.ec2.internal",
		Method:  attest.MethodK8sPSAT,
		Detail:  "pod credbroker-system/node-agent-x7k2p (pod-uid-1) on node ip-10-0-1-23.ec2.internal, service account credbroker-system:node-agent",
	}
	for _, tc := range []struct {
		name    string
		method  jwt.SigningMethod
		s       signer
		cluster string
		iss     string
	}{
		{"RS256", jwt.SigningMethodRS256, f.a, "fleet/cluster-a", issuerA},
		{"PS256", jwt.SigningMethodPS256, f.a, "fleet/cluster-a", issuerA},
		{"ES384", jwt.SigningMethodES384, f.a384, "fleet/cluster-a", issuerA},
		{"ES256", jwt.SigningMethodES256, f.b, "fleet/cluster-b", issuerB},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := f.v.Verify(context.Background(), tc.cluster, mint(t, tc.method, tc.s, podClaims(tc.iss, t0)))
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			w := want
			w.Cluster = tc.cluster
			if got != w {
				t.Errorf("got %+v\nwant %+v", got, w)
			}
		})
	}
}

func TestVerifyWithinLeeway(t *testing.T) {
	f := newFixture(t)
	tok := mint(t, jwt.SigningMethodRS256, f.a, podClaims(issuerA, t0))
	f.clock.advance(9*time.Minute + 20*time.Second) // 20s past exp, inside the 30s leeway
	if _, err := f.v.Verify(context.Background(), "fleet/cluster-a", tok); err != nil {
		t.Fatalf("Verify: %v", err)
	}
}

func TestVerifyRejects(t *testing.T) {
	f := newFixture(t)
	hsKey := func(secret []byte) string {
		tok := jwt.NewWithClaims(jwt.SigningMethodHS256, podClaims(issuerA, t0))
		tok.Header["kid"] = f.a.kid
		s, err := tok.SignedString(secret)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	pubDER, err := x509.MarshalPKIXPublicKey(f.a.key.Public())
	if err != nil {
		t.Fatal(err)
	}
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})
	noneTok := func() string {
		tok := jwt.NewWithClaims(jwt.SigningMethodNone, podClaims(issuerA, t0))
		tok.Header["kid"] = f.a.kid
		s, err := tok.SignedString(jwt.UnsafeAllowNoneSignatureType)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}()
	with := func(mod func(jwt.MapClaims)) jwt.MapClaims {
		c := podClaims(issuerA, t0)
		mod(c)
		return c
	}
	k8s := func(mod func(map[string]any)) jwt.MapClaims {
		return with(func(c jwt.MapClaims) { mod(c["kubernetes.io"].(map[string]any)) })
	}
	rs := func(c jwt.MapClaims) string { return mint(t, jwt.SigningMethodRS256, f.a, c) }
	bKeyAsA := signer{kid: f.a.kid, key: f.b.key}

	for _, tc := range []struct {
		name, cluster, token, reason string
	}{
		{"wrong audience", "", rs(with(func(c jwt.MapClaims) { c["aud"] = []string{"kubernetes.default.svc"} })), "audience"},
		{"expired", "", rs(with(func(c jwt.MapClaims) { c["exp"] = t0.Add(-31 * time.Second).Unix() })), "expired"},
		{"no exp (legacy token)", "", rs(with(func(c jwt.MapClaims) { delete(c, "exp") })), "missing a required claim"},
		{"not yet valid", "", rs(with(func(c jwt.MapClaims) { c["nbf"] = t0.Add(time.Minute).Unix() })), "not valid yet"},
		{"issued in the future", "", rs(with(func(c jwt.MapClaims) { c["iat"] = t0.Add(time.Minute).Unix() })), "issued in the future"},
		{"no iat", "", rs(with(func(c jwt.MapClaims) { delete(c, "iat") })), "no iat"},
		{"lifetime too long", "", rs(with(func(c jwt.MapClaims) { c["exp"] = t0.Add(48 * time.Hour).Unix() })), "lifetime"},
		{"foreign issuer", "", rs(with(func(c jwt.MapClaims) { c["iss"] = issuerB })), "issuer"},
		{"unknown cluster", "fleet/cluster-z", rs(podClaims(issuerA, t0)), "not configured"},
		{"invalid cluster name", "Fleet/../x", rs(podClaims(issuerA, t0)), "namespace/name"},
		{"other cluster's key and kid", "", mint(t, jwt.SigningMethodES256, f.b, podClaims(issuerA, t0)), "kid"},
		{"other cluster's key, this cluster's kid", "", mint(t, jwt.SigningMethodES256, bKeyAsA, podClaims(issuerA, t0)), "algorithm does not match"},
		{"alg none", "", noneTok, "algorithm is not allowed"},
		{"HS256 with public key PEM as secret", "", hsKey(pubPEM), "algorithm is not allowed"},
		{"HS256 with public key DER as secret", "", hsKey(pubDER), "algorithm is not allowed"},
		{"no kid", "", mint(t, jwt.SigningMethodRS256, signer{key: f.a.key}, podClaims(issuerA, t0)), "no kid"},
		{"tampered payload", "", func() string {
			tok := rs(podClaims(issuerA, t0))
			other := rs(k8s(func(k map[string]any) { k["node"] = map[string]any{"name": "victim-node"} }))
			p := strings.Split(tok, ".")
			p[1] = strings.Split(other, ".")[1]
			return strings.Join(p, ".")
		}(), "signature is invalid"},
		{"missing node claim", "", rs(k8s(func(k map[string]any) { delete(k, "node") })), "bound to a pod on a node"},
		{"missing pod claim", "", rs(k8s(func(k map[string]any) { delete(k, "pod") })), "bound to a pod on a node"},
		{"invalid node name", "", rs(k8s(func(k map[string]any) { k["node"] = map[string]any{"name": "Node_1"} })), "not a valid node name"},
		{"service account not allowed", "", rs(with(func(c jwt.MapClaims) {
			c["sub"] = "system:serviceaccount:credbroker-system:default"
			c["kubernetes.io"].(map[string]any)["serviceaccount"] = map[string]any{"name": "default"}
		})), `service account "credbroker-system:default" is not allowed`},
		{"subject mismatch", "", rs(with(func(c jwt.MapClaims) { c["sub"] = "system:serviceaccount:kube-system:admin" })), "subject"},
		{"no kubernetes.io claim", "", rs(with(func(c jwt.MapClaims) { delete(c, "kubernetes.io") })), "kubernetes.io"},
		{"malformed: garbage", "", "not-a-jwt", "malformed"},
		{"malformed: bad base64", "", "e30.!!!.sig", "malformed"},
		{"empty", "", "", "empty"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cluster := tc.cluster
			if cluster == "" {
				cluster = "fleet/cluster-a"
			}
			_, err := f.v.Verify(context.Background(), cluster, tc.token)
			assertRejected(t, err, tc.reason, tc.token)
		})
	}
}

func assertRejected(t *testing.T, err error, reason, token string) {
	t.Helper()
	if !errors.Is(err, attest.ErrNodeRejected) {
		t.Fatalf("err = %v, want one wrapping attest.ErrNodeRejected", err)
	}
	msg := err.Error()
	if !strings.HasPrefix(msg, "psat: ") || !strings.Contains(msg, reason) {
		t.Errorf("err = %q, want psat: prefix and %q", msg, reason)
	}
	if len(token) > 20 && strings.Contains(msg, token[len(token)-20:]) {
		t.Errorf("err echoes the token: %q", msg)
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	jwks := jwksOf(t, newEC(t, "k", elliptic.P256()))
	ok := ClusterConfig{Issuer: issuerA, Audience: audience, JWKS: jwks, ServiceAccounts: []string{agentSA}}
	for _, tc := range []struct {
		name    string
		cluster string
		mod     func(*ClusterConfig)
		opts    []Option
	}{
		{"bad cluster name", "cluster-a", func(*ClusterConfig) {}, nil},
		{"no issuer", "", func(c *ClusterConfig) { c.Issuer = "" }, nil},
		{"no audience", "", func(c *ClusterConfig) { c.Audience = "" }, nil},
		{"no service accounts", "", func(c *ClusterConfig) { c.ServiceAccounts = nil }, nil},
		{"bad service account", "", func(c *ClusterConfig) { c.ServiceAccounts = []string{"node-agent"} }, nil},
		{"no keys", "", func(c *ClusterConfig) { c.JWKS = nil }, nil},
		{"both keys", "", func(c *ClusterConfig) { c.DiscoveryURL = issuerA + "/.well-known/openid-configuration" }, nil},
		{"http discovery", "", func(c *ClusterConfig) {
			c.JWKS, c.DiscoveryURL = nil, "http://oidc.example.com/.well-known/openid-configuration"
		}, nil},
		{"symmetric-only JWKS", "", func(c *ClusterConfig) { c.JWKS = []byte(`{"keys":[{"kty":"oct","kid":"h","k":"c2VjcmV0"}]}`) }, nil},
		{"short RSA key", "", func(c *ClusterConfig) {
			k, err := rsa.GenerateKey(rand.Reader, 1024)
			if err != nil {
				t.Fatal(err)
			}
			c.JWKS = jwksOf(t, signer{kid: "short", key: k})
		}, nil},
		{"EC point off curve", "", func(c *ClusterConfig) {
			c.JWKS = []byte(`{"keys":[{"kty":"EC","kid":"x","crv":"P-256","x":"` + strings.Repeat("A", 43) + `","y":"` + strings.Repeat("A", 43) + `"}]}`)
		}, nil},
		{"zero max lifetime", "", func(*ClusterConfig) {}, []Option{WithMaxLifetime(0)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := ok
			tc.mod(&cfg)
			name := tc.cluster
			if name == "" {
				name = "fleet/cluster-a"
			}
			if _, err := New(map[string]ClusterConfig{name: cfg}, tc.opts...); err == nil || !strings.HasPrefix(err.Error(), "psat: ") {
				t.Fatalf("New: err = %v, want a psat: error", err)
			}
		})
	}
}

func TestJWKSSkipsUnusableKeys(t *testing.T) {
	ec := newEC(t, "ec", elliptic.P256())
	var set map[string][]map[string]string
	if err := json.Unmarshal(jwksOf(t, ec), &set); err != nil {
		t.Fatal(err)
	}
	set["keys"] = append(set["keys"],
		map[string]string{"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
		map[string]string{"kty": "OKP", "kid": "ed", "crv": "Ed25519", "x": "AAAA"},
		map[string]string{"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"},
	)
	raw, _ := json.Marshal(set)
	keys, err := parseJWKS(raw)
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 1 || keys["ec"].key == nil {
		t.Fatalf("keys = %v, want only the EC key", keys)
	}
}

func TestKeyAllows(t *testing.T) {
	rsaKey := newRSA(t, "r").key.Public()
	p256 := newEC(t, "e", elliptic.P256()).key.Public()
	for _, tc := range []struct {
		k    publicKey
		alg  string
		want bool
	}{
		{publicKey{key: rsaKey}, "RS256", true},
		{publicKey{key: rsaKey}, "PS256", true},
		{publicKey{key: rsaKey, alg: "PS256"}, "RS256", false}, // JWK pins its alg
		{publicKey{key: rsaKey}, "ES256", false},
		{publicKey{key: rsaKey}, "HS256", false},
		{publicKey{key: p256}, "ES256", true},
		{publicKey{key: p256}, "ES384", false}, // curve must match the alg
		{publicKey{key: p256}, "RS256", false},
	} {
		if got := tc.k.allows(tc.alg); got != tc.want {
			t.Errorf("%T(alg %q).allows(%s) = %v, want %v", tc.k.key, tc.k.alg, tc.alg, got, tc.want)
		}
	}
}
