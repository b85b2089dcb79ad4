package psat_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/golang-jwt/jwt/v5"

	"github.com/credbroker/credbroker/attest"
	"github.com/credbroker/credbroker/attest/psat"
)

const (
	fuzzCluster  = "team-a/alpha"
	fuzzIssuer   = "https://oidc.example.com/team-a-alpha"
	fuzzAudience = "credbroker"
	fuzzKID      = "sa-key-1"
	fuzzNode     = "ip-10-0-1-23.ec2.internal"
)

// fuzzNow is the verifier's clock: the committed seeds stay valid.
var fuzzNow = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

// fuzzKey is the cluster's service-account signing key, derived from a
// fixed label so that the committed seeds verify in every run.
func fuzzKey(tb testing.TB) *ecdsa.PrivateKey {
	d := sha256.Sum256([]byte("credbroker attest/psat fuzz key"))
	k, err := ecdsa.ParseRawPrivateKey(elliptic.P256(), d[:])
	if err != nil {
		tb.Fatal(err)
	}
	return k
}

func fuzzJWKS(tb testing.TB, k *ecdsa.PrivateKey) []byte {
	raw, err := k.PublicKey.Bytes()
	if err != nil {
		tb.Fatal(err)
	}
	b64 := base64.RawURLEncoding.EncodeToString
	doc, err := json.Marshal(map[string]any{"keys": []map[string]string{{
		"kty": "EC", "crv": "P-256", "kid": fuzzKID, "use": "sig", "x": b64(raw[1:33]), "y": b64(raw[33:]),
	}}})
	if err != nil {
		tb.Fatal(err)
	}
	return doc
}

// fuzzPodClaims are a projected token's claims as kube-apiserver mints them.
func fuzzPodClaims(node string) jwt.MapClaims {
	return jwt.MapClaims{
		"iss": fuzzIssuer, "aud": []string{fuzzAudience},
		"sub": "system:serviceaccount:credbroker-system:node-agent",
		"iat": fuzzNow.Add(-time.Minute).Unix(), "nbf": fuzzNow.Add(-time.Minute).Unix(), "exp": fuzzNow.Add(9 * time.Minute).Unix(),
		"kubernetes.io": map[string]any{
			"namespace":      "credbroker-system",
			"serviceaccount": map[string]any{"name": "node-agent", "uid": "sa-uid-1"},
			"pod":            map[string]any{"name": "node-agent-x7k2p", "uid": "pod-uid-1"},
			"node":           map[string]any{"name": node, "uid": "node-uid-1"},
		},
	}
}

// FuzzVerify: whatever token and cluster a node presents, the verifier
// either returns the node the cluster's key signed a token for, bound to
// the cluster asked for, or refuses with a "psat: " node rejection that is
// valid UTF-8 and does not echo the token.
func FuzzVerify(f *testing.F) {
	key := fuzzKey(f)
	sign := func(method jwt.SigningMethod, k any, claims jwt.MapClaims) string {
		tok := jwt.NewWithClaims(method, claims)
		tok.Header["kid"] = fuzzKID
		s, err := tok.SignedString(k)
		if err != nil {
			f.Fatal(err)
		}
		return s
	}
	valid := sign(jwt.SigningMethodES256, key, fuzzPodClaims(fuzzNode))
	f.Add(fuzzCluster, valid)
	f.Add("team-b/beta", valid)
	long := fuzzPodClaims(fuzzNode)
	long["exp"] = fuzzNow.Add(48 * time.Hour).Unix()
	f.Add(fuzzCluster, sign(jwt.SigningMethodES256, key, long))
	f.Add(fuzzCluster, sign(jwt.SigningMethodES256, key, fuzzPodClaims("Not_A_Node")))
	f.Add(fuzzCluster, sign(jwt.SigningMethodHS256, fuzzJWKS(f, key), fuzzPodClaims(fuzzNode)))
	f.Add(fuzzCluster, sign(jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, fuzzPodClaims(fuzzNode)))
	f.Add(fuzzCluster, "")

	v, err := psat.New(map[string]psat.ClusterConfig{fuzzCluster: {
		Issuer: fuzzIssuer, Audience: fuzzAudience, JWKS: fuzzJWKS(f, key),
		ServiceAccounts: []string{"credbroker-system:node-agent"},
	}}, psat.WithClock(func() time.Time { return fuzzNow }))
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, cluster, token string) {
		nc, err := v.Verify(context.Background(), cluster, token)
		if err != nil {
			msg := err.Error()
			if !errors.Is(err, attest.ErrNodeRejected) || !strings.HasPrefix(msg, "psat: ") || !utf8.ValidString(msg) {
				t.Fatalf("refusal %q is not a clean psat node rejection", msg)
			}
			if len(token) >= 16 && strings.Contains(msg, token) {
				t.Fatalf("refusal echoes the token: %q", msg)
			}
			return
		}
		if nc.Cluster != cluster || cluster != fuzzCluster || nc.Method != attest.MethodK8sPSAT {
			t.Fatalf("token presented for cluster %q accepted as %+v", cluster, nc)
		}
		if nc.Node != fuzzNode {
			t.Fatalf("accepted node %q, for which the cluster's key signed no token", nc.Node)
		}
	})
}
