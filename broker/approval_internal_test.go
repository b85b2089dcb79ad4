package broker

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/credbroker/credbroker/broker/audit"
	"github.com/credbroker/credbroker/broker/state/boltstate"
)

// flakyAudit fails appends of approval_requested records while down is set.
type flakyAudit struct {
	*audit.Log
	down atomic.Bool
}

func (f *flakyAudit) Append(r audit.Record) (audit.Record, error) {
	if f.down.Load() && r.Decision == audit.DecisionApprovalRequested {
		return audit.Record{}, errors.New("disk full")
	}
	return f.Log.Append(r)
}

// TestApprovalRequestRecordedBeforeItIsActedOn: when the audit store fails
// as an approval is opened, the requester is refused AUDIT_UNAVAILABLE, and
// the first admin who approves it records the request first, so that the
// chain never shows an approval of a request it does not show.
func TestApprovalRequestRecordedBeforeItIsActedOn(t *testing.T) {
	db, err := boltstate.OpenDB(filepath.Join(t.TempDir(), "credbroker.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	log, err := audit.Open(db)
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	st, err := boltstate.New(db)
	if err != nil {
		t.Fatal(err)
	}
	fa := &flakyAudit{Log: log}
	n := 0
	v, err := NewApprovals(ApprovalsDeps{Store: st, Audit: fa, Clock: func() time.Time { return time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC) },
		NewID: func() (string, error) { n++; return fmt.Sprint("ap", n), nil }})
	if err != nil {
		t.Fatal(err)
	}
	rec := &audit.Record{IssuanceID: "i1", Caller: "spiffe://example.test/capa", Profile: "admin", TTL: time.Minute}
	rule := ApprovalRule{Approvers: 2, Window: time.Hour}
	fa.down.Store(true)
	_, err = v.require(context.Background(), rule, rec, "aud")
	var ae *apiError
	if !errors.As(err, &ae) || ae.reason.String() != "AUDIT_UNAVAILABLE" {
		t.Fatalf("request while the audit store fails: %v, want AUDIT_UNAVAILABLE", err)
	}
	fa.down.Store(false)
	// The identical request finds it (and records nothing: not created now).
	_, err = v.require(context.Background(), rule, rec, "aud")
	if !errors.As(err, &ae) || ae.reason.String() != "APPROVAL_REQUIRED" || ae.metadata[MetaApprovalID] != "ap1" {
		t.Fatalf("identical request: %v, want APPROVAL_REQUIRED for ap1", err)
	}
	if _, _, err := v.Approve(context.Background(), "unix:uid=0", "ap1"); err != nil {
		t.Fatal(err)
	}
	recs, err := log.ByIssuance("ap1")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range recs {
		got = append(got, string(r.Decision))
	}
	if strings.Join(got, " ") != "approval_requested approval_approved" || !strings.Contains(recs[0].Reason, "recorded late") {
		t.Fatalf("records of ap1: %v (%q); want the request recorded late, then the approval", got, recs[0].Reason)
	}
	// Only once.
	if _, _, err := v.Approve(context.Background(), "spiffe://example.test/admin", "ap1"); err != nil {
		t.Fatal(err)
	}
	if recs, _ := log.ByIssuance("ap1"); len(recs) != 4 {
		t.Fatalf("%d records of ap1, want requested, approved, approved, granted", len(recs))
	}
}
