package daemon

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/credbroker/credbroker/internal/ca"
	"github.com/credbroker/credbroker/test/spiffetest"
)

// spireAgent is a Workload API serving SVIDs for ids (in that order) of the
// trust domain spire.test, with its bundles.
func spireAgent(t *testing.T, dir string, ids ...string) (*spiffetest.WorkloadAPI, *ca.CA) {
	t.Helper()
	td := spiffeid.RequireTrustDomainFromString("spire.test")
	authority, err := ca.New(td)
	if err != nil {
		t.Fatal(err)
	}
	agent, err := spiffetest.StartWorkloadAPI(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { agent.Close() })
	var svids []*x509svid.SVID
	for _, id := range ids {
		s, err := authority.MintX509SVID(spiffeid.RequireFromString(id), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		svids = append(svids, s)
	}
	if err := agent.SetX509(svids, x509bundle.NewSet(authority.X509Bundle())); err != nil {
		t.Fatal(err)
	}
	if err := agent.SetJWTBundles(jwtbundle.NewSet(authority.JWTBundle())); err != nil {
		t.Fatal(err)
	}
	return agent, authority
}

func spireConfig(dir, socket, extraTLS string) string {
	return `
trust_domain: spire.test
listen: 127.0.0.1:0
http_listen: 127.0.0.1:0
data_dir: ` + filepath.Join(dir, "data") + `
tls: {workload_api_socket: "` + socket + `"` + extraTLS + `}
issuers: {oidc: {type: jwt}}
profiles: {tok: {issuer: oidc, max_ttl: 1h}}
policy: [{id: "spiffe://spire.test/ns/*/sa/capa-controller-manager", profiles: [tok]}]
`
}

// TestBrokerChoosesItsSVIDByID: the agent serves the broker's pod two
// SVIDs; with tls.spiffe_id the broker serves the one named, not the
// agent's first, and says at start which identity it serves as.
func TestBrokerChoosesItsSVIDByID(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	agent, authority := spireAgent(t, dir, "spiffe://spire.test/ns/credbroker/sa/default", "spiffe://spire.test/credbroker")
	d := startDaemon(t, dir, spireConfig(dir, agent.Addr(), `, spiffe_id: "spiffe://spire.test/credbroker"`))
	defer d.stop(t)

	if !strings.Contains(d.logs.String(), "spiffe_id=spiffe://spire.test/credbroker ") {
		t.Errorf("the serving line does not name the broker's identity:\n%s", d.logs.String())
	}
	// Any TLS client sees the identity: ask the health service, which needs
	// no client certificate.
	conn, err := grpc.NewClient(d.grpcAddr, grpc.WithTransportCredentials(credentials.NewTLS(
		tlsconfig.TLSClientConfig(x509bundle.NewSet(authority.X509Bundle()), tlsconfig.AuthorizeAny()))))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var p peer.Peer
	if _, err := healthpb.NewHealthClient(conn).Check(d.ctx, &healthpb.HealthCheckRequest{}, grpc.Peer(&p)); err != nil {
		t.Fatal(err)
	}
	leaf := p.AuthInfo.(credentials.TLSInfo).State.PeerCertificates[0]
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != "spiffe://spire.test/credbroker" {
		t.Fatalf("the broker presents %v", leaf.URIs)
	}
}

// TestBrokerStartWithoutIdentitySaysWhy: a broker that gets no SVID from the
// Workload API fails to start with the reason: no socket, no registration
// entry for it, or no SVID with its tls.spiffe_id.
func TestBrokerStartWithoutIdentitySaysWhy(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	noEntry, _ := spireAgent(t, filepath.Join(dir), "spiffe://spire.test/credbroker")
	noEntry.SetError(status.Error(codes.PermissionDenied, "no identity issued"))
	otherDir := filepath.Join(dir, "o")
	if err := os.Mkdir(otherDir, 0o700); err != nil {
		t.Fatal(err)
	}
	other, _ := spireAgent(t, otherDir, "spiffe://spire.test/ns/credbroker/sa/default")

	for name, tc := range map[string]struct {
		socket, extra, want string
	}{
		"missing socket": {"unix://" + filepath.Join(dir, "nope.sock"), `, workload_api_timeout: 100ms`, "does not exist"},
		// The agent refuses at once; the bound only ends the retries.
		"no registration entry": {noEntry.Addr(), `, workload_api_timeout: 2s`, "no registration entry matches"},
		"another identity": {other.Addr(), `, spiffe_id: "spiffe://spire.test/credbroker"`,
			"serves this workload spiffe://spire.test/ns/credbroker/sa/default, not spiffe://spire.test/credbroker"},
	} {
		t.Run(name, func(t *testing.T) {
			sub := t.TempDir()
			cfgFile := filepath.Join(sub, "config.yaml")
			if err := os.WriteFile(cfgFile, []byte(spireConfig(sub, tc.socket, tc.extra)), 0o600); err != nil {
				t.Fatal(err)
			}
			err := Run(context.Background(), Options{ConfigFile: cfgFile, Stdout: io.Discard, Stderr: io.Discard})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Run = %v, want an error saying %q", err, tc.want)
			}
		})
	}
}
