package state

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// SigningKeys publishes the public keys the replicas sign tokens with, so
// that every replica's JWKS serves every replica's current keys and a
// relying party verifies a token whichever replica minted it. Only public
// keys: a private key never leaves the replica that made it (PublishKey
// refuses a JWK with private members).
type SigningKeys interface {
	// PublishKey stores k, replacing the key of the same issuer, replica
	// and key id (so a replica extends or shortens its key's NotAfter by
	// publishing it again). A key whose NotAfter is not after now is
	// deleted instead. Keys are kept only until their NotAfter: an
	// implementation deletes expired ones by itself (with a lease, or when
	// it writes).
	PublishKey(ctx context.Context, k PublicKey, now time.Time) error
	// ListKeys returns the keys of issuer whose NotAfter is after now,
	// sorted by replica, then key id.
	ListKeys(ctx context.Context, issuer string, now time.Time) ([]PublicKey, error)
}

// PublicKey is one replica's public signing key, as published.
type PublicKey struct {
	// Issuer names the broker's issuer the key signs for (a broker may run
	// several local JWT issuers, each with its own JWKS).
	Issuer string `json:"issuer"`
	// Replica is the replica holding the private key (replica_id).
	Replica string `json:"replica"`
	// KID is the key id tokens name in their header.
	KID string `json:"kid"`
	// JWK is the public key as a JSON Web Key (a JSON object).
	JWK json.RawMessage `json:"jwk"`
	// NotAfter is when the key stops being published: after the last token
	// it signed (or may still sign) expires.
	NotAfter time.Time `json:"not_after"`
}

// Bounds of a PublicKey's fields, so that a key is a small value.
const (
	MaxKeyNameLen = 256
	MaxJWKLen     = 4096
	// MaxSigningKeys bounds how many keys ListKeys returns for one issuer
	// (a few per replica: its current key, the next one, the last one).
	MaxSigningKeys = 1000
)

// ErrPrivateKey is returned by PublishKey for a JWK that holds private key
// material.
var ErrPrivateKey = errors.New("state: a published key must not hold private key material")

// privateMembers are the JWK members (RFC 7518) that carry private or
// symmetric key material.
var privateMembers = []string{"d", "p", "q", "dp", "dq", "qi", "oth", "k"}

// CheckPublicKey validates k for PublishKey: names present and bounded, no
// NUL (implementations join them into keys), and a JWK that is a JSON
// object with none of the private members.
func CheckPublicKey(k PublicKey) error {
	for _, f := range []struct{ name, v string }{{"issuer", k.Issuer}, {"replica", k.Replica}, {"kid", k.KID}} {
		if f.v == "" || len(f.v) > MaxKeyNameLen || bytes.IndexByte([]byte(f.v), 0) >= 0 {
			return fmt.Errorf("state: signing key %s %q: 1 to %d bytes, no NUL", f.name, f.v, MaxKeyNameLen)
		}
	}
	if len(k.JWK) > MaxJWKLen {
		return fmt.Errorf("state: signing key %s: JWK longer than %d bytes", k.KID, MaxJWKLen)
	}
	var members map[string]json.RawMessage
	if err := json.Unmarshal(k.JWK, &members); err != nil || members == nil {
		return fmt.Errorf("state: signing key %s: JWK is not a JSON object", k.KID)
	}
	for _, m := range privateMembers {
		if _, ok := members[m]; ok {
			return fmt.Errorf("%w (key %s has %q)", ErrPrivateKey, k.KID, m)
		}
	}
	if k.NotAfter.IsZero() {
		return fmt.Errorf("state: signing key %s: no NotAfter", k.KID)
	}
	return nil
}
