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
