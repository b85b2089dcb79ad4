package e2e

import (
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/credbroker/credbroker/internal/brokerclient"
	"github.com/credbroker/credbroker/internal/nodeagent"
	"github.com/credbroker/credbroker/internal/svidfile"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

func (b *broker) nodeAgent(t *testing.T, dir string, ev nodeagent.Evidence) *nodeagent.Agent {
	t.Helper()
	bootstrap, err := x509bundle.Load(spiffeid.RequireTrustDomainFromString("dev.credbroker.test"), filepath.Join(b.dataDir, "dev", "controller", "bundle.pem"))
	if err != nil {
		t.Fatal(err)
	}
	a, err := nodeagent.New(nodeagent.Config{Broker: b.grpcAddr, Bootstrap: bootstrap, Dir: dir, Evidence: ev})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func (b *broker) joinToken(t *testing.T, args ...string) string {
	t.Helper()
	r := b.ctl(t, append([]string{"join-token", "create"}, args...)...)
	if r.code != 0 {
		t.Fatalf("join-token create: exit %d: %s", r.code, r.stderr)
	}
	if !strings.Contains(r.stderr, "shown only once") {
		t.Errorf("join-token create says nothing about the token being shown once: %q", r.stderr)
	}
	return strings.TrimSpace(r.stdout)
}

func TestNodeJoinsWithATokenRenewsAndIsEvicted(t *testing.T) {
	t.Parallel()
	b := startBroker(t, t.TempDir())
	token := b.joinToken(t, "--cluster", "team-a/alpha", "--node", "worker-1", "--ttl", "5m")
	if !strings.HasPrefix(token, "cbjt_") {
		t.Fatalf("token = %q", token)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	// The node attests once with the token from its bootstrap data.
	nodeDir := filepath.Join(t.TempDir(), "svid")
	agent := b.nodeAgent(t, nodeDir, nodeagent.JoinToken(token, ""))
	svid, err := agent.Ensure(ctx)
	if err != nil {
		t.Fatal(err)
	}
	wantID := "spiffe://dev.credbroker.test/capi/cluster/team-a/alpha/node/worker-1"
	if svid.ID.String() != wantID {
		t.Fatalf("node SVID %s, want %s", svid.ID, wantID)
	}
	// What the node stored is a valid X.509-SVID per go-spiffe, with the bundle beside it.
	stored, bundle, err := svidfile.Load(nodeDir)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := x509svid.Verify(stored.Certificates, bundle); err != nil {
		t.Fatalf("stored SVID does not verify: %v", err)
	}
	if leaf := stored.Certificates[0]; leaf.IsCA || leaf.NotAfter.Sub(leaf.NotBefore) > time.Hour+time.Minute || len(leaf.URIs) != 1 {
		t.Errorf("leaf: CA %v, lifetime %v, %d URI SANs", leaf.IsCA, leaf.NotAfter.Sub(leaf.NotBefore), len(leaf.URIs))
	}

	// The same token again is a replay: refused and on record.
	replay := b.nodeAgent(t, filepath.Join(t.TempDir(), "svid"), nodeagent.JoinToken(token, ""))
	_, err = replay.Attest(ctx)
	if status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), "already used") {
		t.Fatalf("replayed token: %v", err)
	}
	if r := b.ctl(t, "audit", "tail", "-n", "1"); !strings.Contains(r.stdout, "denied") || !strings.Contains(r.stdout, "already used") || !strings.Contains(r.stdout, "cluster=team-a/alpha") {
		t.Errorf("the replay is not on record: %s", r.stdout)
	}

	// The node's credentials are bound to its cluster, whatever it asks.
	nodeCred := func(args ...string) result {
		return runTool(t, "credbroker-credential-process", append([]string{"--broker", b.grpcAddr, "--svid-dir", nodeDir, "--profile", "dev-token"}, args...)...)
	}
	r := nodeCred()
	if r.code != 0 {
		t.Fatalf("node credential: %s", r.stderr)
	}
	var cred jsonCredential
	json.Unmarshal([]byte(r.stdout), &cred)
	if claims := verifyWithServedJWKS(t, b, cred.Token); claims["sub"] != wantID || claims["cluster"] != "team-a/alpha" {
		t.Errorf("node token claims = %v", claims)
	}
	if r := nodeCred("--cluster", "team-b/beta"); r.code != 1 || !strings.Contains(r.stderr, "permission denied") || !strings.Contains(r.stderr, "[POLICY_DENIED]") {
		t.Errorf("node asking for another cluster: exit %d, %q", r.code, r.stderr)
	}

	// Renewal keeps the identity and changes the key.
	renewed, err := agent.Renew(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if renewed.ID != svid.ID || renewed.Certificates[0].SerialNumber.Cmp(svid.Certificates[0].SerialNumber) == 0 {
		t.Errorf("renewed %s serial %v, was %s serial %v", renewed.ID, renewed.Certificates[0].SerialNumber, svid.ID, svid.Certificates[0].SerialNumber)
	}

	// The admin sees the node and evicts it; it can then neither renew nor get credentials.
	r = b.ctl(t, "-o", "json", "nodes", "list", "--cluster", "team-a/alpha")
	var nodes []map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &nodes); err != nil || len(nodes) != 1 || nodes[0]["spiffe_id"] != wantID || nodes[0]["attestation"] != "ATTESTATION_METHOD_JOIN_TOKEN" {
		t.Fatalf("nodes list = %s (%v)", r.stdout, err)
	}
	r = b.ctl(t, "nodes", "evict", wantID)
	if r.code != 0 || !strings.Contains(r.stdout, "evicted "+wantID) || !strings.Contains(r.stdout, cred.IssuanceID) {
		t.Fatalf("nodes evict: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	_, err = agent.Renew(ctx)
	if status.Code(err) != codes.PermissionDenied || brokerclient.Reason(err) != credbrokerv1.ErrorReason_NODE_EVICTED {
		t.Errorf("renewal after eviction: %v", err)
	}
	if r := nodeCred(); r.code != 1 || !strings.Contains(r.stderr, "[NODE_EVICTED]") {
		t.Errorf("credential after eviction: exit %d, %q", r.code, r.stderr)
	}
	// Nor can it come back under the same name with a fresh token.
	again := b.joinToken(t, "--cluster", "team-a/alpha", "--node", "worker-1")
	_, err = b.nodeAgent(t, filepath.Join(t.TempDir(), "svid"), nodeagent.JoinToken(again, "")).Attest(ctx)
	if status.Code(err) != codes.PermissionDenied || brokerclient.Reason(err) != credbrokerv1.ErrorReason_NODE_EVICTED {
		t.Errorf("re-attesting an evicted node: %v", err)
	}

	if r := b.ctl(t, "audit", "verify"); r.code != 0 {
		t.Errorf("audit verify: %s%s", r.stdout, r.stderr)
	}
	b.stop(t)
	for _, tok := range []string{token, again} {
		assertNotOnDiskOrInLogs(t, b.dataDir, tok, b.stdout.String()+b.stderr.String())
	}
	// The eviction, and the revocation it makes, are alerts.
	for _, want := range []string{"msg=alert rule=node_evicted", `subject="node ` + wantID + `"`, "msg=alert rule=revocation"} {
		if !strings.Contains(b.stderr.String(), want) {
			t.Errorf("broker log lacks %s", want)
		}
	}
}

func TestJoinTokenRefusals(t *testing.T) {
	t.Parallel()
	b := startBroker(t, t.TempDir())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	attest := func(ev nodeagent.Evidence) error {
		_, err := b.nodeAgent(t, filepath.Join(t.TempDir(), "svid"), ev).Attest(ctx)
		return err
	}
	// A token that does not name the node lets the node name itself, validly.
	open := b.joinToken(t, "--cluster", "team-a/alpha")
	if err := attest(nodeagent.JoinToken(open, "Bad_Name")); status.Code(err) != codes.Unauthenticated {
		t.Errorf("invalid node name: %v", err)
	}
	named := b.joinToken(t, "--cluster", "team-a/alpha", "--node", "worker-2")
	if err := attest(nodeagent.JoinToken(named, "worker-3")); status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), "worker-2") {
		t.Errorf("token for another node: %v", err)
	}
	if err := attest(nodeagent.JoinToken("cbjt_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "w")); status.Code(err) != codes.Unauthenticated {
		t.Errorf("unknown token: %v", err)
	}
	if err := attest(nodeagent.JoinToken("not-a-token", "w")); status.Code(err) != codes.Unauthenticated {
		t.Errorf("malformed token: %v", err)
	}
	// The malformed name did not spend the token.
	if err := attest(nodeagent.JoinToken(open, "worker-9")); err != nil {
		t.Errorf("a token naming no node, used with a valid name: %v", err)
	}
	if r := b.ctl(t, "join-token", "create", "--cluster", "nope"); r.code != 2 {
		t.Errorf("bad --cluster: exit %d", r.code)
	}
	if r := b.ctl(t, "join-token", "create", "--cluster", "a/b", "--ttl", "48h"); r.code != 1 || !strings.Contains(r.stderr, "24h") {
		t.Errorf("ttl over the maximum: exit %d, %q", r.code, r.stderr)
	}
}
