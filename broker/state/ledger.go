package state

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Appender durably appends one decision record and returns it as stored.
// The broker's audit log is one; the state package does not know the
// record's format.
type Appender[R any] interface {
	Append(rec R) (R, error)
}

// Ledger spends quota together with the record of the decision that spends
// it. When SpendAndAppend returns nil both are durable; when it returns an
// error, the quota is not spent (a refusal is an *ExhaustedError) and the
// record is not stored, or, only where the package documentation says so,
// the quota stays spent with no record: never the reverse.
type Ledger[R any] interface {
	SpendAndAppend(ctx context.Context, now time.Time, charges []Charge, rec R) (R, error)
}

// SpendFirst returns the Ledger for a quota store that commits on its own,
// such as etcd, paired with a local audit log: the spend is made durable
// first, then the record is appended; if the append fails, the spend is
// refunded. If the broker dies between the two, or the refund fails, the
// quota stays spent without a record: nothing was issued, so the window is
// only one unit short, which errs on the safe side. Without charges it is a
// plain append.
func SpendFirst[R any](q Quotas, log Appender[R]) Ledger[R] {
	return spendFirst[R]{q: q, log: log}
}

type spendFirst[R any] struct {
	q   Quotas
	log Appender[R]
}

func (l spendFirst[R]) SpendAndAppend(ctx context.Context, now time.Time, charges []Charge, rec R) (R, error) {
	var spent []Spent
	if len(charges) > 0 {
		var err error
		if spent, err = l.q.Spend(ctx, now, charges); err != nil {
			var zero R
			return zero, err
		}
	}
	stored, err := l.log.Append(rec)
	if err != nil && len(spent) > 0 {
		// The refund must run even when ctx is done: the spend is durable.
		if rerr := l.q.Refund(context.WithoutCancel(ctx), spent); rerr != nil {
			err = errors.Join(err, fmt.Errorf("state: quota not refunded: %w", rerr))
		}
	}
	return stored, err
}
