package daemon

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffegrpc/grpccredentials"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/credbroker/credbroker/internal/brokerclient"
	"github.com/credbroker/credbroker/internal/ca"
	"github.com/credbroker/credbroker/internal/nodeagent"
	"github.com/credbroker/credbroker/internal/svidfile"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// TestNodeAttestationWithAProductionIdentity: outside --dev the broker's own
// SVID comes from another CA (SPIRE's), node SVIDs from the broker's node CA
// in the data dir. Nodes must still verify the broker, and the broker must
// accept node SVIDs for renewal and issuance: the node CA joins the bundle of
// the trust domain on both sides.
func TestNodeAttestationWithAProductionIdentity(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	td, spire, cfg := productionIdentity(t, dir)
	cfg += `
issuers:
  oidc: {type: jwt, jwt: {issuer_url: "https://credbroker.prod.test"}}
profiles:
  node-token: {issuer: oidc, max_ttl: 1h, cluster: required}
node_attestation: {svid_ttl: 10m}
policy:
  - id: spiffe://prod.test/capi/cluster/*/*/node/*
    profiles: [node-token]
    clusters: ["*"]
`
	d := startDaemon(t, dir, cfg)
	defer d.stop(t)

	// The node CA exists, owner-only.
	nodeCA, err := ca.Load(filepath.Join(dir, "data", "node-ca"))
	if err != nil {
		t.Fatalf("node CA: %v", err)
	}
	if fi, err := os.Stat(filepath.Join(dir, "data", "node-ca", ca.KeyFile)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("node CA key: %v, %v", fi, err)
	}

	admin, err := grpc.NewClient("unix://"+filepath.Join(dir, "data", "admin.sock"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	tok, err := credbrokerv1.NewAdminServiceClient(admin).CreateJoinToken(d.ctx, &credbrokerv1.CreateJoinTokenRequest{Cluster: "capi-a/c1", NodeName: "worker-1"})
	if err != nil {
		t.Fatal(err)
	}

	// The node knows only the trust domain's bundle as SPIRE publishes it.
	nodeDir := filepath.Join(dir, "node")
	agent, err := nodeagent.New(nodeagent.Config{Broker: d.grpcAddr, Bootstrap: spire.X509Bundle(), Dir: nodeDir, Evidence: nodeagent.JoinToken(tok.GetToken(), "")})
	if err != nil {
		t.Fatal(err)
	}
	svid, err := agent.Ensure(d.ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, bundle, err := svidfile.Load(nodeDir)
	if err != nil {
		t.Fatal(err)
	}
	if !bundle.HasX509Authority(nodeCA.Certificate()) || !bundle.HasX509Authority(spire.Certificate()) {
		t.Error("the bundle handed to the node lacks the node CA or the trust domain's own CA")
	}
	if _, _, err := x509svid.Verify(svid.Certificates, bundle); err != nil {
		t.Fatalf("node SVID does not verify against the bundle: %v", err)
	}

	// Renewal over mTLS with the node SVID, then a credential for its own cluster.
	if _, err := agent.Renew(d.ctx); err != nil {
		t.Fatalf("renewal: %v", err)
	}
	node, bundleAfter, err := svidfile.Load(nodeDir)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpcWithSVID(d.grpcAddr, node, bundleAfter, td)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	resp, err := credbrokerv1.NewBrokerServiceClient(conn).IssueCredential(d.ctx, &credbrokerv1.IssueCredentialRequest{Profile: "node-token"})
	if err != nil {
		t.Fatalf("node credential: %v", err)
	}
	if resp.GetCredential().GetCluster() != "capi-a/c1" {
		t.Errorf("node credential for cluster %q", resp.GetCredential().GetCluster())
	}
	if !strings.Contains(d.logs.String(), "node SVID issued") {
		t.Error("no node SVID in the log")
	}
}

// grpcWithSVID dials addr presenting svid and trusting bundle.
func grpcWithSVID(addr string, svid *x509svid.SVID, bundle *x509bundle.Bundle, td spiffeid.TrustDomain) (*grpc.ClientConn, error) {
	creds := grpccredentials.MTLSClientCredentials(svid, bundle, tlsconfig.AuthorizeMemberOf(td))
	return grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
}

// TestJoinTokenSurvivesBadAttempts: an attempt with a token that cannot
// succeed (another node's name, no name for an unbound token, a missing or
// malformed CSR) is refused without spending the token, so the rightful
// node can still join with it.
func TestJoinTokenSurvivesBadAttempts(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	td, spire, cfg := productionIdentity(t, dir)
	d := startDaemon(t, dir, cfg+`
issuers:
  oidc: {type: jwt, jwt: {issuer_url: "https://credbroker.prod.test"}}
profiles:
  node-token: {issuer: oidc, max_ttl: 1h, cluster: required}
node_attestation: {svid_ttl: 10m}
`)
	defer d.stop(t)
	admin, err := grpc.NewClient("unix://"+filepath.Join(dir, "data", "admin.sock"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	newToken := func(node string) string {
		t.Helper()
		tok, err := credbrokerv1.NewAdminServiceClient(admin).CreateJoinToken(d.ctx, &credbrokerv1.CreateJoinTokenRequest{Cluster: "capi-a/c1", NodeName: node})
		if err != nil {
			t.Fatal(err)
		}
		return tok.GetToken()
	}
	conn, err := grpc.NewClient(d.grpcAddr, grpc.WithTransportCredentials(grpccredentials.TLSClientCredentials(spire.X509Bundle(), tlsconfig.AuthorizeMemberOf(td))))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	nodes := credbrokerv1.NewNodeServiceClient(conn)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	tampered := bytes.Clone(csr)
	tampered[len(tampered)-1] ^= 1 // breaks the signature: no proof of the key
	attestWith := func(token, node string, csr []byte) error {
		_, err := nodes.AttestNode(d.ctx, &credbrokerv1.AttestNodeRequest{Csr: csr,
			Evidence: &credbrokerv1.AttestNodeRequest_JoinToken{JoinToken: &credbrokerv1.JoinTokenEvidence{Token: token, NodeName: node}}})
		return err
	}

	bound := newToken("worker-1")
	for _, c := range []struct {
		name, node string
		csr        []byte
		code       codes.Code
	}{
		{"another node's name", "intruder", csr, codes.Unauthenticated},
		{"no CSR", "worker-1", nil, codes.InvalidArgument},
		{"a malformed CSR", "worker-1", []byte("not a CSR"), codes.InvalidArgument},
		{"a CSR whose signature does not verify", "worker-1", tampered, codes.InvalidArgument},
	} {
		err := attestWith(bound, c.node, c.csr)
		want := credbrokerv1.ErrorReason_INVALID_REQUEST
		if c.code == codes.Unauthenticated {
			want = credbrokerv1.ErrorReason_UNAUTHENTICATED
		}
		if status.Code(err) != c.code || brokerclient.Reason(err) != want {
			t.Fatalf("%s: %v, want %s (%s)", c.name, err, c.code, want)
		}
	}
	if err := attestWith(bound, "", csr); err != nil {
		t.Fatalf("the rightful node after the bad attempts: %v", err)
	}
	if err := attestWith(bound, "", csr); status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), "already used") {
		t.Fatalf("replay: %v, want the token used", err)
	}

	open := newToken("")
	if err := attestWith(open, "", csr); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("an unbound token without a node name: %v", err)
	}
	if err := attestWith(open, "worker-2", csr); err != nil {
		t.Fatalf("the unbound token with a name after a nameless attempt: %v", err)
	}
}
