package brokerclient

import (
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// ErrorDomain is the google.rpc.ErrorInfo domain of the broker's errors.
const ErrorDomain = "credbroker.dev"

// ErrorInfo returns the broker's google.rpc.ErrorInfo in err, if err is a
// gRPC status that carries one (the broker's own errors always do; transport
// failures never do).
func ErrorInfo(err error) (*errdetails.ErrorInfo, bool) {
	st, ok := status.FromError(err)
	if !ok {
		return nil, false
	}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetDomain() == ErrorDomain {
			return info, true
		}
	}
	return nil, false
}

// Reason returns why the broker refused a call, from its ErrorInfo; it is
// ERROR_REASON_UNSPECIFIED when err carries none, or a reason newer than
// this client (then fall back on the gRPC code).
func Reason(err error) credbrokerv1.ErrorReason {
	info, ok := ErrorInfo(err)
	if !ok {
		return credbrokerv1.ErrorReason_ERROR_REASON_UNSPECIFIED
	}
	return credbrokerv1.ErrorReason(credbrokerv1.ErrorReason_value[info.GetReason()])
}

// Metadata returns an ErrorInfo metadata value (e.g. "issuance_id"), or "".
func Metadata(err error, key string) string {
	info, _ := ErrorInfo(err)
	return info.GetMetadata()[key]
}

// RetryAfter returns the delay of the error's google.rpc.RetryInfo, if any.
func RetryAfter(err error) (time.Duration, bool) {
	st, ok := status.FromError(err)
	if !ok {
		return 0, false
	}
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok {
			return ri.GetRetryDelay().AsDuration(), true
		}
	}
	return 0, false
}

// permanentReasons will not go away by retrying the same request: the
// caller's identity, its configuration, the broker's policy or
// configuration, or an operator's decision must change first.
var permanentReasons = map[credbrokerv1.ErrorReason]bool{
	credbrokerv1.ErrorReason_UNAUTHENTICATED:           true,
	credbrokerv1.ErrorReason_POLICY_DENIED:             true,
	credbrokerv1.ErrorReason_ADMIN_ONLY:                true,
	credbrokerv1.ErrorReason_INVALID_REQUEST:           true,
	credbrokerv1.ErrorReason_UNKNOWN_PROFILE:           true,
	credbrokerv1.ErrorReason_TTL_OUT_OF_RANGE:          true,
	credbrokerv1.ErrorReason_UPSTREAM_REJECTED:         true,
	credbrokerv1.ErrorReason_MISCONFIGURED:             true,
	credbrokerv1.ErrorReason_NODE_EVICTED:              true,
	credbrokerv1.ErrorReason_NOT_A_NODE:                true,
	credbrokerv1.ErrorReason_NODE_ATTESTATION_DISABLED: true,
	credbrokerv1.ErrorReason_NOT_FOUND:                 true,
	credbrokerv1.ErrorReason_REVOKED:                   true,
	credbrokerv1.ErrorReason_APPROVAL_DENIED:           true,
}

// Permanent reports whether a broker error will not go away by retrying the
// same request. It decides by the ErrorInfo reason; an error without one (a
// transport failure, an older broker) is judged by its gRPC code, and an
// error that is no gRPC status at all is permanent (a local mistake).
// APPROVAL_REQUIRED is not permanent: the same request succeeds once
// approved; APPROVAL_DENIED is, until an admin's denial ends with its
// window.
func Permanent(err error) bool {
	if err == nil {
		return false
	}
	if reason := Reason(err); reason != credbrokerv1.ErrorReason_ERROR_REASON_UNSPECIFIED {
		return permanentReasons[reason]
	}
	st, ok := status.FromError(err)
	if !ok {
		return true
	}
	switch st.Code() {
	case codes.PermissionDenied, codes.Unauthenticated, codes.InvalidArgument, codes.NotFound, codes.Unimplemented:
		return true
	}
	return false
}
