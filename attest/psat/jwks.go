package psat

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
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

type jwk struct {
	Kty string `json:"kty"`
	Kid string `json:"kid"`
	Use string `json:"use"`
	Alg string `json:"alg"`
	N   string `json:"n"`
	E   string `json:"e"`
	Crv string `json:"crv"`
	X   string `json:"x"`
	Y   string `json:"y"`
}

// parseJWKS returns the signing keys of a JWKS by kid. Keys that cannot sign
// tokens we accept (no kid, "use" other than "sig", symmetric or unsupported
// key types) are skipped; a JWKS with no usable key, a malformed key or a
// duplicate kid is an error.
func parseJWKS(data []byte) (map[string]publicKey, error) {
	var set struct {
		Keys []jwk `json:"keys"`
	}
	if err := json.Unmarshal(data, &set); err != nil {
		return nil, errors.New("psat: JWKS is not valid JSON")
	}
	keys := make(map[string]publicKey, len(set.Keys))
	for i, k := range set.Keys {
		if k.Kid == "" || (k.Use != "" && k.Use != "sig") {
			continue
		}
		var pub any
		var err error
		switch k.Kty {
		case "RSA":
			pub, err = rsaKey(k)
		case "EC":
			pub, err = ecKey(k)
		default:
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("psat: JWKS key %d: %w", i, err)
		}
		if pub == nil {
			continue
		}
		if _, dup := keys[k.Kid]; dup {
			return nil, fmt.Errorf("psat: JWKS has more than one key with kid %q", k.Kid)
		}
		keys[k.Kid] = publicKey{key: pub, alg: k.Alg}
	}
	if len(keys) == 0 {
		return nil, errors.New("psat: JWKS has no usable signing key")
	}
	return keys, nil
}

func rsaKey(k jwk) (*rsa.PublicKey, error) {
	n, err := base64.RawURLEncoding.DecodeString(k.N)
	if err != nil || len(n) == 0 {
		return nil, errors.New("RSA modulus is not base64url")
	}
	e, err := base64.RawURLEncoding.DecodeString(k.E)
	if err != nil || len(e) == 0 || len(e) > 4 {
		return nil, errors.New("RSA exponent is not a base64url 32-bit integer")
	}
	exp := int(new(big.Int).SetBytes(e).Int64())
	if exp < 3 || exp%2 == 0 {
		return nil, errors.New("RSA exponent is invalid")
	}
	pub := &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: exp}
	if pub.N.BitLen() < minRSABits {
		return nil, fmt.Errorf("RSA key is shorter than %d bits", minRSABits)
	}
	return pub, nil
}

// ecKey returns nil, nil for curves whose algorithm we do not accept (P-521).
func ecKey(k jwk) (*ecdsa.PublicKey, error) {
	var curve elliptic.Curve
	switch k.Crv {
	case "P-256":
		curve = elliptic.P256()
	case "P-384":
		curve = elliptic.P384()
	default:
		return nil, nil
	}
	size := (curve.Params().BitSize + 7) / 8
	x, errX := base64.RawURLEncoding.DecodeString(k.X)
	y, errY := base64.RawURLEncoding.DecodeString(k.Y)
	if errX != nil || errY != nil || len(x) != size || len(y) != size {
		return nil, errors.New("EC coordinates are not base64url of the curve's size")
	}
	point := append(append([]byte{4}, x...), y...)
	pub, err := ecdsa.ParseUncompressedPublicKey(curve, point)
	if err != nil {
		return nil, errors.New("EC point is not on the curve")
	}
	return pub, nil
}
