// Package issuers defines what the broker asks of a credential issuer. The
// implementations live in sub-packages (jwt, awssts, vault); the broker only
// depends on this interface.
package issuers

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Kinds of credential.
const (
	KindToken  = "token"
	KindAWS    = "aws"
	KindSecret = "secret"
)

// ErrUnavailable marks an upstream failure the caller may retry. Issuers wrap
// it; the broker maps it to codes.Unavailable without the upstream text.
var ErrUnavailable = errors.New("issuers: upstream unavailable")

// Kinds of issuer failure, for Error.Kind. ErrUnavailable is one too.
var (
	// ErrRejected: the upstream refused this request (e.g. AWS AccessDenied).
	ErrRejected = errors.New("issuers: upstream refused the request")
	// ErrMisconfigured: the upstream found the request invalid, which means
	// the broker's configuration is wrong (e.g. a malformed role ARN).
	ErrMisconfigured = errors.New("issuers: upstream rejected the request as invalid")
	// ErrThrottled: the upstream rate-limits the broker (e.g. Vault 429);
	// the caller may retry after Error.RetryAfter.
	ErrThrottled = errors.New("issuers: upstream rate limit")
)

// Error is an issuer failure the broker can explain to its caller without
// repeating upstream text: Kind says what happened, Code is the upstream's
// error code (e.g. "Throttling"), safe to show. Err keeps the full upstream
// error for the broker's log.
type Error struct {
	Kind       error
	Code       string
	RetryAfter time.Duration
	Err        error
}

func (e *Error) Error() string {
	if e.Err == nil {
		return fmt.Sprintf("%v (%s)", e.Kind, e.Code)
	}
	return fmt.Sprintf("%v (%s): %v", e.Kind, e.Code, e.Err)
}

// Unwrap lets errors.Is match both the kind and the upstream cause.
func (e *Error) Unwrap() []error { return []error{e.Kind, e.Err} }

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
	// Secret is the JSON object of a KindSecret credential.
	Secret []byte
	// ExpiresAt is when the credential stops working.
	ExpiresAt time.Time
	// UpstreamRef is a non-secret reference an operator can match upstream:
	// a token's jti, an AccessKeyId, a Vault lease id.
	UpstreamRef string
	// SourceIdentity is the identity the upstream records for the session
	// (AWS SourceIdentity), when there is one.
	SourceIdentity string
	// Reused is set when the credential was minted for an earlier request
	// and handed out again (a cache hit, or a request that joined one
	// upstream call in flight).
	Reused bool
	// OriginIssuanceID is the issuance the credential was minted for: the
	// request's own, or an earlier one's when Reused. A revocation of that
	// issuance covers the credential wherever it is handed out.
	OriginIssuanceID string
}

// Held is a credential an issuer keeps to hand out again, as a revocation
// sees it: the issuance it was minted for, its subject and its cluster.
type Held struct {
	IssuanceID, Subject, Cluster string
	// UpstreamRef is the credential's non-secret upstream reference.
	UpstreamRef string
}

// Forgetter is implemented by an issuer that hands a credential out again
// (reuse): Forget drops every credential it keeps for which covered reports
// true, and keeps none being minted when it is called, so that a revoked
// credential is never handed out again. It returns how many it dropped.
type Forgetter interface {
	Forget(covered func(Held) bool) int
}

// UpstreamRevoker is implemented by an issuer whose credentials can be
// revoked one by one where they are honoured (Vault leases and tokens):
// Revoke takes back the credential a Credential.UpstreamRef names, so that
// a broker-side revocation also stops a credential already handed out.
type UpstreamRevoker interface {
	Revoke(ctx context.Context, ref string) error
}

// Preview is what an issuer would send upstream for a request, without
// sending it; every field is safe to show an admin.
type Preview struct {
	// Target is what would be assumed, read or created (an AWS role ARN).
	Target string
	// SessionPolicy is the AWS session policy exactly as it would be sent;
	// empty for none.
	SessionPolicy string
	// Details are the other parameters (SourceIdentity, session tags), by
	// name.
	Details map[string]string
}

// Previewer is implemented by an issuer that can say what it would send
// upstream for a request (policy explain). Preview must compute it with the
// code Issue uses, and must not call upstream.
type Previewer interface {
	Preview(req Request) (Preview, error)
}

// Effect says whether an issuer's Issue acts outside the broker process. It
// decides how the broker records an issuance: the audit trail must hold
// every credential any client received, and every upstream effect the
// broker caused even if it died before answering.
type Effect int

const (
	// EffectUpstream: Issue creates something outside the broker (an STS
	// session, a Vault lease or token) that exists whether or not the broker
	// lives to hand it out. The broker makes an intent record (with the
	// quota it spends) durable before calling Issue and a result record
	// after. It is the zero Effect, so an issuer that does not know is
	// treated this way.
	EffectUpstream Effect = iota
	// EffectNone: Issue only computes inside the broker process (signs with
	// a local key), and every identifier of the credential is fixed before
	// Issue is called (a token's jti is Request.IssuanceID). A credential
	// that is never handed out exists nowhere, so the broker writes one
	// record, the issued one (with the quota it spends), after Issue and
	// before the response, and discards the credential if that record cannot
	// be written.
	EffectNone
)

// Budget is what an issuer draws from before each upstream call it makes
// for a request: not for a credential it hands out again (a reused one
// makes no call). Take returns nil when the call may go ahead, or the
// refusal, which the issuer returns as it is (wrapped): the broker owns the
// budget and maps its refusal itself (RATE_LIMITED with RetryInfo). A nil
// Budget in an issuer's configuration means no budget.
type Budget interface {
	Take(ctx context.Context) error
}

// Reuser is implemented by an issuer that hands a credential out again
// (Credential.Reused): Reuses reports whether Issue would, at this moment,
// hand out a credential it holds for req with no upstream call. It is a
// hint (the credential may be renewed before Issue runs) and must not call
// upstream.
type Reuser interface {
	Reuses(req Request) bool
}

// Issuer mints credentials.
type Issuer interface {
	Issue(ctx context.Context, req Request) (Credential, error)
	// Effect says whether Issue acts outside the broker process. It must
	// not change over the issuer's life.
	Effect() Effect
}

// KeyRing is implemented by an issuer that signs with keys of its own (the
// local JWT issuer), so that an admin can list them and, suspecting one
// leaked, replace it at once instead of waiting for its rotation.
type KeyRing interface {
	// SigningKeys lists the keys this replica signs with or keeps
	// published, and the other replicas' keys it serves in its JWKS.
	SigningKeys(ctx context.Context) ([]SigningKey, error)
	// RotateSigningKey makes a new key sign from now on. record is called
	// with the new and the previous kid once the new key is published and
	// before it signs; an error from record leaves the previous key
	// signing. With retirePrevious the previous key is withdrawn from the
	// JWKS at once, so tokens it signed stop verifying; without, it stays
	// published until its last token has expired. An error with a
	// KeyRotation whose KID is set means the new key signs and the error is
	// what could not be tidied up after.
	RotateSigningKey(ctx context.Context, retirePrevious bool, record func(newKID, previousKID string) error) (KeyRotation, error)
}

// ErrTooManyKeys is returned (wrapped) by RotateSigningKey when keeping
// the previous key published would pass the ring's bound on retired keys:
// rotate with retirePrevious, or once one has left the JWKS.
var ErrTooManyKeys = errors.New("too many retired signing keys published")

// KeyState is where a signing key is in its life.
type KeyState int

// Key states.
const (
	// KeyActive: the replica signs with the key.
	KeyActive KeyState = iota + 1
	// KeyPublished: in the JWKS, not signing on this replica (the next key
	// of a rotation, or another replica's key).
	KeyPublished
	// KeyRetired: signs no more; published until its last token has
	// expired.
	KeyRetired
)

// SigningKey describes one signing key; never its private half.
type SigningKey struct {
	// KID names the key in tokens' headers and the JWKS.
	KID string
	// Replica is the replica holding its private half.
	Replica string
	// Alg is the JWS algorithm, e.g. ES256.
	Alg   string
	State KeyState
	// Created is when the key was made (zero: not known here, another
	// replica's key).
	Created time.Time
	// NotAfter is when the key leaves the JWKS (zero: this replica's active
	// or next key, whose publication it renews).
	NotAfter time.Time
}

// KeyRotation is what RotateSigningKey did.
type KeyRotation struct {
	// KID is the new key's, PreviousKID the key it replaced.
	KID, PreviousKID string
	// PreviousNotAfter is when the previous key leaves the JWKS: at once
	// with retirePrevious, else after its last token has expired.
	PreviousNotAfter time.Time
}
