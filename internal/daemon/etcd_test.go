package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strconv"
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
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/credbroker/credbroker/broker"
	"github.com/credbroker/credbroker/broker/audit"
	"github.com/credbroker/credbroker/broker/state/boltstate"
	"github.com/credbroker/credbroker/internal/ca"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/test/etcdtest"
	"github.com/credbroker/credbroker/test/poll"
)

// TestReplicasShareStateInEtcd runs two brokers on state.etcd with one
// prefix, as two replicas: a cluster quota is spent across both, never
// beyond its max; with etcd gone a replica refuses UNAVAILABLE rather than
// issue without its quota recorded, or (for a profile that charges no
// quota) under revocations it may not have seen; and it serves again by
// itself once etcd is back.
func TestReplicasShareStateInEtcd(t *testing.T) {
	t.Parallel()
	etcd := etcdtest.New(t, 1)
	dir := t.TempDir()
	td, authority, base := productionIdentity(t, dir)
	cfg := base + `
issuers:
  oidc: {type: jwt, jwt: {issuer_url: "https://credbroker.prod.test/oidc"}}
profiles:
  web-identity: {issuer: oidc, max_ttl: 1h, audiences: [sts.amazonaws.com], cluster: required}
  plain: {issuer: oidc, max_ttl: 1h, cluster: none}
policy:
  - id: spiffe://prod.test/ns/*/sa/capa-controller-manager
    profiles: [web-identity]
    clusters: ["capi-*/*"]
  - id: spiffe://prod.test/ns/*/sa/capa-controller-manager
    profiles: [plain]
limits: {cluster_quota: {max: 3, window: 1h}}
state:
  etcd:
    endpoints: [` + etcd.Endpoint(0) + `]
    prefix: /replicas/
    request_timeout: 5s # the default: a loaded test machine can take over 1s to decide a spend
    # longer than the 2s default, so that a loaded test machine starving the probe does not refuse the
    # issuances counted below; the refusal for staleness is checked against it
    max_staleness: 6s
`
	a := startDaemon(t, t.TempDir(), strings.Replace(cfg, "data_dir: "+dir+"/data", "data_dir: "+dir+"/data-a", 1))
	defer a.stop(t)
	b := startDaemon(t, t.TempDir(), strings.Replace(cfg, "data_dir: "+dir+"/data", "data_dir: "+dir+"/data-b", 1))
	defer b.stop(t)

	svid, err := authority.MintX509SVID(spiffeid.RequireFromPath(td, "/ns/capa-system/sa/capa-controller-manager"), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	creds := grpccredentials.MTLSClientCredentials(svid, x509bundle.NewSet(authority.X509Bundle()), tlsconfig.AuthorizeMemberOf(td))
	client := func(addr string) credbrokerv1.BrokerServiceClient {
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = conn.Close() })
		return credbrokerv1.NewBrokerServiceClient(conn)
	}
	ca, cb := client(a.grpcAddr), client(b.grpcAddr)
	ctx := context.Background()
	issue := func(c credbrokerv1.BrokerServiceClient, cluster string) error {
		_, err := c.IssueCredential(ctx, &credbrokerv1.IssueCredentialRequest{Profile: "web-identity", Cluster: cluster})
		return err
	}
	// A plain credential charges no quota: nothing but the revocations'
	// freshness ties it to etcd.
	plain := func(c credbrokerv1.BrokerServiceClient) error {
		_, err := c.IssueCredential(ctx, &credbrokerv1.IssueCredentialRequest{Profile: "plain"})
		return err
	}
	if err := plain(cb); err != nil {
		t.Fatalf("plain credential: %v", err)
	}
	confirmedAge(t, b.httpAddr) // the metric is there
	pollCtx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	p := poll.New(t, pollCtx, 50*time.Millisecond)
	// until polls try until it returns an error of code want.
	until := func(what string, want codes.Code, try func() error) {
		t.Helper()
		p.UntilCode(what, want, false, try)
	}

	for i, c := range []credbrokerv1.BrokerServiceClient{ca, cb, ca} {
		if err := issue(c, "capi-a/c1"); err != nil {
			t.Fatalf("issuance %d of the cluster's 3: %v", i+1, err)
		}
	}
	for name, c := range map[string]credbrokerv1.BrokerServiceClient{"a": ca, "b": cb} {
		if err := issue(c, "capi-a/c1"); status.Code(err) != codes.ResourceExhausted {
			t.Fatalf("4th issuance for the cluster on replica %s: %v, want RESOURCE_EXHAUSTED", name, err)
		}
	}

	etcd.Stop(0)
	err = issue(ca, "capi-a/c2")
	if status.Code(err) != codes.Unavailable || !strings.Contains(status.Convert(err).Message(), "shared state unavailable") {
		t.Fatalf("issuance without etcd: %v, want UNAVAILABLE (shared state unavailable)", err)
	}
	// Within the revocations' staleness bound of its last confirmation,
	// which the metric shows passed.
	until("plain credential without etcd", codes.Unavailable, func() error { return plain(cb) })
	if age := confirmedAge(t, b.httpAddr); age <= 6 {
		t.Errorf("confirmed age %gs while refusing for staleness, want over max_staleness (6s)", age)
	}
	// The health service tells load balancers (at its next check).
	health := healthpb.NewHealthClient(healthConn(t, b.grpcAddr, td, authority))
	serving := func() error {
		resp, err := health.Check(ctx, &healthpb.HealthCheckRequest{})
		if err == nil && resp.Status != healthpb.HealthCheckResponse_SERVING {
			return status.Error(codes.Unavailable, resp.Status.String())
		}
		return err
	}
	until("health without etcd", codes.Unavailable, serving)
	if err := etcd.Restart(0); err != nil {
		t.Fatal(err)
	}
	until("issuance once etcd is back", codes.OK, func() error { return issue(ca, "capi-a/c2") })
	until("plain credential once etcd is back", codes.OK, func() error { return plain(cb) })
	until("health once etcd is back", codes.OK, serving)
	// The refused issuance spent nothing that could be seen: c2 still has
	// its 3 (or 2, had the lost spend committed late; never fewer).
	issued := 1
	for {
		err := issue(cb, "capi-a/c2")
		if err != nil {
			if status.Code(err) != codes.ResourceExhausted {
				t.Fatalf("issuance for capi-a/c2 on replica b: %v", err)
			}
			break
		}
		issued++
	}
	if issued != 3 && issued != 2 {
		t.Fatalf("capi-a/c2 issued %d in all after the outage, want 3 (2 had the refused spend committed after its answer was lost)", issued)
	}
}

// TestReplicasNeverOverspend: 300 concurrent requests spread over three
// replicas on one etcd, against a cluster quota of 100: exactly 100 issued
// and 200 RESOURCE_EXHAUSTED, and the replicas' audit chains hold exactly
// 100 issued records between them, each chain verifying, alone and in the
// replicas' exports merged into one stream.
func TestReplicasNeverOverspend(t *testing.T) {
	t.Parallel()
	const replicas, requests, quota = 3, 300, 100
	etcd := etcdtest.New(t, 1)
	replicaSet := startQuotaReplicas(t, replicas, quota, []string{etcd.Endpoint(0)}, "/overspend/")
	var clients []credbrokerv1.BrokerServiceClient
	var daemons []*running
	var dataDirs []string
	for _, r := range replicaSet {
		clients, daemons, dataDirs = append(clients, r.client), append(daemons, r.d), append(dataDirs, r.data)
	}

	codesSeen := make(chan codes.Code, requests)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range requests {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			_, err := clients[i%replicas].IssueCredential(context.Background(), &credbrokerv1.IssueCredentialRequest{Profile: "web-identity", Cluster: "capi-a/c1"})
			codesSeen <- status.Code(err)
		}()
	}
	close(start)
	wg.Wait()
	close(codesSeen)
	count := map[codes.Code]int{}
	for c := range codesSeen {
		count[c]++
	}
	if count[codes.OK] != quota || count[codes.ResourceExhausted] != requests-quota {
		t.Fatalf("outcomes %v, want %d OK and %d RESOURCE_EXHAUSTED", count, quota, requests-quota)
	}
	for _, d := range daemons {
		d.stop(t)
	}

	issued := 0
	var exports []audit.ExportInput
	for i, data := range dataDirs {
		db, err := boltstate.OpenDB(filepath.Join(data, DBFile))
		if err != nil {
			t.Fatal(err)
		}
		log, err := audit.Open(db)
		if err != nil {
			t.Fatal(err)
		}
		if res, err := log.Verify(); err != nil || !res.OK {
			t.Errorf("%s: audit chain %+v, %v", data, res, err)
		}
		var export bytes.Buffer
		err = log.ExportStored(0, func(r audit.Record, stored []byte) error {
			if r.Decision == audit.DecisionIssued && r.Cluster == "capi-a/c1" {
				issued++
			}
			if want := fmt.Sprintf("replica-%d", i); r.Replica != want {
				return fmt.Errorf("record %d names replica %q, want %q", r.Seq, r.Replica, want)
			}
			export.Write(append(stored, '\n'))
			return nil
		})
		exports = append(exports, audit.ExportInput{Name: data, R: &export})
		if err != nil {
			t.Fatal(err)
		}
		_ = log.Close()
		_ = db.Close()
	}
	if issued != quota {
		t.Fatalf("the replicas' audit chains hold %d issued records, want %d", issued, quota)
	}
	var merged bytes.Buffer
	if _, err := audit.MergeExports(&merged, exports...); err != nil {
		t.Fatal(err)
	}
	res, err := audit.VerifyExport(&merged)
	if err != nil || !res.OK || len(res.Chains) != replicas {
		t.Fatalf("the merged export: %+v, %v", res, err)
	}
}

// confirmedAge reads credbroker_state_revocations_confirmed_age_seconds from
// the broker's /metrics.
func confirmedAge(t *testing.T, httpAddr string) float64 {
	t.Helper()
	return scrapedValue(t, httpAddr, "credbroker_state_revocations_confirmed_age_seconds")
}

// scrapedValue reads the value of the unlabelled metric name from the
// broker's /metrics.
func scrapedValue(t *testing.T, httpAddr, name string) float64 {
	t.Helper()
	for _, line := range strings.Split(httpGet(t, "http://"+httpAddr+"/metrics"), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatal(err)
			}
			return f
		}
	}
	t.Fatalf("no %s in /metrics", name)
	return 0
}

// TestReadinessFollowsEtcd: a broker on state.etcd whose etcd becomes
// unreachable, or whose member loses its quorum, turns NOT_SERVING on its
// health listener (the server as a whole and each credbroker service) once
// its revocations are older than state.etcd.max_staleness, while liveness
// stays SERVING; with etcd back it turns SERVING by itself.
// credbroker_state_store_up follows, and each change is logged once.
func TestReadinessFollowsEtcd(t *testing.T) {
	t.Parallel()
	t.Run("unreachable", func(t *testing.T) {
		t.Parallel()
		etcd := etcdtest.New(t, 1)
		readinessAcrossOutage(t, etcd.Endpoint(0), func() { etcd.Disconnect(0) }, func() { etcd.Reconnect(0) })
	})
	t.Run("no quorum", func(t *testing.T) {
		t.Parallel()
		etcd := etcdtest.New(t, 3)
		// The broker keeps reaching member 2, which has no leader.
		readinessAcrossOutage(t, etcd.Endpoint(2), func() { etcd.Stop(0); etcd.Stop(1) }, func() {
			if err := etcd.Restart(0, 1); err != nil {
				t.Fatal(err)
			}
		})
	})
}

// readinessAcrossOutage runs a broker on the etcd member at endpoint and
// checks its health and credbroker_state_store_up before cut, after it, and
// after heal.
func readinessAcrossOutage(t *testing.T, endpoint string, cut, heal func()) {
	dir := t.TempDir()
	_, _, base := productionIdentity(t, dir)
	d := startDaemon(t, dir, base+`
health_listen: 127.0.0.1:0
issuers: {oidc: {type: jwt}}
profiles: {tok: {issuer: oidc, max_ttl: 1h}}
policy: [{id: "spiffe://prod.test/ns/*/sa/capa-controller-manager", profiles: [tok]}]
state:
  etcd:
    endpoints: [`+endpoint+`]
    prefix: /readiness/
    request_timeout: 1s
    probe_interval: 20ms
    max_staleness: 3s
`)
	// max_staleness is not shorter: a loaded test machine that starves the
	// probes for a second while etcd is up would turn readiness once more
	// than the outage does, and the counts below would fail.
	defer d.stop(t)
	health := healthpb.NewHealthClient(d.healthListener(t))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// The server as a whole, as a readiness probe asks.
	watch, err := health.Watch(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	// await reads the watch until it reports want.
	await := func(want healthpb.HealthCheckResponse_ServingStatus) {
		t.Helper()
		for {
			resp, err := watch.Recv()
			if err != nil {
				t.Fatalf("waiting for %s: %v\n%s", want, err, d.logs.String())
			}
			if resp.Status == want {
				return
			}
		}
	}
	// expect checks the status of every service.
	expect := func(ready healthpb.HealthCheckResponse_ServingStatus, up float64) {
		t.Helper()
		for _, svc := range []string{"", "credbroker.v1.BrokerService", "credbroker.v1.NodeService", "credbroker.v1.AdminService", broker.LivenessService} {
			want := ready
			if svc == broker.LivenessService {
				want = healthpb.HealthCheckResponse_SERVING
			}
			resp, err := health.Check(ctx, &healthpb.HealthCheckRequest{Service: svc})
			if err != nil || resp.Status != want {
				t.Errorf("Check(%q) = %v, %v; want %s", svc, resp, err, want)
			}
		}
		if got := scrapedValue(t, d.httpAddr, "credbroker_state_store_up"); got != up {
			t.Errorf("credbroker_state_store_up = %g, want %g", got, up)
		}
	}

	await(healthpb.HealthCheckResponse_SERVING)
	expect(healthpb.HealthCheckResponse_SERVING, 1)

	cut()
	await(healthpb.HealthCheckResponse_NOT_SERVING)
	expect(healthpb.HealthCheckResponse_NOT_SERVING, 0)
	if age := confirmedAge(t, d.httpAddr); age <= 3 {
		t.Errorf("NOT_SERVING with its revocations confirmed %gs ago, within max_staleness (3s)", age)
	}

	heal()
	await(healthpb.HealthCheckResponse_SERVING)
	expect(healthpb.HealthCheckResponse_SERVING, 1)

	logs := d.logs.String()
	if n := strings.Count(logs, "health: NOT_SERVING"); n != 1 || !strings.Contains(logs, "shared state is unavailable") {
		t.Errorf("NOT_SERVING logged %d times, want once, for the shared state:\n%s", n, logs)
	}
	if n := strings.Count(logs, "SERVING again"); n != 1 {
		t.Errorf("SERVING again logged %d times, want once:\n%s", n, logs)
	}
}

// healthConn dials addr as a caller without an SVID, as a load balancer's
// probe does.
func healthConn(t *testing.T, addr string, td spiffeid.TrustDomain, authority *ca.CA) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(grpccredentials.TLSClientCredentials(x509bundle.NewSet(authority.X509Bundle()), tlsconfig.AuthorizeMemberOf(td))))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// TestPartitionedReplicaNeverIssuesUnderAnUnseenRevocation: replica a loses
// etcd while replica b keeps it; an identity revoked on b meanwhile is
// served by a at most until a's last confirmation goes stale, then refused
// UNAVAILABLE, and once the partition heals refused as revoked — never
// issued again in between.
func TestPartitionedReplicaNeverIssuesUnderAnUnseenRevocation(t *testing.T) {
	t.Parallel()
	etcd := etcdtest.New(t, 1)
	dir := t.TempDir()
	td, authority, base := productionIdentity(t, dir)
	cfg := func(data, endpoint string) string {
		return strings.Replace(base, "data_dir: "+filepath.Join(dir, "data"), "data_dir: "+filepath.Join(dir, data), 1) + `
issuers:
  oidc: {type: jwt, jwt: {issuer_url: "https://credbroker.prod.test/oidc"}}
profiles:
  plain: {issuer: oidc, max_ttl: 1h, cluster: none}
policy:
  - id: spiffe://prod.test/ns/*/sa/capa-controller-manager
    profiles: [plain]
state:
  etcd:
    endpoints: [` + endpoint + `]
    prefix: /partition/
    request_timeout: 5s # the default: a loaded test machine can take over 1s to decide a spend
`
	}
	// a reaches etcd through the link the test cuts; b directly.
	a := startDaemon(t, t.TempDir(), cfg("data-a", etcd.Endpoint(0)))
	defer a.stop(t)
	b := startDaemon(t, t.TempDir(), cfg("data-b", etcd.DirectEndpoint(0)))
	defer b.stop(t)
	adminConn, err := grpc.NewClient("unix://"+filepath.Join(dir, "data-b", "admin.sock"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer adminConn.Close()

	svid, err := authority.MintX509SVID(spiffeid.RequireFromPath(td, "/ns/capa-system/sa/capa-controller-manager"), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(a.grpcAddr, grpc.WithTransportCredentials(grpccredentials.MTLSClientCredentials(svid, x509bundle.NewSet(authority.X509Bundle()), tlsconfig.AuthorizeMemberOf(td))))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx := context.Background()
	issueOnA := func() error {
		_, err := credbrokerv1.NewBrokerServiceClient(conn).IssueCredential(ctx, &credbrokerv1.IssueCredentialRequest{Profile: "plain"})
		return err
	}
	if err := issueOnA(); err != nil {
		t.Fatal(err)
	}

	etcd.Disconnect(0)
	if _, err := credbrokerv1.NewAdminServiceClient(adminConn).Revoke(ctx, &credbrokerv1.RevokeRequest{
		Target: &credbrokerv1.RevokeRequest_SpiffeId{SpiffeId: svid.ID.String()}, Reason: "compromised"}); err != nil {
		t.Fatal(err)
	}
	// Until its last confirmation is state.etcd.max_staleness old, a does not
	// know it is cut off and may still serve (the bound the README states);
	// from then on it refuses, and never issues again until it has seen
	// the revocation.
	deadline := time.Now().Add(time.Minute)
	poll := time.NewTicker(20 * time.Millisecond)
	defer poll.Stop()
	for status.Code(issueOnA()) != codes.Unavailable {
		if time.Now().After(deadline) {
			t.Fatal("the partitioned replica kept issuing")
		}
		<-poll.C
	}
	for range 5 {
		if err := issueOnA(); status.Code(err) != codes.Unavailable {
			t.Fatalf("the partitioned replica, after refusing: %v, want UNAVAILABLE", err)
		}
	}
	etcd.Reconnect(0)
	for {
		err := issueOnA()
		if status.Code(err) == codes.FailedPrecondition {
			break
		}
		if err == nil {
			t.Fatal("the healed replica issued to an identity revoked during the partition")
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the partition healed: %v, want FAILED_PRECONDITION (REVOKED)", err)
		}
		<-poll.C
	}
}

// TestReplicasSurviveAMemberAndFailClosedWithoutQuorum: three replicas on a
// three-member etcd, each given every member. With one member stopped every
// replica goes on issuing (once its client has failed over); with a second
// stopped, the quorum lost, every replica refuses a quota-charging issuance
// UNAVAILABLE and issues nothing, and the replicas' audit chains hold
// exactly as many issued records as there were OK answers; with both back,
// every replica serves again by itself, and the cluster quota ends spent
// exactly: never beyond its max, short of it only by refused spends that
// committed after their answers were lost.
func TestReplicasSurviveAMemberAndFailClosedWithoutQuorum(t *testing.T) {
	t.Parallel()
	const replicas, quota, cluster = 3, 20, "capi-a/c1"
	etcd := etcdtest.New(t, 3)
	var clients []credbrokerv1.BrokerServiceClient
	var admins []credbrokerv1.AdminServiceClient
	for _, r := range startQuotaReplicas(t, replicas, quota, etcd.Endpoints(), "/quorum/") {
		defer r.d.stop(t)
		clients = append(clients, r.client)
		adminConn, err := grpc.NewClient("unix://"+filepath.Join(r.data, "admin.sock"), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer adminConn.Close()
		admins = append(admins, credbrokerv1.NewAdminServiceClient(adminConn))
	}

	// Generous: a loaded machine may take seconds per election and restart.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	// ok counts the OK answers; failed the answers that were neither OK nor
	// RESOURCE_EXHAUSTED, each a spend that may have committed after its
	// answer was lost.
	var ok, failed int
	issue := func(i int) error {
		_, err := clients[i].IssueCredential(ctx, &credbrokerv1.IssueCredentialRequest{Profile: "web-identity", Cluster: cluster})
		switch status.Code(err) {
		case codes.OK:
			ok++
		case codes.ResourceExhausted:
		default:
			failed++
		}
		return err
	}
	p := poll.New(t, ctx, 50*time.Millisecond)
	// until polls replica i with issuances until one answers want; an OK
	// answer before that fails the test when okIsFatal.
	until := func(what string, i int, want codes.Code, okIsFatal bool) {
		t.Helper()
		p.UntilCode(fmt.Sprintf("%s: replica %d", what, i), want, okIsFatal, func() error { return issue(i) })
	}
	// issuedRecords counts the issued records for the cluster in every
	// replica's audit chain, through the admin API.
	issuedRecords := func() int {
		t.Helper()
		n := 0
		for i, adm := range admins {
			stream, err := adm.ExportAudit(ctx, &credbrokerv1.ExportAuditRequest{PageSize: 10000})
			if err != nil {
				t.Fatalf("replica %d: export audit: %v", i, err)
			}
			for {
				resp, err := stream.Recv()
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					t.Fatalf("replica %d: export audit: %v", i, err)
				}
				if r := resp.GetRecord(); r.GetDecision() == credbrokerv1.Decision_DECISION_ISSUED && r.GetCluster() == cluster {
					n++
				}
			}
		}
		return n
	}

	for i := range replicas {
		if err := issue(i); err != nil {
			t.Fatalf("replica %d with every member up: %v", i, err)
		}
	}

	etcd.Stop(0)
	for round := range 2 {
		for i := range replicas {
			until(fmt.Sprintf("one member stopped, round %d", round+1), i, codes.OK, false)
		}
	}

	etcd.Stop(1)
	okBefore := ok
	for i := range replicas {
		until("the quorum lost", i, codes.Unavailable, true)
	}
	if got := issuedRecords(); got != okBefore {
		t.Fatalf("without a quorum the replicas' audit chains hold %d issued records, want %d (the OK answers)", got, okBefore)
	}

	if err := etcd.Restart(0, 1); err != nil {
		t.Fatal(err)
	}
	for i := range replicas {
		until("the quorum back", i, codes.OK, false)
	}
	// Spend the rest of the quota, round the replicas, until it is gone.
	for i := 0; ; i = (i + 1) % replicas {
		err := issue(i)
		if status.Code(err) == codes.ResourceExhausted {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("spending the rest of the quota: %v", err)
		}
		if ok > quota {
			t.Fatalf("%d issued against a quota of %d", ok, quota)
		}
	}
	for i := range replicas {
		if err := issue(i); status.Code(err) != codes.ResourceExhausted {
			t.Fatalf("replica %d after the quota was spent: %v, want RESOURCE_EXHAUSTED", i, err)
		}
	}
	t.Logf("%d OK, %d refused neither OK nor RESOURCE_EXHAUSTED", ok, failed)
	if ok > quota || ok < quota-failed {
		t.Fatalf("%d issued in all against a quota of %d, want %d (or down to %d, had refused spends committed after their answers were lost)", ok, quota, quota, quota-failed)
	}
	if got := issuedRecords(); got != ok {
		t.Fatalf("the replicas' audit chains hold %d issued records, want %d (the OK answers)", got, ok)
	}
}

// quotaReplica is one broker started by startQuotaReplicas.
type quotaReplica struct {
	d      *running
	data   string // its data directory
	client credbrokerv1.BrokerServiceClient
}

// startQuotaReplicas starts n brokers (replica-0, ...) on the etcd at
// endpoints under prefix, sharing a cluster quota of quota issuances of
// profile web-identity for clusters capi-*/*, each with a controller's
// client connected. The caller stops them.
func startQuotaReplicas(t *testing.T, n, quota int, endpoints []string, prefix string) []quotaReplica {
	t.Helper()
	dir := t.TempDir()
	td, authority, base := productionIdentity(t, dir)
	cfg := base + `
issuers:
  oidc: {type: jwt, jwt: {issuer_url: "https://credbroker.prod.test/oidc"}}
profiles:
  web-identity: {issuer: oidc, max_ttl: 1h, audiences: [sts.amazonaws.com], cluster: required}
policy:
  - id: spiffe://prod.test/ns/*/sa/capa-controller-manager
    profiles: [web-identity]
    clusters: ["capi-*/*"]
limits: {cluster_quota: {max: ` + fmt.Sprint(quota) + `, window: 1h}, requests: {issue: {rate: 1000, burst: 1000}}}
state:
  etcd:
    endpoints: [` + strings.Join(endpoints, ", ") + `]
    prefix: ` + prefix + `
    # longer than the 2s default: these tests count answers, and a loaded test machine can starve the probe
    max_staleness: 10s
`
	svid, err := authority.MintX509SVID(spiffeid.RequireFromPath(td, "/ns/capa-system/sa/capa-controller-manager"), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	creds := grpccredentials.MTLSClientCredentials(svid, x509bundle.NewSet(authority.X509Bundle()), tlsconfig.AuthorizeMemberOf(td))
	var out []quotaReplica
	for i := range n {
		data := filepath.Join(dir, fmt.Sprintf("data-%d", i))
		d := startDaemon(t, t.TempDir(), strings.Replace(cfg, "data_dir: "+dir+"/data", "data_dir: "+data, 1)+fmt.Sprintf("replica_id: replica-%d\n", i))
		conn, err := grpc.NewClient(d.grpcAddr, grpc.WithTransportCredentials(creds))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		out = append(out, quotaReplica{d: d, data: data, client: credbrokerv1.NewBrokerServiceClient(conn)})
	}
	return out
}
