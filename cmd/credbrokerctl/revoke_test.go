package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffegrpc/grpccredentials"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/credbroker/credbroker/internal/brokerclient"
	"github.com/credbroker/credbroker/internal/daemon"
	"github.com/credbroker/credbroker/internal/nodeagent"
	"github.com/credbroker/credbroker/internal/svidfile"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// devBroker is the real broker (`credbroker serve --dev`) running in this
// process on a temp data dir: mTLS on loopback, bbolt, the dev CA.
type devBroker struct {
	dir, addr, socket string
	httpAddr          string
	cancel            context.CancelFunc
	done              chan error
}

// lineSink finds the broker's "serving" log line and sends its gRPC and
// HTTP addresses.
type lineSink struct {
	serving chan [2]string
}

func (s *lineSink) Write(p []byte) (int, error) {
	for _, line := range strings.Split(string(p), "\n") {
		if strings.Contains(line, "msg=serving") {
			var addrs [2]string
			for _, f := range strings.Fields(line) {
				if v, ok := strings.CutPrefix(f, "grpc="); ok {
					addrs[0] = v
				} else if v, ok := strings.CutPrefix(f, "http="); ok {
					addrs[1] = v
				}
			}
			select {
			case s.serving <- addrs:
			default:
			}
		}
	}
	return len(p), nil
}

func startDevBroker(t *testing.T) *devBroker {
	t.Helper()
	return startDevBrokerWith(t, "")
}

// startDevBrokerWith is startDevBroker with the issuers, profiles and
// policy of configFile (empty: the dev configuration).
func startDevBrokerWith(t *testing.T, configFile string) *devBroker {
	t.Helper()
	b := &devBroker{dir: t.TempDir(), done: make(chan error, 1)}
	b.socket = filepath.Join(b.dir, "admin.sock")
	ctx, cancel := context.WithCancel(context.Background())
	b.cancel = cancel
	logs := &lineSink{serving: make(chan [2]string, 1)}
	go func() {
		b.done <- daemon.Run(ctx, daemon.Options{Dev: true, ConfigFile: configFile, DataDir: b.dir, Listen: "127.0.0.1:0", HTTPListen: "127.0.0.1:0", Stdout: io.Discard, Stderr: logs})
	}()
	select {
	case addrs := <-logs.serving:
		b.addr, b.httpAddr = addrs[0], addrs[1]
	case err := <-b.done:
		t.Fatalf("broker did not start: %v", err)
	}
	t.Cleanup(func() {
		b.cancel()
		if err := <-b.done; err != nil {
			t.Errorf("broker: %v", err)
		}
	})
	return b
}

// dial connects to the broker over mTLS with the SVID in dir.
func (b *devBroker) dial(t *testing.T, svidDir string) *grpc.ClientConn {
	t.Helper()
	svid, bundle, err := svidfile.Load(svidDir)
	if err != nil {
		t.Fatal(err)
	}
	creds := grpccredentials.MTLSClientCredentials(svid, bundle, tlsconfig.AuthorizeMemberOf(spiffeid.RequireTrustDomainFromString("dev.credbroker.test")))
	conn, err := grpc.NewClient(b.addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

const devController = "spiffe://dev.credbroker.test/ns/capi-system/sa/demo-controller"

func issueDev(conn *grpc.ClientConn, cluster string) (*credbrokerv1.Credential, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := credbrokerv1.NewBrokerServiceClient(conn).IssueCredential(ctx, &credbrokerv1.IssueCredentialRequest{Profile: "dev-token", Cluster: cluster})
	return resp.GetCredential(), err
}

// wantRevoked checks err is the refusal of a revoked request naming the
// revocation: FAILED_PRECONDITION with reason REVOKED, the revocation id in
// the metadata and the message, and whom to ask.
func wantRevoked(t *testing.T, err error, revocationID string) {
	t.Helper()
	st, _ := status.FromError(err)
	info, _ := brokerclient.ErrorInfo(err)
	if st.Code() != codes.FailedPrecondition || brokerclient.Reason(err) != credbrokerv1.ErrorReason_REVOKED ||
		info.GetMetadata()["revocation_id"] != revocationID || !strings.HasPrefix(info.GetMetadata()["revoked_by"], "unix:uid=") ||
		!strings.Contains(st.Message(), revocationID) || !strings.Contains(st.Message(), "ask a broker admin") {
		t.Fatalf("err = %v (%v); want FAILED_PRECONDITION, REVOKED, naming revocation %s", err, info, revocationID)
	}
}

func ctlJSON[M any](t *testing.T, socket string, args ...string) M {
	t.Helper()
	r := ctl(t, socket, append(args, "-o", "json")...)
	wantCode(t, r, 0)
	var m M
	if err := json.Unmarshal([]byte(r.stdout), &m); err != nil {
		t.Fatalf("%v: %v\n%s", args, err, r.stdout)
	}
	return m
}

type revocationJSON struct {
	RevocationID string `json:"revocation_id"`
	Kind         string `json:"kind"`
	Target       string `json:"target"`
	Reason       string `json:"reason"`
	Admin        string `json:"admin"`
}

// auditRecords exports the audit chain through the admin socket.
func auditRecords(t *testing.T, socket string) []map[string]any {
	t.Helper()
	r := ctl(t, socket, "audit", "export")
	wantCode(t, r, 0)
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("export line %q: %v", line, err)
		}
		out = append(out, m)
	}
	return out
}

// findRecord returns the first record with decision whose reason contains
// every one of words.
func findRecord(recs []map[string]any, decision string, words ...string) map[string]any {
next:
	for _, r := range recs {
		if r["decision"] != decision {
			continue
		}
		reason, _ := r["reason"].(string)
		for _, w := range words {
			if !strings.Contains(reason, w) {
				continue next
			}
		}
		return r
	}
	return nil
}

// TestRevokeIdentityAtTheRealBroker: revoking the controller's identity
// through the CLI refuses its next request with the revocation named; list
// shows it; lifting it serves the controller again; the revocation and the
// lift are on record with the admin and the reason; a workload identity
// calling any of the new admin methods is refused.
func TestRevokeIdentityAtTheRealBroker(t *testing.T) {
	b := startDevBroker(t)
	controller := b.dial(t, filepath.Join(b.dir, "dev", "controller"))
	if _, err := issueDev(controller, ""); err != nil {
		t.Fatal(err)
	}

	out := ctlJSON[struct {
		Revocation revocationJSON `json:"revocation"`
	}](t, b.socket, "revoke", "identity", devController, "--reason", "pod compromised")
	rev := out.Revocation
	if rev.Kind != "REVOCATION_KIND_IDENTITY" || rev.Target != devController || rev.Reason != "pod compromised" || !strings.HasPrefix(rev.Admin, "unix:uid=") {
		t.Fatalf("revocation %+v", rev)
	}
	_, err := issueDev(controller, "")
	wantRevoked(t, err, rev.RevocationID)
	if !strings.Contains(status.Convert(err).Message(), "pod compromised") {
		t.Errorf("refusal does not give the reason: %v", err)
	}

	list := ctlJSON[[]revocationJSON](t, b.socket, "revoke", "list")
	if len(list) != 1 || list[0].RevocationID != rev.RevocationID {
		t.Fatalf("revoke list = %+v", list)
	}
	table := ctl(t, b.socket, "revoke", "list")
	wantCode(t, table, 0)
	if !strings.Contains(table.stdout, rev.RevocationID) || !strings.Contains(table.stdout, "pod compromised") {
		t.Errorf("revoke list table:\n%s", table.stdout)
	}

	wantCode(t, ctl(t, b.socket, "revoke", "lift", rev.RevocationID), 0)
	if _, err := issueDev(controller, ""); err != nil {
		t.Fatalf("after the lift: %v", err)
	}
	if r := ctl(t, b.socket, "revoke", "lift", rev.RevocationID); r.code == 0 {
		t.Error("lifting twice succeeded")
	}

	recs := auditRecords(t, b.socket)
	revoked := findRecord(recs, "revoked", devController, "pod compromised", rev.RevocationID)
	if revoked == nil || !strings.HasPrefix(revoked["caller"].(string), "unix:uid=") {
		t.Fatalf("no revoked record naming the admin and the reason: %v", revoked)
	}
	if findRecord(recs, "lifted", rev.RevocationID) == nil {
		t.Error("no lifted record")
	}
	if findRecord(recs, "denied", rev.RevocationID) == nil {
		t.Error("the refused request is not on record")
	}

	// A workload identity is refused on every new admin method.
	admin := credbrokerv1.NewAdminServiceClient(controller)
	ctx := context.Background()
	calls := map[string]func() error{
		"Revoke": func() error {
			_, err := admin.Revoke(ctx, &credbrokerv1.RevokeRequest{Target: &credbrokerv1.RevokeRequest_SpiffeId{SpiffeId: devController}})
			return err
		},
		"ListRevocations": func() error { _, err := admin.ListRevocations(ctx, &credbrokerv1.ListRevocationsRequest{}); return err },
		"LiftRevocation": func() error {
			_, err := admin.LiftRevocation(ctx, &credbrokerv1.LiftRevocationRequest{RevocationId: rev.RevocationID})
			return err
		},
		"ListClusters": func() error { _, err := admin.ListClusters(ctx, &credbrokerv1.ListClustersRequest{}); return err },
		"GetAWSRevocationPolicy": func() error {
			_, err := admin.GetAWSRevocationPolicy(ctx, &credbrokerv1.GetAWSRevocationPolicyRequest{})
			return err
		},
		"DeleteCluster": func() error {
			_, err := admin.DeleteCluster(ctx, &credbrokerv1.DeleteClusterRequest{Cluster: "capi-a/c1"})
			return err
		},
		"GetQuota": func() error {
			_, err := admin.GetQuota(ctx, &credbrokerv1.GetQuotaRequest{Key: &credbrokerv1.GetQuotaRequest_SpiffeId{SpiffeId: devController}})
			return err
		},
		"ResetQuota": func() error {
			_, err := admin.ResetQuota(ctx, &credbrokerv1.ResetQuotaRequest{Key: &credbrokerv1.ResetQuotaRequest_SpiffeId{SpiffeId: devController}})
			return err
		},
		"ExplainPolicy": func() error {
			_, err := admin.ExplainPolicy(ctx, &credbrokerv1.ExplainPolicyRequest{SpiffeId: devController, Profile: "dev-token"})
			return err
		},
	}
	for name, call := range calls {
		if err := call(); status.Code(err) != codes.PermissionDenied {
			t.Errorf("%s by a workload identity: %v, want PERMISSION_DENIED", name, err)
		}
	}
	// The admin SVID over mTLS is served.
	if _, err := credbrokerv1.NewAdminServiceClient(b.dial(t, filepath.Join(b.dir, "dev", "admin"))).ListRevocations(ctx, &credbrokerv1.ListRevocationsRequest{}); err != nil {
		t.Errorf("ListRevocations by the admin identity: %v", err)
	}
}

// joinNode creates a join token for cluster through the CLI and has a real
// node agent attest with it; it returns the agent and a connection with the
// node's SVID.
func (b *devBroker) joinNode(t *testing.T, cluster, node string) (*nodeagent.Agent, *grpc.ClientConn) {
	t.Helper()
	tok := ctlJSON[struct {
		Token string `json:"token"`
	}](t, b.socket, "join-token", "create", "--cluster", cluster, "--node", node)
	_, bundle, err := svidfile.Load(filepath.Join(b.dir, "dev", "controller"))
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(b.dir, "nodes", strings.ReplaceAll(cluster, "/", "_"), node)
	agent, err := nodeagent.New(nodeagent.Config{Broker: b.addr, Bootstrap: bundle, Dir: dir, Evidence: nodeagent.JoinToken(tok.Token, "")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := agent.Ensure(context.Background()); err != nil {
		t.Fatalf("node %s attests: %v", node, err)
	}
	return agent, b.dial(t, dir)
}

// TestRevokeClusterAndDeleteAtTheRealBroker: a revoked cluster's node is not
// renewed and gets nothing, nor does a controller asking for that cluster,
// while another cluster is served; deleting a cluster evicts its nodes and
// voids its unused join tokens, on record; clusters list shows both.
func TestRevokeClusterAndDeleteAtTheRealBroker(t *testing.T) {
	b := startDevBroker(t)
	controller := b.dial(t, filepath.Join(b.dir, "dev", "controller"))
	agent1, node1 := b.joinNode(t, "capi-a/c1", "worker-1")
	if _, err := agent1.Renew(context.Background()); err != nil {
		t.Fatalf("renewal before the revocation: %v", err)
	}
	if _, err := issueDev(node1, ""); err != nil {
		t.Fatal(err)
	}

	until := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	rev := ctlJSON[struct {
		Revocation revocationJSON `json:"revocation"`
	}](t, b.socket, "revoke", "cluster", "capi-a/c1", "--reason", "incident 42", "--until", until).Revocation
	if _, err := agent1.Renew(context.Background()); err == nil {
		t.Fatal("a node of a revoked cluster renewed its SVID")
	} else {
		wantRevoked(t, err, rev.RevocationID)
	}
	_, err := issueDev(node1, "")
	wantRevoked(t, err, rev.RevocationID)
	_, err = issueDev(controller, "capi-a/c1")
	wantRevoked(t, err, rev.RevocationID)
	if _, err := issueDev(controller, "capi-a/c2"); err != nil {
		t.Fatalf("another cluster: %v", err)
	}

	// Delete c2: its node is evicted, its unused token voided.
	_, node2 := b.joinNode(t, "capi-a/c2", "worker-1")
	spare := ctlJSON[struct {
		Token string `json:"token"`
	}](t, b.socket, "join-token", "create", "--cluster", "capi-a/c2", "--node", "worker-2")
	del := ctlJSON[struct {
		Revocation       revocationJSON    `json:"revocation"`
		EvictedNodes     []json.RawMessage `json:"evicted_nodes"`
		VoidedJoinTokens int               `json:"voided_join_tokens"`
	}](t, b.socket, "clusters", "delete", "capi-a/c2")
	if len(del.EvictedNodes) != 1 || del.VoidedJoinTokens != 1 || del.Revocation.Target != "capi-a/c2" || del.Revocation.Reason != "cluster deleted" {
		t.Fatalf("clusters delete: %+v", del)
	}
	if _, err := issueDev(node2, ""); brokerclient.Reason(err) != credbrokerv1.ErrorReason_NODE_EVICTED {
		t.Fatalf("a deleted cluster's node: %v, want NODE_EVICTED", err)
	}
	_, err = issueDev(controller, "capi-a/c2")
	wantRevoked(t, err, del.Revocation.RevocationID)
	_, bundle, err := svidfile.Load(filepath.Join(b.dir, "dev", "controller"))
	if err != nil {
		t.Fatal(err)
	}
	late, err := nodeagent.New(nodeagent.Config{Broker: b.addr, Bootstrap: bundle, Dir: filepath.Join(b.dir, "nodes", "late"), Evidence: nodeagent.JoinToken(spare.Token, "")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := late.Ensure(context.Background()); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("a voided join token: %v, want UNAUTHENTICATED", err)
	}
	nodes := ctl(t, b.socket, "nodes", "list", "--cluster", "capi-a/c2")
	wantCode(t, nodes, 0)
	if !strings.Contains(nodes.stdout, "evicted") {
		t.Errorf("nodes list after the deletion:\n%s", nodes.stdout)
	}

	clusters := ctl(t, b.socket, "clusters", "list")
	wantCode(t, clusters, 0)
	for _, want := range []string{"capi-a/c1", "capi-a/c2", rev.RevocationID, del.Revocation.RevocationID} {
		if !strings.Contains(clusters.stdout, want) {
			t.Errorf("clusters list lacks %s:\n%s", want, clusters.stdout)
		}
	}
	recs := auditRecords(t, b.socket)
	for _, words := range [][]string{
		{"capi-a/c1", "incident 42", rev.RevocationID},
		{"capi-a/c2", "cluster deleted", del.Revocation.RevocationID},
		{"evicted", "capi-a/c2", del.Revocation.RevocationID},
		{"1 unused join tokens of capi-a/c2 voided"},
	} {
		if findRecord(recs, "revoked", words...) == nil {
			t.Errorf("no revoked record with %q", words)
		}
	}
	// Repeating the deletion is safe and changes nothing more.
	again := ctlJSON[struct {
		Revocation       revocationJSON    `json:"revocation"`
		EvictedNodes     []json.RawMessage `json:"evicted_nodes"`
		VoidedJoinTokens int               `json:"voided_join_tokens"`
	}](t, b.socket, "clusters", "delete", "capi-a/c2")
	if again.Revocation.RevocationID != del.Revocation.RevocationID || len(again.EvictedNodes) != 0 || again.VoidedJoinTokens != 0 {
		t.Fatalf("second deletion: %+v", again)
	}
}

// TestNodesEvictIsARevocation: `nodes evict` keeps working and revokes the
// node's identity (listed, and its reused credentials dropped); the node is
// told it was evicted, which is final.
func TestNodesEvictIsARevocation(t *testing.T) {
	b := startDevBroker(t)
	agent, node := b.joinNode(t, "capi-a/c1", "worker-1")
	id := "spiffe://dev.credbroker.test/capi/cluster/capi-a/c1/node/worker-1"
	wantCode(t, ctl(t, b.socket, "nodes", "evict", id), 0)
	list := ctlJSON[[]revocationJSON](t, b.socket, "revoke", "list")
	if len(list) != 1 || list[0].Target != id || list[0].Reason != "node evicted" {
		t.Fatalf("revocations after the eviction: %+v", list)
	}
	_, err := issueDev(node, "")
	if brokerclient.Reason(err) != credbrokerv1.ErrorReason_NODE_EVICTED {
		t.Fatalf("an evicted node's request: %v, want NODE_EVICTED", err)
	}
	if _, err := agent.Renew(context.Background()); brokerclient.Reason(err) != credbrokerv1.ErrorReason_NODE_EVICTED {
		t.Fatalf("an evicted node's renewal: %v, want NODE_EVICTED", err)
	}
}

// TestQuotaShowAndResetAtTheRealBroker: quota show counts the controller's
// issuances in the window; reset forgets them, on record.
func TestQuotaShowAndResetAtTheRealBroker(t *testing.T) {
	b := startDevBroker(t)
	controller := b.dial(t, filepath.Join(b.dir, "dev", "controller"))
	for range 3 {
		if _, err := issueDev(controller, "capi-a/c1"); err != nil {
			t.Fatal(err)
		}
	}
	type usage struct {
		Usage struct {
			SpiffeID string `json:"spiffe_id"`
			Cluster  string `json:"cluster"`
			Used     int    `json:"used"`
			ResetAt  string `json:"reset_at"`
		} `json:"usage"`
		Limits []struct {
			Max       int      `json:"max"`
			Remaining int      `json:"remaining"`
			AppliesTo []string `json:"applies_to"`
		} `json:"limits"`
	}
	u := ctlJSON[usage](t, b.socket, "quota", "show", "--identity", devController)
	if u.Usage.Used != 3 || u.Usage.SpiffeID != devController || u.Usage.ResetAt == "" {
		t.Fatalf("quota show --identity: %+v", u)
	}
	// The limit the broker applies to the dev controller's dev-token.
	if len(u.Limits) != 1 || u.Limits[0].Max <= 3 || u.Limits[0].Remaining != u.Limits[0].Max-3 || len(u.Limits[0].AppliesTo) != 1 ||
		!strings.HasPrefix(u.Limits[0].AppliesTo[0], "profile dev-token (rule ") {
		t.Fatalf("quota show --identity limits: %+v", u.Limits)
	}
	if r := ctl(t, b.socket, "quota", "show", "--identity", devController); !strings.Contains(r.stdout, "LIMIT") ||
		!strings.Contains(r.stdout, fmt.Sprintf("%d per ", u.Limits[0].Max)) || !strings.Contains(r.stdout, "profile dev-token") {
		t.Errorf("quota show does not print the limit:\n%s", r.stdout)
	}
	if c := ctlJSON[usage](t, b.socket, "quota", "show", "--cluster", "capi-a/c1"); c.Usage.Used != 3 || c.Usage.Cluster != "capi-a/c1" {
		t.Fatalf("quota show --cluster: %+v", c)
	}
	r := ctl(t, b.socket, "quota", "reset", "--identity", devController)
	wantCode(t, r, 0)
	if !strings.Contains(r.stdout, "3") {
		t.Errorf("quota reset does not say what it forgot:\n%s", r.stdout)
	}
	if u := ctlJSON[usage](t, b.socket, "quota", "show", "--identity", devController); u.Usage.Used != 0 {
		t.Fatalf("after the reset: %+v", u)
	}
	if c := ctlJSON[usage](t, b.socket, "quota", "show", "--cluster", "capi-a/c1"); c.Usage.Used != 3 {
		t.Fatalf("the cluster's window was reset too: %+v", c)
	}
	if findRecord(auditRecords(t, b.socket), "reset", devController, "3 used") == nil {
		t.Error("no reset record")
	}
	wantCode(t, ctl(t, b.socket, "quota", "show"), 2)
}
