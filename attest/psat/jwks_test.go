package psat

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/base64"
	"strings"
	"testing"
)

// TestJWKSRefusesWhatGoJoseRefuses: malformed key material is an error
// naming the key, and a JWKS that publishes a private key yields only its
// public half.
func TestJWKSRefusesWhatGoJoseRefuses(t *testing.T) {
	for name, doc := range map[string]string{
		"short EC coordinate": `{"keys":[{"kty":"EC","kid":"k","crv":"P-256","x":"AA","y":"AA"}]}`,
		"RSA without e":       `{"keys":[{"kty":"RSA","kid":"k","n":"` + strings.Repeat("A", 342) + `"}]}`,
		"not base64url":       `{"keys":[{"kty":"EC","kid":"k","crv":"P-256","x":"!!","y":"!!"}]}`,
		"key not an object":   `{"keys":["EC"]}`,
	} {
		if _, err := parseJWKS([]byte(doc)); err == nil || !strings.HasPrefix(err.Error(), "psat: JWKS key 0") {
			t.Errorf("%s: err = %v, want psat: JWKS key 0 ...", name, err)
		}
	}

	priv := newEC(t, "p", elliptic.P256())
	doc := jwksOf(t, priv)
	d, err := priv.key.(*ecdsa.PrivateKey).Bytes()
	if err != nil {
		t.Fatal(err)
	}
	withD := strings.Replace(string(doc), `"kid"`, `"d":"`+base64.RawURLEncoding.EncodeToString(d)+`","kid"`, 1)
	keys, err := parseJWKS([]byte(withD))
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := keys["p"].key.(*ecdsa.PublicKey); !ok {
		t.Fatalf("key = %T, want *ecdsa.PublicKey", keys["p"].key)
	}
}

// FuzzParseJWKS: any document is refused or yields only the public keys
// tokens may be verified with.
func FuzzParseJWKS(f *testing.F) {
	f.Add([]byte(`{"keys":[{"kty":"EC","kid":"k","crv":"P-256","x":"AA","y":"AA"}]}`))
	f.Add([]byte(`{"keys":[{"kty":"oct","kid":"h","k":"c2VjcmV0"},{"kty":"OKP","kid":"ed","crv":"Ed25519","x":"AAAA"}]}`))
	f.Add([]byte(`{"keys":[{"kty":"RSA","kid":"r","n":"AQAB","e":"AQAB"}]}`))
	f.Add([]byte(`{"keys":[{"kty":"EC","kid":"k","crv":"P-521","x":"AA","y":"AA","x5c":["AAAA"]}]}`))
	f.Add([]byte(`{"keys":null}`))
	f.Fuzz(func(t *testing.T, doc []byte) {
		keys, err := parseJWKS(doc)
		if err != nil {
			return
		}
		for kid, k := range keys {
			switch pub := k.key.(type) {
			case *rsa.PublicKey:
				if pub.N.BitLen() < minRSABits || pub.E < 3 || pub.E%2 == 0 {
					t.Fatalf("kid %q: weak RSA key accepted", kid)
				}
			case *ecdsa.PublicKey:
				if pub.Curve != elliptic.P256() && pub.Curve != elliptic.P384() {
					t.Fatalf("kid %q: curve %s accepted", kid, pub.Curve.Params().Name)
				}
			default:
				t.Fatalf("kid %q: key of type %T accepted", kid, k.key)
			}
		}
	})
}
