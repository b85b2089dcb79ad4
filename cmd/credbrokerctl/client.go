package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/credbroker/credbroker/internal/brokerclient"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// target is one broker's admin API: its admin socket, or (broker set) its
// gRPC address, reached over mTLS with the admin's SVID.
type target struct{ socket, broker string }

// String names the target in errors.
func (t target) String() string {
	if t.broker != "" {
		return "broker " + t.broker
	}
	return "admin socket " + t.socket
}

// address is the broker's address or the socket's path.
func (t target) address() string { return cmp.Or(t.broker, t.socket) }

// target is the broker every command but a merged audit export talks to.
func (a *app) target() target { return target{socket: a.socket, broker: a.broker} }

// dial connects to the admin API of the broker the flags name.
func (a *app) dial() (credbrokerv1.AdminServiceClient, func(), error) {
	return a.dialTarget(a.target())
}

// dialTarget connects to t's admin API: over mTLS with an admin SVID when
// t names a broker address, otherwise to its admin socket. The socket needs
// no transport security: it is 0600 and the broker checks the peer's uid
// (SO_PEERCRED).
func (a *app) dialTarget(t target) (credbrokerv1.AdminServiceClient, func(), error) {
	if t.broker != "" {
		// The Workload API wait is bounded by --timeout (Options.Timeout).
		conn, err := a.identity.Dial(context.Background(), t.broker, a.brokerID)
		if err != nil {
			return nil, nil, err
		}
		return credbrokerv1.NewAdminServiceClient(conn), func() { _ = conn.Close() }, nil
	}
	path, err := filepath.Abs(t.socket)
	if err != nil {
		return nil, nil, fmt.Errorf("admin socket %s: %w", t.socket, err)
	}
	fi, err := os.Stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, nil, t.unreachable()
	case errors.Is(err, fs.ErrPermission):
		return nil, nil, t.socketPermission()
	case err != nil:
		return nil, nil, fmt.Errorf("admin socket %s: %w", t.socket, err)
	case fi.Mode().Type() != fs.ModeSocket:
		return nil, nil, fmt.Errorf("admin socket %s is not a unix socket", t.socket)
	}
	conn, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, nil, fmt.Errorf("admin socket %s: %w", t.socket, err)
	}
	return credbrokerv1.NewAdminServiceClient(conn), func() { _ = conn.Close() }, nil
}

// call dials the admin API, makes one RPC bounded by --timeout, and turns
// its failure into one line an operator can act on.
func call[T any](ctx context.Context, a *app, rpc func(context.Context, credbrokerv1.AdminServiceClient) (T, error)) (T, error) {
	return callAt(ctx, a, a.target(), rpc)
}

// callAt is call to t.
func callAt[T any](ctx context.Context, a *app, t target, rpc func(context.Context, credbrokerv1.AdminServiceClient) (T, error)) (T, error) {
	var zero T
	client, closeConn, err := a.dialTarget(t)
	if err != nil {
		return zero, err
	}
	defer closeConn()
	ctx, cancel := a.callContext(ctx)
	defer cancel()
	resp, err := rpc(ctx, client)
	if err != nil {
		return zero, a.rpcErrorAt(t, err)
	}
	return resp, nil
}

// callContext bounds one RPC by --timeout.
func (a *app) callContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, a.timeout)
}

func (t target) unreachable() error {
	if t.broker != "" {
		return fmt.Errorf("cannot reach broker at %s: is `credbroker serve` running there?", t.broker)
	}
	return fmt.Errorf("cannot reach broker admin socket %s: is `credbroker serve` running?", t.socket)
}

func (t target) socketPermission() error {
	return fmt.Errorf("cannot open broker admin socket %s: permission denied; run credbrokerctl as the user the broker runs as (or root)", t.socket)
}

// rpcError turns an RPC failure of the broker the flags name into one line
// an operator can act on.
func (a *app) rpcError(err error) error { return a.rpcErrorAt(a.target(), err) }

// rpcErrorAt turns an RPC failure of t into one line an operator can act
// on. It branches on the broker's ErrorInfo reason; an error without one
// did not come from the broker (a transport failure) and is judged by its
// code.
func (a *app) rpcErrorAt(t target, err error) error {
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	msg := st.Message()
	switch brokerclient.Reason(err) {
	case credbrokerv1.ErrorReason_ADMIN_ONLY:
		if t.broker != "" {
			return fmt.Errorf("permission denied by broker: %s (the admin API over mTLS accepts only the SPIFFE IDs in admin.spiffe_ids)", msg)
		}
		return fmt.Errorf("permission denied by broker: %s (the admin socket accepts only the broker's own uid and root)", msg)
	case credbrokerv1.ErrorReason_UNAUTHENTICATED:
		return fmt.Errorf("not authenticated by broker: %s", msg)
	case credbrokerv1.ErrorReason_UNAVAILABLE, credbrokerv1.ErrorReason_AUDIT_UNAVAILABLE, credbrokerv1.ErrorReason_UPSTREAM_UNAVAILABLE:
		return fmt.Errorf("broker unavailable: %s", msg)
	case credbrokerv1.ErrorReason_NOT_FOUND:
		return fmt.Errorf("not found: %s", msg)
	case credbrokerv1.ErrorReason_INVALID_REQUEST, credbrokerv1.ErrorReason_TTL_OUT_OF_RANGE:
		return fmt.Errorf("invalid request: %s", msg)
	case credbrokerv1.ErrorReason_NODE_ATTESTATION_DISABLED:
		return fmt.Errorf("%s (set node_attestation in the broker's configuration)", msg)
	case credbrokerv1.ErrorReason_DEADLINE_EXCEEDED:
		return fmt.Errorf("broker did not answer within %v (see --timeout)", a.timeout)
	case credbrokerv1.ErrorReason_CANCELLED:
		return errors.New("interrupted")
	case credbrokerv1.ErrorReason_ERROR_REASON_UNSPECIFIED:
		return a.transportError(t, st)
	}
	return fmt.Errorf("broker refused (%s): %s", brokerclient.Reason(err), msg)
}

// transportError describes a failure that carries no broker reason: the
// broker was not reached, or did not answer in time, or is older than the
// CLI.
func (a *app) transportError(t target, st *status.Status) error {
	msg := st.Message()
	switch st.Code() {
	case codes.Unavailable:
		switch {
		case strings.Contains(msg, "connection refused"), strings.Contains(msg, "no such file"):
			return t.unreachable()
		case strings.Contains(msg, "permission denied"):
			return t.socketPermission()
		}
		return fmt.Errorf("broker unavailable: %s", msg)
	case codes.DeadlineExceeded:
		return fmt.Errorf("broker did not answer within %v (see --timeout)", a.timeout)
	case codes.Canceled:
		return errors.New("interrupted")
	case codes.Unimplemented:
		return fmt.Errorf("the broker does not support this command (is it older than credbrokerctl?): %s", msg)
	}
	return fmt.Errorf("broker error (%s): %s", st.Code(), msg)
}

// listAll follows a list's pages until limit items (0 = all) or the last
// page, each page one RPC bounded by --timeout on one connection. When it
// stops at limit with more left, it says so on stderr.
func listAll[T any](ctx context.Context, a *app, limit int, page func(context.Context, credbrokerv1.AdminServiceClient, int32, string) ([]T, string, error)) ([]T, error) {
	client, closeConn, err := a.dial()
	if err != nil {
		return nil, err
	}
	defer closeConn()
	var out []T
	token := ""
	for {
		size := listPageSize
		if limit > 0 {
			size = min(size, limit-len(out))
		}
		pctx, cancel := a.callContext(ctx)
		items, next, err := page(pctx, client, int32(size), token)
		cancel()
		if err != nil {
			return nil, a.rpcError(err)
		}
		out = append(out, items...)
		switch {
		case next == "":
			return out, nil
		case limit > 0 && len(out) >= limit:
			fmt.Fprintf(a.stderr, "showing the first %d; there are more (--limit 0 shows all)\n", len(out))
			return out[:limit], nil
		case next == token:
			return nil, errors.New("the broker sent the same page token twice")
		}
		token = next
	}
}
