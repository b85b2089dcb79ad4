// Package jointoken defines the broker's one-time join tokens: short-lived
// secrets an operator hands to a new node of a workload cluster so that it
// can attest once and receive its first SVID.
//
// This package owns the secret format, its hashing and the rules of use;
// the tokens are kept by the broker's state (broker/state), under Key, the
// SHA-256 of the secret, never the secret itself, so a copy of the state
// cannot be used to join. A store consumes a token in one atomic step that
// applies Usable, so two nodes presenting the same secret cannot both
// succeed and an attempt that Usable refuses (a wrong node name) leaves the
// token for the rightful node. A used token is kept until it expires, so
// that a replay is reported as ErrUsed rather than ErrUnknown.
package jointoken

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/credbroker/credbroker/attest"
)

const (
	// DefaultTTL is the lifetime of a token created with a zero TTL.
	DefaultTTL = 10 * time.Minute
	// MaxTTL is the longest lifetime New accepts: a join token is a
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

// rejectedError is the type of the sentinel errors that refuse a secret.
// Each also matches attest.ErrNodeRejected, so that the broker maps all of
// them to Unauthenticated without knowing this package's errors.
type rejectedError struct{ msg string }

func (e *rejectedError) Error() string { return e.msg }

// Is reports whether target is attest.ErrNodeRejected.
func (e *rejectedError) Is(target error) bool { return target == attest.ErrNodeRejected }

// Sentinel errors of Parse, Usable and the stores' consume, possibly
// wrapped; match them with errors.Is. Each one also matches
// attest.ErrNodeRejected.
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

// ID returns the non-secret id of secret: the first 16 hex characters of its
// SHA-256. It is safe to log, audit and show to admins.
func ID(secret string) string {
	h := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(h[:8])
}

// New makes a token for a node of cluster ("namespace/name"), bound to node
// unless node is "", valid for ttl from now (0 means DefaultTTL, at most
// MaxTTL), with randomness from random (crypto/rand.Reader in production).
// It returns the secret, which the caller hands to the node and forgets,
// and the key and token to store.
//
// The secret is "cbjt_" followed by 32 random bytes, base64url without
// padding.
func New(random io.Reader, now time.Time, cluster, node string, ttl time.Duration) (string, Key, Token, error) {
	switch {
	case !attest.ValidCluster(cluster):
		return "", Key{}, Token{}, fmt.Errorf("jointoken: invalid cluster %q: want namespace/name", cluster)
	case node != "" && !attest.ValidNodeName(node):
		return "", Key{}, Token{}, fmt.Errorf("jointoken: invalid node name %q", node)
	case ttl < 0:
		return "", Key{}, Token{}, fmt.Errorf("jointoken: negative ttl %s", ttl)
	case ttl > MaxTTL:
		return "", Key{}, Token{}, fmt.Errorf("jointoken: ttl %s exceeds the maximum of %s", ttl, MaxTTL)
	case ttl == 0:
		ttl = DefaultTTL
	}
	raw := make([]byte, secretBytes)
	if _, err := io.ReadFull(random, raw); err != nil {
		return "", Key{}, Token{}, fmt.Errorf("jointoken: generate secret: %w", err)
	}
	secret := secretPrefix + base64.RawURLEncoding.EncodeToString(raw)
	now = normTime(now)
	return secret, KeyOf(secret), Token{ID: ID(secret), Cluster: cluster, Node: node, CreatedAt: now, ExpiresAt: now.Add(ttl)}, nil
}

// Parse returns the key of secret, or ErrUnknown, without a lookup, when
// secret does not have the shape New gives secrets.
func Parse(secret string) (Key, error) {
	if !wellFormed(secret) {
		return Key{}, ErrUnknown
	}
	return KeyOf(secret), nil
}

// wellFormed reports whether secret has the shape New gives secrets: the
// prefix and the canonical encoding of secretBytes bytes. The decoded bytes
// are counted because encoding/base64 skips '\r' and '\n', even in strict
// mode, so a string of the right length can decode to fewer bytes.
func wellFormed(secret string) bool {
	if len(secret) != secretLen || !strings.HasPrefix(secret, secretPrefix) {
		return false
	}
	raw, err := base64.RawURLEncoding.Strict().DecodeString(secret[len(secretPrefix):])
	return err == nil && len(raw) == secretBytes
}

// normTime drops the monotonic reading and location of t, so that a Token
// returned by New equals the one a store reads back.
func normTime(t time.Time) time.Time { return t.Round(0).UTC() }
