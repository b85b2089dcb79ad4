package broker

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"

	"github.com/credbroker/credbroker/attest"
)

// What the API packages beside broker (broker/nodeauth) share with it: one
// error boundary, one way to record a refusal, one pacing of unauthenticated
// attempts. They build their errors with Errorf and Wrapf and hand them to
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

// UnauthRecorder paces the audit records of refused attempts by callers
// with no identity, per source address (see unauthRecorder): anyone who can
// reach the port can make them.
type UnauthRecorder struct{ r *unauthRecorder }

// NewUnauthRecorder returns an UnauthRecorder on the clock now.
func NewUnauthRecorder(now func() time.Time) *UnauthRecorder {
	return &UnauthRecorder{r: newUnauthRecorder(now)}
}

// Admit returns the caller's source address and reports whether the attempt
// in ctx should be recorded and, if so, the audit reason for msg: the source
// and how many attempts from it went unrecorded before this one.
func (u *UnauthRecorder) Admit(ctx context.Context, msg string) (src, reason string, record bool) {
	src = sourceOf(ctx)
	record, suppressed := u.r.admit(src)
	if !record {
		return src, "", false
	}
	reason = msg + " (from " + src + ")"
	if suppressed > 0 {
		reason += fmt.Sprintf(" (%d earlier attempts from this address were not recorded)", suppressed)
	}
	return src, reason, true
}

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
