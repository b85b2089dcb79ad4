package x509svid_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"errors"
	"math/big"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	spiffex509svid "github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/credbroker/credbroker/attest"
	"github.com/credbroker/credbroker/attest/x509svid"
	"github.com/credbroker/credbroker/internal/ca"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var (
	td       = spiffeid.RequireTrustDomainFromString("broker.test")
	brokerID = spiffeid.RequireFromPath(td, "/credbroker")
)

func fixed(t time.Time) func() time.Time { return func() time.Time { return t } }

// env is a CA plus a real gRPC server on loopback that requests (but does
// not verify) client certificates and authenticates every call with auth.
type env struct {
	ca      *ca.CA
	now     time.Time
	addr    string
	results chan result
}

type result struct {
	caller attest.Caller
	err    error
}

func newCA(t *testing.T, td spiffeid.TrustDomain, now time.Time) *ca.CA {
	t.Helper()
	c, err := ca.New(td, ca.WithClock(fixed(now)))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func mint(t *testing.T, c *ca.CA, id spiffeid.ID, opts ...ca.SVIDOption) *spiffex509svid.SVID {
	t.Helper()
	svid, err := c.MintX509SVID(id, time.Hour, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return svid
}

func tlsCert(svid *spiffex509svid.SVID) tls.Certificate {
	var raw [][]byte
	for _, c := range svid.Certificates {
		raw = append(raw, c.Raw)
	}
	return tls.Certificate{Certificate: raw, PrivateKey: svid.PrivateKey, Leaf: svid.Certificates[0]}
}

// startServer serves gRPC health over TLS on a loopback port, with a fresh CA
// for td and an authenticator (clock fixed at e.now, then opts) trusting it.
func startServer(t *testing.T, opts ...x509svid.Option) *env {
	t.Helper()
	now := time.Now().Truncate(time.Second)
	e := &env{ca: newCA(t, td, now), now: now, results: make(chan result, 1)}
	auth := x509svid.New(x509bundle.NewSet(e.ca.X509Bundle()), append([]x509svid.Option{x509svid.WithClock(fixed(now))}, opts...)...)

	srvSVID := mint(t, e.ca, brokerID, ca.WithIPAddresses(net.IPv4(127, 0, 0, 1)))
	creds := credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{tlsCert(srvSVID)},
		ClientAuth:   tls.RequestClientCert,
		MinVersion:   tls.VersionTLS13,
	})
	srv := grpc.NewServer(grpc.Creds(creds), grpc.UnaryInterceptor(
		func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			c, err := auth.Authenticate(ctx)
			e.results <- result{c, err}
			if err != nil {
				return nil, status.Error(codes.Unauthenticated, err.Error())
			}
			return h(attest.WithCaller(ctx, c), req)
		}))
	healthpb.RegisterHealthServer(srv, health.NewServer())
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.addr = lis.Addr().String()
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(lis) }()
	t.Cleanup(func() { srv.Stop(); <-done })
	return e
}

// call makes one RPC presenting client (nil: no certificate) and returns the
// server-side authentication result and the client's error.
func (e *env) call(t *testing.T, client *tls.Certificate) (result, error) {
	t.Helper()
	roots := x509.NewCertPool()
	roots.AddCert(e.ca.Certificate())
	cfg := &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS13}
	if client != nil {
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return client, nil }
	}
	conn, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, callErr := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	select {
	case r := <-e.results:
		return r, callErr
	default:
		t.Fatalf("server never authenticated the call: %v", callErr)
		return result{}, nil
	}
}

func TestValidSVID(t *testing.T) {
	e := startServer(t)
	id := spiffeid.RequireFromPath(td, "/ns/capi-system/sa/capa-controller-manager")
	svid := mint(t, e.ca, id)
	cert := tlsCert(svid)

	r, err := e.call(t, &cert)
	if err != nil || r.err != nil {
		t.Fatalf("call: %v, authenticate: %v", err, r.err)
	}
	want := attest.Caller{ID: id, Method: attest.MethodX509SVID, ExpiresAt: svid.Certificates[0].NotAfter}
	if r.caller != want {
		t.Errorf("caller = %+v, want %+v", r.caller, want)
	}
}

func TestNodeSVIDGetsConstraints(t *testing.T) {
	e := startServer(t)
	node, err := attest.NodeID(td, attest.ClusterRef{Namespace: "default", Name: "prod-1"}, "prod-1-md-0-abcde")
	if err != nil {
		t.Fatal(err)
	}
	cert := tlsCert(mint(t, e.ca, node))
	r, err := e.call(t, &cert)
	if err != nil || r.err != nil {
		t.Fatalf("call: %v, authenticate: %v", err, r.err)
	}
	want := attest.Constraints{Cluster: "default/prod-1", Node: "prod-1-md-0-abcde"}
	if r.caller.Constraints != want || r.caller.ID != node {
		t.Errorf("caller = %+v, want constraints %+v", r.caller, want)
	}
}

func TestNoClientCertificateIsNoEvidence(t *testing.T) {
	e := startServer(t)
	r, err := e.call(t, nil)
	if !errors.Is(r.err, attest.ErrNoEvidence) {
		t.Errorf("Authenticate = %v, want ErrNoEvidence", r.err)
	}
	if status.Code(err) != codes.Unauthenticated {
		t.Errorf("client got %v", err)
	}
}

func TestRejected(t *testing.T) {
	e := startServer(t)
	evilTD := spiffeid.RequireTrustDomainFromString("evil.org")
	foreign := newCA(t, evilTD, e.now)
	impostor := newCA(t, td, e.now) // claims our trust domain, but is not our CA
	selfSigned := selfSignedNoURI(t)

	for name, tc := range map[string]struct {
		cert tls.Certificate
		want string
	}{
		"foreign trust domain": {tlsCert(mint(t, foreign, spiffeid.RequireFromPath(evilTD, "/x"))),
			`x509svid: no trust bundle for trust domain "evil.org"`},
		"impostor CA": {tlsCert(mint(t, impostor, spiffeid.RequireFromPath(td, "/admin"))),
			`x509svid: certificate is not signed by the trust bundle for trust domain "broker.test"`},
		"expired": {tlsCert(mintAt(t, e.ca, e.now.Add(-2*time.Hour))),
			"x509svid: certificate has expired or is not yet valid"},
		"not yet valid": {tlsCert(mintAt(t, e.ca, e.now.Add(2*time.Hour))),
			"x509svid: certificate has expired or is not yet valid"},
		"not an SVID": {selfSigned,
			"x509svid: certificate is not an X.509-SVID: certificate contains no URI SAN"},
	} {
		t.Run(name, func(t *testing.T) {
			r, err := e.call(t, &tc.cert)
			if r.err == nil || errors.Is(r.err, attest.ErrNoEvidence) {
				t.Fatalf("Authenticate = %+v, %v; want a verification error", r.caller, r.err)
			}
			if r.err.Error() != tc.want {
				t.Errorf("error %q, want %q", r.err, tc.want)
			}
			if status.Code(err) != codes.Unauthenticated || !strings.Contains(status.Convert(err).Message(), tc.want) {
				t.Errorf("client got %v", err)
			}
			leaked := base64.StdEncoding.EncodeToString(tc.cert.Leaf.Raw)[:32]
			if strings.Contains(r.err.Error(), leaked) || strings.Contains(r.err.Error(), "BEGIN") {
				t.Errorf("error %q contains the certificate", r.err)
			}
		})
	}
}

// mintAt mints a one-hour SVID as if the CA's clock read at.
func mintAt(t *testing.T, c *ca.CA, at time.Time) *spiffex509svid.SVID {
	t.Helper()
	return mint(t, c.With(ca.WithClock(fixed(at))), spiffeid.RequireFromPath(td, "/w"))
}

func TestAuthenticatorClock(t *testing.T) {
	// A certificate valid by the wall clock is expired by the injected one.
	later := startServer(t, x509svid.WithClock(fixed(time.Now().Add(3*time.Hour))))
	cert := tlsCert(mint(t, later.ca, spiffeid.RequireFromPath(td, "/w")))
	r, err := later.call(t, &cert)
	if r.err == nil || !strings.Contains(r.err.Error(), "expired") || status.Code(err) != codes.Unauthenticated {
		t.Errorf("Authenticate = %v, client %v; want expired", r.err, err)
	}
}

func selfSignedNoURI(t *testing.T) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "client"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
}

// plainAuth is the AuthInfo of a connection without TLS.
type plainAuth struct{}

func (plainAuth) AuthType() string { return "insecure" }

func TestNoTLSIsNoEvidence(t *testing.T) {
	auth := x509svid.New(x509bundle.New(td))
	if _, err := auth.Authenticate(context.Background()); !errors.Is(err, attest.ErrNoEvidence) {
		t.Errorf("no peer: %v", err)
	}
	ctx := peer.NewContext(context.Background(), &peer.Peer{Addr: &net.TCPAddr{}, AuthInfo: plainAuth{}})
	if _, err := auth.Authenticate(ctx); !errors.Is(err, attest.ErrNoEvidence) {
		t.Errorf("insecure peer: %v", err)
	}
}

func TestConstraintsFor(t *testing.T) {
	for path, want := range map[string]attest.Constraints{
		"/capi/cluster/default/prod-1/node/n-1":       {Cluster: "default/prod-1", Node: "n-1"},
		"/capi/cluster/default/prod-1/node":           {},
		"/capi/cluster/default/prod-1/node/n-1/extra": {},
		"/capi/cluster/default/prod-1/nodes/n-1":      {},
		"/x/capi/cluster/default/prod-1/node/n-1":     {},
		"/ns/capi-system/sa/capa-controller-manager":  {},
		"": {},
	} {
		id := spiffeid.RequireFromPath(td, path)
		if got := attest.ConstraintsFor(id); got != want {
			t.Errorf("ConstraintsFor(%q) = %+v, want %+v", path, got, want)
		}
	}
	if _, err := attest.NodeID(td, attest.ClusterRef{Namespace: "default", Name: "a/b"}, "n"); err == nil {
		t.Error("NodeID accepted a segment with a slash")
	}
	id, err := attest.NodeID(td, attest.ClusterRef{Namespace: "ns", Name: "c"}, "n")
	if err != nil || id.String() != "spiffe://broker.test/capi/cluster/ns/c/node/n" {
		t.Errorf("NodeID = %v, %v", id, err)
	}
}
