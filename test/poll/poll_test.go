package poll

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/credbroker/credbroker/test/testproc"
)

// answers returns a try that answers with errs in turn, then the last.
func answers(errs ...error) func() error {
	return func() error {
		err := errs[0]
		if len(errs) > 1 {
			errs = errs[1:]
		}
		return err
	}
}

func TestUntilCode(t *testing.T) {
	unavailable := status.Error(codes.Unavailable, "down")
	p := New(t, t.Context(), time.Millisecond)
	p.UntilCode("recovers", codes.OK, false, answers(unavailable, unavailable, nil))
	p.UntilCode("fails closed", codes.Unavailable, true, answers(status.Error(codes.ResourceExhausted, "spent"), unavailable))

	r := testproc.RunFatal(t, func(tb testing.TB) {
		New(tb, t.Context(), time.Millisecond).UntilCode("quorum lost", codes.Unavailable, true, answers(nil, unavailable))
	})
	if msg := r.FatalMessage(); !strings.Contains(msg, "quorum lost: answered OK") {
		t.Errorf("an OK answer with okIsFatal: %q, want the test failed", msg)
	}

	// The deadline passed: the last answer is reported.
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	r = testproc.RunFatal(t, func(tb testing.TB) {
		New(tb, ctx, time.Millisecond).UntilCode("never", codes.OK, false, answers(unavailable))
	})
	if msg := r.FatalMessage(); !strings.Contains(msg, "never: rpc error: code = Unavailable desc = down, want OK") {
		t.Errorf("past the deadline: %q, want the test failed with the last answer", msg)
	}
}
