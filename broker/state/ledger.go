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

// ApprovalLedger is a Ledger that also consumes a granted approval together
// with the record of the decision that uses it, so that an approval is spent
// only by a recorded issuance. When ConsumeSpendAndAppend returns nil the
// approval is consumed, the quota spent and the record durable; when it
// returns an error (ConsumeApproval's, or the spend's, or the append's) none
// of them happened, or, only where the package documentation says so, the
// approval stays consumed and the quota spent with no record: never a
// record without its consumption. Never two records for one approval.
type ApprovalLedger[R any] interface {
	Ledger[R]
	ConsumeSpendAndAppend(ctx context.Context, now time.Time, u ApprovalUse, charges []Charge, rec R) (R, error)
}

// SpendFirst returns the Ledger for a quota store that commits on its own,
// such as etcd, paired with a local audit log: the spend is made durable
// first, then the record is appended; if the append fails, the spend is
// refunded. If the broker dies between the two, or the refund fails, the
// quota stays spent without a record: nothing was issued, so the window is
// only one unit short, which errs on the safe side. Without charges it is a
// plain append. When q also keeps Approvals, the ledger is an
// ApprovalLedger: the approval is consumed first (before the spend), and
// released again if the spend or the append fails; a crash in between
// leaves it consumed with nothing issued, which again errs on the safe side.
func SpendFirst[R any](q Quotas, log Appender[R]) ApprovalLedger[R] {
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

func (l spendFirst[R]) ConsumeSpendAndAppend(ctx context.Context, now time.Time, u ApprovalUse, charges []Charge, rec R) (R, error) {
	var zero R
	ap, ok := l.q.(Approvals)
	if !ok {
		return zero, errors.New("state: this quota store keeps no approvals")
	}
	if _, err := ap.ConsumeApproval(ctx, u, now); err != nil {
		return zero, err
	}
	stored, err := l.SpendAndAppend(ctx, now, charges, rec)
	if err != nil {
		if _, rerr := ap.ReleaseApproval(context.WithoutCancel(ctx), u.ID, u.IssuanceID); rerr != nil {
			err = errors.Join(err, fmt.Errorf("state: approval %s not released: %w", u.ID, rerr))
		}
	}
	return stored, err
}
