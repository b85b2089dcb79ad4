package etcdstate

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/credbroker/credbroker/attest"
	"github.com/credbroker/credbroker/attest/jointoken"
	"github.com/credbroker/credbroker/broker/state"
	"github.com/credbroker/credbroker/broker/state/internal/record"
)

func (s *Store) tokenKey(key jointoken.Key) string {
	return s.key(dirJoinToken, hex.EncodeToString(key[:]))
}

// tokenItem is a token's name in its cluster's references: its key's
// suffix, the hex of the secret's hash.
func (s *Store) tokenItem(key string) string { return strings.TrimPrefix(key, s.key(dirJoinToken, "")) }

// CreateJoinToken implements state.JoinTokens.
func (s *Store) CreateJoinToken(ctx context.Context, key jointoken.Key, t jointoken.Token) error {
	v, err := record.EncodeToken(t)
	if err != nil {
		return err
	}
	ctx, cancel := s.opCtx(ctx)
	defer cancel()
	k := s.tokenKey(key)
	resp, err := s.cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(k), "=", 0)).
		Then(clientv3.OpPut(k, string(v)), s.putRef(t.Cluster, refToken, s.tokenItem(k), "")).Commit()
	if err != nil {
		return unavailable("create join token", err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("%w: join token %s", state.ErrExists, t.ID)
	}
	return nil
}

// ConsumeJoinToken implements state.JoinTokens: the token is marked used by
// a compare-and-swap on its revision, so of concurrent consumers on any
// replicas exactly one succeeds and the others read it used.
func (s *Store) ConsumeJoinToken(ctx context.Context, key jointoken.Key, node string, now time.Time) (jointoken.Token, error) {
	k := s.tokenKey(key)
	var t jointoken.Token
	_, err := s.cas(ctx, "consume join token", []string{k}, nil, func(kvs []*mvccpb.KeyValue) ([]clientv3.Op, error) {
		t = jointoken.Token{}
		if kvs[0] == nil {
			return nil, jointoken.ErrUnknown
		}
		var err error
		if t, err = record.DecodeToken(kvs[0].Value); err != nil {
			return nil, err
		}
		if err := jointoken.Usable(t, node, now); err != nil {
			return nil, err
		}
		used := t
		used.UsedAt, used.UsedBy = state.NormTime(now), jointoken.NodeFor(t, node)
		v, err := record.EncodeToken(used)
		if err != nil {
			return nil, err
		}
		t = used
		return []clientv3.Op{clientv3.OpPut(k, string(v)), s.putRef(t.Cluster, refToken, s.tokenItem(k), flagUsed)}, nil
	})
	switch {
	case err == nil:
		return t, nil
	case t.ID != "" && errors.Is(err, attest.ErrNodeRejected):
		return t, err
	default:
		return jointoken.Token{}, err
	}
}

// ListJoinTokens implements state.JoinTokens.
func (s *Store) ListJoinTokens(ctx context.Context) ([]jointoken.Token, error) {
	ts, err := listPage(ctx, s, "list join tokens", dirJoinToken, "", 0, record.DecodeToken, nil)
	if err != nil {
		return nil, err
	}
	slices.SortFunc(ts, func(a, b jointoken.Token) int {
		if c := a.CreatedAt.Compare(b.CreatedAt); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return ts, nil
}

// PurgeJoinTokens implements state.JoinTokens.
func (s *Store) PurgeJoinTokens(ctx context.Context, now time.Time) (int, error) {
	return s.deleteTokens(ctx, "purge join tokens", func(t jointoken.Token) bool { return !now.Before(t.ExpiresAt) })
}

// VoidJoinTokens implements state.JoinTokens. A token consumed after the
// void read it unused is left alone (it is used now).
func (s *Store) VoidJoinTokens(ctx context.Context, cluster string) (int, error) {
	return s.deleteTokens(ctx, "void join tokens", func(t jointoken.Token) bool { return t.Cluster == cluster && t.UsedAt.IsZero() })
}

func (s *Store) deleteTokens(ctx context.Context, what string, stale func(jointoken.Token) bool) (int, error) {
	n, _, err := s.deleteWhere(ctx, what, dirJoinToken, func(kv *mvccpb.KeyValue) ([]clientv3.Op, bool, error) {
		t, err := record.DecodeToken(kv.Value)
		if err != nil || !stale(t) {
			return nil, false, err
		}
		return []clientv3.Op{s.deleteRef(t.Cluster, refToken, s.tokenItem(string(kv.Key)))}, true, nil
	}, nil)
	return n, err
}
