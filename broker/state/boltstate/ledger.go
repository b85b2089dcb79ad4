package boltstate

import (
	"context"
	"errors"
	"time"

	"go.etcd.io/bbolt"

	"github.com/credbroker/credbroker/broker/audit"
	"github.com/credbroker/credbroker/broker/state"
)

// Ledger returns the state.Ledger that spends quota inside the audit log's
// write transaction: the spend and the record commit together or not at
// all, and a spend shares its commit and fsync with every append of the
// group. log must write to the same database as s.
// The ledger is a state.ApprovalLedger: an approval is consumed in the same
// transaction, so it is used exactly by the issuance whose record commits.
func (s *Store) Ledger(log *audit.Log) (state.ApprovalLedger[audit.Record], error) {
	if log == nil || log.DB() != s.db {
		return nil, errors.New("boltstate: the audit log must live in the state's database for spends to commit with records")
	}
	return ledger{log: log}, nil
}

type ledger struct {
	log *audit.Log
}

// SpendAndAppend implements state.Ledger. The spend reads and writes only
// the transaction, so group commit may retry it; a refused spend fails this
// append alone (an *ExhaustedError, wrapped), without an fsync, and leaves
// the appends it was batched with untouched.
func (l ledger) SpendAndAppend(_ context.Context, now time.Time, charges []state.Charge, rec audit.Record) (audit.Record, error) {
	if len(charges) == 0 {
		return l.log.Append(rec)
	}
	if err := state.ValidateCharges(charges); err != nil {
		return audit.Record{}, err
	}
	return l.log.AppendWith(rec, func(tx *bbolt.Tx) error {
		_, err := spend(tx, now, charges)
		return err
	})
}

// ConsumeSpendAndAppend implements state.ApprovalLedger: the consumption,
// the spend and the record share one transaction. A refused consumption
// fails this append alone, like a refused spend.
func (l ledger) ConsumeSpendAndAppend(_ context.Context, now time.Time, u state.ApprovalUse, charges []state.Charge, rec audit.Record) (audit.Record, error) {
	if err := state.ValidateCharges(charges); err != nil {
		return audit.Record{}, err
	}
	return l.log.AppendWith(rec, func(tx *bbolt.Tx) error {
		if err := consumeTx(tx, u, now); err != nil {
			return err
		}
		if len(charges) == 0 {
			return nil
		}
		_, err := spend(tx, now, charges)
		return err
	})
}
