package daemon

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffegrpc/grpccredentials"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/credbroker/credbroker/internal/nodeagent"
	"github.com/credbroker/credbroker/internal/svidfile"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/test/etcdtest"
)

// TestReplicasShareNodesAndRevocations runs two replicas on one etcd (and
// one node CA): a join token made on one and raced on both admits exactly
// one node; an eviction on one is refused by the other at the node's next
// request; a revocation on one refuses on the other as soon as its watch
// delivers it (polled); without etcd, attestation is refused UNAVAILABLE
// and the token is not spent, so it admits its node once etcd is back.
func TestReplicasShareNodesAndRevocations(t *testing.T) {
	t.Parallel()
	etcd := etcdtest.New(t, 1)
	dir := t.TempDir()
	td, spire, base := productionIdentity(t, dir)
	cfg := base + `
issuers:
  oidc: {type: jwt, jwt: {issuer_url: "https://credbroker.prod.test"}}
profiles:
  node-token: {issuer: oidc, max_ttl: 1h, cluster: required}
  web-identity: {issuer: oidc, max_ttl: 1h, cluster: none}
node_attestation: {svid_ttl: 10m, ca_dir: ` + filepath.Join(dir, "node-ca") + `}
policy:
  - id: spiffe://prod.test/capi/cluster/*/*/node/*
    profiles: [node-token]
    clusters: ["*"]
  - id: spiffe://prod.test/ns/*/sa/capa-controller-manager
    profiles: [web-identity]
state:
  etcd:
    endpoints: [` + etcd.Endpoint(0) + `]
    prefix: /nodes/
    request_timeout: 5s # the default: a loaded test machine can take over 1s to decide
`
	replica := func(name string) (*running, credbrokerv1.AdminServiceClient) {
		data := filepath.Join(dir, "data-"+name)
		d := startDaemon(t, t.TempDir(), strings.Replace(cfg, "data_dir: "+filepath.Join(dir, "data"), "data_dir: "+data, 1))
		conn, err := grpc.NewClient("unix://"+filepath.Join(data, "admin.sock"), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = conn.Close() })
		return d, credbrokerv1.NewAdminServiceClient(conn)
	}
	a, adminA := replica("a")
	defer a.stop(t)
	b, adminB := replica("b")
	defer b.stop(t)
	ctx := context.Background()
	newToken := func(admin credbrokerv1.AdminServiceClient, node string) string {
		t.Helper()
		tok, err := admin.CreateJoinToken(ctx, &credbrokerv1.CreateJoinTokenRequest{Cluster: "capi-a/c1", NodeName: node})
		if err != nil {
			t.Fatal(err)
		}
		return tok.GetToken()
	}
	agent := func(d *running, token, name string) *nodeagent.Agent {
		t.Helper()
		ag, err := nodeagent.New(nodeagent.Config{Broker: d.grpcAddr, Bootstrap: spire.X509Bundle(), Dir: filepath.Join(dir, "agent-"+name), Evidence: nodeagent.JoinToken(token, "")})
		if err != nil {
			t.Fatal(err)
		}
		return ag
	}

	// One token, raced on both replicas.
	token := newToken(adminA, "worker-1")
	var wg sync.WaitGroup
	results := make([]error, 2)
	for i, d := range []*running{a, b} {
		ag := agent(d, token, fmt.Sprintf("race-%d", i))
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, results[i] = ag.Attest(ctx)
		}()
	}
	wg.Wait()
	admitted := 0
	for _, err := range results {
		if err == nil {
			admitted++
		}
	}
	if admitted != 1 {
		t.Fatalf("one join token raced on two replicas admitted %d nodes (%v), want 1", admitted, results)
	}
	winner := "race-0"
	if results[0] != nil {
		winner = "race-1"
	}

	// The node's credential from replica b; evicted on a, refused on b.
	node, bundle, err := svidfile.Load(filepath.Join(dir, "agent-"+winner))
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpcWithSVID(b.grpcAddr, node, bundle, td)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	nodeClient := credbrokerv1.NewBrokerServiceClient(conn)
	if _, err := nodeClient.IssueCredential(ctx, &credbrokerv1.IssueCredentialRequest{Profile: "node-token"}); err != nil {
		t.Fatalf("node credential on replica b: %v", err)
	}
	if _, err := adminA.EvictNode(ctx, &credbrokerv1.EvictNodeRequest{SpiffeId: node.ID.String()}); err != nil {
		t.Fatal(err)
	}
	if _, err := nodeClient.IssueCredential(ctx, &credbrokerv1.IssueCredentialRequest{Profile: "node-token"}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("evicted node on the other replica: %v, want PERMISSION_DENIED (NODE_EVICTED)", err)
	}

	// A controller's identity revoked on a is refused on b.
	svid, err := spire.MintX509SVID(spiffeid.RequireFromPath(td, "/ns/capa-system/sa/capa-controller-manager"), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cconn, err := grpc.NewClient(b.grpcAddr, grpc.WithTransportCredentials(grpccredentials.MTLSClientCredentials(svid, x509bundle.NewSet(spire.X509Bundle()), tlsconfig.AuthorizeMemberOf(td))))
	if err != nil {
		t.Fatal(err)
	}
	defer cconn.Close()
	controller := credbrokerv1.NewBrokerServiceClient(cconn)
	issue := func() error {
		_, err := controller.IssueCredential(ctx, &credbrokerv1.IssueCredentialRequest{Profile: "web-identity"})
		return err
	}
	if err := issue(); err != nil {
		t.Fatal(err)
	}
	if _, err := adminA.Revoke(ctx, &credbrokerv1.RevokeRequest{Target: &credbrokerv1.RevokeRequest_SpiffeId{SpiffeId: svid.ID.String()}, Reason: "test"}); err != nil {
		t.Fatal(err)
	}
	poll := time.NewTicker(10 * time.Millisecond)
	defer poll.Stop()
	deadline := time.Now().Add(time.Minute)
	for status.Code(issue()) != codes.FailedPrecondition {
		if time.Now().After(deadline) {
			t.Fatal("the revocation made on replica a never reached replica b")
		}
		<-poll.C
	}

	// Without etcd: attestation UNAVAILABLE, the token not spent.
	token = newToken(adminB, "worker-2")
	etcd.Stop(0)
	if _, err := agent(a, token, "outage").Attest(ctx); status.Code(err) != codes.Unavailable {
		t.Fatalf("attestation without etcd: %v, want UNAVAILABLE", err)
	}
	if err := etcd.Restart(0); err != nil {
		t.Fatal(err)
	}
	// Until the client is back and a probe has confirmed the revocations
	// current, attestation is refused UNAVAILABLE; asked again no faster
	// than the attestation limit per address (5/s) allows.
	slow := time.NewTicker(250 * time.Millisecond)
	defer slow.Stop()
	deadline = time.Now().Add(time.Minute)
	for {
		_, err := agent(a, token, "after").Attest(ctx)
		if err == nil {
			break
		}
		if status.Code(err) != codes.Unavailable || time.Now().After(deadline) {
			t.Fatalf("attestation once etcd is back: %v", err)
		}
		<-slow.C
	}
}
