package broker

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	"github.com/credbroker/credbroker/broker/audit"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// PeerCred is the AuthInfo of a connection on the admin unix socket: the
// kernel's account of the connecting process, which the peer cannot forge
// (SO_PEERCRED on Linux, LOCAL_PEERCRED and LOCAL_PEERPID on macOS; see
// peerCredOf in peercred_GOOS.go).
type PeerCred struct {
	credentials.CommonAuthInfo
	UID, GID uint32
	PID      int32
}

// AuthType implements credentials.AuthInfo.
func (PeerCred) AuthType() string { return "peercred" }

// peerCredCreds are server transport credentials for a unix socket. The
// socket's 0600 mode keeps other users out; the uid check in the admin
// interceptor is the second lock.
type peerCredCreds struct{}

func (peerCredCreds) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	uc, ok := conn.(*net.UnixConn)
	if !ok {
		return nil, nil, errors.New("broker: admin socket: not a unix connection")
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return nil, nil, fmt.Errorf("broker: admin socket: %w", err)
	}
	var pc PeerCred
	var credErr error
	if err := raw.Control(func(fd uintptr) { pc, credErr = peerCredOf(int(fd)) }); err != nil {
		return nil, nil, fmt.Errorf("broker: admin socket: %w", err)
	}
	if credErr != nil {
		return nil, nil, fmt.Errorf("broker: admin socket: %w", credErr)
	}
	pc.CommonAuthInfo = credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity}
	return conn, pc, nil
}

func (peerCredCreds) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("broker: peercred credentials are server-side only")
}
func (peerCredCreds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "peercred"}
}
func (c peerCredCreds) Clone() credentials.TransportCredentials { return c }
func (peerCredCreds) OverrideServerName(string) error           { return nil }

// uidGate admits admin calls from allowed local uids, each uid within the
// admin rate limit; other uids are refused through refused.
type uidGate struct {
	uids    []uint32
	limits  *RateLimits
	metrics *Metrics
	refused adminRefusals
}

func (g uidGate) check(ctx context.Context, method string) error {
	m, err := lookup(g.limits, method)
	if err != nil {
		return err
	}
	if err := onlyAdminMethods(method); err != nil {
		return err
	}
	p, ok := peer.FromContext(ctx)
	if !ok {
		return toStatus(errorf(credbrokerv1.ErrorReason_UNAUTHENTICATED, "admin socket: no peer information"))
	}
	pc, ok := p.AuthInfo.(PeerCred)
	if !ok {
		return toStatus(errorf(credbrokerv1.ErrorReason_UNAUTHENTICATED, "admin socket: peer credentials unavailable"))
	}
	if !slices.Contains(g.uids, pc.UID) {
		return g.refused.refuse(ctx, method, adminRefusalNotAdmin, audit.Record{Caller: AdminPrincipal(ctx)},
			errorf(credbrokerv1.ErrorReason_ADMIN_ONLY, "admin socket: uid %d is not an admin", pc.UID))
	}
	if lerr := g.limits.take(g.metrics, method, m.limit, AdminPrincipal(ctx)); lerr != nil {
		return toStatus(lerr)
	}
	return nil
}

func (g uidGate) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if err := g.check(ctx, info.FullMethod); err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

func (g uidGate) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if err := g.check(ss.Context(), info.FullMethod); err != nil {
		return err
	}
	return handler(srv, ss)
}
