package bench

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffegrpc/grpccredentials"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/credbroker/credbroker/attest"
	"github.com/credbroker/credbroker/attest/jwtsvid"
	attestx509 "github.com/credbroker/credbroker/attest/x509svid"
	"github.com/credbroker/credbroker/broker"
	"github.com/credbroker/credbroker/broker/audit"
	"github.com/credbroker/credbroker/broker/config"
	"github.com/credbroker/credbroker/broker/limits"
	"github.com/credbroker/credbroker/broker/policy"
	"github.com/credbroker/credbroker/broker/state"
	"github.com/credbroker/credbroker/broker/state/boltstate"
	"github.com/credbroker/credbroker/internal/ca"
	"github.com/credbroker/credbroker/issuers"
	"github.com/credbroker/credbroker/issuers/jwt"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

var (
	td           = spiffeid.RequireTrustDomainFromString("bench.test")
	controllerID = spiffeid.RequireFromPath(td, "/ns/capi-system/sa/capa-controller-manager")
	serverID     = spiffeid.RequireFromPath(td, "/credbroker/server")
)

// connsPerVariant is how many persistent connections the clients of one
// variant share; each carries many concurrent streams.
const connsPerVariant = 4

// request is what every client sends: a cluster-scoped token, as a CAPA
// controller asks for one.
func request() *credbrokerv1.IssueCredentialRequest {
	return &credbrokerv1.IssueCredentialRequest{
		Profile: "capa-token", Cluster: "capi-prod/workload-1",
		Audience: "sts.amazonaws.com", Ttl: durationpb.New(10 * time.Minute),
	}
}

// variant names one server under test.
type variant string

const (
	echo     variant = "echo"
	auditOn  variant = "audit-on"
	auditOff variant = "audit-off"
)

// variants is the order rounds run in.
var variants = []variant{echo, auditOn, auditOff}

// target is one running server and the client connections to it.
type target struct {
	conns []*grpc.ClientConn
	next  atomic.Uint64
	// request is what its clients send; nil means request().
	request func() *credbrokerv1.IssueCredentialRequest
}

// client returns a client on the next connection, round robin.
func (t *target) client() credbrokerv1.BrokerServiceClient {
	c := t.conns[t.next.Add(1)%uint64(len(t.conns))]
	return credbrokerv1.NewBrokerServiceClient(c)
}

// fixture is the three servers, sharing one CA and one JWT issuer. Everything
// it starts is stopped by tb's cleanup.
type fixture struct {
	ca      *ca.CA
	issuer  *jwt.Issuer
	audit   *audit.Log // the audit-on variant's log
	targets map[variant]*target
	// What more brokers are built with: the servers' TLS, the audit-on
	// variant's limits, and the clients' credentials.
	tlsConf     *tls.Config
	limits      broker.Limiter
	ledger      broker.Ledger
	clientCreds credentials.TransportCredentials
}

func newFixture(tb testing.TB) *fixture {
	tb.Helper()
	dir := dataDir(tb)
	f := &fixture{targets: make(map[variant]*target)}
	var err error
	if f.ca, err = ca.New(td); err != nil {
		tb.Fatal(err)
	}
	if f.issuer, err = jwt.New(jwt.Config{IssuerURL: "https://broker.bench.test", KeyFile: filepath.Join(dir, "jwt.pem")}); err != nil {
		tb.Fatal(err)
	}
	serverSVID, err := f.ca.MintX509SVID(serverID, time.Hour)
	if err != nil {
		tb.Fatal(err)
	}
	// The broker requests but does not require a client certificate (its Gate
	// verifies it per call); the echo server gets the very same config, so the
	// handshakes cost the same and only the broker verifies the SVID.
	tlsConf := tlsconfig.TLSServerConfig(serverSVID)
	tlsConf.ClientAuth = tls.RequestClientCert

	db, err := boltstate.OpenDB(filepath.Join(dir, "credbroker.db"))
	if err != nil {
		tb.Fatal(err)
	}
	if f.audit, err = audit.Open(db); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { f.audit.Close(); db.Close() })
	st, err := boltstate.New(db)
	if err != nil {
		tb.Fatal(err)
	}
	if f.ledger, err = st.Ledger(f.audit); err != nil {
		tb.Fatal(err)
	}

	onLimits, err := limits.New(limits.Config{})
	if err != nil {
		tb.Fatal(err)
	}
	offLimits, err := limits.New(limits.Config{})
	if err != nil {
		tb.Fatal(err)
	}
	servers := map[variant]*grpc.Server{
		echo:     newEchoServer(tlsConf, f.issuer, controllerID.String()),
		auditOn:  f.newBroker(tb, tlsConf, onLimits, f.ledger, f.audit, f.audit),
		auditOff: f.newBroker(tb, tlsConf, offLimits, discardAudit{}, discardAudit{}, nil),
	}
	clientSVID, err := f.ca.MintX509SVID(controllerID, time.Hour)
	if err != nil {
		tb.Fatal(err)
	}
	creds := grpccredentials.MTLSClientCredentials(clientSVID, x509bundle.NewSet(f.ca.X509Bundle()), tlsconfig.AuthorizeID(serverID))
	for _, v := range variants {
		f.targets[v] = serve(tb, servers[v], creds)
	}
	f.tlsConf, f.limits, f.clientCreds = tlsConf, onLimits, creds
	return f
}

// dataDir is where the audit db lives: under BENCH_DIR when set, so that it
// can be put on the disk whose fsync is to be measured, else a temp dir.
func dataDir(tb testing.TB) string {
	parent := os.Getenv("BENCH_DIR")
	if parent == "" {
		return tb.TempDir()
	}
	dir, err := os.MkdirTemp(parent, "credbroker-bench-")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// serve runs s on loopback and dials it connsPerVariant times. Connections are
// closed, then the server stopped, at cleanup.
func serve(tb testing.TB, s *grpc.Server, creds credentials.TransportCredentials) *target {
	tb.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	go s.Serve(lis)
	tb.Cleanup(s.Stop)
	t := &target{}
	for range connsPerVariant {
		conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(creds))
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { conn.Close() })
		t.conns = append(t.conns, conn)
	}
	return t
}

// newBroker assembles the real broker as the daemon does (assembleBroker),
// its info-level JSON logs formatted, then discarded, so that their cost
// counts but the terminal's does not.
func (f *fixture) newBroker(tb testing.TB, tlsConf *tls.Config, lim broker.Limiter, ledger broker.Ledger, log broker.AuditLog, reader broker.AuditReader, extra ...broker.Profile) *grpc.Server {
	tb.Helper()
	logger := slog.New(slog.NewJSONHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelInfo}))
	s, err := assembleBroker(f.ca, f.issuer, tlsConf, lim, ledger, log, reader, logger, extra...)
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

// assembleBroker assembles the real broker as the daemon does: Gate with the
// JWT-SVID and X.509-SVID authenticators and the request limits, policy,
// limits, audit, metrics, and logs to logger. reader backs the admin API; nil
// when there is none (the Gate admits no admin identity, so it is never
// reached).
func assembleBroker(authority *ca.CA, issuer issuers.Issuer, tlsConf *tls.Config, lim broker.Limiter, ledger broker.Ledger, log broker.AuditLog, reader broker.AuditReader, logger *slog.Logger, extra ...broker.Profile) (*grpc.Server, error) {
	pol, err := policy.New([]policy.Rule{
		{ID: "spiffe://bench.test/ns/*/sa/capa-controller-manager", Profiles: []string{"*"}, Clusters: []string{"capi-*/*"}},
	})
	if err != nil {
		return nil, err
	}
	metrics := broker.NewMetrics(prometheus.NewRegistry())
	profiles := map[string]broker.Profile{"capa-token": {
		Name: "capa-token", IssuerName: "local", Issuer: issuer, DefaultTTL: 5 * time.Minute, MaxTTL: 15 * time.Minute,
		Audiences: []string{"capa-token", "sts.amazonaws.com"}, ClusterMode: config.ClusterRequired,
	}}
	for _, p := range extra {
		profiles[p.Name] = p
	}
	svc, err := broker.NewService(broker.ServiceDeps{
		Profiles: profiles,
		Policy:   pol, Limiter: lim, Ledger: ledger, Audit: log, NewID: newID, Log: logger, Metrics: metrics,
	})
	if err != nil {
		return nil, err
	}
	return serveService(authority, tlsConf, svc, log, reader, metrics, logger)
}

// serveService is the gRPC server of svc as the daemon builds it: a Gate
// with the JWT-SVID and X.509-SVID authenticators and the request limits.
func serveService(authority *ca.CA, tlsConf *tls.Config, svc *broker.Service, log broker.AuditLog, reader broker.AuditReader, metrics *broker.Metrics, logger *slog.Logger) (*grpc.Server, error) {
	// The load comes from one identity, far above the default per-identity
	// request limit; the limit is still taken on every call, so its cost
	// counts.
	requests := broker.DefaultRequestLimits()
	requests.Issue = limits.Spec{Rate: 1e9, Burst: 1e9}
	rateLimits, err := broker.NewRateLimits(requests, nil)
	if err != nil {
		return nil, err
	}
	gate := broker.NewGate([]attest.Authenticator{
		jwtsvid.New(jwtbundle.NewSet(authority.JWTBundle()), []string{"credbroker"}),
		attestx509.New(x509bundle.NewSet(authority.X509Bundle())),
	}, nil, log, metrics, logger, broker.WithRateLimits(rateLimits))
	return broker.NewGRPCServer(tlsConf, gate, svc, nil, broker.NewAdmin(reader, nil)), nil
}

func newID() (string, error) {
	id, err := uuid.NewV7()
	return id.String(), err
}

// discardAudit is the "audit off" AuditLog and Ledger: it stores nothing and
// returns the record as given. That is enough for the bench, whose limits
// have no quotas. A spend it cannot make fails loudly, so that a
// misconfigured run does not silently skip work the broker would really do.
type discardAudit struct{}

// Append implements broker.AuditLog.
func (discardAudit) Append(r audit.Record) (audit.Record, error) { return r, nil }

// SpendAndAppend implements broker.Ledger.
func (discardAudit) SpendAndAppend(_ context.Context, _ time.Time, charges []state.Charge, r audit.Record) (audit.Record, error) {
	if len(charges) > 0 {
		return audit.Record{}, fmt.Errorf("bench: discard audit cannot spend quota (are quotas set?): %v", charges)
	}
	return r, nil
}

// echoService is the baseline: IssueCredential signs the same ES256 token as
// the broker, through the same issuer, and nothing else — no attestation,
// policy, limits, audit, metrics or logs.
type echoService struct {
	credbrokerv1.UnimplementedBrokerServiceServer
	issuer issuers.Issuer
	// subject is the token's sub: the SPIFFE ID of the clients, which the
	// echo server takes on trust.
	subject string
}

func newEchoServer(tlsConf *tls.Config, issuer issuers.Issuer, subject string) *grpc.Server {
	s := grpc.NewServer(grpc.Creds(credentials.NewTLS(tlsConf)),
		grpc.MaxRecvMsgSize(broker.MaxRequestBytes), grpc.MaxConcurrentStreams(1024))
	credbrokerv1.RegisterBrokerServiceServer(s, &echoService{issuer: issuer, subject: subject})
	return s
}

// IssueCredential signs a token with the claims the broker would put in it.
func (e *echoService) IssueCredential(ctx context.Context, req *credbrokerv1.IssueCredentialRequest) (*credbrokerv1.IssueCredentialResponse, error) {
	id, err := newID()
	if err != nil {
		return nil, status.Error(codes.Unavailable, "bench: echo: cannot allocate an id")
	}
	cred, err := e.issuer.Issue(ctx, issuers.Request{
		IssuanceID: id, Subject: e.subject, Profile: req.GetProfile(),
		Cluster: req.GetCluster(), Audience: req.GetAudience(), TTL: req.GetTtl().AsDuration(),
	})
	if err != nil {
		return nil, status.Error(codes.Internal, "bench: echo: "+err.Error())
	}
	return &credbrokerv1.IssueCredentialResponse{Credential: &credbrokerv1.Credential{
		IssuanceId: id, Profile: req.GetProfile(), Cluster: req.GetCluster(), Issuer: "local",
		ExpiresAt: timestamppb.New(cred.ExpiresAt),
		Kind:      &credbrokerv1.Credential_Token{Token: &credbrokerv1.Token{Token: cred.Token, TokenType: cred.TokenType}},
	}}, nil
}
