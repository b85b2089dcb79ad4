package psat

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/go-jose/go-jose/v4"
)

// minRSABits is the smallest RSA modulus we accept in a JWKS.
const minRSABits = 2048

// publicKey is one usable signing key from a JWKS.
type publicKey struct {
	// key is *rsa.PublicKey or *ecdsa.PublicKey (P-256 or P-384), never a
	// symmetric key: a JWKS "oct" key would let an attacker who knows it
	// forge tokens, and a []byte key is what HS* confusion needs.
	key any
	// alg is the JWK's "alg", if it pins one.
	alg string
}

// allows reports whether a token signed with alg may be verified with k.
func (k publicKey) allows(alg string) bool {
	if k.alg != "" && k.alg != alg {
		return false
	}
	switch pub := k.key.(type) {
	case *rsa.PublicKey:
		return alg == "RS256" || alg == "PS256"
	case *ecdsa.PublicKey:
		switch alg {
		case "ES256":
			return pub.Curve == elliptic.P256()
		case "ES384":
			return pub.Curve == elliptic.P384()
		}
	}
	return false
}

// parseJWKS returns the signing keys of a JWKS by kid. The key material is
// decoded and checked by go-jose (coordinate sizes, points on the curve,
// certificate chains matching their key); on top of that, keys that cannot
// sign tokens we accept (no kid, "use" other than "sig", symmetric or
// unsupported key types and curves) are skipped, and a JWKS with no usable
// key, a malformed or weak key, or a duplicate kid is an error.
func parseJWKS(data []byte) (map[string]publicKey, error) {
	var set struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(data, &set); err != nil {
		return nil, errors.New("psat: JWKS is not valid JSON")
	}
	keys := make(map[string]publicKey, len(set.Keys))
	for i, raw := range set.Keys {
		// Decided before go-jose sees the key: it refuses kinds we only
		// skip (an unknown kty, a malformed key marked for encryption).
		var head struct {
			Kty string `json:"kty"`
			Kid string `json:"kid"`
			Use string `json:"use"`
			Crv string `json:"crv"`
		}
		if err := json.Unmarshal(raw, &head); err != nil {
			return nil, fmt.Errorf("psat: JWKS key %d is not a JSON object", i)
		}
		usable := head.Kty == "RSA" || (head.Kty == "EC" && (head.Crv == "P-256" || head.Crv == "P-384"))
		if head.Kid == "" || (head.Use != "" && head.Use != "sig") || !usable {
			continue
		}
		var jwk jose.JSONWebKey
		if err := jwk.UnmarshalJSON(raw); err != nil {
			return nil, fmt.Errorf("psat: JWKS key %d: %w", i, err)
		}
		// A JWKS that carries a private key is not ours to use as one.
		pub := jwk.Public()
		if !pub.Valid() {
			return nil, fmt.Errorf("psat: JWKS key %d is not a valid public key", i)
		}
		if k, ok := pub.Key.(*rsa.PublicKey); ok {
			if err := checkRSA(k); err != nil {
				return nil, fmt.Errorf("psat: JWKS key %d: %w", i, err)
			}
		}
		if _, dup := keys[jwk.KeyID]; dup {
			return nil, fmt.Errorf("psat: JWKS has more than one key with kid %q", jwk.KeyID)
		}
		keys[jwk.KeyID] = publicKey{key: pub.Key, alg: jwk.Algorithm}
	}
	if len(keys) == 0 {
		return nil, errors.New("psat: JWKS has no usable signing key")
	}
	return keys, nil
}

// checkRSA refuses weak RSA keys, which go-jose decodes as published.
func checkRSA(k *rsa.PublicKey) error {
	if k.E < 3 || k.E%2 == 0 {
		return errors.New("RSA exponent is invalid")
	}
	if k.N.BitLen() < minRSABits {
		return fmt.Errorf("RSA key is shorter than %d bits", minRSABits)
	}
	return nil
}
