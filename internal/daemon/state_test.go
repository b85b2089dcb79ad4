package daemon

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/credbroker/credbroker/broker/audit"
	"github.com/credbroker/credbroker/broker/config"
	"github.com/credbroker/credbroker/broker/state"
	"github.com/credbroker/credbroker/internal/ca"
	"github.com/credbroker/credbroker/test/etcdtest"
	"github.com/credbroker/credbroker/test/fakeclock"
)

// TestEtcdStateOverMTLS: state.etcd.tls reaches a member that requires
// client certificates; without the client certificate, with a key others
// may read, or trusting another CA, the broker does not start on it.
func TestEtcdStateOverMTLS(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ca := etcdtest.NewPKI(t, dir, "etcd")
	serverCert, serverKey := ca.Issue("server", x509.ExtKeyUsageServerAuth)
	clientCert, clientKey := ca.Issue("client", x509.ExtKeyUsageClientAuth)
	caFile := ca.CAFile
	c := etcdtest.NewTLS(t, 1, etcdtest.TLSFiles{Cert: serverCert, Key: serverKey, ClientCA: caFile})

	open := func(tls config.EtcdTLS) (state.Store, func(), error) {
		cfg := &config.Config{State: config.State{Etcd: &config.EtcdState{
			Endpoints: []string{c.Endpoint(0)}, Prefix: "/mtls/", TLS: tls, DialTimeout: 2 * time.Second, RequestTimeout: 2 * time.Second,
		}}}
		b, err := openState(context.Background(), cfg, nil, nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
		return b.store, b.close, err
	}
	st, closeState, err := open(config.EtcdTLS{CA: caFile, Cert: clientCert, Key: clientKey})
	if err != nil {
		t.Fatalf("over mTLS: %v", err)
	}
	charge := state.Charge{Key: state.QuotaKey{Kind: state.QuotaCluster, Name: "team-a/alpha"}, Quota: state.Quota{Max: 1, Window: time.Hour}}
	if _, err := st.Spend(context.Background(), time.Now(), []state.Charge{charge}); err != nil {
		t.Fatalf("spend over mTLS: %v", err)
	}
	closeState()

	if _, _, err := open(config.EtcdTLS{CA: caFile}); !errors.Is(err, state.ErrUnavailable) {
		t.Errorf("without a client certificate: %v, want the member to refuse (state.ErrUnavailable)", err)
	}
	other := etcdtest.NewPKI(t, t.TempDir(), "other")
	if _, _, err := open(config.EtcdTLS{CA: other.CAFile, Cert: clientCert, Key: clientKey}); !errors.Is(err, state.ErrUnavailable) {
		t.Errorf("trusting another CA: %v, want the member refused (state.ErrUnavailable)", err)
	}
	if err := os.Chmod(clientKey, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := open(config.EtcdTLS{CA: caFile, Cert: clientCert, Key: clientKey}); err == nil || !strings.Contains(err.Error(), "group or others") {
		t.Errorf("a client key others may read: %v, want it refused", err)
	}
}

// TestStaleRevocationsAreNotServing: on the injected clock, a replica whose
// revocations were last confirmed current more than state.etcd.max_staleness
// ago refuses to record (so to issue) and is NOT_SERVING; a confirmation
// brings both back. The state's own check (checkState, at every probe
// interval) turns the status without an audit commit, and the change is
// logged once each way however many checks see it.
func TestStaleRevocationsAreNotServing(t *testing.T) {
	const maxAge = 700 * time.Millisecond
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	clk := fakeclock.New(t0)
	fresh := newFreshness(clk.Now, maxAge)
	td := spiffeid.RequireTrustDomainFromString("ready.test")
	authority, err := ca.New(td, ca.WithClock(clk.Now))
	if err != nil {
		t.Fatal(err)
	}
	svid, err := authority.MintX509SVID(spiffeid.RequireFromPath(td, "/credbroker"), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	tr := &trust{}
	tr.svid.Store(svid)
	st := &statusLog{}
	var logs bytes.Buffer
	audits := 0
	probeAudit := func() error { audits++; return nil }
	r := &readiness{svid: tr, probeAudit: probeAudit, probeState: fresh.check, now: clk.Now, status: st, log: slog.New(slog.NewTextHandler(&logs, nil))}
	recorded := 0
	ledger := freshLedger{recordingLedger{&recorded}, fresh}
	record := func() error {
		_, err := ledger.SpendAndAppend(context.Background(), clk.Now(), nil, audit.Record{})
		return err
	}

	r.check()
	clk.Advance(maxAge)
	r.checkState()
	if err := record(); err != nil {
		t.Fatalf("at the bound: %v", err)
	}
	clk.Advance(time.Nanosecond)
	r.checkState()
	if err := record(); !errors.Is(err, state.ErrUnavailable) {
		t.Fatalf("past the bound: %v, want state.ErrUnavailable", err)
	}
	// Staler at every check: still one NOT_SERVING line.
	for range 3 {
		clk.Advance(100 * time.Millisecond)
		r.checkState()
	}
	r.check()
	fresh.confirmed(clk.Now())
	r.checkState()
	if err := record(); err != nil {
		t.Fatalf("after a confirmation: %v", err)
	}
	r.checkState()
	if want := []bool{true, true, false, false, false, false, false, true, true}; !slices.Equal(st.got, want) || recorded != 2 {
		t.Fatalf("statuses %v and %d records, want %v and 2", st.got, recorded, want)
	}
	if audits != 2 {
		t.Errorf("%d audit commits, want 2 (one per full check, none per state check)", audits)
	}
	if n := strings.Count(logs.String(), "health: NOT_SERVING"); n != 1 || !strings.Contains(logs.String(), "shared state is unavailable") {
		t.Errorf("NOT_SERVING logged %d times, want once, for the shared state:\n%s", n, logs.String())
	}
	if n := strings.Count(logs.String(), "SERVING again"); n != 1 {
		t.Errorf("SERVING again logged %d times, want once:\n%s", n, logs.String())
	}
}

// recordingLedger counts what reaches it.
type recordingLedger struct{ n *int }

func (l recordingLedger) SpendAndAppend(_ context.Context, _ time.Time, _ []state.Charge, rec audit.Record) (audit.Record, error) {
	*l.n++
	return rec, nil
}

func (l recordingLedger) ConsumeSpendAndAppend(ctx context.Context, now time.Time, _ state.ApprovalUse, charges []state.Charge, rec audit.Record) (audit.Record, error) {
	return l.SpendAndAppend(ctx, now, charges, rec)
}
