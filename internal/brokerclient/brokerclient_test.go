package brokerclient

import (
	"errors"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/protoadapt"
	"google.golang.org/protobuf/types/known/durationpb"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
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

func withReason(code codes.Code, msg string, reason credbrokerv1.ErrorReason, retry time.Duration) error {
	details := []protoadapt.MessageV1{&errdetails.ErrorInfo{Reason: reason.String(), Domain: ErrorDomain, Metadata: map[string]string{"issuance_id": "iss-1"}}}
	if retry > 0 {
		details = append(details, &errdetails.RetryInfo{RetryDelay: durationpb.New(retry)})
	}
	st, err := status.New(code, msg).WithDetails(details...)
	if err != nil {
		panic(err)
	}
	return st.Err()
}

func TestReasons(t *testing.T) {
	for _, tc := range []struct {
		err       error
		reason    credbrokerv1.ErrorReason
		permanent bool
		describe  string
	}{
		{withReason(codes.ResourceExhausted, "quota spent", credbrokerv1.ErrorReason_QUOTA_EXHAUSTED, time.Minute), credbrokerv1.ErrorReason_QUOTA_EXHAUSTED, false,
			"resource exhausted: quota spent (retry after 1m0s) [QUOTA_EXHAUSTED]"},
		{withReason(codes.PermissionDenied, "no rule", credbrokerv1.ErrorReason_POLICY_DENIED, 0), credbrokerv1.ErrorReason_POLICY_DENIED, true,
			"permission denied: no rule [POLICY_DENIED]"},
		{withReason(codes.PermissionDenied, "node evicted", credbrokerv1.ErrorReason_NODE_EVICTED, 0), credbrokerv1.ErrorReason_NODE_EVICTED, true,
			"permission denied: node evicted [NODE_EVICTED]"},
		// The broker answered: no hint about reachability.
		{withReason(codes.Unavailable, "audit store unavailable", credbrokerv1.ErrorReason_AUDIT_UNAVAILABLE, 0), credbrokerv1.ErrorReason_AUDIT_UNAVAILABLE, false,
			"unavailable: audit store unavailable [AUDIT_UNAVAILABLE]"},
		{withReason(codes.FailedPrecondition, "needs approval", credbrokerv1.ErrorReason_APPROVAL_REQUIRED, 0), credbrokerv1.ErrorReason_APPROVAL_REQUIRED, false,
			"failed precondition: needs approval [APPROVAL_REQUIRED]"},
		{withReason(codes.FailedPrecondition, "revoked", credbrokerv1.ErrorReason_REVOKED, 0), credbrokerv1.ErrorReason_REVOKED, true,
			"failed precondition: revoked [REVOKED]"},
		// Without ErrorInfo the code decides.
		{status.Error(codes.PermissionDenied, "x"), credbrokerv1.ErrorReason_ERROR_REASON_UNSPECIFIED, true, "permission denied: x"},
		{status.Error(codes.Unavailable, "x"), credbrokerv1.ErrorReason_ERROR_REASON_UNSPECIFIED, false, "unavailable: x (is the broker running and reachable?)"},
		{errors.New("local"), credbrokerv1.ErrorReason_ERROR_REASON_UNSPECIFIED, true, "local"},
	} {
		if got := Reason(tc.err); got != tc.reason {
			t.Errorf("Reason(%v) = %v, want %v", tc.err, got, tc.reason)
		}
		if got := Permanent(tc.err); got != tc.permanent {
			t.Errorf("Permanent(%v) = %v, want %v", tc.err, got, tc.permanent)
		}
		if got := Describe(tc.err); got != tc.describe {
			t.Errorf("Describe(%v) = %q, want %q", tc.err, got, tc.describe)
		}
	}
	if got := Metadata(withReason(codes.PermissionDenied, "x", credbrokerv1.ErrorReason_POLICY_DENIED, 0), "issuance_id"); got != "iss-1" {
		t.Errorf("Metadata = %q", got)
	}
	// A reason from a newer broker: unknown here, so the code decides.
	newer := withReason(codes.PermissionDenied, "x", credbrokerv1.ErrorReason(999), 0)
	if Reason(newer) != credbrokerv1.ErrorReason_ERROR_REASON_UNSPECIFIED || !Permanent(newer) {
		t.Errorf("unknown reason: %v, permanent %v", Reason(newer), Permanent(newer))
	}
}
