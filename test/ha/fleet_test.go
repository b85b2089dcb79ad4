package ha

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffegrpc/grpccredentials"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/credbroker/credbroker/internal/brokerclient"
	"github.com/credbroker/credbroker/internal/ca"
	"github.com/credbroker/credbroker/internal/svidfile"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/test/etcdtest"
	"github.com/credbroker/credbroker/test/testproc"
)

const (
	trustDomain = "ha.test"
	// profileQuota charges the cluster quota (quota per cluster, fleet-wide);
	// profilePlain charges none, so only the revocations tie it to etcd.
	profileQuota = "cluster-token"
	profilePlain = "plain-token"
	// quota is the cluster quota's max; its window outlasts the test.
	quota = 100
	// replicas is the number of broker processes.
	replicas = 3
)

// harness describes the broker binary to testproc: its output is shown
// when the test fails (the broker never logs a credential).
var harness = testproc.Harness{
	Package:   "ha",
	Server:    "credbroker",
	Command:   "credbroker",
	PortTaken: "address already in use",
}

// fleet is the etcd cluster, the trust domain standing in for SPIRE's, and
// the broker processes that share them.
type fleet struct {
	etcd *etcdtest.Cluster
	// etcdTLS is state.etcd.tls: the members' CA and the replicas' client
	// certificate and key.
	etcdTLS  string
	bundle   string // the trust domain's X.509 bundle, as a node's bootstrap data carries it
	ca       *ca.CA
	env      []string
	replicas []*replica
}

// replica is one broker process: its configuration file and data
// directory, which outlive the process (a restart uses them again), and
// while it runs its addresses.
type replica struct {
	n       int
	id      string // replica_id, in every record of its audit chain
	cfg     string
	dataDir string

	proc               *testproc.Process
	grpcAddr, httpAddr string
}

// newFleet starts a three-member etcd and n broker processes on it, each
// given every member, and stops them all when the test ends.
func newFleet(t *testing.T, n int) *fleet {
	t.Helper()
	dir := t.TempDir()
	// The members require client certificates, as a production etcd
	// does; the replicas share one, as pods given one Secret would.
	etcdCA := etcdtest.NewPKI(t, dir, "etcd")
	memberCert, memberKey := etcdCA.Issue("etcd-member", x509.ExtKeyUsageServerAuth)
	clientCert, clientKey := etcdCA.Issue("credbroker", x509.ExtKeyUsageClientAuth)
	f := &fleet{
		etcd:    etcdtest.NewTLS(t, 3, etcdtest.TLSFiles{Cert: memberCert, Key: memberKey, ClientCA: etcdCA.CAFile}),
		etcdTLS: fmt.Sprintf("{ca: %s, cert: %s, key: %s}", etcdCA.CAFile, clientCert, clientKey),
	}
	td := spiffeid.RequireTrustDomainFromString(trustDomain)
	authority, err := ca.New(td)
	if err != nil {
		t.Fatal(err)
	}
	f.ca = authority
	// The replicas share one server SVID and bundle, as pods of one
	// StatefulSet given the same SPIFFE ID would.
	tlsDir := filepath.Join(dir, "tls")
	serverSVID, err := authority.MintX509SVID(spiffeid.RequireFromPath(td, "/credbroker"), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := svidfile.Write(tlsDir, serverSVID, authority.X509Bundle()); err != nil {
		t.Fatal(err)
	}
	f.bundle = filepath.Join(tlsDir, "bundle.pem")
	f.env = testproc.Environ([]string{"CREDBROKER_", "AWS_", "GODEBUG=", "HOME=", "SPIFFE_ENDPOINT_SOCKET="}, "HOME="+dir)
	for i := range n {
		r := &replica{n: i, id: fmt.Sprintf("replica-%d", i), dataDir: filepath.Join(dir, fmt.Sprintf("data-%d", i))}
		r.cfg = filepath.Join(dir, fmt.Sprintf("replica-%d.yaml", i))
		if err := os.WriteFile(r.cfg, []byte(f.config(r, tlsDir, filepath.Join(dir, "node-ca"))), 0o600); err != nil {
			t.Fatal(err)
		}
		f.replicas = append(f.replicas, r)
	}
	for _, r := range f.replicas {
		f.start(t, r)
	}
	return f
}

// config is replica r's configuration file: the local JWT issuer (no
// upstream to wait on), a cluster quota and a quota-free profile, node
// attestation with the node CA in nodeCA (one for all replicas, as one
// Secret mounted in each pod), and the state in etcd, over mTLS, under one
// prefix for all replicas.
func (f *fleet) config(r *replica, tlsDir, nodeCA string) string {
	return fmt.Sprintf(`trust_domain: %[1]s
replica_id: %[2]s
data_dir: %[3]s
tls:
  svid_file: %[4]s/svid.pem
  svid_key_file: %[4]s/svid_key.pem
  bundles: {%[1]s: %[4]s/bundle.pem}
issuers:
  oidc: {type: jwt, jwt: {issuer_url: "https://credbroker.%[1]s/oidc"}}
profiles:
  %[5]s: {issuer: oidc, max_ttl: 1h, cluster: required}
  %[6]s: {issuer: oidc, max_ttl: 1h, cluster: none}
node_attestation: {svid_ttl: 10m, ca_dir: %[10]s}
policy:
  - id: spiffe://%[1]s/ns/capi-system/sa/*
    profiles: [%[5]s]
    clusters: ["ha/*"]
  - id: spiffe://%[1]s/ns/capi-system/sa/*
    profiles: [%[6]s]
  - id: spiffe://%[1]s/capi/cluster/ha/*/node/*
    profiles: [%[5]s]
    clusters: ["ha/*"]
limits:
  cluster_quota: {max: %[7]d, window: 24h}
  requests: {issue: {rate: 10000, burst: 10000}, admin: {rate: 1000, burst: 1000}}
state:
  etcd:
    endpoints: [%[8]s]
    prefix: /ha/
    tls: %[9]s
    # longer than the 2s default: the steps count answers, and on a loaded test machine the
    # in-process etcd members can starve the revocation probe past 2s (every replica then
    # refuses UNAVAILABLE, as it must); the staleness bound has tests of its own
    max_staleness: 10s
`, trustDomain, r.id, r.dataDir, tlsDir, profileQuota, profilePlain, quota, strings.Join(f.etcd.Endpoints(), ", "), f.etcdTLS, nodeCA)
}

// start runs replica r's process on its configuration file and returns
// once its health service says SERVING (it has reached etcd and confirmed
// its revocations current).
func (f *fleet) start(t *testing.T, r *replica) {
	t.Helper()
	bin := filepath.Join(binDir, "credbroker")
	r.proc = harness.Start(t, bin, func() (testproc.Attempt, error) {
		addrs, err := testproc.FreePorts(2)
		if err != nil {
			return testproc.Attempt{}, err
		}
		r.grpcAddr, r.httpAddr = addrs[0], addrs[1]
		cmd := exec.Command(bin, "serve", "--config", r.cfg, "--listen", r.grpcAddr, "--http-listen", r.httpAddr)
		cmd.Env = f.env
		return testproc.Attempt{Cmd: cmd, ReadyOutput: "msg=serving", Ready: func(ctx context.Context) error {
			return f.serving(ctx, r)
		}}, nil
	})
}

// serving asks replica r's gRPC health service, as a load balancer would,
// whether it can serve.
func (f *fleet) serving(ctx context.Context, r *replica) error {
	conn, err := grpc.NewClient("passthrough:///"+r.grpcAddr, grpc.WithTransportCredentials(f.healthCreds()))
	if err != nil {
		return err
	}
	defer conn.Close()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		return err
	}
	if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		return fmt.Errorf("health: %s", resp.GetStatus())
	}
	return nil
}

// healthCreds are a load balancer's: TLS that authenticates the broker,
// with no client certificate.
func (f *fleet) healthCreds() credentials.TransportCredentials {
	return grpccredentials.TLSClientCredentials(f.ca.X509Bundle(), tlsconfig.AuthorizeMemberOf(f.ca.TrustDomain()))
}

// mint returns an X.509-SVID for the workload at path in the trust domain.
func (f *fleet) mint(t *testing.T, path string) *x509svid.SVID {
	t.Helper()
	svid, err := f.ca.MintX509SVID(spiffeid.RequireFromPath(f.ca.TrustDomain(), path), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return svid
}

// client connects to replica r as svid over mTLS; the connection closes
// when the test ends.
func (f *fleet) client(t *testing.T, r *replica, svid *x509svid.SVID) credbrokerv1.BrokerServiceClient {
	t.Helper()
	conn, err := brokerclient.DialSource(r.grpcAddr, svid, f.ca.X509Bundle(), "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return credbrokerv1.NewBrokerServiceClient(conn)
}

// clients connects to every replica as svid, in the replicas' order.
func (f *fleet) clients(t *testing.T, svid *x509svid.SVID) []credbrokerv1.BrokerServiceClient {
	t.Helper()
	var out []credbrokerv1.BrokerServiceClient
	for _, r := range f.replicas {
		out = append(out, f.client(t, r, svid))
	}
	return out
}

// ctl runs credbrokerctl on replica r's admin socket and returns its
// stdout; a non-zero exit fails the test.
func (r *replica) ctl(t *testing.T, args ...string) string {
	t.Helper()
	out, err := ctlRun(append([]string{"--socket", filepath.Join(r.dataDir, "admin.sock")}, args...)...)
	if err != nil {
		t.Fatalf("replica %d: %v", r.n, err)
	}
	return out
}

// ctlRun runs credbrokerctl with args; a non-zero exit is an error
// carrying its output.
func ctlRun(args ...string) (string, error) {
	return run("credbrokerctl", append([]string{"--timeout", "1m"}, args...)...)
}

// run runs one of the built binaries with args and returns its stdout; a
// non-zero exit is an error carrying its output.
func run(name string, args ...string) (string, error) {
	cmd := exec.Command(filepath.Join(binDir, name), args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s %s: %v: %s%s", name, strings.Join(args, " "), err, out.String(), errb.String())
	}
	return out.String(), nil
}

// used asks every replica, with `credbrokerctl quota show`, how many units
// of cluster's quota are spent; they must agree (the window is in etcd).
func (f *fleet) used(t *testing.T, cluster string) int {
	t.Helper()
	n := 0
	for i, r := range f.replicas {
		var resp credbrokerv1.GetQuotaResponse
		if err := protojson.Unmarshal([]byte(r.ctl(t, "-o", "json", "quota", "show", "--cluster", cluster)), &resp); err != nil {
			t.Fatalf("replica %d: quota show: %v", i, err)
		}
		got := int(resp.GetUsage().GetUsed())
		if i > 0 && got != n {
			t.Fatalf("replica %d sees %d units of %s's quota used, replica 0 %d", i, got, cluster, n)
		}
		n = got
	}
	return n
}

// record is what the tests read of an exported audit record.
type record struct {
	Replica    string `json:"replica"`
	IssuanceID string `json:"issuance_id"`
	Cluster    string `json:"cluster"`
	Decision   string `json:"decision"`
}

// issued maps, per replica, the issuance ids of the issued records for a
// cluster to how often each is on record.
type issued []map[string]int

// total is the number of issued records in all replicas' chains.
func (is issued) total() int {
	n := 0
	for _, m := range is {
		for _, c := range m {
			n += c
		}
	}
	return n
}

// audit checks every replica's audit chain through the replicas
// themselves: `audit verify` on each process, then all three exported in
// one `audit export` (one --socket per process: one stream, merged by
// time) in which every record names its replica and each replica's chain
// verifies (`audit verify --file`). It returns the issued records for
// cluster, per replica.
func (f *fleet) audit(t *testing.T, cluster string) issued {
	t.Helper()
	var sockets []string
	for i, r := range f.replicas {
		if v := r.ctl(t, "audit", "verify"); !strings.HasPrefix(v, "audit chain OK: ") {
			t.Fatalf("replica %d: audit verify: %s", i, v)
		}
		sockets = append(sockets, "--socket", filepath.Join(r.dataDir, "admin.sock"))
	}
	export, err := ctlRun(append(sockets, "audit", "export")...)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "fleet.jsonl")
	if err := os.WriteFile(file, []byte(export), 0o600); err != nil {
		t.Fatal(err)
	}
	v, err := ctlRun("audit", "verify", "--file", file)
	if err != nil {
		t.Fatalf("the replicas' export does not verify: %v", err)
	}
	out := make(issued, len(f.replicas))
	byID := map[string]int{}
	for i, r := range f.replicas {
		if !strings.Contains(v, fmt.Sprintf("replica %q OK: ", r.id)) {
			t.Fatalf("audit verify --file of the replicas' export does not verify replica %s's chain:\n%s", r.id, v)
		}
		out[i], byID[r.id] = map[string]int{}, i
	}
	for line := range strings.Lines(export) {
		var rec record
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("audit export line %q: %v", line, err)
		}
		i, ok := byID[rec.Replica]
		if !ok {
			t.Fatalf("a record of the export names replica %q, none of the fleet's", rec.Replica)
		}
		if rec.Decision == "issued" && rec.Cluster == cluster {
			out[i][rec.IssuanceID]++
		}
	}
	return out
}
