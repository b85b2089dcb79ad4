package jwt

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
)

// Paths of the documents Handler serves, relative to the issuer URL.
const (
	DiscoveryPath = "/.well-known/openid-configuration"
	JWKSPath      = "/.well-known/jwks.json"
)

// cacheControl lets relying parties cache the documents briefly; short enough
// that a key rotation propagates within minutes.
const cacheControl = "public, max-age=300"

type discoveryDoc struct {
	Issuer                           string   `json:"issuer"`
	JWKSURI                          string   `json:"jwks_uri"`
	IDTokenSigningAlgValuesSupported []string `json:"id_token_signing_alg_values_supported"`
	ResponseTypesSupported           []string `json:"response_types_supported"`
	SubjectTypesSupported            []string `json:"subject_types_supported"`
	ClaimsSupported                  []string `json:"claims_supported"`
	// RevokedJTIsURI is the revoked-token list (RevokedPath), a credbroker
	// extension under DiscoveryRevokedKey.
	RevokedJTIsURI string `json:"credbroker_revoked_jtis_uri"`
}

func marshalDiscovery(issuerURL string) ([]byte, error) {
	b, err := json.Marshal(discoveryDoc{
		Issuer:                           issuerURL,
		JWKSURI:                          issuerURL + JWKSPath,
		IDTokenSigningAlgValuesSupported: []string{"ES256"},
		ResponseTypesSupported:           []string{"id_token"},
		SubjectTypesSupported:            []string{"public"},
		ClaimsSupported:                  []string{"iss", "sub", "aud", "iat", "nbf", "exp", "jti", "profile", "cluster"},
		RevokedJTIsURI:                   issuerURL + RevokedPath,
	})
	if err != nil {
		return nil, fmt.Errorf("jwt: encoding discovery document: %w", err)
	}
	return b, nil
}

// Handler serves GET (and HEAD) of the OIDC discovery document, the JWKS and
// the revoked-token list at the issuer URL's path + DiscoveryPath, + JWKSPath
// and + RevokedPath; so for an issuer
// URL with a path ("https://host/oidc") it answers "/oidc/.well-known/...".
// Other methods get 405, other paths 404.
func (i *Issuer) Handler() http.Handler {
	prefix := ""
	if u, err := url.Parse(i.issuerURL); err == nil { // validated in New
		prefix = u.EscapedPath()
	}
	mux := http.NewServeMux()
	mux.Handle("GET "+prefix+DiscoveryPath, jsonDoc(func() []byte { return i.discovery }))
	// The JWKS changes as replicas publish and rotate keys (Maintain).
	mux.Handle("GET "+prefix+JWKSPath, jsonDoc(i.JWKS))
	mux.Handle("GET "+prefix+RevokedPath, i.revokedHandler())
	return mux
}

// jsonDoc serves the document body returns at each request.
func jsonDoc(body func() []byte) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		h := w.Header()
		h.Set("Content-Type", "application/json")
		h.Set("Cache-Control", cacheControl)
		_, _ = w.Write(body())
	})
}
