package state

import (
	"context"
	"errors"
	"time"

	"github.com/credbroker/credbroker/attest/jointoken"
)

// Store is all of the state the broker shares. An implementation is safe for
// concurrent use.
type Store interface {
	Quotas
	JoinTokens
	Nodes
	Revocations
	Approvals
	Clusters
	Budgets
	SigningKeys
}

// Sentinel errors, possibly wrapped; match them with errors.Is.
var (
	// ErrNotFound means no such item (a node that never attested).
	ErrNotFound = errors.New("state: not found")
	// ErrEvicted means the node was evicted: it may neither attest again
	// under the same SPIFFE ID nor renew.
	ErrEvicted = errors.New("state: node evicted")
	// ErrExists means an item with that key exists already and was not
	// replaced (a join token whose hash is taken).
	ErrExists = errors.New("state: already exists")
	// ErrUnavailable means the store could not be reached, or could not
	// decide, within the operation's deadline (a shared store that lost its
	// quorum, say). The operation may be retried; the broker refuses what
	// needs the store with UNAVAILABLE and issues nothing meanwhile.
	ErrUnavailable = errors.New("state: store unavailable")
)

// JoinTokens keeps one-time join tokens by the SHA-256 of their secret. The
// secret itself never reaches the store.
type JoinTokens interface {
	// CreateJoinToken stores t under key. It fails with ErrExists, changing
	// nothing, if key is taken.
	CreateJoinToken(ctx context.Context, key jointoken.Key, t jointoken.Token) error
	// ConsumeJoinToken marks the token under key used by node at now and
	// returns it (UsedAt and UsedBy set), in one atomic step: of any number
	// of concurrent calls for one key, at most one ever succeeds. node is
	// the name the attempt asks for; "" accepts the name the token is bound
	// to. The token is left unused when the attempt fails:
	//
	//   - jointoken.ErrUnknown: no token under key;
	//   - jointoken.ErrUsed: consumed before (the stored token is returned);
	//   - jointoken.ErrExpired: now is not before ExpiresAt (token returned);
	//   - jointoken.ErrWrongNode: the token is bound to another node (token
	//     returned), so an attempt with a wrong name cannot burn it;
	//   - jointoken.ErrNoNode: neither the token nor the attempt names a node
	//     (token returned).
	ConsumeJoinToken(ctx context.Context, key jointoken.Key, node string, now time.Time) (jointoken.Token, error)
	// ListJoinTokens returns every stored token, used and expired ones
	// included, sorted by CreatedAt, then ID.
	ListJoinTokens(ctx context.Context) ([]jointoken.Token, error)
	// PurgeJoinTokens deletes the tokens whose ExpiresAt is not after now,
	// used or not, and returns how many. A replay of a purged token is then
	// jointoken.ErrUnknown.
	PurgeJoinTokens(ctx context.Context, now time.Time) (int, error)
	// VoidJoinTokens deletes the unused tokens for cluster (a deleted
	// workload cluster's) and returns how many; used ones stay for the
	// record until purged. A later attempt with a voided token is
	// jointoken.ErrUnknown.
	VoidJoinTokens(ctx context.Context, cluster string) (int, error)
}
