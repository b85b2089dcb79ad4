// Package issuers defines what the broker asks of a credential issuer. The
// implementations live in sub-packages (jwt, awssts, vault); the broker only
// depends on this interface.
package issuers

import (
	"context"
	"errors"
	"time"
)

// Kinds of credential.
const (
	KindToken = "token"
	KindAWS   = "aws"
)

// ErrUnavailable marks an upstream failure the caller may retry. Issuers wrap
// it; the broker maps it to codes.Unavailable without the upstream text.
var ErrUnavailable = errors.New("issuers: upstream unavailable")

// Request is one authorised issuance. Everything in it has already passed
// attestation, policy and limits.
type Request struct {
	// IssuanceID is the UUIDv7 naming this issuance in the audit trail.
	IssuanceID string
	// Subject is the caller's SPIFFE ID.
	Subject string
	// Profile is the profile name.
	Profile string
	// Cluster is "namespace/name", or empty when the credential is not scoped
	// to a workload cluster.
	Cluster string
	// Audience is the audience the credential is for (token issuers).
	Audience string
	// TTL is the granted lifetime, already clamped to the profile's maximum.
	TTL time.Duration
}

// AWSCredentials are temporary AWS credentials.
type AWSCredentials struct {
	AccessKeyID     string
	SecretAccessKey string
	SessionToken    string
}

// Credential is what an issuer minted.
type Credential struct {
	// Kind is KindToken or KindAWS.
	Kind string
	// Token is set for KindToken.
	Token string
	// TokenType is e.g. "JWT".
	TokenType string
	// AWS is set for KindAWS.
	AWS *AWSCredentials
	// ExpiresAt is when the credential stops working.
	ExpiresAt time.Time
	// UpstreamRef is a non-secret reference an operator can match upstream:
	// a token's jti, an AccessKeyId, a Vault lease id.
	UpstreamRef string
}

// Issuer mints credentials.
type Issuer interface {
	Issue(ctx context.Context, req Request) (Credential, error)
}
