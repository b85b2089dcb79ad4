package etcdstate

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/credbroker/credbroker/broker/state"
	"github.com/credbroker/credbroker/broker/state/internal/record"
)

// approvalReqDir holds the requester's index entries: one per request
// digest, naming the requester's latest approval of it.
func approvalReqDir(requester string) string { return dirApprovalReq + requester + "\x00" }

func (s *Store) approvalReqKey(requester, digest string) string {
	return s.key(approvalReqDir(requester), digest)
}

// RequestApproval implements state.Approvals. The requester's index
// entries and every approval are read at one revision; the requester's open
// approvals are counted through its entries, the approvals the store holds
// over all of them, and the new approval is stored only if neither the
// entries nor any approval changed since: every change of an approval
// rewrites it (and its entry), so a vote, denial, consumption, release or
// another request racing with the count makes the store count again. A
// purge racing with it only deletes, which can leave the count high, never
// low.
func (s *Store) RequestApproval(ctx context.Context, a state.Approval, bound state.ApprovalBound, now time.Time) (state.Approval, bool, error) {
	if err := state.ValidateApproval(a); err != nil {
		return state.Approval{}, false, err
	}
	if err := bound.Validate(); err != nil {
		return state.Approval{}, false, err
	}
	a.CreatedAt, a.ExpiresAt = state.NormTime(a.CreatedAt), state.NormTime(a.ExpiresAt)
	v, err := record.EncodeApproval(a)
	if err != nil {
		return state.Approval{}, false, err
	}
	reqPrefix, allPrefix := s.key(approvalReqDir(a.Requester), ""), s.key(dirApproval, "")
	// This replica's requests wait their turn on the store-wide key: with the
	// total bound any two of them race.
	unlock, err := s.queue(ctx, []string{allPrefix, reqPrefix})
	if err != nil {
		return state.Approval{}, false, err
	}
	defer unlock()
	ctx, cancel := s.opCtx(ctx)
	defer cancel()
	idKey, reqKey := s.key(dirApproval, a.ID), s.approvalReqKey(a.Requester, a.Digest)
	for range s.maxAttempts {
		read, err := s.cli.Txn(ctx).Then(clientv3.OpGet(reqPrefix, clientv3.WithPrefix()), clientv3.OpGet(allPrefix, clientv3.WithPrefix())).Commit()
		if err != nil {
			return state.Approval{}, false, unavailable("request approval", err)
		}
		rev := read.Header.Revision
		entries, all := read.Responses[0].GetResponseRange().GetKvs(), read.Responses[1].GetResponseRange().GetKvs()
		byKey := make(map[string]state.Approval, len(all))
		held := 0
		for _, kv := range all {
			old, err := record.DecodeApproval(kv.Value)
			if err != nil {
				return state.Approval{}, false, err
			}
			byKey[string(kv.Key)] = old
			if old.Held() {
				held++
			}
		}
		open := 0
		for _, e := range entries {
			old, ok := byKey[s.key(dirApproval, string(e.Value))]
			if !ok {
				continue // purged: its entry goes with the next purge
			}
			if string(e.Key) == reqKey && old.Status != state.ApprovalConsumed && !old.Expired(now) {
				return old, false, nil
			}
			if old.Open(now) {
				open++
			}
		}
		if err := bound.Check(a.Requester, open, held); err != nil {
			return state.Approval{}, false, err
		}
		resp, err := s.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.CreateRevision(idKey), "=", 0),
				clientv3.Compare(clientv3.ModRevision(reqPrefix), "<", rev+1).WithPrefix(),
				clientv3.Compare(clientv3.ModRevision(allPrefix), "<", rev+1).WithPrefix()).
			Then(clientv3.OpPut(idKey, string(v)), clientv3.OpPut(reqKey, a.ID)).
			Else(clientv3.OpGet(idKey)).Commit()
		if err != nil {
			return state.Approval{}, false, unavailable("request approval", err)
		}
		if resp.Succeeded {
			return a, true, nil
		}
		if r := resp.Responses[0].GetResponseRange(); r != nil && len(r.Kvs) > 0 {
			return state.Approval{}, false, fmt.Errorf("%w: approval %s", state.ErrExists, a.ID)
		}
	}
	return state.Approval{}, false, fmt.Errorf("%w: %w: request approval lost to concurrent writers %d times; retry", state.ErrUnavailable, ErrContended, s.maxAttempts)
}

// FindApproval implements state.Approvals: the requester's index entry for
// digest, then the approval it names.
func (s *Store) FindApproval(ctx context.Context, requester, digest string, now time.Time) (state.Approval, bool, error) {
	ctx, cancel := s.opCtx(ctx)
	defer cancel()
	resp, err := s.cli.Get(ctx, s.approvalReqKey(requester, digest))
	if err != nil {
		return state.Approval{}, false, unavailable("find approval", err)
	}
	if len(resp.Kvs) == 0 {
		return state.Approval{}, false, nil
	}
	a, err := s.GetApproval(ctx, string(resp.Kvs[0].Value))
	switch {
	case errors.Is(err, state.ErrNotFound):
		return state.Approval{}, false, nil
	case err != nil:
		return state.Approval{}, false, err
	case a.Status == state.ApprovalConsumed || a.Expired(now):
		return state.Approval{}, false, nil
	}
	return a, true, nil
}

// GetApproval implements state.Approvals.
func (s *Store) GetApproval(ctx context.Context, id string) (state.Approval, error) {
	ctx, cancel := s.opCtx(ctx)
	defer cancel()
	resp, err := s.cli.Get(ctx, s.key(dirApproval, id))
	if err != nil {
		return state.Approval{}, unavailable("read approval", err)
	}
	if len(resp.Kvs) == 0 {
		return state.Approval{}, fmt.Errorf("%w: approval %s", state.ErrNotFound, id)
	}
	return record.DecodeApproval(resp.Kvs[0].Value)
}

// ListApprovals implements state.Approvals.
func (s *Store) ListApprovals(ctx context.Context, f state.ApprovalFilter) ([]state.Approval, error) {
	return listPage(ctx, s, "list approvals", dirApproval, f.After, f.Limit, record.DecodeApproval, nil)
}

// changeApproval applies decide to approval id with a compare-and-swap and
// stores the result when decide returns no error and changed something. It
// returns what decide returned. The approval's index entry is rewritten
// with it (if it still names this approval), so that a RequestApproval
// counting the requester's open approvals meanwhile counts again.
func (s *Store) changeApproval(ctx context.Context, what, id string, decide func(state.Approval) (state.Approval, error)) (state.Approval, error) {
	ctx, cancel := s.opCtx(ctx)
	defer cancel()
	// The requester and digest never change: read them to find the entry.
	first, err := s.GetApproval(ctx, id)
	if err != nil {
		return state.Approval{}, err
	}
	idKey, reqKey := s.key(dirApproval, id), s.approvalReqKey(first.Requester, first.Digest)
	var out state.Approval
	_, err = s.cas(ctx, what, []string{idKey, reqKey}, nil, func(kvs []*mvccpb.KeyValue) ([]clientv3.Op, error) {
		if kvs[0] == nil {
			out = state.Approval{}
			return nil, fmt.Errorf("%w: approval %s", state.ErrNotFound, id)
		}
		a, err := record.DecodeApproval(kvs[0].Value)
		if err != nil {
			return nil, err
		}
		if out, err = decide(a); err != nil {
			return nil, err
		}
		v, err := record.EncodeApproval(out)
		if err != nil {
			return nil, err
		}
		if bytes.Equal(kvs[0].Value, v) {
			return nil, nil // nothing to change (a repeated vote)
		}
		ops := []clientv3.Op{clientv3.OpPut(idKey, string(v))}
		if kvs[1] != nil && string(kvs[1].Value) == id {
			ops = append(ops, clientv3.OpPut(reqKey, id))
		}
		return ops, nil
	})
	return out, err
}

// Approve implements state.Approvals.
func (s *Store) Approve(ctx context.Context, id, admin string, now time.Time) (state.Approval, bool, error) {
	counted := false
	a, err := s.changeApproval(ctx, "approve", id, func(a state.Approval) (state.Approval, error) {
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
func (s *Store) DenyApproval(ctx context.Context, id, admin, reason string, now time.Time) (state.Approval, error) {
	a, err := s.changeApproval(ctx, "deny approval", id, func(a state.Approval) (state.Approval, error) {
		return state.CheckDeny(a, admin, reason, state.NormTime(now))
	})
	if err != nil && !errors.Is(err, state.ErrApprovalClosed) {
		return state.Approval{}, err
	}
	return a, err
}

// ConsumeApproval implements state.Approvals: a compare-and-swap, so of
// concurrent consumptions on any replicas exactly one succeeds.
func (s *Store) ConsumeApproval(ctx context.Context, u state.ApprovalUse, now time.Time) (state.Approval, error) {
	a, err := s.changeApproval(ctx, "consume approval", u.ID, func(a state.Approval) (state.Approval, error) {
		return state.CheckConsume(a, u, state.NormTime(now))
	})
	if err != nil {
		return state.Approval{}, err
	}
	return a, nil
}

// ReleaseApproval implements state.Approvals.
func (s *Store) ReleaseApproval(ctx context.Context, id, issuanceID string) (state.Approval, error) {
	a, err := s.changeApproval(ctx, "release approval", id, func(a state.Approval) (state.Approval, error) {
		return state.CheckRelease(a, issuanceID)
	})
	if err != nil {
		return state.Approval{}, err
	}
	return a, nil
}

// PurgeApprovals implements state.Approvals. An approval's index entry goes
// with it only if it still names it (a newer approval of the same request
// keeps its entry).
func (s *Store) PurgeApprovals(ctx context.Context, now time.Time) ([]state.Approval, error) {
	var out []state.Approval
	var decodeErr error
	_, _, err := s.deleteWhere(ctx, "purge approvals", dirApproval, func(kv *mvccpb.KeyValue) ([]clientv3.Op, bool, error) {
		a, err := record.DecodeApproval(kv.Value)
		if err != nil || !a.Expired(now) {
			return nil, false, err
		}
		reqKey := s.approvalReqKey(a.Requester, a.Digest)
		return []clientv3.Op{clientv3.OpTxn(
			[]clientv3.Cmp{clientv3.Compare(clientv3.Value(reqKey), "=", a.ID)},
			[]clientv3.Op{clientv3.OpDelete(reqKey)}, nil)}, true, nil
	}, func(k staleKey) {
		a, err := record.DecodeApproval(k.value) // read once already by the scan
		decodeErr = errors.Join(decodeErr, err)
		out = append(out, a)
	})
	return out, errors.Join(err, decodeErr)
}
