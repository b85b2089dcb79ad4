package state_test

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/credbroker/credbroker/broker/state"
	"github.com/credbroker/credbroker/broker/state/boltstate"
)

// appender stands for a local audit log whose appends a test makes fail.
type appender struct {
	fail error
	recs []string
}

func (a *appender) Append(r string) (string, error) {
	if a.fail != nil {
		return "", a.fail
	}
	a.recs = append(a.recs, r)
	return r, nil
}

var (
	epoch = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	key   = state.QuotaKey{Kind: state.QuotaCluster, Name: "team-a/alpha"}
)

// TestSpendFirst checks the pairing of a store that commits on its own with
// a separate log: a refused spend appends nothing, a failed append refunds.
func TestSpendFirst(t *testing.T) {
	db, err := boltstate.OpenDB(filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	q, err := boltstate.New(db)
	if err != nil {
		t.Fatal(err)
	}
	log := &appender{}
	l := state.SpendFirst[string](q, log)
	ctx := context.Background()
	c := []state.Charge{{Key: key, Quota: state.Quota{Max: 2, Window: time.Hour}}}
	used := func() int {
		u, err := q.Usage(ctx, epoch, key)
		if err != nil {
			t.Fatal(err)
		}
		return u.Used
	}

	if got, err := l.SpendAndAppend(ctx, epoch, c, "one"); err != nil || got != "one" {
		t.Fatalf("SpendAndAppend = %q, %v", got, err)
	}
	log.fail = errors.New("disk full")
	if _, err := l.SpendAndAppend(ctx, epoch, c, "two"); !errors.Is(err, log.fail) {
		t.Fatalf("err = %v, want the append's", err)
	}
	if used() != 1 {
		t.Fatalf("a failed append left %d units spent, want the refund", used())
	}
	log.fail = nil
	if _, err := l.SpendAndAppend(ctx, epoch, c, "two"); err != nil {
		t.Fatal(err)
	}
	var ex *state.ExhaustedError
	if _, err := l.SpendAndAppend(ctx, epoch, c, "three"); !errors.As(err, &ex) {
		t.Fatalf("err = %v, want *ExhaustedError", err)
	}
	if len(log.recs) != 2 || used() != 2 {
		t.Fatalf("records %v with %d spent; want two of each", log.recs, used())
	}
	// Without charges it is a plain append.
	if _, err := l.SpendAndAppend(ctx, epoch, nil, "refusal"); err != nil || len(log.recs) != 3 {
		t.Fatalf("plain append: %v, %v", log.recs, err)
	}
}

// TestSpendFirstApproval: with a store that keeps approvals, the approval is
// consumed with the record, and given back when the spend or the append
// fails.
func TestSpendFirstApproval(t *testing.T) {
	db, err := boltstate.OpenDB(filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	st, err := boltstate.New(db)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	const requester = "spiffe://example.test/ns/capi-system/sa/capa"
	a := state.Approval{ID: "ap", Digest: "d", Requester: requester, Profile: "admin", Needed: 1,
		CreatedAt: epoch, ExpiresAt: epoch.Add(time.Hour), Status: state.ApprovalPending}
	if _, _, err := st.RequestApproval(ctx, a, state.ApprovalBound{PerRequester: 8, Total: 8}, epoch); err != nil {
		t.Fatal(err)
	}
	if _, _, err := st.Approve(ctx, "ap", "unix:uid=0", epoch); err != nil {
		t.Fatal(err)
	}
	log := &appender{fail: errors.New("disk full")}
	l := state.SpendFirst[string](st, log)
	u := state.ApprovalUse{ID: "ap", Digest: "d", Requester: requester, IssuanceID: "i1"}
	status := func() state.ApprovalStatus {
		got, err := st.GetApproval(ctx, "ap")
		if err != nil {
			t.Fatal(err)
		}
		return got.Status
	}
	if _, err := l.ConsumeSpendAndAppend(ctx, epoch, u, nil, "one"); !errors.Is(err, log.fail) || status() != state.ApprovalGranted {
		t.Fatalf("failed append: %v, approval %s; want the append's error and the approval released", err, status())
	}
	log.fail = nil
	c := []state.Charge{{Key: key, Quota: state.Quota{Max: 1, Window: time.Hour}}}
	if _, err := st.Spend(ctx, epoch, c); err != nil {
		t.Fatal(err)
	}
	var ex *state.ExhaustedError
	if _, err := l.ConsumeSpendAndAppend(ctx, epoch, u, c, "one"); !errors.As(err, &ex) || status() != state.ApprovalGranted {
		t.Fatalf("refused spend: %v, approval %s; want *ExhaustedError and the approval released", err, status())
	}
	if _, err := l.ConsumeSpendAndAppend(ctx, epoch, u, nil, "one"); err != nil || status() != state.ApprovalConsumed || len(log.recs) != 1 {
		t.Fatalf("consume: %v, approval %s, records %v", err, status(), log.recs)
	}
	u.IssuanceID = "i2"
	if _, err := l.ConsumeSpendAndAppend(ctx, epoch, u, nil, "two"); !errors.Is(err, state.ErrApprovalClosed) || len(log.recs) != 1 {
		t.Fatalf("second consumption: %v, records %v; want ErrApprovalClosed and nothing appended", err, log.recs)
	}
}
