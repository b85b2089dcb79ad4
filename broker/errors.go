package broker

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

// apiError is an error with the code and caller-safe message the API
// boundary returns. Internals wrap their causes; only msg reaches the caller.
type apiError struct {
	code       codes.Code
	msg        string
	retryAfter time.Duration
	cause      error
}

func (e *apiError) Error() string {
	if e.cause != nil {
		return fmt.Sprintf("%s: %v", e.msg, e.cause)
	}
	return e.msg
}

func (e *apiError) Unwrap() error { return e.cause }

func errorf(code codes.Code, format string, a ...any) *apiError {
	return &apiError{code: code, msg: fmt.Sprintf(format, a...)}
}

func wrapf(code codes.Code, cause error, format string, a ...any) *apiError {
	return &apiError{code: code, msg: fmt.Sprintf(format, a...), cause: cause}
}

// toStatus converts err to the gRPC status a caller sees. It is the one place
// where internal errors become API errors; anything not already an apiError
// becomes Internal with no detail, so upstream text (which may carry
// secrets) never leaks.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	var ae *apiError
	switch {
	case errors.As(err, &ae):
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, "request canceled")
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, "deadline exceeded")
	default:
		return status.Error(codes.Internal, "internal error")
	}
	st := status.New(ae.code, ae.msg)
	if ae.retryAfter > 0 {
		if d, derr := st.WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(ae.retryAfter)}); derr == nil {
			st = d
		}
	}
	return st.Err()
}
