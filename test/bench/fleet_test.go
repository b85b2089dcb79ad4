package bench

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffegrpc/grpccredentials"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/credbroker/credbroker/broker"
	"github.com/credbroker/credbroker/broker/audit"
	"github.com/credbroker/credbroker/broker/config"
	"github.com/credbroker/credbroker/broker/limits"
	"github.com/credbroker/credbroker/broker/policy"
	"github.com/credbroker/credbroker/broker/state"
	"github.com/credbroker/credbroker/broker/state/boltstate"
	"github.com/credbroker/credbroker/broker/state/etcdstate"
	"github.com/credbroker/credbroker/internal/ca"
	"github.com/credbroker/credbroker/issuers/jwt"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/test/etcdtest"
)

// The fleet: every workload cluster has fleetControllers controllers
// (capa, capi, kubeadm) and fleetNodes nodes, each its own SPIFFE ID, each
// asking for credentials scoped to its cluster. Quotas make exactness
// visible: each identity may have fleetIdentityQuota credentials an hour,
// each cluster fleetClusterQuota, and every identity asks FLEET_ATTEMPTS
// times (3), so exactly fleetClusterQuota per cluster are issued
// fleet-wide (fewer than the identities' quotas allow together), however
// the requests of a cluster are spread over the replicas.
const (
	fleetControllers   = 3
	fleetNodes         = 10
	fleetReplicas      = 3
	fleetIdentityQuota = 2
	fleetClusterQuota  = 20
)

// fleetParams size a fleet run: FLEET_CLUSTERS (1000), FLEET_ATTEMPTS per
// identity (3), FLEET_CLIENTS concurrent callers (64).
type fleetParams struct {
	clusters, attempts, clients int
}

func fleetParamsFromEnv() (fleetParams, error) {
	var p fleetParams
	var err error
	if p.clusters, err = envInt("FLEET_CLUSTERS", 1000); err != nil {
		return p, err
	}
	if p.attempts, err = envInt("FLEET_ATTEMPTS", 3); err != nil {
		return p, err
	}
	if p.clients, err = envInt("FLEET_CLIENTS", 64); err != nil {
		return p, err
	}
	if p.clusters < 1 || p.attempts < 1 || p.clients < 1 {
		return p, errors.New("bench: FLEET_CLUSTERS, FLEET_ATTEMPTS and FLEET_CLIENTS must be positive")
	}
	return p, nil
}

// fleetReport is what a fleet run measured.
type fleetReport struct {
	Clusters   int `json:"clusters"`
	Identities int `json:"identities"`
	Replicas   int `json:"replicas"`
	EtcdNodes  int `json:"etcd_members"`
	Clients    int `json:"clients"`
	Requests   int `json:"requests"`
	// Issued is the credentials handed out, Expected what the quotas allow
	// (fleetClusterQuota per cluster); Refused the QUOTA_EXHAUSTED answers.
	Issued   int `json:"issued"`
	Expected int `json:"expected"`
	Refused  int `json:"refused"`
	// ClusterUsageExact: every cluster's quota window in etcd reads exactly
	// what was issued for it.
	ClusterUsageExact bool          `json:"cluster_usage_exact"`
	Elapsed           time.Duration `json:"elapsed_ns"`
	RequestsPerSec    float64       `json:"requests_per_s"`
	IssuedPerSec      float64       `json:"issued_per_s"`
	P50ms             float64       `json:"p50_ms"`
	P99ms             float64       `json:"p99_ms"`
	// EtcdCalls are the unary etcd calls (transactions, reads) the replicas
	// made during the run, the revocation probes included (the watch is a
	// stream, not counted).
	EtcdCalls            int64   `json:"etcd_calls"`
	EtcdCallsPerIssuance float64 `json:"etcd_calls_per_issuance"`
	EtcdCallsPerRequest  float64 `json:"etcd_calls_per_request"`
}

// fleetRequest is one identity's request for its cluster's credential.
type fleetRequest struct {
	identity int // index into the identities
	cluster  int
}

// runFleet serves the fleet from fleetReplicas brokers, each on its own
// member of a 3-member embedded etcd (its own client, counting calls),
// each with its own audit chain (bbolt, durable) and quota spends shared in
// etcd (state.SpendFirst, as the daemon wires them). Clients send every
// identity's requests, shuffled, from p.clients goroutines, request i to
// replica i mod 3 (as a Service balances them), each with the identity's
// JWT-SVID over one of the replica's TLS connections. The time the quota
// windows are reckoned in is fixed (the run is an hour of a fleet's
// requests, compressed).
func runFleet(tb testing.TB, p fleetParams) fleetReport {
	tb.Helper()
	dir := dataDir(tb)
	authority, err := ca.New(td)
	if err != nil {
		tb.Fatal(err)
	}
	issuer, err := jwt.New(jwt.Config{IssuerURL: "https://broker.bench.test", KeyFile: filepath.Join(dir, "jwt.pem")})
	if err != nil {
		tb.Fatal(err)
	}
	serverSVID, err := authority.MintX509SVID(serverID, time.Hour)
	if err != nil {
		tb.Fatal(err)
	}
	tlsConf := tlsconfig.TLSServerConfig(serverSVID)
	clientCreds := grpccredentials.TLSClientCredentials(authority.X509Bundle(), tlsconfig.AuthorizeID(serverID))

	etcd := etcdtest.New(tb, 3)
	var etcdCalls atomic.Int64
	count := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		etcdCalls.Add(1)
		return invoker(ctx, method, req, reply, cc, opts...)
	}
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	// The simulation measures throughput and quota exactness, never a
	// refusal for time: an operation may take longer than the store's
	// default deadline on a loaded machine without that being a failure.
	const fleetOpTimeout = 30 * time.Second
	var stores []*etcdstate.Store
	var targets []*target
	for i := range fleetReplicas {
		cli, err := clientv3.New(clientv3.Config{
			Endpoints: []string{etcd.Endpoint(i)}, DialTimeout: 5 * time.Second, Logger: zap.NewNop(),
			DialOptions: []grpc.DialOption{grpc.WithChainUnaryInterceptor(count)},
		})
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { cli.Close() })
		st, err := etcdstate.New(context.Background(), cli, etcdstate.Options{Prefix: "/fleet/", ProbeInterval: 250 * time.Millisecond, OpTimeout: fleetOpTimeout})
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { st.Close() })
		stores = append(stores, st)
		srv, err := fleetReplica(authority, issuer, tlsConf, st, filepath.Join(dir, fmt.Sprint("replica-", i)), clock, tb)
		if err != nil {
			tb.Fatal(err)
		}
		targets = append(targets, serve(tb, srv, clientCreds))
	}

	// Every identity's JWT-SVID, minted once.
	perCluster := fleetControllers + fleetNodes
	tokens := make([]string, p.clusters*perCluster)
	for c := range p.clusters {
		for k := range perCluster {
			role := fmt.Sprint("controller-", k)
			if k >= fleetControllers {
				role = fmt.Sprint("node-", k-fleetControllers)
			}
			id := spiffeid.RequireFromPathf(td, "/fleet/%s/%s", fleetNamespace(c), role)
			if tokens[c*perCluster+k], err = authority.MintJWTSVID(id, []string{"credbroker"}, 30*time.Minute); err != nil {
				tb.Fatal(err)
			}
		}
	}
	reqs := make([]fleetRequest, 0, len(tokens)*p.attempts)
	for i := range tokens {
		for range p.attempts {
			reqs = append(reqs, fleetRequest{identity: i, cluster: i / perCluster})
		}
	}
	rand.New(rand.NewPCG(1, 2)).Shuffle(len(reqs), func(i, j int) { reqs[i], reqs[j] = reqs[j], reqs[i] })

	clients := make([]credbrokerv1.BrokerServiceClient, 0, fleetReplicas*connsPerVariant)
	for _, t := range targets {
		for range connsPerVariant {
			clients = append(clients, t.client())
		}
	}
	issued := make([]atomic.Int64, p.clusters)
	var refused atomic.Int64
	var next atomic.Int64
	lat := make([][]time.Duration, p.clients)
	errs := make(chan error, p.clients)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	calls0 := etcdCalls.Load()
	start := time.Now()
	var wg sync.WaitGroup
	for w := range p.clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= len(reqs) {
					return
				}
				r := reqs[i]
				// Replica i mod 3, and one of its connections.
				client := clients[(i%fleetReplicas)*connsPerVariant+(i/fleetReplicas)%connsPerVariant]
				callCtx := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tokens[r.identity])
				t0 := time.Now()
				_, err := client.IssueCredential(callCtx, &credbrokerv1.IssueCredentialRequest{
					Profile: "fleet-token", Cluster: fleetNamespace(r.cluster) + "/workload"})
				lat[w] = append(lat[w], time.Since(t0))
				switch {
				case err == nil:
					issued[r.cluster].Add(1)
				case status.Code(err) == codes.ResourceExhausted:
					refused.Add(1)
				default:
					errs <- fmt.Errorf("bench: fleet request %d: %w", i, err)
					next.Store(int64(len(reqs)))
					return
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	calls := etcdCalls.Load() - calls0
	close(errs)
	for err := range errs {
		tb.Fatal(err)
	}

	rep := fleetReport{Clusters: p.clusters, Identities: len(tokens), Replicas: fleetReplicas, EtcdNodes: 3, Clients: p.clients,
		Requests: len(reqs), Refused: int(refused.Load()), Elapsed: elapsed, EtcdCalls: calls, ClusterUsageExact: true}
	want := min(fleetClusterQuota, perCluster*min(fleetIdentityQuota, p.attempts))
	rep.Expected = want * p.clusters
	for c := range p.clusters {
		got := int(issued[c].Load())
		rep.Issued += got
		u, err := stores[c%fleetReplicas].Usage(context.Background(), now, state.QuotaKey{Kind: state.QuotaCluster, Name: fleetNamespace(c) + "/workload"})
		if err != nil {
			tb.Fatal(err)
		}
		if u.Used != got || got != want {
			rep.ClusterUsageExact = false
			tb.Errorf("cluster %s: %d issued, its quota window reads %d, want %d", fleetNamespace(c), got, u.Used, want)
		}
	}
	all := slices.Concat(lat...)
	slices.Sort(all)
	res := result{requests: len(all), elapsed: elapsed, latency: all}
	rep.RequestsPerSec = res.qps()
	rep.IssuedPerSec = float64(rep.Issued) / elapsed.Seconds()
	rep.P50ms, rep.P99ms = ms(res.percentile(50)), ms(res.percentile(99))
	if rep.Issued > 0 {
		rep.EtcdCallsPerIssuance = float64(calls) / float64(rep.Issued)
	}
	rep.EtcdCallsPerRequest = float64(calls) / float64(len(reqs))
	return rep
}

// fleetNamespace is cluster c's namespace.
func fleetNamespace(c int) string { return fmt.Sprint("fleet-", c) }

// fleetReplica is one replica as the daemon wires it on etcd: quota spends
// in st, then the record in its own durable audit chain in dir
// (state.SpendFirst); the fleet's policy and quotas; clock for the quota
// windows.
func fleetReplica(authority *ca.CA, issuer *jwt.Issuer, tlsConf *tls.Config, st *etcdstate.Store, dir string, clock func() time.Time, tb testing.TB) (*grpc.Server, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	db, err := boltstate.OpenDB(filepath.Join(dir, "credbroker.db"))
	if err != nil {
		return nil, err
	}
	log, err := audit.Open(db)
	if err != nil {
		db.Close()
		return nil, err
	}
	tb.Cleanup(func() { log.Close(); db.Close() })
	pol, err := policy.New([]policy.Rule{
		{ID: "spiffe://bench.test/fleet/*/*", Profiles: []string{"fleet-token"}, Clusters: []string{"fleet-*/*"}},
	})
	if err != nil {
		return nil, err
	}
	lim, err := limits.New(limits.Config{
		IdentityQuota: limits.Quota{Max: fleetIdentityQuota, Window: time.Hour},
		ClusterQuota:  limits.Quota{Max: fleetClusterQuota, Window: time.Hour},
	})
	if err != nil {
		return nil, err
	}
	metrics := broker.NewMetrics(prometheus.NewRegistry())
	logger := slog.New(slog.NewJSONHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelInfo}))
	svc, err := broker.NewService(broker.ServiceDeps{
		Profiles: map[string]broker.Profile{"fleet-token": {
			Name: "fleet-token", IssuerName: "local", Issuer: issuer, DefaultTTL: 5 * time.Minute, MaxTTL: 15 * time.Minute,
			Audiences: []string{"fleet-token"}, ClusterMode: config.ClusterRequired,
		}},
		Policy: pol, Limiter: lim, Ledger: state.SpendFirst[audit.Record](st, log), Audit: log, Clock: clock,
		NewID: newID, Log: logger, Metrics: metrics,
	})
	if err != nil {
		return nil, err
	}
	return serveService(authority, tlsConf, svc, log, log, metrics, logger)
}

// TestFleetSmall runs the fleet simulation with FLEET_CLUSTERS clusters
// (5 unless set) in the regular suite, so that it keeps working: exactly
// the quota's worth of credentials per cluster, across three replicas.
func TestFleetSmall(t *testing.T) {
	if _, set := os.LookupEnv("FLEET_CLUSTERS"); !set {
		t.Setenv("FLEET_CLUSTERS", "5")
	}
	p, err := fleetParamsFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	rep := runFleet(t, p)
	if rep.Issued != rep.Expected || rep.Refused != rep.Requests-rep.Expected || !rep.ClusterUsageExact {
		t.Fatalf("fleet: %+v", rep)
	}
	t.Logf("fleet of %d clusters: %d requests, %d issued, %.0f req/s, p99 %.1f ms, %.2f etcd calls per issuance",
		rep.Clusters, rep.Requests, rep.Issued, rep.RequestsPerSec, rep.P99ms, rep.EtcdCallsPerIssuance)
}

// BenchmarkFleet runs the fleet simulation alone and prints it.
func BenchmarkFleet(b *testing.B) {
	p, err := fleetParamsFromEnv()
	if err != nil {
		b.Fatal(err)
	}
	rep := runFleet(b, p)
	b.ReportMetric(0, "ns/op")
	printFleet(os.Stdout, rep)
}

// printFleet writes a fleet run's figures.
func printFleet(out io.Writer, r fleetReport) {
	fmt.Fprintf(out, "\nfleet: %d clusters × (%d controllers + %d nodes) = %d identities, %d requests from %d clients, %d replicas on a %d-member etcd\n",
		r.Clusters, fleetControllers, fleetNodes, r.Identities, r.Requests, r.Clients, r.Replicas, r.EtcdNodes)
	fmt.Fprintf(out, "  %.1fs: %.0f requests/s, %.0f issued/s; latency p50 %.2f ms, p99 %.2f ms\n",
		r.Elapsed.Seconds(), r.RequestsPerSec, r.IssuedPerSec, r.P50ms, r.P99ms)
	fmt.Fprintf(out, "  issued %d (expected %d: %d per cluster), refused %d (quota); every cluster's etcd window exact: %v\n",
		r.Issued, r.Expected, fleetClusterQuota, r.Refused, r.ClusterUsageExact)
	fmt.Fprintf(out, "  etcd unary calls: %d, %.2f per issuance, %.2f per request (revocation probes included)\n\n",
		r.EtcdCalls, r.EtcdCallsPerIssuance, r.EtcdCallsPerRequest)
}
