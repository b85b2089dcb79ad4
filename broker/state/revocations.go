package state

import (
	"context"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/credbroker/credbroker/attest"
)

// RevocationKind names what a revocation covers.
type RevocationKind string

// Revocation kinds.
const (
	// RevokeIssuance covers one issued credential, by issuance id: it is
	// never handed out again (not even as a reused credential).
	RevokeIssuance RevocationKind = "issuance"
	// RevokeIdentity covers a caller SPIFFE ID: every request it makes is
	// refused, and every credential issued to it is dropped from reuse.
	RevokeIdentity RevocationKind = "identity"
	// RevokeCluster covers a workload cluster ("namespace/name"): every
	// request for it, and every request from its nodes, is refused.
	RevokeCluster RevocationKind = "cluster"
)

// Valid reports whether k is one of the RevocationKind constants.
func (k RevocationKind) Valid() bool {
	return k == RevokeIssuance || k == RevokeIdentity || k == RevokeCluster
}

// Revocation is an admin's decision to take back what the broker issued, and
// to refuse what it would issue, for one issuance, identity or cluster.
type Revocation struct {
	// ID names the revocation (UUIDv7 in the broker), for lifting it.
	ID string
	// Kind and Target say what is covered: an issuance id, a SPIFFE ID, or
	// a cluster "namespace/name".
	Kind   RevocationKind
	Target string
	// Reason is the admin's words, shown to refused callers.
	Reason string
	// Admin is the principal who revoked (an admin SPIFFE ID, or
	// "unix:uid=N" on the admin socket).
	Admin string
	// CreatedAt is when it was made.
	CreatedAt time.Time
	// Until, when set, ends the revocation: from then on it covers nothing
	// and housekeeping purges it. Zero: until lifted.
	Until time.Time
	// CoveredUntil, when set, is when the last credential the revocation
	// covers expires (an issuance's expiry): from then on there is nothing
	// left to refuse and housekeeping purges it. Identity and cluster
	// revocations leave it zero, since they also refuse new requests.
	CoveredUntil time.Time
	// UpstreamRef, for an issuance, is its credential's upstream reference
	// (an AccessKeyId): a credential handed out to several issuances (reuse)
	// is dropped from reuse whichever of them is revoked.
	UpstreamRef string
	// Issuer, for an issuance, names the issuer that issued it (so the
	// local JWT issuer publishes only its own revoked token ids); empty
	// for revocations stored before it was recorded.
	Issuer string
	// Profile, for an issuance, names its profile (so that an upstream deny
	// goes only to that profile's role); empty for revocations stored
	// before it was recorded.
	Profile string
	// Origin, for an issuance that was handed a credential minted for an
	// earlier issuance (reuse), is that earlier issuance's id: the upstream
	// session carries its id (an AWS session tag), not the revoked one's.
	// Empty when the credential was minted for the revoked issuance itself
	// or the earlier issuance was not found.
	Origin string
}

// Active reports whether r covers anything at now.
func (r Revocation) Active(now time.Time) bool {
	return (r.Until.IsZero() || now.Before(r.Until)) && (r.CoveredUntil.IsZero() || now.Before(r.CoveredUntil))
}

// Covers reports whether r names the issuance, the identity or the cluster
// of a request or credential (any of them may be empty: unknown). It does
// not look at time; see Active.
func (r Revocation) Covers(issuanceID, identity, cluster string) bool {
	switch r.Kind {
	case RevokeIssuance:
		return issuanceID != "" && r.Target == issuanceID
	case RevokeIdentity:
		return identity != "" && r.Target == identity
	case RevokeCluster:
		return cluster != "" && r.Target == cluster
	}
	return false
}

// maxTargetLen bounds a revocation's target and reason.
const (
	maxTargetLen = 2048
	maxReasonLen = 512
)

// ValidateRevocation checks that r is well formed: an id, a known kind with a
// target of its form (a SPIFFE ID for an identity, "namespace/name" for a
// cluster), an admin, a creation time, and an Until after it.
func ValidateRevocation(r Revocation) error {
	switch {
	case r.ID == "" || len(r.ID) > 128:
		return fmt.Errorf("state: revocation id %q is empty or too long", r.ID)
	case !r.Kind.Valid():
		return fmt.Errorf("state: unknown revocation kind %q", r.Kind)
	case r.Target == "" || len(r.Target) > maxTargetLen:
		return fmt.Errorf("state: revocation target is empty or longer than %d bytes", maxTargetLen)
	case len(r.Reason) > maxReasonLen:
		return fmt.Errorf("state: revocation reason is longer than %d bytes", maxReasonLen)
	case r.Admin == "":
		return fmt.Errorf("state: revocation %s names no admin", r.ID)
	case r.CreatedAt.IsZero():
		return fmt.Errorf("state: revocation %s has no creation time", r.ID)
	case !r.Until.IsZero() && !r.Until.After(r.CreatedAt):
		return fmt.Errorf("state: revocation %s ends (%s) before it starts", r.ID, r.Until.Format(time.RFC3339))
	}
	switch r.Kind {
	case RevokeIdentity:
		if _, err := spiffeid.FromString(r.Target); err != nil {
			return fmt.Errorf("state: revoked identity %q is not a SPIFFE ID: %w", r.Target, err)
		}
	case RevokeCluster:
		if !attest.ValidCluster(r.Target) {
			return fmt.Errorf("state: revoked cluster %q is not \"namespace/name\"", r.Target)
		}
	}
	return nil
}

// RevocationChange is one change to the revocations, as a watcher sees it.
type RevocationChange struct {
	// Revocation is the one made, lifted or purged.
	Revocation Revocation
	// Removed is set when it was lifted or purged; otherwise it was made.
	Removed bool
}

// RevocationFilter selects revocations for ListRevocations.
type RevocationFilter struct {
	// After keeps the revocations whose id sorts after it, for paging.
	After string
	// Limit bounds how many are returned; 0 means no bound.
	Limit int
}

// Revocations keeps the admins' revocations. The broker checks them on every
// request through a RevocationIndex, which a store keeps current by
// reporting each change to its watchers.
type Revocations interface {
	// Revoke stores r (which must pass ValidateRevocation) and returns it as
	// stored. ErrExists, changing nothing, if r.ID is taken.
	Revoke(ctx context.Context, r Revocation) (Revocation, error)
	// LiftRevocation deletes revocation id and returns it; ErrNotFound if
	// there is none.
	LiftRevocation(ctx context.Context, id string) (Revocation, error)
	// ListRevocations returns the revocations f selects, sorted by id,
	// ended ones included until they are purged.
	ListRevocations(ctx context.Context, f RevocationFilter) ([]Revocation, error)
	// PurgeRevocations deletes the revocations that cover nothing at now
	// (see Revocation.Active) and returns how many.
	PurgeRevocations(ctx context.Context, now time.Time) (int, error)
	// WatchRevocations calls fn with every change committed after it
	// returns, in commit order, one call at a time, until cancel is called.
	// fn runs before the change's operation returns to its caller (for a
	// store shared by replicas: as soon as the replica learns of it), so it
	// must be quick and must not call back into the store.
	WatchRevocations(fn func(RevocationChange)) (cancel func())
}
