package daemon

import (
	"errors"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.etcd.io/bbolt"

	"github.com/credbroker/credbroker/broker/audit"
	"github.com/credbroker/credbroker/broker/config"
	"github.com/credbroker/credbroker/broker/state/boltstate"
	"github.com/credbroker/credbroker/test/fakeclock"
)

// openAudit opens the bbolt file at path and the audit log in it, both
// closed when the test ends.
func openAudit(t *testing.T, path string, opts ...audit.Option) *audit.Log {
	t.Helper()
	db, err := boltstate.OpenDB(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	l, err := audit.Open(db, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// TestHousekeepingPrunesAudit: the housekeeping loop, driven by ticks and
// a fake clock, prunes audit records once they are older than the
// retention, and with require_export only up to the export mark.
func TestHousekeepingPrunesAudit(t *testing.T) {
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	clock := fakeclock.New(t0)
	l := openAudit(t, filepath.Join(t.TempDir(), DBFile), audit.WithClock(clock.Now))
	for range 10 {
		if _, err := l.Append(audit.Record{Caller: "spiffe://td/a", Decision: audit.DecisionDenied}); err != nil {
			t.Fatal(err)
		}
	}

	tick := make(chan time.Time)
	swept := make(chan struct{})
	done := make(chan struct{})
	stopped := make(chan struct{})
	h := housekeeper{purges: auditPurges(config.Audit{Retention: 24 * time.Hour, RequireExport: true}, l), now: clock.Now,
		log: slog.New(slog.NewTextHandler(io.Discard, nil)), swept: func() { swept <- struct{}{} }}
	go func() { h.run(done, tick); close(stopped) }()
	defer func() { close(done); <-stopped }()
	sweep := func() (first uint64) {
		tick <- clock.Now()
		<-swept
		v, err := l.Verify()
		if err != nil || !v.OK {
			t.Fatalf("Verify after a sweep = %+v, %v", v, err)
		}
		return v.FirstSeq
	}

	clock.Set(t0.Add(24 * time.Hour))
	if _, _, err := l.MarkExported(10, audit.Record{Caller: "unix:uid=0"}); err != nil {
		t.Fatal(err)
	}
	if first := sweep(); first != 1 {
		t.Fatalf("records pruned before the retention passed: the chain starts at %d", first)
	}
	clock.Set(t0.Add(24*time.Hour + time.Nanosecond))
	if first := sweep(); first != 11 {
		t.Fatalf("after the retention the chain starts at %d, want 11 (the export mark 10 reached)", first)
	}
	if auditPurges(config.Audit{}, l) != nil {
		t.Fatal("no retention, and yet a purge")
	}
}

// TestAnchoringMetrics: each publication to a sink sets its seq gauge; a
// failure counts.
func TestAnchoringMetrics(t *testing.T) {
	l := openAudit(t, filepath.Join(t.TempDir(), DBFile))
	if _, err := l.Append(audit.Record{Decision: audit.DecisionDenied}); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	file := filepath.Join(t.TempDir(), "anchor.json")
	a, err := newAnchoring(&config.AuditAnchor{File: file, Interval: time.Minute}, l, "spiffe://td/broker", "replica-1", reg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.pub.Publish(); err != nil {
		t.Fatal(err)
	}
	if got := metricValue(t, reg, "credbroker_audit_anchor_seq"); got != 1 {
		t.Fatalf("anchor seq gauge = %v, want 1", got)
	}
	// The file now names a record the chain does not have.
	if err := audit.WriteAnchorFile(file, audit.Anchor{Seq: 9, Hash: "x"}); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Append(audit.Record{Decision: audit.DecisionDenied}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.pub.Publish(); err == nil {
		t.Fatal("published over an anchor the chain does not reach")
	}
	if got := metricValue(t, reg, "credbroker_audit_anchor_failures_total"); got != 1 {
		t.Fatalf("anchor failures = %v, want 1", got)
	}
}

// metricValue returns the value of the one series of the metric name.
func metricValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			m := mf.GetMetric()[0]
			return m.GetGauge().GetValue() + m.GetCounter().GetValue()
		}
	}
	t.Fatalf("no single series of %s", name)
	return 0
}

func TestReplicaOption(t *testing.T) {
	t.Parallel()
	host := func(name string, err error) func() (string, error) {
		return func() (string, error) { return name, err }
	}
	db, err := bbolt.Open(filepath.Join(t.TempDir(), "a.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	open := func(opt audit.Option) (string, error) {
		l, err := audit.Open(db, opt)
		if err != nil {
			return "", err
		}
		defer l.Close()
		return l.Replica(), nil
	}
	opt, err := replicaOption("", host("node-a.example", nil))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := open(opt); err != nil || got != "node-a.example" {
		t.Fatalf("host name as replica: %q, %v", got, err)
	}
	// Another host name later: the database keeps its id.
	opt, _ = replicaOption("", host("node-b", nil))
	if got, err := open(opt); err != nil || got != "node-a.example" {
		t.Fatalf("after a host name change: %q, %v", got, err)
	}
	// A configured id that differs: refused.
	opt, _ = replicaOption("credbroker-1", host("node-a", nil))
	if _, err := open(opt); !errors.Is(err, audit.ErrReplicaMismatch) {
		t.Fatalf("another configured id: %v", err)
	}
	for _, bad := range []func() (string, error){host("", nil), host("bad host", nil), host("", errors.New("no uts"))} {
		if _, err := replicaOption("", bad); err == nil || !strings.Contains(err.Error(), "replica_id is not set") {
			t.Fatalf("unusable host name: %v", err)
		}
	}
}
