package miniotest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"math/big"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	"github.com/golang-jwt/jwt/v5"
)

const testClientID = "credbroker-test"

// TestAssumeRoleWithWebIdentity proves, for each signing algorithm, that
// MinIO accepts ID tokens from an issuer configured with WithOpenID for the
// role RoleARN returns, that a session policy scopes the credentials, and that
// it rejects tokens it should (so acceptance is not vacuous).
func TestAssumeRoleWithWebIdentity(t *testing.T) {
	t.Parallel()
	for _, alg := range []string{"ES256", "RS256"} {
		t.Run(alg, func(t *testing.T) {
			idp := newIssuer(t, alg)
			s := Start(t, WithOpenID(idp.URL+"/.well-known/openid-configuration", testClientID, "readwrite"))
			s.CreateBucket(t, "bucket-a")
			s.CreateBucket(t, "bucket-b")
			putObject(t, s.S3(t, s.RootCredentials()), "bucket-b", "root-object", "written by root")

			before := time.Now().Truncate(time.Second)
			out, err := assumeWithWebIdentity(t, s, s.RoleARN(), idp.sign(t, idp.claims()))
			if err != nil {
				t.Fatalf("AssumeRoleWithWebIdentity with %s token: %v", alg, err)
			}
			checkExpiration(t, out.Credentials, before, time.Now(), 900*time.Second)
			checkScope(t, s, out.Credentials)

			rejected := map[string]struct {
				role, token string
			}{
				"other role ARN": {openIDRoleARN("someone-else", Region), idp.sign(t, idp.claims())},
				"wrong audience": {s.RoleARN(), idp.sign(t, with(idp.claims(), "aud", "someone-else"))},
				"expired":        {s.RoleARN(), idp.sign(t, with(idp.claims(), "exp", time.Now().Add(-time.Minute).Unix()))},
				"no subject":     {s.RoleARN(), idp.sign(t, with(idp.claims(), "sub", nil))},
				"unknown key":    {s.RoleARN(), newIssuer(t, alg).sign(t, idp.claims())}, // same kid, other key
				// MinIO keys HS256 by the client id with the client secret,
				// which would be empty without the one Start sets.
				"HS256, empty key": {s.RoleARN(), signHS256(t, idp.claims(), testClientID, nil)},
			}
			for name, c := range rejected {
				if _, err := assumeWithWebIdentity(t, s, c.role, c.token); err == nil {
					t.Errorf("%s: AssumeRoleWithWebIdentity succeeded, want an error", name)
				}
			}

			// A fact the AWS issuer must not rely on MinIO for: it does not
			// compare iss with the discovery document's issuer. A role is
			// bound to the JWKS keys and the client id (aud/azp) only.
			if _, err := assumeWithWebIdentity(t, s, s.RoleARN(), idp.sign(t, with(idp.claims(), "iss", "https://elsewhere.example"))); err != nil {
				t.Errorf("token with a foreign iss: %v; MinIO now checks iss, update this fact and the AWS issuer's notes", err)
			}
		})
	}
}

func assumeWithWebIdentity(t *testing.T, s *Server, roleARN, token string) (*sts.AssumeRoleWithWebIdentityOutput, error) {
	t.Helper()
	return s.STS(t, aws.AnonymousCredentials{}).AssumeRoleWithWebIdentity(t.Context(), &sts.AssumeRoleWithWebIdentityInput{
		RoleArn:          aws.String(roleARN),
		RoleSessionName:  aws.String("web-identity-test"),
		WebIdentityToken: aws.String(token),
		DurationSeconds:  aws.Int32(900),
		Policy:           aws.String(bucketAOnly),
	})
}

// issuer is a minimal OpenID provider: a discovery document and a JWKS with
// one signing key, served over HTTP on loopback.
type issuer struct {
	*httptest.Server
	alg    string
	method jwt.SigningMethod
	key    crypto.Signer
}

const testKID = "test-key-1"

func newIssuer(t *testing.T, alg string) *issuer {
	t.Helper()
	idp := &issuer{alg: alg}
	var jwk map[string]string
	switch alg {
	case "ES256":
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		idp.key, idp.method = k, jwt.SigningMethodES256
		jwk = map[string]string{"kty": "EC", "crv": "P-256", "x": b64(k.X.FillBytes(make([]byte, 32))), "y": b64(k.Y.FillBytes(make([]byte, 32)))}
	case "RS256":
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			t.Fatal(err)
		}
		idp.key, idp.method = k, jwt.SigningMethodRS256
		jwk = map[string]string{"kty": "RSA", "n": b64(k.N.Bytes()), "e": b64(big.NewInt(int64(k.E)).Bytes())}
	default:
		t.Fatalf("newIssuer: unsupported alg %s", alg)
	}
	jwk["kid"], jwk["alg"], jwk["use"] = testKID, alg, "sig"

	mux := http.NewServeMux()
	idp.Server = httptest.NewServer(mux)
	t.Cleanup(idp.Close)
	mux.HandleFunc("GET /.well-known/openid-configuration", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, map[string]any{
			"issuer":                                idp.URL,
			"jwks_uri":                              idp.URL + "/jwks",
			"id_token_signing_alg_values_supported": []string{alg},
			"response_types_supported":              []string{"id_token"},
			"subject_types_supported":               []string{"public"},
		})
	})
	mux.HandleFunc("GET /jwks", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, map[string]any{"keys": []any{jwk}})
	})
	return idp
}

// claims returns valid ID token claims for testClientID.
func (idp *issuer) claims() jwt.MapClaims {
	now := time.Now()
	return jwt.MapClaims{
		"iss": idp.URL,
		"sub": "spiffe://example.org/ns/capi-system/sa/capa-controller-manager",
		"aud": testClientID,
		"iat": now.Unix(),
		"exp": now.Add(5 * time.Minute).Unix(),
	}
}

func (idp *issuer) sign(t *testing.T, claims jwt.MapClaims) string {
	t.Helper()
	tok := jwt.NewWithClaims(idp.method, claims)
	tok.Header["kid"] = testKID
	s, err := tok.SignedString(idp.key)
	if err != nil {
		t.Fatalf("sign %s token: %v", idp.alg, err)
	}
	return s
}

// signHS256 signs claims with HMAC-SHA256 under key, with header kid.
func signHS256(t *testing.T, claims jwt.MapClaims, kid string, key []byte) string {
	t.Helper()
	tok := jwt.NewWithClaims(jwt.SigningMethodHS256, claims)
	tok.Header["kid"] = kid
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatalf("sign HS256 token: %v", err)
	}
	return s
}

// with returns claims with name set to v, or removed when v is nil.
func with(claims jwt.MapClaims, name string, v any) jwt.MapClaims {
	if v == nil {
		delete(claims, name)
	} else {
		claims[name] = v
	}
	return claims
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }
