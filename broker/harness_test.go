package broker_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
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
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"go.etcd.io/bbolt"
	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/credbroker/credbroker/attest"
	"github.com/credbroker/credbroker/attest/jwtsvid"
	attestx509 "github.com/credbroker/credbroker/attest/x509svid"
	"github.com/credbroker/credbroker/broker"
	"github.com/credbroker/credbroker/broker/alerts"
	"github.com/credbroker/credbroker/broker/audit"
	"github.com/credbroker/credbroker/broker/config"
	"github.com/credbroker/credbroker/broker/limits"
	"github.com/credbroker/credbroker/broker/nodeauth"
	"github.com/credbroker/credbroker/broker/policy"
	"github.com/credbroker/credbroker/broker/state"
	"github.com/credbroker/credbroker/broker/state/boltstate"
	"github.com/credbroker/credbroker/internal/ca"
	"github.com/credbroker/credbroker/internal/webhook"
	"github.com/credbroker/credbroker/issuers"
	"github.com/credbroker/credbroker/issuers/jwt"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/test/fakeclock"
)

var (
	td           = spiffeid.RequireTrustDomainFromString("example.test")
	controllerID = spiffeid.RequireFromPath(td, "/ns/capi-system/sa/capa-controller-manager")
	adminID      = spiffeid.RequireFromPath(td, "/credbroker/admin")
	serverID     = spiffeid.RequireFromPath(td, "/credbroker/server")
)

// countingIssuer wraps the real JWT issuer and counts upstream calls.
type countingIssuer struct {
	issuers.Issuer
	calls atomic.Int64
}

func (c *countingIssuer) Issue(ctx context.Context, r issuers.Request) (issuers.Credential, error) {
	c.calls.Add(1)
	return c.Issuer.Issue(ctx, r)
}

// scriptedIssuer stands for an upstream issuer whose answers a test sets.
type scriptedIssuer struct {
	mu    sync.Mutex
	cred  issuers.Credential
	err   error
	calls int
	// answer, when set, answers instead of cred and err (outside mu).
	answer func(call int, r issuers.Request) (issuers.Credential, error)
}

func (s *scriptedIssuer) set(cred issuers.Credential, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cred, s.err = cred, err
}

func (s *scriptedIssuer) Issue(_ context.Context, r issuers.Request) (issuers.Credential, error) {
	s.mu.Lock()
	s.calls++
	call, answer := s.calls, s.answer
	cred, err := s.cred, s.err
	s.mu.Unlock()
	if answer != nil {
		return answer(call, r)
	}
	return cred, err
}

func (s *scriptedIssuer) Effect() issuers.Effect { return issuers.EffectUpstream }

func (s *scriptedIssuer) callCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls
}

// panicIssuer stands for an issuer with a bug.
type panicIssuer struct{}

func (panicIssuer) Issue(context.Context, issuers.Request) (issuers.Credential, error) {
	panic("issuer bug")
}

func (panicIssuer) Effect() issuers.Effect { return issuers.EffectUpstream }

// syncBuffer is a log sink safe for concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type harnessConfig struct {
	limits limits.Config
	rules  []policy.Rule
	uids   []uint32
	// adminJWT lets admins use JWT-SVIDs on the admin API.
	adminJWT bool
	requests broker.RequestLimits
	refusals broker.RefusalLimits
	// nodes turns on node attestation (join tokens, node SVIDs from h.ca).
	nodes bool
	// nodesCurrent is the node authority's check that the shared state is
	// current (nodeauth.NodeDeps.Current); nil: none.
	nodesCurrent func() error
	// profileLimits and ruleLimits are the profiles' and the rules' own
	// issuance limits over limits.
	profileLimits map[string]limits.Override
	ruleLimits    []limits.Override
	// upstreamRevokers are the issuers, by name, whose credentials a
	// revocation also revokes upstream.
	upstreamRevokers map[string]issuers.UpstreamRevoker
	// watch configures revocation watches (default: 2 per identity, 100
	// in total, the default heartbeat).
	watch broker.WatchConfig
	// adminState, when set, wraps the state the admin API changes.
	adminState func(broker.AdminState) broker.AdminState
	// alerts, when set, wires an Alerter as the daemon does (defaults
	// applied here), with webhook for its sender's test knobs.
	alerts  *config.Alerts
	webhook webhook.Options
	// serverOptions add optional services (health, reflection).
	serverOptions []broker.ServerOption
	// openApprovals bounds the approvals held over all identities (0: the
	// default).
	openApprovals int
}

// harness is a real broker: real TLS on loopback, real bbolt on a temp file,
// the real JWT issuer, real go-spiffe verification.
type harness struct {
	t          *testing.T
	ca         *ca.CA
	clock      *fakeclock.Clock
	addr       string
	adminSock  string
	dbPath     string
	db         *bbolt.DB
	audit      *audit.Log
	state      *boltstate.Store
	revoke     *broker.Revocations
	approvals  *broker.Approvals
	alerts     *recordedAlerts
	svc        *broker.Service
	issuer     *countingIssuer
	jwtIssuer  *jwt.Issuer
	upstream   *scriptedIssuer
	logs       *syncBuffer
	grpcServer *grpc.Server
	admin      *broker.Admin
	// reg holds the broker's metrics.
	reg      *prometheus.Registry
	refusals *broker.Refusals
	watches  *broker.Watches
	// alerter is set when harnessConfig.alerts is.
	alerter *alerts.Alerter
	// rateLimits and metrics are the Gate's, to share with other servers.
	rateLimits *broker.RateLimits
	metrics    *broker.Metrics
}

func newHarness(t *testing.T, mutate ...func(*harnessConfig)) *harness {
	t.Helper()
	hc := harnessConfig{
		limits: limits.Config{Rate: rate.Limit(100), Burst: 100},
		rules: []policy.Rule{
			{ID: "spiffe://example.test/ns/*/sa/capa-controller-manager", Profiles: []string{"capa-token"}, Clusters: []string{"capi-*/*"}},
			{ID: "spiffe://example.test/capi/cluster/*/*/node/*", Profiles: []string{"capa-token"}, Clusters: []string{"*"}},
			{ID: controllerID.String(), Profiles: []string{"plain-token", "boom", "upstream"}},
		},
		uids:     []uint32{uint32(os.Getuid())},
		requests: broker.DefaultRequestLimits(),
		refusals: broker.DefaultRefusalLimits(),
		watch:    broker.WatchConfig{PerIdentity: 2, Total: 100},
	}
	for _, m := range mutate {
		m(&hc)
	}
	dir := t.TempDir()
	h := &harness{t: t, clock: fakeclock.New(time.Now()), logs: &syncBuffer{}, upstream: &scriptedIssuer{}, dbPath: filepath.Join(dir, "credbroker.db"), adminSock: filepath.Join(dir, "admin.sock")}

	var err error
	if h.ca, err = ca.New(td); err != nil {
		t.Fatal(err)
	}
	if h.db, err = bbolt.Open(h.dbPath, 0o600, nil); err != nil {
		t.Fatal(err)
	}
	if h.audit, err = audit.Open(h.db, audit.WithClock(h.clock.Now)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.audit.Close(); h.db.Close() })
	limiter, err := limits.New(hc.limits, limits.WithClock(h.clock.Now), limits.WithOverrides(hc.profileLimits, hc.ruleLimits))
	if err != nil {
		t.Fatal(err)
	}
	if h.state, err = boltstate.New(h.db); err != nil {
		t.Fatal(err)
	}
	index, err := state.NewRevocationIndex(context.Background(), h.state)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(index.Close)
	log := slog.New(slog.NewTextHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	h.reg = prometheus.NewRegistry()
	var revOpts []broker.RevocationOption
	var refusalOpts []broker.RefusalOption
	var decisionAlerts broker.DecisionAlerts
	var emitter alerts.Emitter
	var nodeAlerts nodeauth.Alerter
	if hc.alerts != nil {
		hc.alerts.ApplyDefaults()
		if h.alerter, err = alerts.New(*hc.alerts, alerts.Options{Log: log, Registerer: h.reg, Now: h.clock.Now, Usage: h.state.Usage, Webhook: hc.webhook}); err != nil {
			t.Fatal(err)
		}
		// Closed after the servers stop (cleanups run last-registered first),
		// without waiting for receivers: a test's receiver may hang.
		t.Cleanup(func() {
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			_ = h.alerter.Close(ctx)
		})
		revOpts = append(revOpts, broker.WithRevocationAlerts(h.alerter))
		refusalOpts = append(refusalOpts, broker.WithRefusalAlerts(h.alerter))
		decisionAlerts, emitter, nodeAlerts = h.alerter, h.alerter, h.alerter
	}
	if hc.upstreamRevokers != nil {
		revOpts = append(revOpts, broker.WithUpstreamRevokers(hc.upstreamRevokers, nil))
	}
	if h.revoke, err = broker.NewRevocations(h.state, index, h.audit, h.clock.Now, newID, revOpts...); err != nil {
		t.Fatal(err)
	}
	ledger, err := h.state.Ledger(h.audit)
	if err != nil {
		t.Fatal(err)
	}
	if h.jwtIssuer, err = jwt.New(jwt.Config{IssuerURL: "https://broker.example.test", KeyFile: filepath.Join(dir, "jwt.pem"), Clock: h.clock.Now}); err != nil {
		t.Fatal(err)
	}
	h.issuer = &countingIssuer{Issuer: h.jwtIssuer}
	pol, err := policy.New(hc.rules)
	if err != nil {
		t.Fatal(err)
	}
	metrics := broker.NewMetrics(h.reg)
	rateLimits, err := broker.NewRateLimits(hc.requests, h.clock.Now)
	if err != nil {
		t.Fatal(err)
	}
	h.refusals, err = broker.NewRefusals(h.audit, metrics, hc.refusals, h.clock.Now, refusalOpts...)
	if err != nil {
		t.Fatal(err)
	}
	hc.watch.Clock, hc.watch.Registerer = h.clock.Now, h.reg
	if h.watches, err = broker.NewWatches(index, h.audit, hc.watch); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.watches.Stop)
	profile := func(name, mode string) broker.Profile {
		return broker.Profile{Name: name, IssuerName: "local", Issuer: h.issuer, DefaultTTL: 5 * time.Minute, MaxTTL: 15 * time.Minute, Audiences: []string{name, "sts.amazonaws.com"}, ClusterMode: mode}
	}
	h.alerts = &recordedAlerts{next: emitter}
	if h.approvals, err = broker.NewApprovals(broker.ApprovalsDeps{Store: h.state, Audit: h.audit, Clock: h.clock.Now, NewID: newID, Log: log,
		Approvers: "an admin other than the requester", Alerts: h.alerts, MaxOpenTotal: hc.openApprovals}); err != nil {
		t.Fatal(err)
	}
	approved := profile("approved-token", config.ClusterOptional)
	approved.Approval = broker.ApprovalRule{Approvers: 2, Window: 10 * time.Minute}
	svc, err := broker.NewService(broker.ServiceDeps{
		Profiles: map[string]broker.Profile{
			"approved-token": approved,
			"approved-upstream": {Name: "approved-upstream", IssuerName: "aws", Issuer: h.upstream, DefaultTTL: 15 * time.Minute, MinTTL: 15 * time.Minute,
				MaxTTL: time.Hour, Audiences: []string{"upstream"}, ClusterMode: config.ClusterNone, Approval: broker.ApprovalRule{Approvers: 1, Window: time.Hour}},
			"capa-token":  profile("capa-token", config.ClusterRequired),
			"plain-token": profile("plain-token", config.ClusterNone),
			"boom":        {Name: "boom", IssuerName: "broken", Issuer: panicIssuer{}, DefaultTTL: time.Minute, MaxTTL: time.Minute, Audiences: []string{"boom"}, ClusterMode: config.ClusterNone},
			"upstream": {Name: "upstream", IssuerName: "aws", Issuer: h.upstream, DefaultTTL: 15 * time.Minute, MinTTL: 15 * time.Minute,
				MaxTTL: time.Hour, Audiences: []string{"upstream"}, ClusterMode: config.ClusterNone},
		},
		Policy: pol, Limiter: limiter, Ledger: ledger, Audit: h.audit, Clock: h.clock.Now, NewID: newID, Log: log, Metrics: metrics, Refusals: h.refusals,
		Revocations: index, Approvals: h.approvals,
		Watches: h.watches,
		Alerts:  decisionAlerts,
	})
	if err != nil {
		t.Fatal(err)
	}
	h.svc = svc
	var nodeAuth *nodeauth.NodeAuthority
	if hc.nodes {
		nodeAuth, err = nodeauth.New(nodeauth.NodeDeps{
			TrustDomain: td, State: h.state, CA: h.ca, Audit: h.audit,
			Bundle:  func() ([]*x509.Certificate, error) { return []*x509.Certificate{h.ca.Certificate()}, nil },
			SVIDTTL: time.Hour, NewID: newID, Log: log, Clock: h.clock.Now, Refusals: h.refusals, Revocations: h.revoke,
			Alerts: nodeAlerts, Current: hc.nodesCurrent,
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	var adminState broker.AdminState = h.state
	if hc.adminState != nil {
		adminState = hc.adminState(adminState)
	}
	var admin *broker.Admin
	if nodeAuth != nil {
		admin = broker.NewAdmin(h.audit, nodeAuth, broker.WithRevocations(h.revoke, adminState), broker.WithDecisions(svc), broker.WithApprovals(h.approvals))
	} else {
		admin = broker.NewAdmin(h.audit, nil, broker.WithRevocations(h.revoke, adminState), broker.WithDecisions(svc), broker.WithApprovals(h.approvals))
	}
	h.admin = admin
	bundles := x509bundle.NewSet(h.ca.X509Bundle())
	gate := broker.NewGate([]attest.Authenticator{
		jwtsvid.New(jwtbundle.NewSet(h.ca.JWTBundle()), []string{"credbroker"}),
		attestx509.New(bundles, attestx509.WithClock(h.clock.Now)),
	}, []string{adminID.String()}, h.audit, metrics, log, broker.WithGateClock(h.clock.Now), broker.WithAdminJWTSVID(hc.adminJWT),
		broker.WithRateLimits(rateLimits), broker.WithRefusals(h.refusals), broker.WithRevocationCheck(index))

	serverSVID := h.mint(serverID, time.Hour)
	tlsConf := tlsconfig.TLSServerConfig(serverSVID)
	tlsConf.ClientAuth = tls.RequestClientCert
	h.rateLimits, h.metrics = rateLimits, metrics
	h.grpcServer = broker.NewGRPCServer(tlsConf, gate, svc, nodeService(nodeAuth), admin, hc.serverOptions...)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h.addr = lis.Addr().String()
	go h.grpcServer.Serve(lis)
	t.Cleanup(h.grpcServer.Stop)

	adminServer := broker.NewAdminSocketServer(hc.uids, admin, log, metrics, rateLimits, h.refusals)
	ulis, err := net.Listen("unix", h.adminSock)
	if err != nil {
		t.Fatal(err)
	}
	go adminServer.Serve(ulis)
	t.Cleanup(adminServer.Stop)
	return h
}

// nodeService is n as a NodeService, or nil (node attestation off) when n is.
func nodeService(n *nodeauth.NodeAuthority) credbrokerv1.NodeServiceServer {
	if n == nil {
		return nil
	}
	return n
}

func newID() (string, error) {
	id, err := uuid.NewV7()
	return id.String(), err
}

func (h *harness) mint(id spiffeid.ID, ttl time.Duration) *x509svid.SVID {
	h.t.Helper()
	svid, err := h.ca.MintX509SVID(id, ttl)
	if err != nil {
		h.t.Fatal(err)
	}
	return svid
}

// dial connects with an X.509-SVID, verifying the broker's SVID.
func (h *harness) dial(svid *x509svid.SVID) *grpc.ClientConn {
	h.t.Helper()
	creds := grpccredentials.MTLSClientCredentials(svid, x509bundle.NewSet(h.ca.X509Bundle()), tlsconfig.AuthorizeID(serverID))
	return h.connect(h.addr, grpc.WithTransportCredentials(creds))
}

// dialNoCert connects over TLS without a client certificate.
func (h *harness) dialNoCert() *grpc.ClientConn {
	h.t.Helper()
	creds := grpccredentials.TLSClientCredentials(x509bundle.NewSet(h.ca.X509Bundle()), tlsconfig.AuthorizeID(serverID))
	return h.connect(h.addr, grpc.WithTransportCredentials(creds))
}

// dialNoCertFrom connects over TLS without a client certificate from the
// loopback address ip (any of 127.0.0.0/8), so that the broker sees a
// distinct source address.
func (h *harness) dialNoCertFrom(ip string) *grpc.ClientConn {
	h.t.Helper()
	creds := grpccredentials.TLSClientCredentials(x509bundle.NewSet(h.ca.X509Bundle()), tlsconfig.AuthorizeID(serverID))
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	return h.connect(h.addr, grpc.WithTransportCredentials(creds), grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
		return d.DialContext(ctx, "tcp", addr)
	}))
}

func (h *harness) dialAdminSocket() *grpc.ClientConn {
	h.t.Helper()
	return h.connect("unix://"+h.adminSock, grpc.WithTransportCredentials(insecure.NewCredentials()))
}

func (h *harness) connect(target string, opts ...grpc.DialOption) *grpc.ClientConn {
	h.t.Helper()
	conn, err := grpc.NewClient(target, opts...)
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { conn.Close() })
	return conn
}

func (h *harness) records() []audit.Record {
	h.t.Helper()
	var out []audit.Record
	if err := h.audit.Export(0, func(r audit.Record) error { out = append(out, r); return nil }); err != nil {
		h.t.Fatal(err)
	}
	return out
}

func (h *harness) lastRecord() audit.Record {
	h.t.Helper()
	recs := h.records()
	if len(recs) == 0 {
		h.t.Fatal("no audit records")
	}
	return recs[len(recs)-1]
}

// verifyAudit runs a VerifyAudit stream to its result, after any progress
// messages.
func verifyAudit(ctx context.Context, c credbrokerv1.AdminServiceClient) (*credbrokerv1.VerifyAuditResult, error) {
	stream, err := c.VerifyAudit(ctx, &credbrokerv1.VerifyAuditRequest{})
	if err != nil {
		return nil, err
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			return nil, err
		}
		if r := resp.GetResult(); r != nil {
			return r, nil
		}
	}
}

func issue(ctx context.Context, conn *grpc.ClientConn, req *credbrokerv1.IssueCredentialRequest) (*credbrokerv1.Credential, error) {
	resp, err := credbrokerv1.NewBrokerServiceClient(conn).IssueCredential(ctx, req)
	return resp.GetCredential(), err
}

func (h *harness) service() *broker.Service { return h.svc }

// withApprovalRules lets the controller ask for the profiles that need
// approval, and the admin identity for approved-token (so that it can try
// to approve its own request).
func withApprovalRules(c *harnessConfig) {
	c.rules = append(c.rules,
		policy.Rule{ID: controllerID.String(), Profiles: []string{"approved-token", "approved-upstream"}},
		policy.Rule{ID: adminID.String(), Profiles: []string{"approved-token"}})
}

// recordedAlerts keeps the alerts raised, in order, and passes them on to
// next (the harness's Alerter, when it has one).
type recordedAlerts struct {
	mu     sync.Mutex
	events []alerts.Event
	next   alerts.Emitter
}

func (r *recordedAlerts) Emit(ctx context.Context, e alerts.Event) {
	r.mu.Lock()
	r.events = append(r.events, e)
	r.mu.Unlock()
	if r.next != nil {
		r.next.Emit(ctx, e)
	}
}

func (r *recordedAlerts) rules() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, e := range r.events {
		out = append(out, e.Rule+" "+e.Subject)
	}
	return out
}
