package daemon

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffegrpc/grpccredentials"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"go.etcd.io/bbolt"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"

	"github.com/credbroker/credbroker/internal/ca"
	"github.com/credbroker/credbroker/test/fakeclock"
)

// statusLog records every status readiness reports.
type statusLog struct{ got []bool }

func (s *statusLog) SetServing(v bool) { s.got = append(s.got, v) }

// TestReadinessFailsClosed: SERVING only while the broker's own SVID is
// unexpired and the audit database takes a commit; an expired SVID or a
// closed (unwritable) database is NOT_SERVING, logged once per change.
func TestReadinessFailsClosed(t *testing.T) {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	clk := fakeclock.New(t0)
	td := spiffeid.RequireTrustDomainFromString("ready.test")
	authority, err := ca.New(td, ca.WithClock(clk.Now))
	if err != nil {
		t.Fatal(err)
	}
	svid, err := authority.MintX509SVID(spiffeid.RequireFromPath(td, "/credbroker"), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	db, err := bbolt.Open(filepath.Join(t.TempDir(), "db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	st := &statusLog{}
	tr := &trust{}
	tr.svid.Store(svid)
	r := &readiness{svid: tr, probeAudit: probeAuditDB(db), now: clk.Now, status: st, log: slog.New(slog.NewTextHandler(&logs, nil))}

	r.check()
	clk.Advance(59 * time.Minute)
	r.check()
	clk.Advance(time.Minute) // NotAfter
	r.check()
	r.check()
	if want := []bool{true, true, false, false}; !slices.Equal(st.got, want) {
		t.Fatalf("statuses %v, want %v", st.got, want)
	}
	if n := strings.Count(logs.String(), "SVID expired"); n != 1 {
		t.Errorf("expiry logged %d times, want once:\n%s", n, logs.String())
	}

	// A rotated SVID: serving again. Then the audit database stops taking
	// writes.
	next, err := authority.MintX509SVID(spiffeid.RequireFromPath(td, "/credbroker"), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	tr.svid.Store(next)
	r.check()
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	r.check()
	if want := []bool{true, true, false, false, true, false}; !slices.Equal(st.got, want) {
		t.Fatalf("statuses %v, want %v", st.got, want)
	}
	if !strings.Contains(logs.String(), "SERVING again") || !strings.Contains(logs.String(), "audit log cannot be written") {
		t.Errorf("logs lack the recovery or the audit failure:\n%s", logs.String())
	}

	r.probeAudit = func() error { return errors.New("disk on fire") }
	r.check()
	if st.got[len(st.got)-1] {
		t.Error("SERVING while the audit probe fails")
	}
}

var healthAddrRE = regexp.MustCompile(`msg=serving .*health=(\S+)`)

// healthListener dials the daemon's health_listen as a kubelet probe does:
// plain text, no certificate.
func (r *running) healthListener(t *testing.T) *grpc.ClientConn {
	t.Helper()
	m := healthAddrRE.FindStringSubmatch(r.logs.String())
	if m == nil {
		t.Fatalf("no health address in the serving line:\n%s", r.logs.String())
	}
	conn, err := grpc.NewClient(m[1], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// TestHealthAndReflectionServed runs the daemon with health_listen and
// grpc_reflection: a kubelet-style probe (plain text, no certificate) and a
// caller without an SVID on the mTLS port both see SERVING; reflection lists
// the services to a caller with an SVID.
func TestHealthAndReflectionServed(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	td, authority, cfg := productionIdentity(t, dir)
	cfg += `
health_listen: 127.0.0.1:0
grpc_reflection: true
issuers: {oidc: {type: jwt}}
profiles: {tok: {issuer: oidc, max_ttl: 1h}}
policy: [{id: "spiffe://prod.test/ns/*/sa/capa-controller-manager", profiles: [tok]}]
`
	d := startDaemon(t, dir, cfg)
	defer d.stop(t)
	ctx := context.Background()
	bundles := x509bundle.NewSet(authority.X509Bundle())

	probe := d.healthListener(t)
	anon, err := grpc.NewClient(d.grpcAddr, grpc.WithTransportCredentials(grpccredentials.TLSClientCredentials(bundles, tlsconfig.AuthorizeMemberOf(td))))
	if err != nil {
		t.Fatal(err)
	}
	defer anon.Close()
	for name, conn := range map[string]*grpc.ClientConn{"health listener": probe, "mTLS port": anon} {
		resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
		if err != nil || resp.Status != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("%s: %v, %v; want SERVING", name, resp, err)
		}
	}

	svid, err := authority.MintX509SVID(spiffeid.RequireFromPath(td, "/ops/grpcurl"), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(d.grpcAddr, grpc.WithTransportCredentials(grpccredentials.MTLSClientCredentials(svid, bundles, tlsconfig.AuthorizeMemberOf(td))))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	stream, err := reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range resp.GetListServicesResponse().GetService() {
		names = append(names, s.Name)
	}
	if !slices.Contains(names, "credbroker.v1.BrokerService") || !slices.Contains(names, "grpc.health.v1.Health") {
		t.Errorf("reflection lists %v", names)
	}
	stream.CloseSend()
}
