package boltstate

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/bbolt"

	"github.com/credbroker/credbroker/broker/state"
	"github.com/credbroker/credbroker/broker/state/internal/record"
)

// requestKey is the approvals.byrequest key of a requester's request digest.
func requestKey(requester, digest string) []byte {
	return append(append([]byte(requester), 0), digest...)
}

// approvalBuckets returns the approvals and approvals.byrequest buckets.
func approvalBuckets(tx *bbolt.Tx) (byID, byRequest *bbolt.Bucket, err error) {
	if byID, err = bucket(tx, bucketApprovals); err != nil {
		return nil, nil, err
	}
	if byRequest, err = bucket(tx, bucketApprovalsByRequest); err != nil {
		return nil, nil, err
	}
	return byID, byRequest, nil
}

func getApproval(b *bbolt.Bucket, id string) (state.Approval, error) {
	v := b.Get([]byte(id))
	if v == nil {
		return state.Approval{}, fmt.Errorf("%w: approval %s", state.ErrNotFound, id)
	}
	return record.DecodeApproval(v)
}

func putApproval(b *bbolt.Bucket, a state.Approval) error {
	v, err := record.EncodeApproval(a)
	if err != nil {
		return err
	}
	if err := b.Put([]byte(a.ID), v); err != nil {
		return fmt.Errorf("boltstate: store approval %s: %w", a.ID, err)
	}
	return nil
}

// RequestApproval implements state.Approvals. The requester's open
// approvals are counted through approvals.byrequest, which holds one entry
// per (requester, digest): the requester's latest approval for that request;
// the approvals the store holds by a walk of all of them, in the same write
// transaction.
func (s *Store) RequestApproval(_ context.Context, a state.Approval, bound state.ApprovalBound, now time.Time) (state.Approval, bool, error) {
	if err := state.ValidateApproval(a); err != nil {
		return state.Approval{}, false, err
	}
	if err := bound.Validate(); err != nil {
		return state.Approval{}, false, err
	}
	a.CreatedAt, a.ExpiresAt = state.NormTime(a.CreatedAt), state.NormTime(a.ExpiresAt)
	var out state.Approval
	created := false
	err := s.db.Update(func(tx *bbolt.Tx) error {
		created = false
		byID, byReq, err := approvalBuckets(tx)
		if err != nil {
			return err
		}
		if id := byReq.Get(requestKey(a.Requester, a.Digest)); id != nil {
			old, err := getApproval(byID, string(id))
			if err != nil && !errors.Is(err, state.ErrNotFound) {
				return err
			}
			if err == nil && old.Status != state.ApprovalConsumed && !old.Expired(now) {
				out = old
				return nil
			}
		}
		if byID.Get([]byte(a.ID)) != nil {
			return fmt.Errorf("%w: approval %s", state.ErrExists, a.ID)
		}
		open := 0
		prefix := append([]byte(a.Requester), 0)
		c := byReq.Cursor()
		for k, id := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, id = c.Next() {
			old, err := getApproval(byID, string(id))
			if errors.Is(err, state.ErrNotFound) {
				continue
			}
			if err != nil {
				return err
			}
			if old.Open(now) {
				open++
			}
		}
		held, err := heldApprovals(byID)
		if err != nil {
			return err
		}
		if err := bound.Check(a.Requester, open, held); err != nil {
			return err
		}
		if err := putApproval(byID, a); err != nil {
			return err
		}
		if err := byReq.Put(requestKey(a.Requester, a.Digest), []byte(a.ID)); err != nil {
			return fmt.Errorf("boltstate: index approval %s: %w", a.ID, err)
		}
		out, created = a, true
		return nil
	})
	if err != nil {
		return state.Approval{}, false, err
	}
	return out, created, nil
}

// heldApprovals counts the approvals in b that hold a place under the
// store's total bound (state.Approval.Held).
func heldApprovals(b *bbolt.Bucket) (int, error) {
	held := 0
	err := b.ForEach(func(_, v []byte) error {
		a, err := record.DecodeApproval(v)
		if err != nil {
			return err
		}
		if a.Held() {
			held++
		}
		return nil
	})
	return held, err
}

// FindApproval implements state.Approvals: one lookup in
// approvals.byrequest.
func (s *Store) FindApproval(_ context.Context, requester, digest string, now time.Time) (state.Approval, bool, error) {
	var a state.Approval
	found := false
	err := s.db.View(func(tx *bbolt.Tx) error {
		byID, byReq, err := approvalBuckets(tx)
		if err != nil {
			return err
		}
		id := byReq.Get(requestKey(requester, digest))
		if id == nil {
			return nil
		}
		a, err = getApproval(byID, string(id))
		switch {
		case errors.Is(err, state.ErrNotFound):
			return nil
		case err != nil:
			return err
		}
		found = a.Status != state.ApprovalConsumed && !a.Expired(now)
		return nil
	})
	if err != nil || !found {
		return state.Approval{}, false, err
	}
	return a, true, nil
}

// GetApproval implements state.Approvals.
func (s *Store) GetApproval(_ context.Context, id string) (state.Approval, error) {
	var a state.Approval
	err := s.db.View(func(tx *bbolt.Tx) error {
		b, err := bucket(tx, bucketApprovals)
		if err != nil {
			return err
		}
		a, err = getApproval(b, id)
		return err
	})
	return a, err
}

// ListApprovals implements state.Approvals.
func (s *Store) ListApprovals(_ context.Context, f state.ApprovalFilter) ([]state.Approval, error) {
	return listPage(s.db, bucketApprovals, f.After, f.Limit, record.DecodeApproval, nil)
}

// changeApproval applies decide to approval id in one write transaction and
// stores the result when decide returns no error. It returns what decide
// returned.
func (s *Store) changeApproval(id string, decide func(state.Approval) (state.Approval, error)) (state.Approval, error) {
	var out state.Approval
	err := s.db.Update(func(tx *bbolt.Tx) error {
		b, err := bucket(tx, bucketApprovals)
		if err != nil {
			return err
		}
		return changeApprovalTx(b, id, decide, &out)
	})
	return out, err
}

func changeApprovalTx(b *bbolt.Bucket, id string, decide func(state.Approval) (state.Approval, error), out *state.Approval) error {
	a, err := getApproval(b, id)
	if err != nil {
		return err
	}
	changed, err := decide(a)
	*out = changed
	if err != nil {
		return err
	}
	return putApproval(b, changed)
}

// Approve implements state.Approvals.
func (s *Store) Approve(_ context.Context, id, admin string, now time.Time) (state.Approval, bool, error) {
	counted := false
	a, err := s.changeApproval(id, func(a state.Approval) (state.Approval, error) {
		var err error
		a, counted, err = state.CheckApprove(a, admin, state.NormTime(now))
		return a, err
	})
	if err != nil && !errors.Is(err, state.ErrApprovalClosed) {
		return state.Approval{}, false, err
	}
	return a, counted, err
}

// DenyApproval implements state.Approvals.
func (s *Store) DenyApproval(_ context.Context, id, admin, reason string, now time.Time) (state.Approval, error) {
	a, err := s.changeApproval(id, func(a state.Approval) (state.Approval, error) {
		return state.CheckDeny(a, admin, reason, state.NormTime(now))
	})
	if err != nil && !errors.Is(err, state.ErrApprovalClosed) {
		return state.Approval{}, err
	}
	return a, err
}

// ConsumeApproval implements state.Approvals.
func (s *Store) ConsumeApproval(_ context.Context, u state.ApprovalUse, now time.Time) (state.Approval, error) {
	a, err := s.changeApproval(u.ID, func(a state.Approval) (state.Approval, error) {
		return state.CheckConsume(a, u, state.NormTime(now))
	})
	if err != nil {
		return state.Approval{}, err
	}
	return a, nil
}

// consumeTx consumes an approval inside tx (the audit log's, for Ledger).
func consumeTx(tx *bbolt.Tx, u state.ApprovalUse, now time.Time) error {
	b, err := bucket(tx, bucketApprovals)
	if err != nil {
		return err
	}
	var out state.Approval
	return changeApprovalTx(b, u.ID, func(a state.Approval) (state.Approval, error) {
		return state.CheckConsume(a, u, state.NormTime(now))
	}, &out)
}

// ReleaseApproval implements state.Approvals.
func (s *Store) ReleaseApproval(_ context.Context, id, issuanceID string) (state.Approval, error) {
	a, err := s.changeApproval(id, func(a state.Approval) (state.Approval, error) {
		return state.CheckRelease(a, issuanceID)
	})
	if err != nil {
		return state.Approval{}, err
	}
	return a, nil
}

// PurgeApprovals implements state.Approvals.
func (s *Store) PurgeApprovals(_ context.Context, now time.Time) ([]state.Approval, error) {
	var gone []state.Approval
	err := s.db.Update(func(tx *bbolt.Tx) error {
		gone = gone[:0]
		byID, byReq, err := approvalBuckets(tx)
		if err != nil {
			return err
		}
		err = byID.ForEach(func(_, v []byte) error {
			a, err := record.DecodeApproval(v)
			if err != nil {
				return err
			}
			if a.Expired(now) {
				gone = append(gone, a)
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, a := range gone {
			if err := byID.Delete([]byte(a.ID)); err != nil {
				return fmt.Errorf("boltstate: purge approvals: %w", err)
			}
			k := requestKey(a.Requester, a.Digest)
			if bytes.Equal(byReq.Get(k), []byte(a.ID)) {
				if err := byReq.Delete(k); err != nil {
					return fmt.Errorf("boltstate: purge approvals: %w", err)
				}
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return gone, nil
}
