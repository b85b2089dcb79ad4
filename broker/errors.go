package broker

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/protoadapt"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/credbroker/credbroker/broker/audit"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// ErrorDomain is the google.rpc.ErrorInfo domain of every error the broker
// returns; the reason is an ErrorReason name (proto/credbroker/v1/errors.proto).
const ErrorDomain = "credbroker.dev"

// Metadata keys of ErrorInfo (documented with ErrorReason).
const (
	MetaIssuanceID = "issuance_id"
	MetaProfile    = "profile"
	MetaCluster    = "cluster"
	MetaRetryAfter = "retry_after"
	MetaLimit      = "limit"
	MetaField      = "field"
	// MetaRevocationID and MetaRevokedBy name the revocation a REVOKED
	// request is covered by and the admin who made it: whom to ask.
	MetaRevocationID = "revocation_id"
	MetaRevokedBy    = "revoked_by"
)

// reasonCodes is the one table of which gRPC code each reason is sent with,
// so that a reason always means the same code; errors.proto documents it.
var reasonCodes = map[credbrokerv1.ErrorReason]codes.Code{
	credbrokerv1.ErrorReason_UNAUTHENTICATED:           codes.Unauthenticated,
	credbrokerv1.ErrorReason_POLICY_DENIED:             codes.PermissionDenied,
	credbrokerv1.ErrorReason_ADMIN_ONLY:                codes.PermissionDenied,
	credbrokerv1.ErrorReason_RATE_LIMITED:              codes.ResourceExhausted,
	credbrokerv1.ErrorReason_QUOTA_EXHAUSTED:           codes.ResourceExhausted,
	credbrokerv1.ErrorReason_INVALID_REQUEST:           codes.InvalidArgument,
	credbrokerv1.ErrorReason_UNKNOWN_PROFILE:           codes.InvalidArgument,
	credbrokerv1.ErrorReason_TTL_OUT_OF_RANGE:          codes.InvalidArgument,
	credbrokerv1.ErrorReason_UNAVAILABLE:               codes.Unavailable,
	credbrokerv1.ErrorReason_AUDIT_UNAVAILABLE:         codes.Unavailable,
	credbrokerv1.ErrorReason_UPSTREAM_UNAVAILABLE:      codes.Unavailable,
	credbrokerv1.ErrorReason_UPSTREAM_THROTTLED:        codes.ResourceExhausted,
	credbrokerv1.ErrorReason_UPSTREAM_REJECTED:         codes.PermissionDenied,
	credbrokerv1.ErrorReason_MISCONFIGURED:             codes.Internal,
	credbrokerv1.ErrorReason_NODE_EVICTED:              codes.PermissionDenied,
	credbrokerv1.ErrorReason_NOT_A_NODE:                codes.PermissionDenied,
	credbrokerv1.ErrorReason_NODE_ATTESTATION_DISABLED: codes.FailedPrecondition,
	credbrokerv1.ErrorReason_NOT_FOUND:                 codes.NotFound,
	credbrokerv1.ErrorReason_REVOKED:                   codes.FailedPrecondition,
	credbrokerv1.ErrorReason_APPROVAL_REQUIRED:         codes.FailedPrecondition,
	credbrokerv1.ErrorReason_APPROVAL_DENIED:           codes.PermissionDenied,
	credbrokerv1.ErrorReason_INTERNAL:                  codes.Internal,
	credbrokerv1.ErrorReason_CANCELLED:                 codes.Canceled,
	credbrokerv1.ErrorReason_DEADLINE_EXCEEDED:         codes.DeadlineExceeded,
}

// ReasonCode is the gRPC code that reason is sent with (Internal for a
// reason missing from the table, which a test rules out).
func ReasonCode(reason credbrokerv1.ErrorReason) codes.Code {
	if c, ok := reasonCodes[reason]; ok {
		return c
	}
	return codes.Internal
}

// apiError is an error with the reason and caller-safe message the API
// boundary returns. Internals wrap their causes; only msg and metadata reach
// the caller.
type apiError struct {
	reason     credbrokerv1.ErrorReason
	msg        string
	retryAfter time.Duration
	metadata   map[string]string
	cause      error
}

func (e *apiError) Error() string {
	if e.cause != nil {
		return fmt.Sprintf("%s: %v", e.msg, e.cause)
	}
	return e.msg
}

func (e *apiError) Unwrap() error { return e.cause }

// with sets ErrorInfo metadata; values are caller-safe by the caller's
// choice, like msg.
func (e *apiError) with(key, value string) *apiError {
	if e.metadata == nil {
		e.metadata = map[string]string{}
	}
	e.metadata[key] = value
	return e
}

// clone returns a copy of e whose metadata can be changed independently.
func (e *apiError) clone() *apiError {
	c := *e
	c.metadata = maps.Clone(e.metadata)
	return &c
}

func errorf(reason credbrokerv1.ErrorReason, format string, a ...any) *apiError {
	return &apiError{reason: reason, msg: fmt.Sprintf(format, a...)}
}

func wrapf(reason credbrokerv1.ErrorReason, cause error, format string, a ...any) *apiError {
	return &apiError{reason: reason, msg: fmt.Sprintf(format, a...), cause: cause}
}

// invalid is INVALID_REQUEST naming the request field at fault.
func invalid(field, format string, a ...any) *apiError {
	return errorf(credbrokerv1.ErrorReason_INVALID_REQUEST, format, a...).with(MetaField, field)
}

// annotate names the request of rec in err's metadata, so that a client can
// quote the issuance id and see which profile and cluster were refused.
func annotate(err error, rec *audit.Record) {
	var ae *apiError
	if !errors.As(err, &ae) {
		return
	}
	for k, v := range map[string]string{MetaIssuanceID: rec.IssuanceID, MetaProfile: rec.Profile, MetaCluster: rec.Cluster} {
		if _, set := ae.metadata[k]; v != "" && !set {
			ae.with(k, clip(v))
		}
	}
}

// toStatus converts err to the gRPC status a caller sees. It is the one place
// where internal errors become API errors: each carries ErrorInfo with its
// reason, and RetryInfo when a retry can succeed later. Anything not already
// an apiError becomes INTERNAL with no detail but the reason, so upstream
// text (which may carry secrets) never leaks.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	var ae *apiError
	switch {
	case errors.As(err, &ae):
	case errors.Is(err, context.Canceled):
		ae = errorf(credbrokerv1.ErrorReason_CANCELLED, "request canceled")
	case errors.Is(err, context.DeadlineExceeded):
		ae = errorf(credbrokerv1.ErrorReason_DEADLINE_EXCEEDED, "deadline exceeded")
	default:
		ae = errorf(credbrokerv1.ErrorReason_INTERNAL, "internal error")
	}
	info := &errdetails.ErrorInfo{Reason: ae.reason.String(), Domain: ErrorDomain, Metadata: map[string]string{}}
	for k, v := range ae.metadata {
		info.Metadata[k] = v
	}
	details := []protoadapt.MessageV1{info}
	if ae.retryAfter > 0 {
		info.Metadata[MetaRetryAfter] = ae.retryAfter.String()
		details = append(details, &errdetails.RetryInfo{RetryDelay: durationpb.New(ae.retryAfter)})
	}
	st := status.New(ReasonCode(ae.reason), ae.msg)
	if d, derr := st.WithDetails(details...); derr == nil {
		st = d
	}
	return st.Err()
}
