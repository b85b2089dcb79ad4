package jwt

import (
	"crypto/ecdsa"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/go-jose/go-jose/v4"
	jwtlib "github.com/golang-jwt/jwt/v5"
)

// ParseJWKS returns the ES256 (EC P-256) keys of a JWKS document by key id,
// decoded and checked by go-jose (coordinate sizes, point on the curve).
// Keys of other types, and keys without a kid, are skipped; a malformed
// P-256 key is an error.
func ParseJWKS(doc []byte) (map[string]*ecdsa.PublicKey, error) {
	var set struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(doc, &set); err != nil {
		return nil, fmt.Errorf("jwt: JWKS: %w", err)
	}
	keys := make(map[string]*ecdsa.PublicKey)
	for i, raw := range set.Keys {
		// Decided before go-jose sees the key, which refuses kinds that
		// are only skipped here.
		var head struct {
			Kty string `json:"kty"`
			Crv string `json:"crv"`
			Kid string `json:"kid"`
		}
		if err := json.Unmarshal(raw, &head); err != nil {
			return nil, fmt.Errorf("jwt: JWKS: key %d is not a JSON object", i)
		}
		if head.Kty != "EC" || head.Crv != "P-256" || head.Kid == "" {
			continue
		}
		var jwk jose.JSONWebKey
		if err := jwk.UnmarshalJSON(raw); err != nil {
			return nil, fmt.Errorf("jwt: JWKS: key %q: %w", head.Kid, err)
		}
		pub, ok := jwk.Public().Key.(*ecdsa.PublicKey)
		if !ok {
			return nil, fmt.Errorf("jwt: JWKS: key %q is not an EC public key", head.Kid)
		}
		keys[jwk.KeyID] = pub
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
