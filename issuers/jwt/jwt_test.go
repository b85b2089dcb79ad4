package jwt

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io/fs"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	jwtlib "github.com/golang-jwt/jwt/v5"

	"github.com/credbroker/credbroker/issuers"
)

const testIssuerURL = "http://127.0.0.1:8444"

var testNow = time.Date(2026, 3, 4, 5, 6, 7, 890_000_000, time.UTC)

func newTestIssuer(t testing.TB, keyFile string) *Issuer {
	t.Helper()
	iss, err := New(Config{
		IssuerURL: testIssuerURL,
		KeyFile:   keyFile,
		Clock:     func() time.Time { return testNow },
	})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return iss
}

func testRequest() issuers.Request {
	return issuers.Request{
		IssuanceID: "0190a6e2-7c1d-7abc-8def-0123456789ab",
		Subject:    "spiffe://example.org/ns/capi-system/sa/capa-controller-manager",
		Profile:    "dev-token",
		Cluster:    "team-a/cluster-1",
		Audience:   "sts.amazonaws.com",
		TTL:        15 * time.Minute,
	}
}

func get(t *testing.T, h http.Handler, method, path string) *httptest.ResponseRecorder {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(method, path, nil))
	return rec
}

type servedJWK struct {
	Kty, Crv, X, Y, Kid, Use, Alg string
}

// servedKey fetches the JWKS through the handler and rebuilds the public key
// from it, independently of the package's own encoding code.
func servedKey(t *testing.T, iss *Issuer) (servedJWK, *ecdsa.PublicKey) {
	t.Helper()
	rec := get(t, iss.Handler(), http.MethodGet, JWKSPath)
	if rec.Code != http.StatusOK {
		t.Fatalf("GET jwks: status %d", rec.Code)
	}
	var set struct{ Keys []servedJWK }
	if err := json.Unmarshal(rec.Body.Bytes(), &set); err != nil {
		t.Fatalf("decoding JWKS: %v", err)
	}
	if len(set.Keys) != 1 {
		t.Fatalf("JWKS has %d keys, want 1", len(set.Keys))
	}
	k := set.Keys[0]
	x, errX := base64.RawURLEncoding.DecodeString(k.X)
	y, errY := base64.RawURLEncoding.DecodeString(k.Y)
	if errX != nil || errY != nil || len(x) != 32 || len(y) != 32 {
		t.Fatalf("JWK x/y not 32-byte base64url: x=%q y=%q", k.X, k.Y)
	}
	pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), append(append([]byte{4}, x...), y...))
	if err != nil {
		t.Fatalf("JWK is not a P-256 point: %v", err)
	}
	return k, pub
}

func TestIssuedTokenVerifiesWithServedJWKS(t *testing.T) {
	iss := newTestIssuer(t, filepath.Join(t.TempDir(), "jwt.key"))
	jwk, pub := servedKey(t, iss)
	if jwk.Kty != "EC" || jwk.Crv != "P-256" || jwk.Use != "sig" || jwk.Alg != "ES256" || jwk.Kid != iss.KeyID() {
		t.Errorf("JWK = %+v, want EC/P-256/sig/ES256 with kid %s", jwk, iss.KeyID())
	}

	req := testRequest()
	cred, err := iss.Issue(context.Background(), req)
	if err != nil {
		t.Fatalf("Issue: %v", err)
	}
	now := testNow.Truncate(time.Second)
	wantExp := now.Add(req.TTL)
	if cred.Kind != issuers.KindToken || cred.TokenType != "JWT" || cred.UpstreamRef != req.IssuanceID || !cred.ExpiresAt.Equal(wantExp) || cred.AWS != nil {
		t.Errorf("credential = %+v, want token/JWT, ref %s, expiry %v", cred, req.IssuanceID, wantExp)
	}

	parse := func(at time.Time) (*jwtlib.Token, jwtlib.MapClaims, error) {
		claims := jwtlib.MapClaims{}
		tok, err := jwtlib.ParseWithClaims(cred.Token, claims, func(tok *jwtlib.Token) (any, error) {
			if tok.Header["kid"] != jwk.Kid {
				return nil, errors.New("unknown kid")
			}
			return pub, nil
		},
			jwtlib.WithValidMethods([]string{"ES256"}),
			jwtlib.WithIssuer(testIssuerURL),
			jwtlib.WithAudience(req.Audience),
			jwtlib.WithExpirationRequired(),
			jwtlib.WithNotBeforeRequired(),
			jwtlib.WithIssuedAt(),
			jwtlib.WithTimeFunc(func() time.Time { return at }),
		)
		return tok, claims, err
	}

	tok, claims, err := parse(now.Add(time.Minute))
	if err != nil {
		t.Fatalf("verifying token: %v", err)
	}
	if tok.Header["typ"] != "JWT" || tok.Header["alg"] != "ES256" || tok.Header["kid"] != iss.KeyID() {
		t.Errorf("header = %v", tok.Header)
	}
	want := map[string]any{
		"iss":     testIssuerURL,
		"sub":     req.Subject,
		"aud":     req.Audience,
		"iat":     float64(now.Unix()),
		"nbf":     float64(now.Unix()),
		"exp":     float64(wantExp.Unix()),
		"jti":     req.IssuanceID,
		"profile": req.Profile,
		"cluster": req.Cluster,
	}
	if len(claims) != len(want) {
		t.Errorf("claims = %v, want exactly %v", claims, want)
	}
	for k, v := range want {
		if claims[k] != v {
			t.Errorf("claim %s = %v (%T), want %v", k, claims[k], claims[k], v)
		}
	}

	if _, _, err := parse(wantExp.Add(time.Second)); !errors.Is(err, jwtlib.ErrTokenExpired) {
		t.Errorf("verifying after exp: err = %v, want ErrTokenExpired", err)
	}
	if _, _, err := parse(now.Add(-2 * time.Second)); !errors.Is(err, jwtlib.ErrTokenNotValidYet) {
		t.Errorf("verifying before nbf: err = %v, want ErrTokenNotValidYet", err)
	}

	// A different key (e.g. another broker's) must not verify the token.
	other := newTestIssuer(t, filepath.Join(t.TempDir(), "other.key"))
	_, otherPub := servedKey(t, other)
	pub = otherPub
	if _, _, err := parse(now); !errors.Is(err, jwtlib.ErrTokenSignatureInvalid) {
		t.Errorf("verifying with another key: err = %v, want ErrTokenSignatureInvalid", err)
	}
}

func TestIssueOmitsEmptyCluster(t *testing.T) {
	iss := newTestIssuer(t, filepath.Join(t.TempDir(), "jwt.key"))
	req := testRequest()
	req.Cluster = ""
	cred, err := iss.Issue(context.Background(), req)
	if err != nil {
		t.Fatalf("Issue: %v", err)
	}
	claims := jwtlib.MapClaims{}
	if _, _, err := jwtlib.NewParser().ParseUnverified(cred.Token, claims); err != nil {
		t.Fatal(err)
	}
	if _, ok := claims["cluster"]; ok {
		t.Errorf("cluster claim present for an unscoped request: %v", claims)
	}
}

func TestIssueRejectsIncompleteRequests(t *testing.T) {
	iss := newTestIssuer(t, filepath.Join(t.TempDir(), "jwt.key"))
	for name, mutate := range map[string]func(*issuers.Request){
		"no subject":     func(r *issuers.Request) { r.Subject = "" },
		"no audience":    func(r *issuers.Request) { r.Audience = "" },
		"no issuance id": func(r *issuers.Request) { r.IssuanceID = "" },
		"zero ttl":       func(r *issuers.Request) { r.TTL = 0 },
		"negative ttl":   func(r *issuers.Request) { r.TTL = -time.Minute },
	} {
		t.Run(name, func(t *testing.T) {
			req := testRequest()
			mutate(&req)
			cred, err := iss.Issue(context.Background(), req)
			if err == nil || !strings.HasPrefix(err.Error(), "jwt: ") || cred.Token != "" {
				t.Errorf("Issue = %+v, %v; want a jwt: error and no token", cred, err)
			}
		})
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := iss.Issue(ctx, testRequest()); !errors.Is(err, context.Canceled) {
		t.Errorf("Issue with cancelled context: err = %v", err)
	}
}

func TestKeyGeneratedOnceAndReused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys", "jwt.key") // parent is created too
	first := newTestIssuer(t, path)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatalf("key file not created: %v", err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Errorf("key file mode = %#o, want 0600", perm)
	}
	if perm := mustStat(t, filepath.Dir(path)).Mode().Perm(); perm != 0o700 {
		t.Errorf("created key directory mode = %#o, want 0700", perm)
	}
	before, _ := os.ReadFile(path)

	second := newTestIssuer(t, path)
	if first.KeyID() != second.KeyID() {
		t.Errorf("kid changed across New: %s then %s", first.KeyID(), second.KeyID())
	}
	if !bytes.Equal(first.JWKS(), second.JWKS()) {
		t.Error("JWKS changed across New with the same key file")
	}
	after, _ := os.ReadFile(path)
	if !bytes.Equal(before, after) {
		t.Error("key file rewritten by the second New")
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Errorf("key directory holds %d entries, want only the key (no temporary files left)", len(entries))
	}

	// A token from the second instance verifies with the first one's JWKS.
	cred, err := second.Issue(context.Background(), testRequest())
	if err != nil {
		t.Fatal(err)
	}
	_, pub := servedKey(t, first)
	if _, err := jwtlib.Parse(cred.Token, func(*jwtlib.Token) (any, error) { return pub, nil },
		jwtlib.WithTimeFunc(func() time.Time { return testNow })); err != nil {
		t.Errorf("token from reloaded key does not verify with original JWKS: %v", err)
	}
}

func mustStat(t *testing.T, path string) fs.FileInfo {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi
}

func TestLooseKeyFileModeRefused(t *testing.T) {
	for _, mode := range []os.FileMode{0o644, 0o640, 0o604, 0o620} {
		path := filepath.Join(t.TempDir(), "jwt.key")
		newTestIssuer(t, path)
		if err := os.Chmod(path, mode); err != nil {
			t.Fatal(err)
		}
		_, err := New(Config{IssuerURL: testIssuerURL, KeyFile: path})
		if err == nil {
			t.Fatalf("mode %#o: New accepted the key file", mode)
		}
		msg := err.Error()
		if want := "mode 0" + octal(mode); !strings.HasPrefix(msg, "jwt: ") || !strings.Contains(msg, want) || !strings.Contains(msg, path) {
			t.Errorf("mode %#o: error %q does not name the file and %q", mode, msg, want)
		}
	}
}

func octal(m os.FileMode) string {
	const digits = "01234567"
	p := uint32(m.Perm())
	return string([]byte{digits[p>>6&7], digits[p>>3&7], digits[p&7]})
}

func TestBadKeyFilesRefused(t *testing.T) {
	rsaLike := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: []byte{1, 2, 3}})
	p384, err := ecdsa.GenerateKey(elliptic.P384(), nil)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKCS8PrivateKey(p384)
	for name, content := range map[string][]byte{
		"empty":        nil,
		"not PEM":      []byte("hello"),
		"wrong type":   rsaLike,
		"garbage DER":  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte{0x30, 0x01}}),
		"P-384 ES key": pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}),
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "jwt.key")
			if err := os.WriteFile(path, content, 0o600); err != nil {
				t.Fatal(err)
			}
			if _, err := New(Config{IssuerURL: testIssuerURL, KeyFile: path}); err == nil || !strings.Contains(err.Error(), path) {
				t.Errorf("New = %v, want an error naming %s", err, path)
			}
			if got, _ := os.ReadFile(path); !bytes.Equal(got, content) {
				t.Error("bad key file was overwritten")
			}
		})
	}
}

func TestInjectedRandDeterminesKey(t *testing.T) {
	dir := t.TempDir()
	mk := func(name string, seed uint64) *Issuer {
		iss, err := New(Config{IssuerURL: testIssuerURL, KeyFile: filepath.Join(dir, name),
			Rand: rand.NewChaCha8([32]byte{byte(seed)})})
		if err != nil {
			t.Fatal(err)
		}
		return iss
	}
	a, b, c := mk("a", 1), mk("b", 1), mk("c", 2)
	if a.KeyID() != b.KeyID() {
		t.Error("same random stream gave different keys: the injected reader is ignored")
	}
	if a.KeyID() == c.KeyID() {
		t.Error("different random streams gave the same key")
	}
	_, err := New(Config{IssuerURL: testIssuerURL, KeyFile: filepath.Join(dir, "d"), Rand: bytes.NewReader(nil)})
	if err == nil {
		t.Error("New with an exhausted random source succeeded")
	}
	if _, statErr := os.Stat(filepath.Join(dir, "d")); !errors.Is(statErr, fs.ErrNotExist) {
		t.Error("key file created although key generation failed")
	}
}

// TestThumbprintRFC7638 recomputes the kid from the served JWK: the required
// members (crv, kty, x, y) in lexicographic order without whitespace, which
// encoding/json produces for a map, then SHA-256 and base64url.
func TestThumbprintRFC7638(t *testing.T) {
	iss := newTestIssuer(t, filepath.Join(t.TempDir(), "jwt.key"))
	jwk, _ := servedKey(t, iss)
	canonical, err := json.Marshal(map[string]string{"kty": jwk.Kty, "crv": jwk.Crv, "x": jwk.X, "y": jwk.Y})
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(canonical)
	if want := base64.RawURLEncoding.EncodeToString(sum[:]); iss.KeyID() != want {
		t.Errorf("KeyID = %s, want RFC 7638 thumbprint %s", iss.KeyID(), want)
	}
	if len(iss.KeyID()) != 43 || strings.ContainsAny(iss.KeyID(), "+/=") {
		t.Errorf("KeyID %q is not unpadded base64url of 32 bytes", iss.KeyID())
	}
}

// TestJWKSCoordinatesPadded uses a key whose X coordinate has a leading zero
// byte, which big-endian minimal encodings would drop.
func TestJWKSCoordinatesPadded(t *testing.T) {
	r := rand.NewChaCha8([32]byte{7})
	var key *ecdsa.PrivateKey
	for key == nil {
		buf := make([]byte, 32)
		_, _ = r.Read(buf)
		k, err := ecdsa.ParseRawPrivateKey(elliptic.P256(), buf)
		if err != nil {
			continue
		}
		if b, _ := k.PublicKey.Bytes(); b[1] == 0 {
			key = k
		}
	}
	der, _ := x509.MarshalPKCS8PrivateKey(key)
	path := filepath.Join(t.TempDir(), "jwt.key")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	iss := newTestIssuer(t, path)
	_, pub := servedKey(t, iss) // fails unless x decodes to 32 bytes
	if !pub.Equal(&key.PublicKey) {
		t.Error("JWKS public key differs from the key file's")
	}
}

func TestDiscoveryDocument(t *testing.T) {
	iss := newTestIssuer(t, filepath.Join(t.TempDir(), "jwt.key"))
	h := iss.Handler()
	rec := get(t, h, http.MethodGet, DiscoveryPath)
	if rec.Code != http.StatusOK {
		t.Fatalf("status %d", rec.Code)
	}
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q", ct)
	}
	if cc := rec.Header().Get("Cache-Control"); !strings.Contains(cc, "max-age=") {
		t.Errorf("Cache-Control = %q", cc)
	}
	var doc map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &doc); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"issuer":                                testIssuerURL,
		"jwks_uri":                              testIssuerURL + "/.well-known/jwks.json",
		"id_token_signing_alg_values_supported": []any{"ES256"},
		"response_types_supported":              []any{"id_token"},
		"subject_types_supported":               []any{"public"},
	}
	for k, v := range want {
		got, _ := json.Marshal(doc[k])
		exp, _ := json.Marshal(v)
		if !bytes.Equal(got, exp) {
			t.Errorf("%s = %s, want %s", k, got, exp)
		}
	}
	claims, _ := doc["claims_supported"].([]any)
	for _, c := range []string{"iss", "sub", "aud", "exp", "iat", "jti", "profile", "cluster"} {
		found := false
		for _, x := range claims {
			found = found || x == c
		}
		if !found {
			t.Errorf("claims_supported %v lacks %s", claims, c)
		}
	}

	jwks := get(t, h, http.MethodGet, JWKSPath)
	if jwks.Header().Get("Cache-Control") == "" || !bytes.Equal(jwks.Body.Bytes(), iss.JWKS()) {
		t.Errorf("JWKS response: Cache-Control %q, body %s", jwks.Header().Get("Cache-Control"), jwks.Body)
	}
	if code := get(t, h, http.MethodHead, JWKSPath).Code; code != http.StatusOK {
		t.Errorf("HEAD jwks: status %d", code)
	}
	for _, m := range []string{http.MethodPost, http.MethodPut, http.MethodDelete} {
		for _, p := range []string{DiscoveryPath, JWKSPath} {
			if code := get(t, h, m, p).Code; code != http.StatusMethodNotAllowed {
				t.Errorf("%s %s: status %d, want 405", m, p, code)
			}
		}
	}
	if code := get(t, h, http.MethodGet, "/.well-known/other").Code; code != http.StatusNotFound {
		t.Errorf("unknown path: status %d, want 404", code)
	}
}

func TestIssuerURLWithPath(t *testing.T) {
	iss, err := New(Config{IssuerURL: "https://broker.example.com/oidc/", KeyFile: filepath.Join(t.TempDir(), "k")})
	if err != nil {
		t.Fatal(err)
	}
	rec := get(t, iss.Handler(), http.MethodGet, "/oidc/.well-known/openid-configuration")
	var doc struct {
		Issuer  string `json:"issuer"`
		JWKSURI string `json:"jwks_uri"`
	}
	_ = json.Unmarshal(rec.Body.Bytes(), &doc)
	if rec.Code != http.StatusOK || doc.Issuer != "https://broker.example.com/oidc" || doc.JWKSURI != "https://broker.example.com/oidc/.well-known/jwks.json" {
		t.Errorf("status %d, doc %+v", rec.Code, doc)
	}
	if code := get(t, iss.Handler(), http.MethodGet, "/oidc/.well-known/jwks.json").Code; code != http.StatusOK {
		t.Errorf("jwks under issuer path: status %d", code)
	}
}

func TestConfigValidation(t *testing.T) {
	key := filepath.Join(t.TempDir(), "k")
	for _, cfg := range []Config{
		{IssuerURL: "", KeyFile: key},
		{IssuerURL: "127.0.0.1:8444", KeyFile: key},
		{IssuerURL: "ftp://host", KeyFile: key},
		{IssuerURL: "https://host?x=1", KeyFile: key},
		{IssuerURL: "https://host#f", KeyFile: key},
		{IssuerURL: testIssuerURL, KeyFile: ""},
	} {
		if _, err := New(cfg); err == nil || !strings.HasPrefix(err.Error(), "jwt: ") {
			t.Errorf("New(%+v) = %v, want a jwt: error", cfg, err)
		}
	}
}

func TestSign(t *testing.T) {
	iss := newTestIssuer(t, filepath.Join(t.TempDir(), "jwt.key"))
	_, pub := servedKey(t, iss)
	in := map[string]any{"sub": "web-identity", "aud": "minio", "exp": testNow.Add(time.Hour).Unix()}
	tok, err := iss.Sign(in)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := in["iss"]; ok {
		t.Error("Sign modified the caller's map")
	}
	claims := jwtlib.MapClaims{}
	parsed, err := jwtlib.ParseWithClaims(tok, claims, func(*jwtlib.Token) (any, error) { return pub, nil },
		jwtlib.WithTimeFunc(func() time.Time { return testNow }), jwtlib.WithIssuer(testIssuerURL))
	if err != nil {
		t.Fatalf("signed token does not verify: %v", err)
	}
	if parsed.Header["kid"] != iss.KeyID() || claims["sub"] != "web-identity" {
		t.Errorf("header %v claims %v", parsed.Header, claims)
	}
	if _, err := iss.Sign(map[string]any{"sub": "x"}); err == nil {
		t.Error("Sign accepted claims without exp")
	}
	if _, err := iss.Sign(map[string]any{"exp": 1, "iss": "https://evil.example"}); err == nil {
		t.Error("Sign accepted a foreign iss")
	}
}

// TestTokenNeverPersisted checks that issuing leaves no trace of the token
// on disk: the key directory holds only the unchanged key file.
func TestTokenNeverPersisted(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "jwt.key")
	iss := newTestIssuer(t, path)
	before, _ := os.ReadFile(path)
	var tokens []string
	for range 3 {
		cred, err := iss.Issue(context.Background(), testRequest())
		if err != nil {
			t.Fatal(err)
		}
		tokens = append(tokens, cred.Token)
	}
	after, _ := os.ReadFile(path)
	if !bytes.Equal(before, after) {
		t.Error("key file changed while issuing")
	}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		if p != path {
			t.Errorf("unexpected file %s after issuing", p)
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		for _, tok := range tokens {
			sig := tok[strings.LastIndexByte(tok, '.')+1:]
			if bytes.Contains(data, []byte(sig)) {
				t.Errorf("%s contains an issued token", p)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func BenchmarkIssue(b *testing.B) {
	iss := newTestIssuer(b, filepath.Join(b.TempDir(), "jwt.key"))
	req := testRequest()
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := iss.Issue(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
}

func TestVerifyAgainstJWKS(t *testing.T) {
	iss := newTestIssuer(t, filepath.Join(t.TempDir(), "k.pem"))
	cred, err := iss.Issue(context.Background(), testRequest())
	if err != nil {
		t.Fatal(err)
	}
	claims, err := Verify(iss.JWKS(), cred.Token, jwtlib.WithTimeFunc(iss.clock), jwtlib.WithAudience(testRequest().Audience))
	if err != nil || claims["jti"] != testRequest().IssuanceID {
		t.Fatalf("Verify = %v, %v", claims, err)
	}
	other := newTestIssuer(t, filepath.Join(t.TempDir(), "other.pem"))
	if _, err := Verify(other.JWKS(), cred.Token, jwtlib.WithTimeFunc(iss.clock)); err == nil || !strings.Contains(err.Error(), "not in the JWKS") {
		t.Fatalf("token verified against another issuer's JWKS: %v", err)
	}
	tampered := cred.Token[:len(cred.Token)-4] + "AAAA"
	if _, err := Verify(iss.JWKS(), tampered, jwtlib.WithTimeFunc(iss.clock)); err == nil {
		t.Fatal("tampered token verified")
	}
	if _, err := ParseJWKS([]byte(`{"keys":[{"kty":"EC","crv":"P-256","kid":"k","x":"AA","y":"AA"}]}`)); err == nil {
		t.Fatal("JWKS with short coordinates accepted")
	}
}
