package brokerclient

import (
	"errors"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

func withRetry(code codes.Code, msg string, d time.Duration) error {
	st, err := status.New(code, msg).WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(d)})
	if err != nil {
		panic(err)
	}
	return st.Err()
}

func TestDescribe(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{status.Error(codes.PermissionDenied, "no policy rule matches the caller"), "permission denied: no policy rule matches the caller"},
		{status.Error(codes.Unavailable, "connection refused"), "unavailable: connection refused (is the broker running and reachable?)"},
		{withRetry(codes.ResourceExhausted, "quota exceeded", 1500*time.Microsecond+time.Minute), "resource exhausted: quota exceeded (retry after 1m0.002s)"},
		{withRetry(codes.ResourceExhausted, "rate exceeded; retry in 2s", 2*time.Second), "resource exhausted: rate exceeded; retry in 2s"},
		{errors.New("plain"), "plain"},
	} {
		if got := Describe(tc.err); got != tc.want {
			t.Errorf("Describe(%v) = %q, want %q", tc.err, got, tc.want)
		}
	}
}
