package jwt

import (
	"context"
	"crypto/ecdsa"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"sort"
	"time"

	"github.com/credbroker/credbroker/internal/keyfile"
)

// KeyStore is where the replicas of one issuer publish their public
// signing keys and read each other's (the broker's state seam: etcd for
// replicas, the local file for one broker). Only public keys ever reach it.
type KeyStore interface {
	// PublishKey publishes k until k.NotAfter, replacing the key of the
	// same replica and kid; a NotAfter not after now withdraws it.
	PublishKey(ctx context.Context, k PublishedKey, now time.Time) error
	// ListKeys returns the keys whose NotAfter is after now.
	ListKeys(ctx context.Context, now time.Time) ([]PublishedKey, error)
}

// PublishedKey is one replica's public key as a KeyStore holds it.
type PublishedKey struct {
	// Replica holds the private key; KID names the key in tokens.
	Replica, KID string
	// JWK is the public key as a JSON Web Key.
	JWK json.RawMessage
	// NotAfter is when the key stops being published.
	NotAfter time.Time
}

// Defaults of the key ring.
const (
	// DefaultPublishAhead is how long a new key is published before it
	// signs: more than the JWKS's max-age (cacheControl, 5 minutes), so a
	// relying party that cached the JWKS just before the new key appeared
	// has fetched it again before the first token signed with it comes.
	DefaultPublishAhead = 10 * time.Minute
	// DefaultMaxTTL is the longest token lifetime assumed when Config does
	// not say: a retired key stays published this long.
	DefaultMaxTTL = 12 * time.Hour
)

// ringKey is one of the replica's own keys.
type ringKey struct {
	priv      *ecdsa.PrivateKey // nil for a retired key: only its public half is kept
	kid       string
	jwk       json.RawMessage
	created   time.Time // when the key was made (its file's mtime)
	published time.Time // when it was first published (zero: not yet)
	notAfter  time.Time // a retired key: when its last token has expired
}

func newRingKey(priv *ecdsa.PrivateKey, created time.Time) (*ringKey, error) {
	jwk, err := publicJWK(&priv.PublicKey)
	if err != nil {
		return nil, err
	}
	kid := jwk.thumbprint()
	doc, err := json.Marshal(jwk.json(kid))
	if err != nil {
		return nil, fmt.Errorf("jwt: encoding JWK: %w", err)
	}
	return &ringKey{priv: priv, kid: kid, jwk: doc, created: created}, nil
}

// nextKeyFile is where the key that signs after the current one waits
// while it is published ahead.
func nextKeyFile(keyFile string) string { return keyFile + ".next" }

// writeNewKey makes a key and writes it to path, dated now: the file's
// time is the key's birth on the issuer's clock, so the rotation schedule
// survives a restart.
func (i *Issuer) writeNewKey(path string, now time.Time) (*ringKey, error) {
	key, err := generateKey(i.rand)
	if err != nil {
		return nil, err
	}
	pemKey, err := keyfile.EncodeEC(key)
	if err != nil {
		return nil, wrapKeyErr(err)
	}
	if err := keyfile.Write(path, pemKey, 0o600); err != nil {
		return nil, wrapKeyErr(err)
	}
	if err := os.Chtimes(path, now, now); err != nil {
		return nil, wrapKeyErr(err)
	}
	return newRingKey(key, now)
}

// loadNext loads the key waiting in the next-key file, if any. A next key
// is always made after the current one; a next-key file not newer than the
// current key's is what a rotation on demand (RotateSigningKey) withdrew
// and was about to delete when the process stopped: it is deleted now,
// never published or signed with again.
func (i *Issuer) loadNext() error {
	path := nextKeyFile(i.keyFile)
	key, err := keyfile.LoadEC(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return wrapKeyErr(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		return wrapKeyErr(err)
	}
	if !fi.ModTime().After(i.cur.created) {
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return wrapKeyErr(err)
		}
		return nil
	}
	i.next, err = newRingKey(key, fi.ModTime())
	return err
}

// Maintain publishes the replica's keys and refreshes the JWKS with every
// replica's; with a rotation period, it also rotates: a new key is made
// and published PublishAhead before the current one's period ends, and
// signs once it has been published that long; the key it replaces is
// deleted from disk and stays published (public half only) until every
// token it signed has expired (MaxTTL after it stopped signing). Call it
// at start and then periodically (more often than PublishAhead); it uses
// the issuer's clock. A failure to publish or list leaves the JWKS as it
// was (with this replica's own keys) and is returned; it is retried at
// the next call, and a new key does not sign before it was published.
func (i *Issuer) Maintain(ctx context.Context) error {
	i.maintainMu.Lock()
	defer i.maintainMu.Unlock()
	now := i.clock()
	if err := i.rotate(now); err != nil {
		return err
	}
	var errs []error
	if err := i.withdrawAbandoned(ctx, now); err != nil {
		errs = append(errs, err)
	}
	if i.store != nil {
		if err := i.publish(ctx, now); err != nil {
			errs = append(errs, err)
		}
	}
	if err := i.refreshJWKS(ctx, now); err != nil {
		errs = append(errs, err)
	}
	if i.store == nil {
		// One broker: its JWKS is the publication.
		i.mu.Lock()
		if i.next != nil && i.next.published.IsZero() {
			i.next.published = now
		}
		i.mu.Unlock()
	}
	return errors.Join(errs...)
}

// rotate makes the next key when the current one's period nears its end,
// and promotes it once it has been published for PublishAhead.
func (i *Issuer) rotate(now time.Time) error {
	if i.rotation <= 0 {
		return nil
	}
	cur := i.current()
	if i.next == nil && !now.Before(cur.created.Add(i.rotation-i.publishAhead)) {
		next, err := i.writeNewKey(nextKeyFile(i.keyFile), now)
		if err != nil {
			return err
		}
		i.next = next
	}
	n := i.next
	if n == nil || n.published.IsZero() || now.Before(n.published.Add(i.publishAhead)) {
		return nil
	}
	// The next key has been in every JWKS long enough: it signs from now
	// on. Its file replaces the current key's, which is gone from disk.
	if err := os.Rename(nextKeyFile(i.keyFile), i.keyFile); err != nil {
		return wrapKeyErr(err)
	}
	retired := &ringKey{kid: cur.kid, jwk: cur.jwk, created: cur.created, published: cur.published, notAfter: now.Add(i.maxTTL)}
	i.mu.Lock()
	i.cur, i.next = n, nil
	i.retired = append(i.retired, retired)
	i.mu.Unlock()
	return nil
}

// publish publishes the current and next keys until MaxTTL plus
// PublishAhead from now (so a key whose replica stops publishing, having
// died, drops out once its tokens may have expired), and each retired key
// until its tokens have expired.
func (i *Issuer) publish(ctx context.Context, now time.Time) error {
	i.mu.Lock()
	own := []*ringKey{i.cur}
	if i.next != nil {
		own = append(own, i.next)
	}
	retired := slices.Clone(i.retired)
	i.mu.Unlock()
	var errs []error
	put := func(k *ringKey, notAfter time.Time) bool {
		err := i.store.PublishKey(ctx, PublishedKey{Replica: i.replica, KID: k.kid, JWK: k.jwk, NotAfter: notAfter}, now)
		if err != nil {
			errs = append(errs, fmt.Errorf("jwt: publishing key %s: %w", k.kid, err))
		}
		return err == nil
	}
	for _, k := range own {
		if put(k, now.Add(i.maxTTL+i.publishAhead)) && k.published.IsZero() {
			i.mu.Lock()
			k.published = now
			i.mu.Unlock()
		}
	}
	for _, k := range retired {
		put(k, k.notAfter)
	}
	return errors.Join(errs...)
}

// refreshJWKS rebuilds the JWKS from the published keys of every replica
// and this replica's own (served even when the store cannot be read).
func (i *Issuer) refreshJWKS(ctx context.Context, now time.Time) error {
	byKID := map[string]json.RawMessage{}
	var err error
	if i.store != nil {
		var keys []PublishedKey
		if keys, err = i.store.ListKeys(ctx, now); err != nil {
			err = fmt.Errorf("jwt: listing the replicas' keys: %w", err)
			i.mu.Lock()
			for kid, jwk := range i.others {
				byKID[kid] = jwk
			}
			i.mu.Unlock()
		} else {
			others := map[string]json.RawMessage{}
			for _, k := range keys {
				others[k.KID] = k.JWK
				byKID[k.KID] = k.JWK
			}
			i.mu.Lock()
			i.others = others
			i.mu.Unlock()
		}
	}
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.abandoned != nil {
		delete(byKID, i.abandoned.kid) // listed until Maintain withdraws it
	}
	i.retired = slices.DeleteFunc(i.retired, func(r *ringKey) bool { return !r.notAfter.After(now) })
	for _, k := range append([]*ringKey{i.cur, i.next}, i.retired...) {
		if k != nil {
			byKID[k.kid] = k.jwk
		}
	}
	kids := make([]string, 0, len(byKID))
	for kid := range byKID {
		kids = append(kids, kid)
	}
	sort.Strings(kids)
	set := struct {
		Keys []json.RawMessage `json:"keys"`
	}{}
	for _, kid := range kids {
		set.Keys = append(set.Keys, byKID[kid])
	}
	doc, merr := json.Marshal(set)
	if merr != nil {
		return errors.Join(err, fmt.Errorf("jwt: encoding JWKS: %w", merr))
	}
	i.jwks = doc
	return err
}

// current returns the key that signs.
func (i *Issuer) current() *ringKey {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.cur
}
