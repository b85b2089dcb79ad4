package boltstate_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/credbroker/credbroker/broker/audit"
	"github.com/credbroker/credbroker/broker/state"
	"github.com/credbroker/credbroker/broker/state/boltstate"
)

var epoch = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// openLedger opens the state and the audit log in one file, as the daemon
// does.
func openLedger(t *testing.T) (*boltstate.Store, *audit.Log, state.Ledger[audit.Record]) {
	t.Helper()
	db, err := boltstate.OpenDB(filepath.Join(t.TempDir(), "credbroker.db"))
	if err != nil {
		t.Fatal(err)
	}
	log, err := audit.Open(db)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { log.Close(); db.Close() })
	st, err := boltstate.New(db)
	if err != nil {
		t.Fatal(err)
	}
	l, err := st.Ledger(log)
	if err != nil {
		t.Fatal(err)
	}
	return st, log, l
}

var clusterKey = state.QuotaKey{Kind: state.QuotaCluster, Name: "team-a/alpha"}

// TestLedgerSpendsWithTheRecord: many concurrent issuances race for the
// last units of a cluster quota; exactly Max spend, each with its intent
// record, the rest are refused with nothing written; and the appends still
// share commits (group commit).
func TestLedgerSpendsWithTheRecord(t *testing.T) {
	st, log, l := openLedger(t)
	const goroutines, max = 64, 20
	var wg sync.WaitGroup
	start := make(chan struct{})
	errs := make(chan error, goroutines)
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := state.QuotaKey{Kind: state.QuotaIdentity, Name: fmt.Sprintf("spiffe://example.test/g%d", g)}
			charges := []state.Charge{
				{Key: id, Quota: state.Quota{Max: 1, Window: time.Hour}},
				{Key: clusterKey, Quota: state.Quota{Max: max, Window: time.Hour}},
			}
			<-start
			_, err := l.SpendAndAppend(context.Background(), epoch, charges, audit.Record{
				IssuanceID: fmt.Sprint(g), Caller: id.Name, Cluster: clusterKey.Name, Decision: audit.DecisionIntent})
			errs <- err
		}()
	}
	before := log.Commits()
	close(start)
	wg.Wait()
	close(errs)
	won := 0
	for err := range errs {
		var ex *state.ExhaustedError
		switch {
		case err == nil:
			won++
		case !errors.As(err, &ex) || ex.Key != clusterKey:
			t.Fatalf("err = %v, want the cluster quota exhausted", err)
		}
	}
	commits := log.Commits() - before
	t.Logf("%d spends with their records in %d commits", max, commits)
	if won != max {
		t.Fatalf("%d issuances spent, want exactly %d", won, max)
	}
	if u, err := st.Usage(context.Background(), epoch, clusterKey); err != nil || u.Used != max {
		t.Fatalf("usage %+v, %v; want %d", u, err, max)
	}
	recs, err := log.List(audit.Query{Cluster: clusterKey.Name, Decision: audit.DecisionIntent})
	if err != nil || len(recs) != max {
		t.Fatalf("%d intent records (%v), want one per spend: %d", len(recs), err, max)
	}
	for _, r := range recs {
		u, err := st.Usage(context.Background(), epoch, state.QuotaKey{Kind: state.QuotaIdentity, Name: r.Caller})
		if err != nil || u.Used != 1 {
			t.Fatalf("recorded caller %s has %+v, %v spent; want 1", r.Caller, u, err)
		}
	}
	if commits >= max {
		t.Errorf("no group commit: %d spends took %d commits", max, commits)
	}
}

// TestLedgerFailedAppendSpendsNothing: when the record cannot be written
// (the log is closed), the quota is not spent.
func TestLedgerFailedAppendSpendsNothing(t *testing.T) {
	st, log, l := openLedger(t)
	c := []state.Charge{{Key: clusterKey, Quota: state.Quota{Max: 5, Window: time.Hour}}}
	if _, err := l.SpendAndAppend(context.Background(), epoch, c, audit.Record{Decision: audit.DecisionIntent}); err != nil {
		t.Fatal(err)
	}
	log.Close()
	if _, err := l.SpendAndAppend(context.Background(), epoch, c, audit.Record{Decision: audit.DecisionIntent}); !errors.Is(err, audit.ErrClosed) {
		t.Fatalf("err = %v, want audit.ErrClosed", err)
	}
	if u, err := st.Usage(context.Background(), epoch, clusterKey); err != nil || u.Used != 1 {
		t.Fatalf("usage %+v, %v; want only the recorded spend", u, err)
	}
	// An invalid charge is refused before anything is queued.
	if _, err := l.SpendAndAppend(context.Background(), epoch, []state.Charge{{Key: clusterKey}}, audit.Record{Decision: audit.DecisionIntent}); err == nil {
		t.Fatal("a charge without a quota was accepted")
	}
}

// TestLedgerNeedsTheSameDatabase: spends must commit in the audit log's own
// file, or they would not commit with its records.
func TestLedgerNeedsTheSameDatabase(t *testing.T) {
	st, _, _ := openLedger(t)
	_, other, _ := openLedger(t)
	if _, err := st.Ledger(other); err == nil {
		t.Fatal("a ledger across two databases was accepted")
	}
}

// BenchmarkLedgerParallel measures spends with their records under
// concurrency, and reports how many share a commit (group commit).
func BenchmarkLedgerParallel(b *testing.B) {
	db, err := boltstate.OpenDB(filepath.Join(b.TempDir(), "credbroker.db"))
	if err != nil {
		b.Fatal(err)
	}
	log, err := audit.Open(db)
	if err != nil {
		b.Fatal(err)
	}
	defer func() { log.Close(); db.Close() }()
	st, err := boltstate.New(db)
	if err != nil {
		b.Fatal(err)
	}
	l, err := st.Ledger(log)
	if err != nil {
		b.Fatal(err)
	}
	var next atomic.Int64
	before := log.Commits()
	b.SetParallelism(32)
	b.RunParallel(func(pb *testing.PB) {
		id := state.QuotaKey{Kind: state.QuotaIdentity, Name: fmt.Sprintf("spiffe://example.test/c%d", next.Add(1))}
		charges := []state.Charge{
			{Key: id, Quota: state.Quota{Max: 1 << 30, Window: time.Hour}},
			{Key: clusterKey, Quota: state.Quota{Max: 1 << 30, Window: time.Hour}},
		}
		for pb.Next() {
			if _, err := l.SpendAndAppend(context.Background(), epoch, charges, audit.Record{Caller: id.Name, Decision: audit.DecisionIntent}); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/float64(log.Commits()-before), "records/commit")
}

// grantedApproval stores an approval for requester's request "d1", granted
// by two admins.
func grantedApproval(t *testing.T, st *boltstate.Store, id string) state.ApprovalUse {
	t.Helper()
	const requester = "spiffe://example.test/ns/capi-system/sa/capa"
	a := state.Approval{ID: id, Digest: "d1", Requester: requester, Profile: "admin", Needed: 2,
		CreatedAt: epoch, ExpiresAt: epoch.Add(time.Hour), Status: state.ApprovalPending}
	if _, _, err := st.RequestApproval(context.Background(), a, state.ApprovalBound{PerRequester: 8, Total: 8}, epoch); err != nil {
		t.Fatal(err)
	}
	for _, admin := range []string{"spiffe://example.test/admin/a", "unix:uid=0"} {
		if _, _, err := st.Approve(context.Background(), id, admin, epoch); err != nil {
			t.Fatal(err)
		}
	}
	return state.ApprovalUse{ID: id, Digest: "d1", Requester: requester}
}

// TestLedgerConsumesWithTheRecord: of many concurrent issuances presenting
// one granted approval exactly one consumes it, with its record and its
// spend; the others write and spend nothing. A record that cannot be written
// leaves the approval unconsumed.
func TestLedgerConsumesWithTheRecord(t *testing.T) {
	st, log, l := openLedger(t)
	al := l.(state.ApprovalLedger[audit.Record])
	u := grantedApproval(t, st, "ap1")
	c := []state.Charge{{Key: clusterKey, Quota: state.Quota{Max: 100, Window: time.Hour}}}
	const goroutines = 16
	var wg sync.WaitGroup
	var won atomic.Int32
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			u := u
			u.IssuanceID = fmt.Sprint("i", g)
			_, err := al.ConsumeSpendAndAppend(context.Background(), epoch, u, c, audit.Record{
				IssuanceID: u.IssuanceID, Caller: u.Requester, Cluster: clusterKey.Name, Decision: audit.DecisionIssued})
			switch {
			case err == nil:
				won.Add(1)
			case !errors.Is(err, state.ErrApprovalClosed):
				t.Errorf("err = %v, want ErrApprovalClosed", err)
			}
		}()
	}
	wg.Wait()
	if won.Load() != 1 {
		t.Fatalf("%d issuances consumed one approval, want 1", won.Load())
	}
	recs, err := log.List(audit.Query{Cluster: clusterKey.Name})
	if err != nil || len(recs) != 1 {
		t.Fatalf("%d records (%v), want the winner's only", len(recs), err)
	}
	if a, err := st.GetApproval(context.Background(), "ap1"); err != nil || a.ConsumedBy != recs[0].IssuanceID {
		t.Fatalf("approval %+v, %v; want consumed by the recorded issuance %s", a, err, recs[0].IssuanceID)
	}
	if u, err := st.Usage(context.Background(), epoch, clusterKey); err != nil || u.Used != 1 {
		t.Fatalf("usage %+v, %v; want the winner's spend only", u, err)
	}

	u2 := grantedApproval(t, st, "ap2")
	u2.Digest = "d1"
	u2.IssuanceID = "x"
	// ap1's index entry was replaced: ap2 is the request's approval now.
	log.Close()
	if _, err := al.ConsumeSpendAndAppend(context.Background(), epoch, u2, nil, audit.Record{Decision: audit.DecisionIssued}); !errors.Is(err, audit.ErrClosed) {
		t.Fatalf("err = %v, want audit.ErrClosed", err)
	}
	if a, err := st.GetApproval(context.Background(), "ap2"); err != nil || a.Status != state.ApprovalGranted {
		t.Fatalf("after a failed append: %+v, %v; want still granted", a, err)
	}
}
