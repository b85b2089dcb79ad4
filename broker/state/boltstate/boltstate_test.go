package boltstate_test

import (
	"path/filepath"
	"testing"

	"github.com/credbroker/credbroker/broker/state"
	"github.com/credbroker/credbroker/broker/state/boltstate"
	"github.com/credbroker/credbroker/broker/state/statetest"
)

// openStore opens the state in dir/credbroker.db the way the broker does.
func openStore(t testing.TB, dir string) state.Store {
	t.Helper()
	db, err := boltstate.OpenDB(filepath.Join(dir, "credbroker.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	s, err := boltstate.New(db)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestConformance(t *testing.T) {
	statetest.Run(t, statetest.Harness{Open: openStore})
}
