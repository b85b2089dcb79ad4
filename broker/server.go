package broker

import (
	"crypto/tls"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// MaxRequestBytes bounds a request message; larger ones are refused with
// RESOURCE_EXHAUSTED before they are decoded.
const MaxRequestBytes = 64 << 10

func commonOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.MaxRecvMsgSize(MaxRequestBytes),
		grpc.MaxConcurrentStreams(1024),
		grpc.ConnectionTimeout(10 * time.Second),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
	}
}

// NewGRPCServer returns the mTLS server for workloads and admin SPIFFE IDs.
// tlsConfig must request (not require) client certificates: verification is
// the Gate's job, so that a bad identity is UNAUTHENTICATED rather than a
// failed handshake, and JWT-SVID callers need no certificate at all.
func NewGRPCServer(tlsConfig *tls.Config, gate *Gate, svc *Service, adm *Admin) *grpc.Server {
	opts := append(commonOptions(),
		grpc.Creds(newTLSCreds(tlsConfig)),
		grpc.ChainUnaryInterceptor(gate.Unary),
		grpc.ChainStreamInterceptor(gate.Stream),
	)
	s := grpc.NewServer(opts...)
	credbrokerv1.RegisterBrokerServiceServer(s, svc)
	credbrokerv1.RegisterAdminServiceServer(s, adm)
	return s
}

// NewAdminSocketServer returns the admin API server for the unix socket,
// admitting only peers whose uid is in uids.
func NewAdminSocketServer(uids []uint32, adm *Admin) *grpc.Server {
	g := uidGate{uids: uids}
	opts := append(commonOptions(),
		grpc.Creds(peerCredCreds{}),
		grpc.ChainUnaryInterceptor(g.unary),
		grpc.ChainStreamInterceptor(g.stream),
	)
	s := grpc.NewServer(opts...)
	credbrokerv1.RegisterAdminServiceServer(s, adm)
	return s
}
