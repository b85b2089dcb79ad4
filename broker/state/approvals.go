package state

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// ApprovalStatus is where an approval stands. Expiry is not a status: an
// approval whose ExpiresAt has passed is expired whatever its status (see
// Approval.Expired), so that no store needs a clock to move it there.
type ApprovalStatus string

// Approval statuses.
const (
	// ApprovalPending waits for more admins to approve.
	ApprovalPending ApprovalStatus = "pending"
	// ApprovalGranted has enough distinct approvals; the requester's next
	// identical request consumes it.
	ApprovalGranted ApprovalStatus = "granted"
	// ApprovalDenied was refused by an admin; it answers the identical
	// request with the denial until it expires.
	ApprovalDenied ApprovalStatus = "denied"
	// ApprovalConsumed was used by one issuance (ConsumedBy) and is spent.
	ApprovalConsumed ApprovalStatus = "consumed"
)

// Vote is one admin's approval.
type Vote struct {
	// Admin is the admin principal (an admin SPIFFE ID, or "unix:uid=N" on
	// the admin socket).
	Admin string
	At    time.Time
}

// Approval is a request for a privileged credential waiting for, or holding,
// the approval of admins other than the requester. It is bound to one exact
// request by Digest (the broker's hash of everything that shapes the
// credential); the other request fields are kept to show to approvers.
type Approval struct {
	// ID names the approval (UUIDv7 in the broker).
	ID string
	// Digest binds the approval to one request; only a request with the same
	// digest, from Requester, may consume it.
	Digest string
	// Requester is the caller's SPIFFE ID; it can never approve.
	Requester string
	// Profile, Cluster, Audience and TTL describe the request.
	Profile  string
	Cluster  string
	Audience string
	TTL      time.Duration
	// Needed is how many distinct admins must approve.
	Needed int
	// CreatedAt is when it was requested; from ExpiresAt on it can be
	// neither approved nor consumed.
	CreatedAt, ExpiresAt time.Time
	Status               ApprovalStatus
	// Votes are the distinct admins who approved, in order.
	Votes []Vote
	// GrantedAt is when the Needed-th vote came.
	GrantedAt time.Time
	// DeniedBy, DenyReason and DeniedAt describe a denial.
	DeniedBy   string
	DenyReason string
	DeniedAt   time.Time
	// ConsumedBy is the issuance that used it, at ConsumedAt.
	ConsumedBy string
	ConsumedAt time.Time
}

// Expired reports whether a is past its window at now.
func (a Approval) Expired(now time.Time) bool { return !now.Before(a.ExpiresAt) }

// Open reports whether a still waits for approval or consumption at now:
// pending or granted, and not expired. Open approvals count against a
// requester's bound.
func (a Approval) Open(now time.Time) bool {
	return (a.Status == ApprovalPending || a.Status == ApprovalGranted) && !a.Expired(now)
}

// Held reports whether a holds a place under the store's total bound
// (ApprovalBound.Total): pending or granted, expired or not. An approval
// leaves the store only when it is purged, so an expired one is counted
// until then: the bound holds however short the windows and however late
// housekeeping runs. Denied and consumed approvals are an admin's doing and
// hold no place.
func (a Approval) Held() bool {
	return a.Status == ApprovalPending || a.Status == ApprovalGranted
}

// Admins returns the principals who approved, in order.
func (a Approval) Admins() []string {
	out := make([]string, len(a.Votes))
	for i, v := range a.Votes {
		out[i] = v.Admin
	}
	return out
}

// Approval errors, possibly wrapped; match them with errors.Is. Where a
// call fails with one of them on an existing approval it changes nothing.
var (
	// ErrApprovalExpired: the approval's window has passed.
	ErrApprovalExpired = errors.New("state: approval expired")
	// ErrApprovalClosed: the approval was denied or consumed already.
	ErrApprovalClosed = errors.New("state: approval already denied or used")
	// ErrSelfApproval: the admin is the requester.
	ErrSelfApproval = errors.New("state: the requester cannot approve its own request")
	// ErrApprovalMismatch: the approval belongs to another request.
	ErrApprovalMismatch = errors.New("state: approval is bound to another request")
	// ErrApprovalNotGranted: the approval still waits for admins.
	ErrApprovalNotGranted = errors.New("state: approval not granted yet")
)

// ApprovalBound bounds what RequestApproval may store, so that no caller,
// and no number of callers, can grow the store without bound.
type ApprovalBound struct {
	// PerRequester is the most open approvals (Approval.Open) one requester
	// may have.
	PerRequester int
	// Total is the most approvals the store may hold (Approval.Held) over
	// all requesters.
	Total int
}

// Validate checks that both bounds are positive.
func (b ApprovalBound) Validate() error {
	if b.PerRequester < 1 || b.Total < 1 {
		return fmt.Errorf("state: approval bounds %d per requester and %d in total are not both positive", b.PerRequester, b.Total)
	}
	return nil
}

// Check decides whether a new approval of requester may be stored, given
// the requester's open approvals and the approvals the store holds:
// nil, or the *ApprovalLimitError RequestApproval returns. Every store
// decides with it.
func (b ApprovalBound) Check(requester string, open, held int) error {
	switch {
	case open >= b.PerRequester:
		return &ApprovalLimitError{Requester: requester, Max: b.PerRequester}
	case held >= b.Total:
		return &ApprovalLimitError{Requester: requester, Max: b.Total, Total: true}
	}
	return nil
}

// ApprovalLimitError refuses a new approval for a requester that already has
// Max open ones, or (Total) because the store holds Max approvals over all
// requesters.
type ApprovalLimitError struct {
	Requester string
	Max       int
	// Total says the store-wide bound refused, not the requester's own.
	Total bool
}

func (e *ApprovalLimitError) Error() string {
	if e.Total {
		return fmt.Sprintf("state: the store holds %d approvals waiting, its bound; none can be opened until some are decided, used or purged", e.Max)
	}
	return fmt.Sprintf("state: %s already has %d approvals waiting; wait for them to be decided or expire", e.Requester, e.Max)
}

// Bounds of an approval's fields.
const (
	maxApprovalID     = 128
	maxApprovalField  = 2048
	maxApprovalReason = 512
	// MaxApprovers is the most approvers a profile may require.
	MaxApprovers = 16
)

// ValidateApproval checks that a is well formed for RequestApproval: an id,
// a digest, a SPIFFE ID requester, a profile, 1 to MaxApprovers needed, a
// window (ExpiresAt after CreatedAt), pending with no votes.
func ValidateApproval(a Approval) error {
	switch {
	case a.ID == "" || len(a.ID) > maxApprovalID:
		return fmt.Errorf("state: approval id %q is empty or too long", a.ID)
	case a.Digest == "" || len(a.Digest) > maxApprovalID:
		return fmt.Errorf("state: approval %s has no digest", a.ID)
	case a.Profile == "" || len(a.Profile) > maxApprovalField || len(a.Cluster) > maxApprovalField || len(a.Audience) > maxApprovalField:
		return fmt.Errorf("state: approval %s: profile empty or a field too long", a.ID)
	case a.Needed < 1 || a.Needed > MaxApprovers:
		return fmt.Errorf("state: approval %s needs %d approvers, want 1 to %d", a.ID, a.Needed, MaxApprovers)
	case a.CreatedAt.IsZero() || !a.ExpiresAt.After(a.CreatedAt):
		return fmt.Errorf("state: approval %s has no window", a.ID)
	case a.Status != ApprovalPending || len(a.Votes) > 0 || a.ConsumedBy != "" || a.DeniedBy != "":
		return fmt.Errorf("state: a new approval %s must be pending with no votes", a.ID)
	case len(a.Requester) > maxApprovalField:
		return fmt.Errorf("state: approval %s: requester too long", a.ID)
	}
	if _, err := spiffeid.FromString(a.Requester); err != nil {
		return fmt.Errorf("state: approval requester %q is not a SPIFFE ID: %w", a.Requester, err)
	}
	return nil
}

// ApprovalUse is a request that consumes an approval: the approval, the
// request's digest and requester (which must be the approval's), and the
// issuance that uses it.
type ApprovalUse struct {
	ID, Digest, Requester, IssuanceID string
}

// ApprovalFilter selects approvals for ListApprovals.
type ApprovalFilter struct {
	// After keeps the approvals whose id sorts after it, for paging.
	After string
	// Limit bounds how many are returned; 0 means no bound.
	Limit int
}

// Approvals keeps two-person approvals. Every decision is one
// compare-and-swap on a single approval (an etcd Txn comparing its
// revision), and RequestApproval also on the requester's index, so that
// concurrent admins are counted exactly and an approval is consumed at most
// once, however many replicas race.
type Approvals interface {
	// RequestApproval returns the approval of a.Requester bound to a.Digest
	// that is not consumed and not expired at now (pending, granted or
	// denied), with created false, changing nothing. Failing that it stores
	// a (which must pass ValidateApproval) and returns it with created true,
	// unless bound.Check refuses: the requester already has
	// bound.PerRequester open approvals, or the store holds bound.Total
	// (counted in the same atomic step as the write, however many replicas
	// race); then an *ApprovalLimitError. ErrExists if a.ID is taken.
	RequestApproval(ctx context.Context, a Approval, bound ApprovalBound, now time.Time) (stored Approval, created bool, err error)
	// FindApproval returns the approval RequestApproval would find for
	// requester and digest at now (not consumed, not expired), and whether
	// there is one. It changes nothing (policy explain asks it).
	FindApproval(ctx context.Context, requester, digest string, now time.Time) (Approval, bool, error)
	// GetApproval returns approval id; ErrNotFound if there is none.
	GetApproval(ctx context.Context, id string) (Approval, error)
	// ListApprovals returns the approvals f selects, sorted by id, expired
	// and decided ones included until they are purged.
	ListApprovals(ctx context.Context, f ApprovalFilter) ([]Approval, error)
	// Approve adds admin's vote to approval id at now and returns the
	// approval, with counted set when the vote was added. The Needed-th
	// distinct vote grants it. A repeated vote by the same admin, or a vote
	// on a granted approval, changes nothing (counted false, no error).
	// Errors, changing nothing: ErrNotFound; ErrSelfApproval when admin is
	// the requester; ErrApprovalExpired; ErrApprovalClosed (denied or
	// consumed; the approval is returned).
	Approve(ctx context.Context, id, admin string, now time.Time) (a Approval, counted bool, err error)
	// DenyApproval ends a pending or granted approval: denied by admin with
	// reason at now. ErrNotFound, ErrApprovalExpired, ErrApprovalClosed (the
	// approval is returned) change nothing.
	DenyApproval(ctx context.Context, id, admin, reason string, now time.Time) (Approval, error)
	// ConsumeApproval marks the granted approval u.ID consumed by
	// u.IssuanceID at now, in one atomic step: of any number of concurrent
	// calls, at most one succeeds. Errors, changing nothing: ErrNotFound;
	// ErrApprovalMismatch (another digest or requester);
	// ErrApprovalExpired; ErrApprovalNotGranted (pending);
	// ErrApprovalClosed (denied or consumed).
	ConsumeApproval(ctx context.Context, u ApprovalUse, now time.Time) (Approval, error)
	// ReleaseApproval gives back an approval consumed by issuanceID whose
	// credential was not handed out: it is granted again (until it
	// expires). ErrNotFound; ErrApprovalClosed if it is not consumed by
	// issuanceID.
	ReleaseApproval(ctx context.Context, id, issuanceID string) (Approval, error)
	// PurgeApprovals deletes the approvals expired at now and returns them.
	PurgeApprovals(ctx context.Context, now time.Time) ([]Approval, error)
}

// CheckConsume decides a consumption of a (found) for u at now: the error
// ConsumeApproval returns, or nil with the approval as consumed.
// Implementations use it so that every store decides alike.
func CheckConsume(a Approval, u ApprovalUse, now time.Time) (Approval, error) {
	switch {
	case a.Digest != u.Digest || a.Requester != u.Requester:
		return a, fmt.Errorf("%w: approval %s", ErrApprovalMismatch, a.ID)
	case a.Status == ApprovalDenied || a.Status == ApprovalConsumed:
		return a, fmt.Errorf("%w: approval %s is %s", ErrApprovalClosed, a.ID, a.Status)
	case a.Expired(now):
		return a, fmt.Errorf("%w: approval %s", ErrApprovalExpired, a.ID)
	case a.Status != ApprovalGranted:
		return a, fmt.Errorf("%w: approval %s has %d of %d approvals", ErrApprovalNotGranted, a.ID, len(a.Votes), a.Needed)
	case u.IssuanceID == "":
		return a, fmt.Errorf("state: consuming approval %s names no issuance", a.ID)
	}
	a.Status, a.ConsumedBy, a.ConsumedAt = ApprovalConsumed, u.IssuanceID, now
	return a, nil
}

// CheckApprove decides admin's vote on a at now: the approval as changed,
// whether the vote counted, or the error Approve returns.
func CheckApprove(a Approval, admin string, now time.Time) (Approval, bool, error) {
	switch {
	case admin == "":
		return a, false, fmt.Errorf("state: approval %s: no admin", a.ID)
	case admin == a.Requester:
		return a, false, fmt.Errorf("%w: %s requested approval %s", ErrSelfApproval, admin, a.ID)
	case a.Status == ApprovalDenied || a.Status == ApprovalConsumed:
		return a, false, fmt.Errorf("%w: approval %s is %s", ErrApprovalClosed, a.ID, a.Status)
	case a.Expired(now):
		return a, false, fmt.Errorf("%w: approval %s", ErrApprovalExpired, a.ID)
	case a.Status == ApprovalGranted:
		return a, false, nil
	}
	for _, v := range a.Votes {
		if v.Admin == admin {
			return a, false, nil
		}
	}
	a.Votes = append(append([]Vote(nil), a.Votes...), Vote{Admin: admin, At: now})
	if len(a.Votes) >= a.Needed {
		a.Status, a.GrantedAt = ApprovalGranted, now
	}
	return a, true, nil
}

// CheckDeny decides admin's denial of a at now.
func CheckDeny(a Approval, admin, reason string, now time.Time) (Approval, error) {
	switch {
	case admin == "":
		return a, fmt.Errorf("state: approval %s: no admin", a.ID)
	case len(reason) > maxApprovalReason:
		return a, fmt.Errorf("state: denial reason is longer than %d bytes", maxApprovalReason)
	case a.Status == ApprovalDenied || a.Status == ApprovalConsumed:
		return a, fmt.Errorf("%w: approval %s is %s", ErrApprovalClosed, a.ID, a.Status)
	case a.Expired(now):
		return a, fmt.Errorf("%w: approval %s", ErrApprovalExpired, a.ID)
	}
	a.Status, a.DeniedBy, a.DenyReason, a.DeniedAt = ApprovalDenied, admin, reason, now
	return a, nil
}

// CheckRelease decides the release of a consumed by issuanceID.
func CheckRelease(a Approval, issuanceID string) (Approval, error) {
	if a.Status != ApprovalConsumed || a.ConsumedBy != issuanceID {
		return a, fmt.Errorf("%w: approval %s is not held by issuance %s", ErrApprovalClosed, a.ID, issuanceID)
	}
	a.Status, a.ConsumedBy, a.ConsumedAt = ApprovalGranted, "", time.Time{}
	return a, nil
}
