package daemon

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffegrpc/grpccredentials"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"

	"github.com/credbroker/credbroker/internal/ca"
	"github.com/credbroker/credbroker/internal/svidfile"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/test/spiffetest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// logSink collects the daemon's logs and signals when it is serving.
type logSink struct {
	mu       sync.Mutex
	buf      bytes.Buffer
	serving  chan string
	reloaded chan string // the log line of each completed reload or failure
}

var servingRE = regexp.MustCompile(`msg=serving grpc=(\S+) http=(\S+)`)

func (s *logSink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.buf.Write(p)
	if m := servingRE.FindSubmatch(p); m != nil {
		s.serving <- string(m[1]) + " " + string(m[2])
	}
	if s.reloaded != nil && (bytes.Contains(p, []byte("reloaded SVID")) || bytes.Contains(p, []byte("cannot reload")) ||
		bytes.Contains(p, []byte("identity updated from the Workload API"))) {
		s.reloaded <- string(p)
	}
	return len(p), nil
}

func (s *logSink) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}

// running is a daemon started by startDaemon.
type running struct {
	grpcAddr, httpAddr string
	logs               *logSink
	reload             chan os.Signal
	ctx                context.Context
	cancel             context.CancelFunc
	done               chan error
}

// startDaemon writes cfg to dir/config.yaml, runs the daemon on it and
// returns once the daemon logs that it is serving.
func startDaemon(t *testing.T, dir, cfg string) *running {
	t.Helper()
	cfgFile := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	r := &running{
		logs:   &logSink{serving: make(chan string, 1), reloaded: make(chan string, 4)},
		reload: make(chan os.Signal, 1),
		done:   make(chan error, 1),
	}
	r.ctx, r.cancel = context.WithCancel(context.Background())
	go func() {
		r.done <- Run(r.ctx, Options{ConfigFile: cfgFile, Stdout: io.Discard, Stderr: r.logs, Reload: r.reload})
	}()
	select {
	case addrs := <-r.logs.serving:
		r.grpcAddr, r.httpAddr, _ = strings.Cut(addrs, " ")
	case err := <-r.done:
		t.Fatalf("Run: %v\n%s", err, r.logs.String())
	}
	return r
}

// stop cancels the daemon and checks that it stopped cleanly.
func (r *running) stop(t *testing.T) {
	t.Helper()
	r.cancel()
	if err := <-r.done; err != nil {
		t.Fatalf("Run after cancel: %v", err)
	}
	if !strings.Contains(r.logs.String(), "msg=stopped") {
		t.Errorf("no clean stop:\n%s", r.logs.String())
	}
}

// productionIdentity writes the broker's SVID and the trust domain's bundles
// (X.509 and JWT) to dir/tls from a CA standing in for SPIRE's, and returns
// the start of a configuration file using them, with data in dir/data.
func productionIdentity(t *testing.T, dir string) (spiffeid.TrustDomain, *ca.CA, string) {
	t.Helper()
	td := spiffeid.RequireTrustDomainFromString("prod.test")
	authority, err := ca.New(td)
	if err != nil {
		t.Fatal(err)
	}
	serverSVID, err := authority.MintX509SVID(spiffeid.RequireFromPath(td, "/credbroker"), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := svidfile.Write(filepath.Join(dir, "tls"), serverSVID, authority.X509Bundle()); err != nil {
		t.Fatal(err)
	}
	jwks, err := authority.JWTBundle().Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "tls", "jwt_bundle.json"), jwks, 0o600); err != nil {
		t.Fatal(err)
	}
	return td, authority, `
trust_domain: prod.test
listen: 127.0.0.1:0
http_listen: 127.0.0.1:0
data_dir: ` + filepath.Join(dir, "data") + `
tls:
  svid_file: ` + filepath.Join(dir, "tls", "svid.pem") + `
  svid_key_file: ` + filepath.Join(dir, "tls", "svid_key.pem") + `
  bundles: {prod.test: ` + filepath.Join(dir, "tls", "bundle.pem") + `}
  jwt_bundles: {prod.test: ` + filepath.Join(dir, "tls", "jwt_bundle.json") + `}`
}

// TestProductionConfig runs the daemon on a configuration file with SVID and
// bundle files, as a deployment next to SPIRE would, serves an X.509-SVID
// caller and a JWT-SVID caller, then shuts down on context cancel.
func TestProductionConfig(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	td, authority, cfg := productionIdentity(t, dir)
	cfg += `
jwt_svid_audiences: [credbroker-prod]
issuers:
  oidc: {type: jwt, jwt: {issuer_url: "https://credbroker.prod.test/oidc"}}
profiles:
  web-identity: {issuer: oidc, max_ttl: 1h, audiences: [sts.amazonaws.com], cluster: required}
policy:
  - id: spiffe://prod.test/ns/*/sa/capa-controller-manager
    profiles: [web-identity]
    clusters: ["capi-*/*"]
limits: {rate: 10, burst: 10, cluster_quota: {max: 100, window: 1h}}
`
	d := startDaemon(t, dir, cfg)
	ctx, logs, hup, grpcAddr, httpAddr := d.ctx, d.logs, d.reload, d.grpcAddr, d.httpAddr

	controller := spiffeid.RequireFromPath(td, "/ns/capa-system/sa/capa-controller-manager")
	clientSVID, err := authority.MintX509SVID(controller, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	bundles := x509bundle.NewSet(authority.X509Bundle())
	mtls, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(
		grpccredentials.MTLSClientCredentials(clientSVID, bundles, tlsconfig.AuthorizeMemberOf(td))))
	if err != nil {
		t.Fatal(err)
	}
	defer mtls.Close()
	req := &credbrokerv1.IssueCredentialRequest{Profile: "web-identity", Cluster: "capi-a/c1"}
	resp, err := credbrokerv1.NewBrokerServiceClient(mtls).IssueCredential(ctx, req)
	if err != nil {
		t.Fatalf("X.509-SVID caller: %v", err)
	}
	if resp.GetCredential().GetToken().GetToken() == "" || resp.GetCredential().GetCluster() != "capi-a/c1" {
		t.Fatalf("credential = %v", resp.GetCredential())
	}

	jwtSVID, err := authority.MintJWTSVID(controller, []string{"credbroker-prod"}, 5*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	tlsOnly, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(
		grpccredentials.TLSClientCredentials(bundles, tlsconfig.AuthorizeMemberOf(td))))
	if err != nil {
		t.Fatal(err)
	}
	defer tlsOnly.Close()
	jctx := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+jwtSVID)
	if _, err := credbrokerv1.NewBrokerServiceClient(tlsOnly).IssueCredential(jctx, req); err != nil {
		t.Fatalf("JWT-SVID caller: %v", err)
	}

	// Discovery is served under the configured issuer URL, and metrics count decisions.
	body := httpGet(t, "http://"+httpAddr+"/oidc/.well-known/openid-configuration")
	if !strings.Contains(body, `"issuer":"https://credbroker.prod.test/oidc"`) || !strings.Contains(body, `"jwks_uri":"https://credbroker.prod.test/oidc/.well-known/jwks.json"`) {
		t.Errorf("discovery = %s", body)
	}
	if m := httpGet(t, "http://"+httpAddr+"/metrics"); !strings.Contains(m, `credbroker_decisions_total{decision="issued",profile="web-identity"} 2`) ||
		!strings.Contains(m, `grpc_server_handled_total{grpc_code="OK",grpc_method="IssueCredential",grpc_service="credbroker.v1.BrokerService",grpc_type="unary"} 2`) {
		t.Errorf("metrics do not count the issuances:\n%s", grepLines(m, "credbroker_"))
	}
	// Both listeners are behind their connection limits: the gRPC client and
	// this HTTP client hold connections they count.
	m := httpGet(t, "http://"+httpAddr+"/metrics")
	for _, lis := range []string{"grpc", "http"} {
		if !regexp.MustCompile(`(?m)^credbroker_connections_open\{listener="` + lis + `"\} [1-9]`).MatchString(m) {
			t.Errorf("%s listener not behind its connection limits:\n%s", lis, grepLines(m, "credbroker_connections"))
		}
	}
	if jwks := httpGet(t, "http://"+httpAddr+"/oidc/.well-known/jwks.json"); !strings.Contains(jwks, `"alg":"ES256"`) {
		t.Errorf("jwks = %s", jwks)
	}
	if !strings.Contains(body, `"credbroker_revoked_jtis_uri":"https://credbroker.prod.test/oidc/.well-known/credbroker-revoked-jtis.json"`) {
		t.Errorf("discovery does not advertise the revoked-token list: %s", body)
	}
	if rev := httpGet(t, "http://"+httpAddr+"/oidc/.well-known/credbroker-revoked-jtis.json"); !strings.Contains(rev, `"revoked":[]`) {
		t.Errorf("revoked-token list = %s", rev)
	}
	if h := httpGet(t, "http://"+httpAddr+"/healthz"); h != "ok\n" {
		t.Errorf("healthz = %q", h)
	}

	// Rotation, as a SPIRE agent writing files does it: a new broker SVID and
	// a bundle that now also holds a second authority. A broken write first:
	// the broker keeps serving with what it had.
	tlsDir := filepath.Join(dir, "tls")
	if err := os.WriteFile(filepath.Join(tlsDir, "bundle.pem"), []byte("garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	hup <- syscall.SIGHUP
	if line := <-logs.reloaded; !strings.Contains(line, "cannot reload") {
		t.Fatalf("a broken bundle file was accepted: %s", line)
	}
	if _, err := credbrokerv1.NewBrokerServiceClient(mtls).IssueCredential(ctx, req); err != nil {
		t.Fatalf("broker stopped serving after a failed reload: %v", err)
	}
	authority2, err := ca.New(td)
	if err != nil {
		t.Fatal(err)
	}
	rotated, err := authority.MintX509SVID(spiffeid.RequireFromPath(td, "/credbroker"), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	both := authority.X509Bundle()
	for _, c := range authority2.X509Bundle().X509Authorities() {
		both.AddX509Authority(c)
	}
	if err := svidfile.Write(tlsDir, rotated, both); err != nil {
		t.Fatal(err)
	}
	hup <- syscall.SIGHUP
	if line := <-logs.reloaded; !strings.Contains(line, "reloaded SVID") {
		t.Fatalf("reload failed: %s", line)
	}
	// A caller whose SVID comes from the new authority is now trusted, and new
	// connections see the rotated server certificate.
	svid2, err := authority2.MintX509SVID(controller, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	conn2, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(credentials.NewTLS(
		tlsconfig.MTLSClientConfig(svid2, x509bundle.NewSet(both), tlsconfig.AuthorizeMemberOf(td)))))
	if err != nil {
		t.Fatal(err)
	}
	defer conn2.Close()
	var p peer.Peer
	if _, err := credbrokerv1.NewBrokerServiceClient(conn2).IssueCredential(ctx, req, grpc.Peer(&p)); err != nil {
		t.Fatalf("caller from the rotated-in authority: %v", err)
	}
	state := p.AuthInfo.(credentials.TLSInfo).State
	if state.PeerCertificates[0].SerialNumber.Cmp(rotated.Certificates[0].SerialNumber) != 0 {
		t.Errorf("new connections still get the old server certificate")
	}

	d.stop(t)
	if _, err := os.Stat(filepath.Join(dir, "data", "admin.sock")); !os.IsNotExist(err) {
		t.Errorf("admin socket left behind: %v", err)
	}
}

func httpGet(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func grepLines(s, substr string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func TestConfigErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	base := "trust_domain: prod.test\nissuers: {oidc: {type: jwt}}\nprofiles: {p: {issuer: oidc, max_ttl: 1h}}\n"
	for name, tc := range map[string]struct {
		cfg  string
		want string
	}{
		"no identity source": {base, "set tls.workload_api_socket, or tls.svid_file and tls.svid_key_file"},
		"missing svid file": {base + "tls: {svid_file: /nonexistent/svid.pem, svid_key_file: /nonexistent/key.pem, bundles: {prod.test: /nonexistent/b.pem}}\n",
			"broker SVID"},
		"unknown key": {base + "tls: {svid_fil: x}\n", "svid_fil"},
	} {
		t.Run(name, func(t *testing.T) {
			err := Run(context.Background(), Options{ConfigFile: write(strings.ReplaceAll(name, " ", "_")+".yaml", tc.cfg), DataDir: filepath.Join(dir, "data"), Stdout: io.Discard, Stderr: io.Discard})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Run = %v, want an error mentioning %q", err, tc.want)
			}
		})
	}
}

// blockingHealth answers Check only when released, to hold an RPC in flight.
type blockingHealth struct {
	healthpb.UnimplementedHealthServer
	entered chan struct{}
	release chan struct{}
}

func (b *blockingHealth) Check(ctx context.Context, _ *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	b.entered <- struct{}{}
	select {
	case <-b.release:
		return &healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// startBlocking serves blockingHealth and returns once one request is in
// its handler; res receives that request's outcome.
func startBlocking(t *testing.T) (*grpc.Server, *blockingHealth, <-chan error) {
	t.Helper()
	s := grpc.NewServer()
	h := &blockingHealth{entered: make(chan struct{}, 1), release: make(chan struct{})}
	healthpb.RegisterHealthServer(s, h)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(lis)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	out := make(chan error, 1)
	go func() {
		_, err := healthpb.NewHealthClient(conn).Check(context.Background(), &healthpb.HealthCheckRequest{})
		out <- err
	}()
	<-h.entered
	return s, h, out
}

func TestShutdownDrainsInFlightRequests(t *testing.T) {
	t.Parallel()
	s, h, res := startBlocking(t)
	stopped := make(chan struct{})
	go func() { shutdown(s, time.Hour); close(stopped) }()
	select {
	case <-stopped:
		t.Fatal("shutdown returned while a request was in flight")
	case <-time.After(50 * time.Millisecond):
	}
	close(h.release)
	if err := <-res; err != nil {
		t.Fatalf("in-flight request failed during graceful shutdown: %v", err)
	}
	<-stopped
}

func TestShutdownCutsOffAfterGrace(t *testing.T) {
	t.Parallel()
	s, h, res := startBlocking(t)
	shutdown(s, 10*time.Millisecond) // returns although the handler never finishes by itself
	if err := <-res; err == nil {
		t.Fatal("request outlived a forced stop")
	}
	close(h.release)
}

// TestWorkloadAPIIdentity runs the broker with its identity from a SPIFFE
// Workload API on a real unix socket, as beside a SPIRE agent, and follows a
// rotation the agent pushes.
func TestWorkloadAPIIdentity(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	td := spiffeid.RequireTrustDomainFromString("spire.test")
	authority, err := ca.New(td)
	if err != nil {
		t.Fatal(err)
	}
	agent, err := spiffetest.StartWorkloadAPI(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer agent.Close()
	brokerID := spiffeid.RequireFromPath(td, "/credbroker")
	first, err := authority.MintX509SVID(brokerID, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	bundles := x509bundle.NewSet(authority.X509Bundle())
	if err := agent.SetX509([]*x509svid.SVID{first}, bundles); err != nil {
		t.Fatal(err)
	}
	if err := agent.SetJWTBundles(jwtbundle.NewSet(authority.JWTBundle())); err != nil {
		t.Fatal(err)
	}
	cfg := `
trust_domain: spire.test
listen: 127.0.0.1:0
http_listen: 127.0.0.1:0
data_dir: ` + filepath.Join(dir, "data") + `
tls: {workload_api_socket: "` + agent.Addr() + `"}
issuers: {oidc: {type: jwt}}
profiles: {tok: {issuer: oidc, max_ttl: 1h}}
policy: [{id: "spiffe://spire.test/ns/*/sa/capa-controller-manager", profiles: [tok]}]
`
	d := startDaemon(t, dir, cfg)
	ctx, logs, grpcAddr := d.ctx, d.logs, d.grpcAddr

	caller, err := authority.MintX509SVID(spiffeid.RequireFromPath(td, "/ns/capa-system/sa/capa-controller-manager"), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	issueOnce := func() *x509.Certificate {
		t.Helper()
		conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(credentials.NewTLS(
			tlsconfig.MTLSClientConfig(caller, bundles, tlsconfig.AuthorizeID(brokerID)))))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		var p peer.Peer
		if _, err := credbrokerv1.NewBrokerServiceClient(conn).IssueCredential(ctx, &credbrokerv1.IssueCredentialRequest{Profile: "tok"}, grpc.Peer(&p)); err != nil {
			t.Fatalf("issue: %v", err)
		}
		return p.AuthInfo.(credentials.TLSInfo).State.PeerCertificates[0]
	}
	if got := issueOnce(); got.SerialNumber.Cmp(first.Certificates[0].SerialNumber) != 0 {
		t.Fatal("the broker does not serve the SVID the agent gave it")
	}

	// The agent rotates the broker's SVID: new connections get the new one.
	second, err := authority.MintX509SVID(brokerID, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := agent.SetX509([]*x509svid.SVID{second}, bundles); err != nil {
		t.Fatal(err)
	}
	if line := <-logs.reloaded; !strings.Contains(line, "identity updated from the Workload API") {
		t.Fatalf("unexpected log line %s", line)
	}
	if got := issueOnce(); got.SerialNumber.Cmp(second.Certificates[0].SerialNumber) != 0 {
		t.Fatal("the broker still serves the old SVID after the agent rotated it")
	}
	d.stop(t)
}

// A webhook whose secret cannot be read stops the broker at start, naming
// the variable, rather than losing its alerts later.
func TestAlertWebhookSecretRequired(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cfg := filepath.Join(dir, "alerts.yaml")
	body := "trust_domain: dev.credbroker.test\nlisten: 127.0.0.1:0\nhttp_listen: 127.0.0.1:0\n" +
		"issuers: {oidc: {type: jwt}}\nprofiles: {p: {issuer: oidc, max_ttl: 1h}}\n" +
		"alerts: {webhooks: [{name: ops, url: 'https://hooks.example.test/x', secret_env: CREDBROKER_TEST_UNSET_HOOK_KEY}]}\n"
	if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	err := Run(context.Background(), Options{Dev: true, ConfigFile: cfg, DataDir: filepath.Join(dir, "data"), Stdout: io.Discard, Stderr: io.Discard})
	if err == nil || !strings.Contains(err.Error(), "CREDBROKER_TEST_UNSET_HOOK_KEY") {
		t.Fatalf("Run = %v, want an error naming the secret's variable", err)
	}
}

// TestConnectionLimitsFromConfig: limits.connections bounds the gRPC
// listener: with per_address 2, a third connection from an address holding
// two (before any handshake) is closed at once and counted.
func TestConnectionLimitsFromConfig(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	_, _, base := productionIdentity(t, dir)
	d := startDaemon(t, dir, base+`
issuers: {oidc: {type: jwt}}
profiles: {tok: {issuer: oidc, max_ttl: 1h}}
policy: [{id: "spiffe://prod.test/ns/*/sa/capa-controller-manager", profiles: [tok]}]
limits: {connections: {per_address: 2, total: 4}}
`)
	defer d.stop(t)
	for range 2 {
		c, err := net.Dial("tcp", d.grpcAddr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	third, err := net.Dial("tcp", d.grpcAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer third.Close()
	// The broker closes it as soon as it accepts it; the deadline only
	// bounds a broken test (the handshake timeout is 10s).
	if err := third.SetReadDeadline(time.Now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if n, err := third.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the third connection from one address: read %d bytes, %v; want it closed by the broker", n, err)
	}
	m := httpGet(t, "http://"+d.httpAddr+"/metrics")
	if !regexp.MustCompile(`(?m)^credbroker_connections_refused_total\{listener="grpc",reason="[a-z_]+"\} 1$`).MatchString(m) {
		t.Errorf("the refused connection is not counted once:\n%s", grepLines(m, "credbroker_connections"))
	}
}
