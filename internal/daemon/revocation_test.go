package daemon

import (
	"crypto/x509"
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
	"google.golang.org/grpc/status"

	"github.com/credbroker/credbroker/internal/ca"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/test/spiffetest"
)

// TestWorkloadAPIAuthorityRevocation: the agent rotates the trust domain's
// X.509 authority (old and new in the bundle, then the broker's SVID from the
// new one) and then revokes the old one (pushes the bundle without it). A
// caller whose SVID chains to the old authority, on a connection whose chain
// the broker has verified and cached, is refused on its next request after
// the revocation; a caller of the new authority goes on being served.
func TestWorkloadAPIAuthorityRevocation(t *testing.T) {
	dir := t.TempDir()
	td := spiffeid.RequireTrustDomainFromString("spire.test")
	oldCA, err := ca.New(td)
	if err != nil {
		t.Fatal(err)
	}
	newCA, err := ca.New(td)
	if err != nil {
		t.Fatal(err)
	}
	agent, err := spiffetest.StartWorkloadAPI(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer agent.Close()
	brokerID := spiffeid.RequireFromPath(td, "/credbroker")
	callerID := spiffeid.RequireFromPath(td, "/ns/capa-system/sa/capa-controller-manager")
	mint := func(c *ca.CA, id spiffeid.ID) *x509svid.SVID {
		t.Helper()
		s, err := c.MintX509SVID(id, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	bundleOf := func(cas ...*ca.CA) *x509bundle.Set {
		var roots []*x509.Certificate
		for _, c := range cas {
			roots = append(roots, c.Certificate())
		}
		return x509bundle.NewSet(x509bundle.FromX509Authorities(td, roots))
	}
	if err := agent.SetX509([]*x509svid.SVID{mint(oldCA, brokerID)}, bundleOf(oldCA)); err != nil {
		t.Fatal(err)
	}
	if err := agent.SetJWTBundles(jwtbundle.NewSet(oldCA.JWTBundle())); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, dir, `
trust_domain: spire.test
listen: 127.0.0.1:0
http_listen: 127.0.0.1:0
data_dir: `+filepath.Join(dir, "data")+`
tls: {workload_api_socket: "`+agent.Addr()+`"}
issuers: {oidc: {type: jwt}}
profiles: {tok: {issuer: oidc, max_ttl: 1h}}
policy: [{id: "`+callerID.String()+`", profiles: [tok]}]
`)
	defer d.stop(t)
	push := func(broker *x509svid.SVID, bundles *x509bundle.Set) {
		t.Helper()
		if err := agent.SetX509([]*x509svid.SVID{broker}, bundles); err != nil {
			t.Fatal(err)
		}
		if line := <-d.logs.reloaded; !strings.Contains(line, "identity updated from the Workload API") {
			t.Fatalf("unexpected log line %s", line)
		}
	}
	// Clients verify the broker with both authorities throughout, so that
	// only the broker's view of the bundle changes.
	dial := func(svid *x509svid.SVID) *grpc.ClientConn {
		t.Helper()
		conn, err := grpc.NewClient(d.grpcAddr, grpc.WithTransportCredentials(credentials.NewTLS(
			tlsconfig.MTLSClientConfig(svid, bundleOf(oldCA, newCA), tlsconfig.AuthorizeID(brokerID)))))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return conn
	}
	issue := func(conn *grpc.ClientConn) error {
		_, err := credbrokerv1.NewBrokerServiceClient(conn).IssueCredential(d.ctx, &credbrokerv1.IssueCredentialRequest{Profile: "tok"})
		return err
	}

	oldCaller := dial(mint(oldCA, callerID))
	if err := issue(oldCaller); err != nil {
		t.Fatalf("caller of the current authority: %v", err)
	}

	// Rotation: the new authority joins the bundle, then signs the broker.
	push(mint(oldCA, brokerID), bundleOf(oldCA, newCA))
	push(mint(newCA, brokerID), bundleOf(oldCA, newCA))
	newCaller := dial(mint(newCA, callerID))
	for name, conn := range map[string]*grpc.ClientConn{"old": oldCaller, "new": newCaller} {
		if err := issue(conn); err != nil {
			t.Fatalf("during the rotation, caller of the %s authority: %v", name, err)
		}
	}

	// Revocation: the old authority leaves the bundle. Its caller's chain is
	// in the broker's verification cache, and must not be accepted from it.
	push(mint(newCA, brokerID), bundleOf(newCA))
	err = issue(oldCaller)
	if st := status.Convert(err); st.Code() != codes.Unauthenticated || !strings.Contains(st.Message(), "not signed by the trust bundle") {
		t.Fatalf("caller of the revoked authority: %v, want Unauthenticated", err)
	}
	if err := issue(newCaller); err != nil {
		t.Fatalf("after the revocation, caller of the new authority: %v", err)
	}
}
