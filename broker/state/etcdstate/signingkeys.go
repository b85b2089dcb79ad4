package etcdstate

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/credbroker/credbroker/broker/state"
)

// dirSigningKey holds the replicas' public signing keys:
// signingkey/<issuer>\x00<replica>\x00<kid> -> JSON of the PublicKey.
const dirSigningKey = "signingkey/"

// issuerKeys is the directory of one issuer's keys.
func issuerKeys(issuer string) string { return dirSigningKey + issuer + "\x00" }

// PublishKey implements state.SigningKeys: one put (or delete), then the
// issuer's expired keys are deleted, each only if no replica republished
// it since it was read. Expiry is decided on now, not on a lease: etcd's
// clock is not the one the broker's tokens expire by.
func (s *Store) PublishKey(ctx context.Context, k state.PublicKey, now time.Time) error {
	if err := state.CheckPublicKey(k); err != nil {
		return err
	}
	k.NotAfter = state.NormTime(k.NotAfter)
	v, err := json.Marshal(k)
	if err != nil {
		return fmt.Errorf("etcdstate: encode signing key: %w", err)
	}
	key := s.key(issuerKeys(k.Issuer), k.Replica+"\x00"+k.KID)
	op := clientv3.OpPut(key, string(v))
	if !k.NotAfter.After(now) {
		op = clientv3.OpDelete(key)
	}
	octx, cancel := s.opCtx(ctx)
	_, err = s.cli.Do(octx, op)
	cancel()
	if err != nil {
		return unavailable("publish signing key", err)
	}
	_, _, err = s.deleteWhere(ctx, "purge signing keys", issuerKeys(k.Issuer), func(kv *mvccpb.KeyValue) ([]clientv3.Op, bool, error) {
		pk, err := decodeKey(kv)
		return nil, err == nil && !pk.NotAfter.After(now), err
	}, nil)
	return err
}

// ListKeys implements state.SigningKeys.
func (s *Store) ListKeys(ctx context.Context, issuer string, now time.Time) ([]state.PublicKey, error) {
	var out []state.PublicKey
	_, err := s.scan(ctx, "list signing keys", issuerKeys(issuer), "", func(kv *mvccpb.KeyValue) (bool, error) {
		pk, err := decodeKey(kv)
		if err != nil {
			return false, err
		}
		if pk.NotAfter.After(now) {
			out = append(out, pk)
		}
		return len(out) < state.MaxSigningKeys, nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

func decodeKey(kv *mvccpb.KeyValue) (state.PublicKey, error) {
	var pk state.PublicKey
	if err := json.Unmarshal(kv.Value, &pk); err != nil {
		return pk, fmt.Errorf("etcdstate: signing key %q: %w", kv.Key, err)
	}
	return pk, nil
}
