package broker

import (
	"context"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"

	"github.com/credbroker/credbroker/attest"
)

// What the API packages beside broker (broker/nodeauth) share with it: one
// error boundary, and one way to record a refusal at a bounded rate
// (Refusals.Refuse). They build their errors with Errorf and Wrapf and hand them to
// ToStatus, so that errors.go stays the one place an error becomes a status.

// Errorf returns an API error with code and a caller-safe message.
func Errorf(code codes.Code, format string, a ...any) error { return errorf(code, format, a...) }

// Wrapf returns an API error with code and a caller-safe message; cause is
// kept for logs and errors.Is but never reaches the caller.
func Wrapf(code codes.Code, cause error, format string, a ...any) error {
	return wrapf(code, cause, format, a...)
}

// ToStatus converts err to the gRPC status a caller sees (see toStatus).
func ToStatus(err error) error { return toStatus(err) }

// Clip bounds caller-chosen text copied into audit records and logs.
func Clip(s string) string { return clip(s) }

// AdminPrincipal names who is calling the admin API, for audit records: the
// admin SPIFFE ID over mTLS, or the local uid on the admin socket.
func AdminPrincipal(ctx context.Context) string {
	if c, ok := attest.CallerFrom(ctx); ok {
		return c.ID.String()
	}
	if p, ok := peer.FromContext(ctx); ok {
		if pc, ok := p.AuthInfo.(PeerCred); ok {
			return fmt.Sprintf("unix:uid=%d", pc.UID)
		}
	}
	return "unknown"
}
