package broker

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc/peer"

	"github.com/credbroker/credbroker/attest"
	"github.com/credbroker/credbroker/broker/state"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// What the API packages beside broker (broker/nodeauth) share with it: one
// error boundary, and one way to record a refusal at a bounded rate
// (Refusals.Refuse). They build their errors with Errorf and Wrapf and hand them to
// ToStatus, so that errors.go stays the one place an error becomes a status.

// Errorf returns an API error with reason (which fixes its gRPC code) and a
// caller-safe message.
func Errorf(reason credbrokerv1.ErrorReason, format string, a ...any) error {
	return errorf(reason, format, a...)
}

// Wrapf returns an API error with reason and a caller-safe message; cause is
// kept for logs and errors.Is but never reaches the caller.
func Wrapf(reason credbrokerv1.ErrorReason, cause error, format string, a ...any) error {
	return wrapf(reason, cause, format, a...)
}

// WithMetadata sets an ErrorInfo metadata value on an API error (others are
// returned unchanged) and returns it.
func WithMetadata(err error, key, value string) error {
	var ae *apiError
	if errors.As(err, &ae) {
		ae.with(key, value)
	}
	return err
}

// Invalid returns INVALID_REQUEST naming the request field at fault.
func Invalid(field, format string, a ...any) error { return invalid(field, format, a...) }

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

// RevokedError is the refusal of a request revocation r covers.
func RevokedError(r state.Revocation) error { return revokedError(r) }
