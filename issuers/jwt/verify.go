package jwt

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"

	jwtlib "github.com/golang-jwt/jwt/v5"
)

// ParseJWKS returns the ES256 (EC P-256) keys of a JWKS document by key id.
// Keys of other types are skipped.
func ParseJWKS(doc []byte) (map[string]*ecdsa.PublicKey, error) {
	var set struct {
		Keys []jwkJSON `json:"keys"`
	}
	if err := json.Unmarshal(doc, &set); err != nil {
		return nil, fmt.Errorf("jwt: JWKS: %w", err)
	}
	keys := make(map[string]*ecdsa.PublicKey)
	for _, k := range set.Keys {
		if k.Kty != "EC" || k.Crv != "P-256" || k.Kid == "" {
			continue
		}
		x, errX := base64.RawURLEncoding.DecodeString(k.X)
		y, errY := base64.RawURLEncoding.DecodeString(k.Y)
		if errX != nil || errY != nil || len(x) != 32 || len(y) != 32 {
			return nil, fmt.Errorf("jwt: JWKS: key %q: bad coordinates", k.Kid)
		}
		pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), append(append([]byte{4}, x...), y...))
		if err != nil {
			return nil, fmt.Errorf("jwt: JWKS: key %q: %w", k.Kid, err)
		}
		keys[k.Kid] = pub
	}
	return keys, nil
}

// Verify checks token's ES256 signature against the key its header names in
// jwks (a JWKS document, as served by Handler) and validates its registered
// claims (exp, nbf, iat, and whatever opts require, e.g. jwtlib.WithIssuer,
// jwtlib.WithAudience). It is what a relying party does with this issuer's
// tokens.
func Verify(jwks []byte, token string, opts ...jwtlib.ParserOption) (jwtlib.MapClaims, error) {
	keys, err := ParseJWKS(jwks)
	if err != nil {
		return nil, err
	}
	claims := jwtlib.MapClaims{}
	opts = append([]jwtlib.ParserOption{jwtlib.WithValidMethods([]string{"ES256"}), jwtlib.WithExpirationRequired()}, opts...)
	_, err = jwtlib.ParseWithClaims(token, claims, func(t *jwtlib.Token) (any, error) {
		kid, _ := t.Header["kid"].(string)
		key, ok := keys[kid]
		if !ok {
			return nil, fmt.Errorf("key id %q is not in the JWKS", kid)
		}
		return key, nil
	}, opts...)
	if err != nil {
		return nil, errors.Join(errors.New("jwt: token does not verify"), err)
	}
	return claims, nil
}
