package jwt

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"time"

	"github.com/credbroker/credbroker/internal/keyfile"
	"github.com/credbroker/credbroker/issuers"
)

// alg is the JWS algorithm every key of this issuer signs with.
const alg = "ES256"

var _ issuers.KeyRing = (*Issuer)(nil)

// SigningKeys implements issuers.KeyRing: this replica's keys (the active
// one, the next one published ahead, the retired ones still published) and
// every other replica's published key, by replica, state and kid. With a
// key store it fails when the store cannot be read.
func (i *Issuer) SigningKeys(ctx context.Context) ([]issuers.SigningKey, error) {
	now := i.clock()
	own := map[string]bool{}
	var out []issuers.SigningKey
	add := func(k *ringKey, state issuers.KeyState) {
		own[k.kid] = true
		out = append(out, issuers.SigningKey{KID: k.kid, Replica: i.replica, Alg: alg, State: state, Created: k.created, NotAfter: k.notAfter})
	}
	i.mu.Lock()
	add(i.cur, issuers.KeyActive)
	if i.next != nil {
		add(i.next, issuers.KeyPublished)
	}
	for _, k := range i.retired {
		if k.notAfter.After(now) {
			add(k, issuers.KeyRetired)
		}
	}
	i.mu.Unlock()
	if i.store != nil {
		keys, err := i.store.ListKeys(ctx, now)
		if err != nil {
			return nil, fmt.Errorf("jwt: listing the replicas' keys: %w", err)
		}
		for _, k := range keys {
			if !own[k.KID] {
				out = append(out, issuers.SigningKey{KID: k.KID, Replica: k.Replica, Alg: alg, State: issuers.KeyPublished, NotAfter: k.NotAfter})
			}
		}
	}
	slices.SortFunc(out, func(a, b issuers.SigningKey) int {
		return cmp.Or(cmp.Compare(a.Replica, b.Replica), cmp.Compare(a.State, b.State), cmp.Compare(a.KID, b.KID))
	})
	return out, nil
}

// MaxRetiredKeys bounds the retired keys one replica keeps published per
// issuer: rotations on demand, each keeping its previous key published for
// MaxTTL, would otherwise grow every JWKS without bound.
const MaxRetiredKeys = 16

// rotatingKeyFile is where a key made by RotateSigningKey waits until it
// signs.
func rotatingKeyFile(keyFile string) string { return keyFile + ".rotating" }

// loadAbandoned deletes the file of a rotation on demand that the process
// stopped in before the file replaced the key file, and keeps the key's
// public half for Maintain to withdraw: the rotation may have published it
// (and put it on record), but it never signed, and its private half is no
// longer anywhere once the file is gone. The previous key signs on, as
// when a rotation fails.
func (i *Issuer) loadAbandoned() error {
	path := rotatingKeyFile(i.keyFile)
	key, err := keyfile.LoadEC(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err == nil:
		k, kerr := newRingKey(key, time.Time{})
		if kerr != nil {
			return kerr
		}
		k.priv = nil
		i.abandoned, i.abandonedKID = k, k.kid
	}
	// A file that does not load was cut short while it was written, before
	// its key could be published.
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return wrapKeyErr(err)
	}
	return nil
}

// AbandonedRotation returns the kid of a rotation on demand this issuer
// found cut short when it started (see loadAbandoned), or "" if there was
// none: the rotation may be on record as done, so the caller puts on record
// that it was not.
func (i *Issuer) AbandonedRotation() string {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.abandonedKID
}

// withdrawAbandoned withdraws the key of a rotation cut short (see
// loadAbandoned) from the store.
func (i *Issuer) withdrawAbandoned(ctx context.Context, now time.Time) error {
	i.mu.Lock()
	k := i.abandoned
	i.mu.Unlock()
	if k == nil {
		return nil
	}
	if i.store != nil {
		if err := i.store.PublishKey(ctx, PublishedKey{Replica: i.replica, KID: k.kid, JWK: k.jwk, NotAfter: now}, now); err != nil {
			return fmt.Errorf("jwt: withdrawing key %s of a rotation cut short: %w", k.kid, err)
		}
	}
	i.mu.Lock()
	i.abandoned = nil
	delete(i.others, k.kid) // not served from the last listing should the store not answer
	i.mu.Unlock()
	return nil
}

// RotateSigningKey implements issuers.KeyRing, for an admin who suspects
// the key leaked: a new key is made, published, and signs from now on,
// without the publish-ahead of a scheduled rotation (a relying party that
// cached the JWKS may refuse its tokens until it fetches the JWKS again,
// at most its max-age). The previous private key is deleted from disk (the
// new key's file replaces it), and so is a next key waiting to sign, which
// shared its disk: it is withdrawn from the JWKS. With retirePrevious the
// previous key is withdrawn from the store and this replica's JWKS at
// once (the other replicas drop it at their next Maintain), so tokens it
// signed stop verifying; without, it stays published until they expire.
//
// Every step that can fail comes before record, and a failure undoes what
// was published: the previous key keeps signing and nothing is recorded.
func (i *Issuer) RotateSigningKey(ctx context.Context, retirePrevious bool, record func(newKID, previousKID string) error) (issuers.KeyRotation, error) {
	i.maintainMu.Lock()
	defer i.maintainMu.Unlock()
	now := i.clock()
	if !retirePrevious {
		i.mu.Lock()
		var live []*ringKey
		for _, r := range i.retired {
			if r.notAfter.After(now) {
				live = append(live, r)
			}
		}
		i.mu.Unlock()
		if len(live) >= MaxRetiredKeys {
			first := slices.MinFunc(live, func(a, b *ringKey) int { return a.notAfter.Compare(b.notAfter) })
			return issuers.KeyRotation{}, fmt.Errorf("jwt: %w: %d, the most (the first leaves the JWKS at %s)",
				issuers.ErrTooManyKeys, len(live), first.notAfter.UTC().Format(time.RFC3339))
		}
	}
	path := rotatingKeyFile(i.keyFile)
	k, err := i.writeNewKey(path, now)
	if err != nil {
		return issuers.KeyRotation{}, err
	}
	i.mu.Lock()
	cur, next := i.cur, i.next
	i.mu.Unlock()
	// withdrawn are the keys taken out of the store that must go back if
	// the rotation does not happen.
	var withdrawn bool
	abandon := func(err error) (issuers.KeyRotation, error) {
		errs := []error{err}
		if rerr := os.Remove(path); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
			errs = append(errs, wrapKeyErr(rerr))
		}
		if i.store != nil {
			if werr := i.store.PublishKey(ctx, PublishedKey{Replica: i.replica, KID: k.kid, JWK: k.jwk, NotAfter: now}, now); werr != nil {
				errs = append(errs, fmt.Errorf("jwt: withdrawing the unused new key %s: %w", k.kid, werr))
			}
			if withdrawn {
				// The previous keys still sign: published again now, not
				// at the next Maintain.
				if perr := i.publish(ctx, now); perr != nil {
					errs = append(errs, perr)
				}
			}
		}
		return issuers.KeyRotation{}, errors.Join(errs...)
	}
	previousNotAfter := now.Add(i.maxTTL)
	if retirePrevious {
		previousNotAfter = now
	}
	if i.store != nil {
		// Published before it signs: the other replicas serve it from
		// their next Maintain.
		if err := i.store.PublishKey(ctx, PublishedKey{Replica: i.replica, KID: k.kid, JWK: k.jwk, NotAfter: now.Add(i.maxTTL + i.publishAhead)}, now); err != nil {
			return abandon(fmt.Errorf("jwt: publishing the new key %s: %w", k.kid, err))
		}
		var gone []*ringKey
		if retirePrevious {
			gone = append(gone, cur)
		}
		if next != nil {
			gone = append(gone, next)
		}
		for _, g := range gone {
			withdrawn = true
			if err := i.store.PublishKey(ctx, PublishedKey{Replica: i.replica, KID: g.kid, JWK: g.jwk, NotAfter: now}, now); err != nil {
				return abandon(fmt.Errorf("jwt: withdrawing key %s: %w", g.kid, err))
			}
		}
	}
	k.published = now
	if err := record(k.kid, cur.kid); err != nil {
		return abandon(err)
	}
	if err := os.Rename(path, i.keyFile); err != nil {
		return abandon(wrapKeyErr(err))
	}
	var errs []error
	if next != nil {
		if err := os.Remove(nextKeyFile(i.keyFile)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, wrapKeyErr(err))
		}
	}
	i.mu.Lock()
	i.cur, i.next = k, nil
	if !retirePrevious {
		i.retired = append(i.retired, &ringKey{kid: cur.kid, jwk: cur.jwk, created: cur.created, published: cur.published, notAfter: previousNotAfter})
	}
	// Not served again from the last listing should the store not answer.
	delete(i.others, cur.kid)
	if next != nil {
		delete(i.others, next.kid)
	}
	i.mu.Unlock()
	// A store that cannot be listed now leaves the JWKS with this
	// replica's keys and the others' last listed; Maintain lists again.
	_ = i.refreshJWKS(ctx, now)
	return issuers.KeyRotation{KID: k.kid, PreviousKID: cur.kid, PreviousNotAfter: previousNotAfter}, errors.Join(errs...)
}
