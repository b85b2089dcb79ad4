package jwt

import (
	"crypto/ecdsa"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
)

// ecJWK holds the required members of a P-256 public JWK, base64url-encoded.
type ecJWK struct {
	x, y string
}

func publicJWK(pub *ecdsa.PublicKey) (ecJWK, error) {
	// Uncompressed point: 0x04 || X || Y, each coordinate left-padded to 32
	// bytes as RFC 7518 section 6.2.1.2 requires.
	b, err := pub.Bytes()
	if err != nil || len(b) != 65 {
		return ecJWK{}, fmt.Errorf("jwt: encoding public key: not a P-256 point")
	}
	enc := base64.RawURLEncoding
	return ecJWK{x: enc.EncodeToString(b[1:33]), y: enc.EncodeToString(b[33:])}, nil
}

// thumbprint is the RFC 7638 thumbprint: SHA-256 over the required members
// in lexicographic order, with no whitespace.
func (k ecJWK) thumbprint() string {
	canonical := `{"crv":"P-256","kty":"EC","x":"` + k.x + `","y":"` + k.y + `"}`
	sum := sha256.Sum256([]byte(canonical))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

type jwkJSON struct {
	Kty string `json:"kty"`
	Crv string `json:"crv"`
	X   string `json:"x"`
	Y   string `json:"y"`
	Kid string `json:"kid"`
	Use string `json:"use"`
	Alg string `json:"alg"`
}

// json returns the JWK of k, named kid, as a JWKS lists it.
func (k ecJWK) json(kid string) jwkJSON {
	return jwkJSON{Kty: "EC", Crv: "P-256", X: k.x, Y: k.y, Kid: kid, Use: "sig", Alg: "ES256"}
}
