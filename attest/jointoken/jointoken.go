// Package jointoken keeps the broker's one-time join tokens: short-lived
// secrets an operator hands to a new node of a workload cluster so that it
// can attest once and receive its first SVID.
//
// Only SHA-256(secret) is stored, never the secret, so a copy of the database
// cannot be used to join. A token dies on first use: Consume marks it used in
// the same bbolt transaction that checks it, so two nodes presenting the same
// secret cannot both succeed. A used token is kept until it expires, so that
// a replay is reported as ErrUsed rather than ErrUnknown; Purge then drops it.
//
// # Storage layout
//
// One top-level bucket, prefixed so that it can share the broker's bbolt
// file with other state:
//
//	jointoken.tokens   SHA-256(secret) (32 raw bytes) -> JSON of the token
//
// The JSON holds the token's non-secret fields (see Token).
package jointoken

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"go.etcd.io/bbolt"

	"github.com/credbroker/credbroker/attest"
)

const (
	// DefaultTTL is the lifetime of a token created with a zero TTL.
	DefaultTTL = 10 * time.Minute
	// MaxTTL is the longest lifetime Create accepts: a join token is a
	// bootstrap secret, not a credential to keep around.
	MaxTTL = 24 * time.Hour

	// secretPrefix marks a join token secret, so that one is recognisable in
	// a paste, a log line or a secret scanner.
	secretPrefix = "cbjt_"
	// secretBytes is the number of random bytes in a secret.
	secretBytes = 32
)

// secretLen is the length of a well-formed secret.
var secretLen = len(secretPrefix) + base64.RawURLEncoding.EncodedLen(secretBytes)

// bucketTokens holds the tokens; see the package documentation.
var bucketTokens = []byte("jointoken.tokens")

// rejectedError is the type of the sentinel errors that refuse a secret.
// Each also matches attest.ErrNodeRejected, so that the broker maps all of
// them to Unauthenticated without knowing this package's errors.
type rejectedError struct{ msg string }

func (e *rejectedError) Error() string { return e.msg }

// Is reports whether target is attest.ErrNodeRejected.
func (e *rejectedError) Is(target error) bool { return target == attest.ErrNodeRejected }

// Sentinel errors returned by Consume, possibly wrapped; match them with
// errors.Is. Each one also matches attest.ErrNodeRejected.
var (
	// ErrUnknown means no such token: never issued, already purged, or a
	// malformed secret.
	ErrUnknown error = &rejectedError{"jointoken: unknown join token"}
	// ErrUsed means the token was already consumed: the secret is being
	// replayed.
	ErrUsed error = &rejectedError{"jointoken: join token already used"}
	// ErrExpired means the token's lifetime has passed.
	ErrExpired error = &rejectedError{"jointoken: join token expired"}
	// ErrWrongNode means the token is bound to another node name than the
	// one asked for. The token is not spent: the rightful node can still
	// use it.
	ErrWrongNode error = &rejectedError{"jointoken: join token is bound to another node"}
	// ErrNoNode means neither the token nor the attempt names the node. The
	// token is not spent.
	ErrNoNode error = &rejectedError{"jointoken: join token names no node and the request names none"}
)

// Usable returns why t cannot be consumed at now by an attempt naming node
// ("" for the node the token is bound to), or nil. Stores run it in the same
// atomic step as the consume, so that a refused attempt leaves the token for
// the rightful node.
func Usable(t Token, node string, now time.Time) error {
	switch {
	case !t.UsedAt.IsZero():
		return fmt.Errorf("%w (token %s, used at %s)", ErrUsed, t.ID, t.UsedAt.Format(time.RFC3339))
	case !now.Before(t.ExpiresAt):
		return fmt.Errorf("%w (token %s, expired at %s)", ErrExpired, t.ID, t.ExpiresAt.Format(time.RFC3339))
	case t.Node != "" && node != "" && node != t.Node:
		return fmt.Errorf("%w (token %s is for node %q, not %q)", ErrWrongNode, t.ID, t.Node, node)
	case t.Node == "" && node == "":
		return fmt.Errorf("%w (token %s)", ErrNoNode, t.ID)
	}
	return nil
}

// NodeFor returns the node an attempt naming node joins as with t: the node
// t is bound to, else node.
func NodeFor(t Token, node string) string {
	if t.Node != "" {
		return t.Node
	}
	return node
}

// Key is the SHA-256 of a secret: what a token is stored and found under.
type Key [sha256.Size]byte

// KeyOf returns the key of secret.
func KeyOf(secret string) Key { return sha256.Sum256([]byte(secret)) }

// Token is what the broker knows about a join token: never the secret.
type Token struct {
	// ID is the non-secret id of the token: the first 16 hex characters of
	// SHA-256(secret). See ID.
	ID string
	// Cluster is the workload cluster the token joins, "namespace/name".
	Cluster string
	// Node is the node name the token is bound to; "" lets the node name
	// itself.
	Node string
	// CreatedAt is when the token was created.
	CreatedAt time.Time
	// ExpiresAt is when the token stops being accepted.
	ExpiresAt time.Time
	// UsedAt is when the token was consumed; zero until then.
	UsedAt time.Time
	// UsedBy is the name of the node that consumed the token; "" until
	// then.
	UsedBy string
}

// Option configures a Store.
type Option func(*Store)

// WithClock makes the Store read time from now instead of time.Now.
func WithClock(now func() time.Time) Option {
	return func(s *Store) { s.now = now }
}

// WithRand makes the Store read secrets' randomness from r instead of
// crypto/rand. Tests only: r must be a cryptographically secure source in
// production.
func WithRand(r io.Reader) Option {
	return func(s *Store) { s.rand = r }
}

// Store keeps join tokens in a bbolt database. It is safe for concurrent
// use; bbolt serializes its writes.
type Store struct {
	db   *bbolt.DB
	now  func() time.Time
	rand io.Reader
}

// Open returns a Store keeping its tokens in db, creating the
// jointoken.tokens bucket if needed. The caller keeps ownership of db.
func Open(db *bbolt.DB, opts ...Option) (*Store, error) {
	if db == nil {
		return nil, errors.New("jointoken: nil database")
	}
	s := &Store{db: db, now: time.Now, rand: rand.Reader}
	for _, o := range opts {
		o(s)
	}
	err := db.Update(func(tx *bbolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(bucketTokens)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("jointoken: create bucket: %w", err)
	}
	return s, nil
}

// ID returns the non-secret id of secret: the first 16 hex characters of its
// SHA-256. It is safe to log, audit and show to admins.
func ID(secret string) string {
	h := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(h[:8])
}

// Create makes a token for a node of cluster ("namespace/name"), bound to
// node unless node is "", valid for ttl (0 means DefaultTTL, at most MaxTTL).
// It returns the secret, which is not stored and cannot be recovered: the
// caller hands it to the node and forgets it.
//
// The secret is "cbjt_" followed by 32 random bytes, base64url without
// padding.
func (s *Store) Create(cluster, node string, ttl time.Duration) (string, Token, error) {
	switch {
	case !attest.ValidCluster(cluster):
		return "", Token{}, fmt.Errorf("jointoken: invalid cluster %q: want namespace/name", cluster)
	case node != "" && !attest.ValidNodeName(node):
		return "", Token{}, fmt.Errorf("jointoken: invalid node name %q", node)
	case ttl < 0:
		return "", Token{}, fmt.Errorf("jointoken: negative ttl %s", ttl)
	case ttl > MaxTTL:
		return "", Token{}, fmt.Errorf("jointoken: ttl %s exceeds the maximum of %s", ttl, MaxTTL)
	case ttl == 0:
		ttl = DefaultTTL
	}
	raw := make([]byte, secretBytes)
	if _, err := io.ReadFull(s.rand, raw); err != nil {
		return "", Token{}, fmt.Errorf("jointoken: generate secret: %w", err)
	}
	secret := secretPrefix + base64.RawURLEncoding.EncodeToString(raw)
	key := sha256.Sum256([]byte(secret))

	var t Token
	err := s.db.Update(func(tx *bbolt.Tx) error {
		b, err := bucket(tx)
		if err != nil {
			return err
		}
		// 256 random bits do not collide; finding one means the random
		// source is broken, and overwriting would revive a token.
		if b.Get(key[:]) != nil {
			return errors.New("jointoken: generated secret already exists: broken random source")
		}
		now := normTime(s.now())
		t = Token{
			ID:        ID(secret),
			Cluster:   cluster,
			Node:      node,
			CreatedAt: now,
			ExpiresAt: now.Add(ttl),
		}
		return put(b, key[:], t)
	})
	if err != nil {
		return "", Token{}, err
	}
	return secret, t, nil
}

// Consume spends the token whose secret is given, in one bbolt transaction:
// the first call for a valid, unexpired secret marks it used and returns it;
// every other call fails. Errors:
//
//   - ErrUnknown: no such token, or secret is malformed (rejected without a
//     lookup);
//   - ErrUsed: already consumed; the Token is returned too, so that the
//     replay can be audited with its id and cluster;
//   - ErrExpired: past ExpiresAt (and not used); the Token is returned too.
//
// Any other error is a storage failure, and nothing was consumed.
func (s *Store) Consume(secret string) (Token, error) {
	if !wellFormed(secret) {
		return Token{}, ErrUnknown
	}
	key := sha256.Sum256([]byte(secret))
	var t Token
	err := s.db.Update(func(tx *bbolt.Tx) error {
		b, err := bucket(tx)
		if err != nil {
			return err
		}
		v := b.Get(key[:])
		if v == nil {
			return ErrUnknown
		}
		if t, err = decode(v); err != nil {
			return err
		}
		// Read the clock inside the transaction, which bbolt serializes,
		// so that UsedAt orders like the commits.
		now := normTime(s.now())
		switch {
		case !t.UsedAt.IsZero():
			return fmt.Errorf("%w (token %s, used at %s)", ErrUsed, t.ID, t.UsedAt.Format(time.RFC3339))
		case !now.Before(t.ExpiresAt):
			return fmt.Errorf("%w (token %s, expired at %s)", ErrExpired, t.ID, t.ExpiresAt.Format(time.RFC3339))
		}
		t.UsedAt = now
		return put(b, key[:], t)
	})
	switch {
	case err == nil, errors.Is(err, ErrUsed), errors.Is(err, ErrExpired):
		return t, err
	default:
		return Token{}, err
	}
}

// Purge deletes the tokens whose ExpiresAt has passed, used or not, and
// returns how many it deleted. After that a replay of one of them is
// ErrUnknown. Housekeeping calls it periodically.
func (s *Store) Purge() (int, error) {
	n := 0
	err := s.db.Update(func(tx *bbolt.Tx) error {
		n = 0 // in case bbolt ever reruns the closure
		b, err := bucket(tx)
		if err != nil {
			return err
		}
		now := s.now()
		var stale [][]byte
		err = b.ForEach(func(k, v []byte) error {
			t, err := decode(v)
			if err != nil {
				return err
			}
			if !now.Before(t.ExpiresAt) {
				// Copy: k is only valid for the life of the transaction,
				// and deleting while iterating would skip entries.
				stale = append(stale, bytes.Clone(k))
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, k := range stale {
			if err := b.Delete(k); err != nil {
				return fmt.Errorf("jointoken: purge: %w", err)
			}
		}
		n = len(stale)
		return nil
	})
	if err != nil {
		return 0, err
	}
	return n, nil
}

// List returns every stored token, expired and used ones included, sorted by
// CreatedAt (then ID). It is for admins; secrets are not stored, so none are
// returned.
func (s *Store) List() ([]Token, error) {
	var ts []Token
	err := s.db.View(func(tx *bbolt.Tx) error {
		b, err := bucket(tx)
		if err != nil {
			return err
		}
		return b.ForEach(func(_, v []byte) error {
			t, err := decode(v)
			if err != nil {
				return err
			}
			ts = append(ts, t)
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	slices.SortFunc(ts, func(a, b Token) int {
		if c := a.CreatedAt.Compare(b.CreatedAt); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return ts, nil
}

// wellFormed reports whether secret has the shape Create gives secrets.
func wellFormed(secret string) bool {
	if len(secret) != secretLen || !strings.HasPrefix(secret, secretPrefix) {
		return false
	}
	_, err := base64.RawURLEncoding.Strict().DecodeString(secret[len(secretPrefix):])
	return err == nil
}

// bucket returns the tokens bucket, which Open created.
func bucket(tx *bbolt.Tx) (*bbolt.Bucket, error) {
	b := tx.Bucket(bucketTokens)
	if b == nil {
		return nil, fmt.Errorf("jointoken: bucket %s missing", bucketTokens)
	}
	return b, nil
}

// record is the stored form of a Token. It is separate from Token so that
// the on-disk encoding does not change when Token does.
type record struct {
	ID        string    `json:"id"`
	Cluster   string    `json:"cluster"`
	Node      string    `json:"node,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	ExpiresAt time.Time `json:"expires_at"`
	UsedAt    time.Time `json:"used_at,omitzero"`
	UsedBy    string    `json:"used_by,omitempty"`
}

func put(b *bbolt.Bucket, key []byte, t Token) error {
	v, err := json.Marshal(record(t))
	if err != nil {
		return fmt.Errorf("jointoken: encode token %s: %w", t.ID, err)
	}
	if err := b.Put(key, v); err != nil {
		return fmt.Errorf("jointoken: store token %s: %w", t.ID, err)
	}
	return nil
}

func decode(v []byte) (Token, error) {
	var r record
	if err := json.Unmarshal(v, &r); err != nil {
		return Token{}, fmt.Errorf("jointoken: malformed token record: %w", err)
	}
	return Token(r), nil
}

// normTime drops the monotonic reading and location of t, so that a Token
// returned by Create or Consume equals the one List reads back.
func normTime(t time.Time) time.Time { return t.Round(0).UTC() }
