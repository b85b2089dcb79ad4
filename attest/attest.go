// Package attest answers "who is calling?". Verifiers turn evidence (an
// X.509-SVID presented over mTLS, a JWT-SVID in request metadata, node
// attestation evidence) into a Caller: the SPIFFE ID plus the constraints
// that issuance must then enforce. Deciding what the caller may get is the
// broker's job, not the verifier's.
package attest

import (
	"context"
	"errors"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Attestation methods recorded in audit records.
const (
	MethodX509SVID = "x509-svid"
	MethodJWTSVID  = "jwt-svid"
	// MethodAdmin marks an operator action through the admin API; the
	// record's caller is the admin principal.
	MethodAdmin = "admin"
)

// ErrNoEvidence is returned by an Authenticator when the request carries no
// evidence of the kind it verifies, so that another one may be tried.
var ErrNoEvidence = errors.New("attest: no identity evidence in request")

// Caller is a verified identity.
type Caller struct {
	// ID is the caller's verified SPIFFE ID.
	ID spiffeid.ID
	// Method is how the identity was proved, e.g. MethodX509SVID.
	Method string
	// ExpiresAt is when the presented evidence stops being valid.
	ExpiresAt time.Time
	// Constraints narrow what the caller may be issued, whatever policy says.
	Constraints Constraints
}

// Constraints come from attestation and bind issuance. A zero value binds
// nothing.
type Constraints struct {
	// Cluster, when set ("namespace/name"), is the only cluster the caller may
	// receive credentials for.
	Cluster string
	// Node names the node the identity belongs to, if any.
	Node string
}

// Authenticator verifies the caller of the request carried in ctx (peer TLS
// state, metadata). It returns ErrNoEvidence when the request carries nothing
// it can check, and another error when the evidence is present but invalid.
type Authenticator interface {
	Authenticate(ctx context.Context) (Caller, error)
}

type callerKey struct{}

// WithCaller returns a context carrying the verified caller.
func WithCaller(ctx context.Context, c Caller) context.Context {
	return context.WithValue(ctx, callerKey{}, c)
}

// CallerFrom returns the verified caller stored by WithCaller.
func CallerFrom(ctx context.Context) (Caller, bool) {
	c, ok := ctx.Value(callerKey{}).(Caller)
	return c, ok
}
