package miniotest

import (
	"context"
	"crypto/sha1"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"

	"github.com/credbroker/credbroker/test/testproc"
)

// WithOpenID configures MinIO's OpenID identity provider, so that
// AssumeRoleWithWebIdentity accepts ID tokens from that issuer: configURL is
// the issuer's discovery document (…/.well-known/openid-configuration),
// clientID is the audience tokens must carry (aud, or azp), and rolePolicy is
// the MinIO policy (a canned one such as "readwrite", or one created on the
// server) that the resulting credentials get, before any session policy
// narrows them. Server.RoleARN returns the role to assume.
//
// MinIO fetches the discovery document and the JWKS while it starts, so the
// issuer must already be serving when Start is called.
func WithOpenID(configURL, clientID, rolePolicy string) Option {
	return func(o *options) {
		o.openID = &openIDConfig{configURL: configURL, clientID: clientID, rolePolicy: rolePolicy}
	}
}

type openIDConfig struct {
	configURL, clientID, rolePolicy string
	clientSecret                    string // random, set by Start
}

// RoleARN returns the ARN of the role MinIO created for the OpenID provider
// configured with WithOpenID, to pass as RoleArn to
// AssumeRoleWithWebIdentity. It is "" when the server has no OpenID provider.
func (s *Server) RoleARN() string { return s.roleARN }

// openIDRoleARN is the ARN MinIO gives the role of an OpenID provider that has
// a role policy: the resource id is the unpadded base64url SHA-1 of the client
// id (internal/config/identity/openid/openid.go, LookupConfig), and the
// account id is always empty.
func openIDRoleARN(clientID, region string) string {
	sum := sha1.Sum([]byte(clientID)) // not a security use: it must match MinIO
	return "arn:minio:iam:" + region + "::role/" + base64.RawURLEncoding.EncodeToString(sum[:])
}

// checkDiscovery fetches the discovery document at configURL as MinIO will,
// and checks that it names a JWKS, which MinIO requires.
func checkDiscovery(ctx context.Context, configURL string) error {
	ctx, cancel := context.WithTimeout(ctx, testproc.DefaultProbeTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, configURL, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", configURL, resp.Status)
	}
	var doc struct {
		JWKSURI string `json:"jwks_uri"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&doc); err != nil {
		return fmt.Errorf("GET %s: %w", configURL, err)
	}
	if doc.JWKSURI == "" {
		return fmt.Errorf("GET %s: discovery document has no jwks_uri", configURL)
	}
	return nil
}
