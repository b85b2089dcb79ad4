package statetest

import (
	"errors"
	"fmt"
	"reflect"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/credbroker/credbroker/broker/state"
)

const (
	requester = "spiffe://example.test/ns/capi-system/sa/capa"
	admin1    = "spiffe://example.test/admin/alice"
	admin2    = "unix:uid=1001"
	window    = 10 * time.Minute
)

// pending returns a new approval by requester for the request digest,
// needing needed admins, made at epoch+at.
func pending(id, digest string, needed int, at time.Duration) state.Approval {
	return state.Approval{
		ID: id, Digest: digest, Requester: requester, Profile: "admin", Cluster: "team-a/alpha", Audience: "sts",
		TTL: 15 * time.Minute, Needed: needed, CreatedAt: epoch.Add(at), ExpiresAt: epoch.Add(at + window),
		Status: state.ApprovalPending,
	}
}

// perRequester bounds a requester's open approvals at maxOpen and the
// store's far above what a test stores.
func perRequester(maxOpen int) state.ApprovalBound {
	return state.ApprovalBound{PerRequester: maxOpen, Total: 1 << 16}
}

func mustRequest(t *testing.T, s state.Approvals, a state.Approval, maxOpen int, now time.Time, wantCreated bool) state.Approval {
	t.Helper()
	return mustRequestIn(t, s, a, perRequester(maxOpen), now, wantCreated)
}

func mustRequestIn(t *testing.T, s state.Approvals, a state.Approval, bound state.ApprovalBound, now time.Time, wantCreated bool) state.Approval {
	t.Helper()
	got, created, err := s.RequestApproval(ctx, a, bound, now)
	if err != nil {
		t.Fatalf("RequestApproval(%s): %v", a.ID, err)
	}
	if created != wantCreated {
		t.Fatalf("RequestApproval(%s): created = %v, want %v (got %s)", a.ID, created, wantCreated, got.ID)
	}
	return got
}

func mustApprove(t *testing.T, s state.Approvals, id, admin string, now time.Time, wantCounted bool) state.Approval {
	t.Helper()
	a, counted, err := s.Approve(ctx, id, admin, now)
	if err != nil {
		t.Fatalf("Approve(%s, %s): %v", id, admin, err)
	}
	if counted != wantCounted {
		t.Fatalf("Approve(%s, %s): counted = %v, want %v", id, admin, counted, wantCounted)
	}
	return a
}

// wantFound checks what FindApproval says of requester's request digest at
// now: the approval want, or none ("").
func wantFound(t *testing.T, s state.Approvals, digest string, now time.Time, want string) {
	t.Helper()
	a, ok, err := s.FindApproval(ctx, requester, digest, now)
	switch {
	case err != nil:
		t.Fatalf("FindApproval(%s): %v", digest, err)
	case want == "" && ok:
		t.Fatalf("FindApproval(%s) = %s, want none", digest, a.ID)
	case want != "" && (!ok || a.ID != want):
		t.Fatalf("FindApproval(%s) = %q, %v; want %s", digest, a.ID, ok, want)
	}
}

func use(id, digest, issuance string) state.ApprovalUse {
	return state.ApprovalUse{ID: id, Digest: digest, Requester: requester, IssuanceID: issuance}
}

// testApprovals: an identical request finds its approval again; distinct
// admins are counted once each, never the requester; the Needed-th vote
// grants; a granted approval is consumed once, by the request it is bound
// to, and can be released by that issuance; then the identical request
// opens a new one.
func testApprovals(t *testing.T, h Harness) {
	s := open(t, h)
	a := mustRequest(t, s, pending("a1", "d1", 2, 0), 8, epoch, true)
	if !reflect.DeepEqual(a, pending("a1", "d1", 2, 0)) {
		t.Fatalf("stored %+v, want it as given", a)
	}
	// The same request, later and under another candidate id: the same approval.
	if again := mustRequest(t, s, pending("a2", "d1", 2, time.Minute), 8, epoch.Add(time.Minute), false); again.ID != "a1" {
		t.Fatalf("identical request got %s, want a1", again.ID)
	}
	wantFound(t, s, "d1", epoch.Add(time.Minute), "a1")
	wantFound(t, s, "d9", epoch, "")
	if got, err := s.GetApproval(ctx, "a2"); !errors.Is(err, state.ErrNotFound) {
		t.Fatalf("GetApproval(a2) = %+v, %v; want ErrNotFound (nothing new stored)", got, err)
	}
	if _, _, err := s.RequestApproval(ctx, pending("a1", "d9", 2, 0), perRequester(8), epoch); !errors.Is(err, state.ErrExists) {
		t.Fatalf("another request under a taken id: %v, want ErrExists", err)
	}
	for name, bad := range map[string]state.Approval{
		"no id":       pending("", "d2", 2, 0),
		"no digest":   pending("b1", "", 2, 0),
		"none needed": pending("b2", "d2", 0, 0),
		"too many":    pending("b3", "d2", state.MaxApprovers+1, 0),
		"not SPIFFE":  func() state.Approval { a := pending("b4", "d2", 1, 0); a.Requester = "capa"; return a }(),
		"no window":   func() state.Approval { a := pending("b5", "d2", 1, 0); a.ExpiresAt = a.CreatedAt; return a }(),
		"already voted": func() state.Approval {
			a := pending("b6", "d2", 1, 0)
			a.Votes = []state.Vote{{Admin: admin1, At: epoch}}
			return a
		}(),
		"already closed": func() state.Approval { a := pending("b7", "d2", 1, 0); a.Status = state.ApprovalGranted; return a }(),
	} {
		if _, _, err := s.RequestApproval(ctx, bad, perRequester(8), epoch); err == nil {
			t.Errorf("%s: approval accepted", name)
		}
	}

	now := epoch.Add(time.Minute)
	if _, _, err := s.Approve(ctx, "a1", requester, now); !errors.Is(err, state.ErrSelfApproval) {
		t.Fatalf("requester approving itself: %v, want ErrSelfApproval", err)
	}
	if _, _, err := s.Approve(ctx, "nope", admin1, now); !errors.Is(err, state.ErrNotFound) {
		t.Fatalf("approving an unknown id: %v, want ErrNotFound", err)
	}
	mustApprove(t, s, "a1", admin1, now, true)
	a = mustApprove(t, s, "a1", admin1, now.Add(time.Second), false)
	if a.Status != state.ApprovalPending || len(a.Votes) != 1 {
		t.Fatalf("after one admin approved twice: %s with %d votes, want pending with 1", a.Status, len(a.Votes))
	}
	if _, err := s.ConsumeApproval(ctx, use("a1", "d1", "i0"), now); !errors.Is(err, state.ErrApprovalNotGranted) {
		t.Fatalf("consuming a pending approval: %v, want ErrApprovalNotGranted", err)
	}
	a = mustApprove(t, s, "a1", admin2, now.Add(2*time.Second), true)
	want := []state.Vote{{Admin: admin1, At: now}, {Admin: admin2, At: now.Add(2 * time.Second)}}
	if a.Status != state.ApprovalGranted || !reflect.DeepEqual(a.Votes, want) || !a.GrantedAt.Equal(now.Add(2*time.Second)) {
		t.Fatalf("after two admins: %+v, want granted by %v", a, want)
	}
	if got := mustApprove(t, s, "a1", "spiffe://example.test/admin/carol", now, false); len(got.Votes) != 2 {
		t.Fatalf("a vote on a granted approval was added: %+v", got)
	}

	for name, u := range map[string]state.ApprovalUse{
		"another digest":    use("a1", "d2", "i1"),
		"another requester": {ID: "a1", Digest: "d1", Requester: "spiffe://example.test/other", IssuanceID: "i1"},
	} {
		if _, err := s.ConsumeApproval(ctx, u, now); !errors.Is(err, state.ErrApprovalMismatch) {
			t.Fatalf("%s: %v, want ErrApprovalMismatch", name, err)
		}
	}
	c, err := s.ConsumeApproval(ctx, use("a1", "d1", "i1"), now)
	if err != nil || c.Status != state.ApprovalConsumed || c.ConsumedBy != "i1" || !c.ConsumedAt.Equal(now) {
		t.Fatalf("ConsumeApproval = %+v, %v; want consumed by i1", c, err)
	}
	if _, err := s.ConsumeApproval(ctx, use("a1", "d1", "i2"), now); !errors.Is(err, state.ErrApprovalClosed) {
		t.Fatalf("consuming twice: %v, want ErrApprovalClosed", err)
	}
	if _, err := s.ReleaseApproval(ctx, "a1", "i2"); !errors.Is(err, state.ErrApprovalClosed) {
		t.Fatalf("release by another issuance: %v, want ErrApprovalClosed", err)
	}
	if r, err := s.ReleaseApproval(ctx, "a1", "i1"); err != nil || r.Status != state.ApprovalGranted || r.ConsumedBy != "" {
		t.Fatalf("release by its issuance = %+v, %v; want granted again", r, err)
	}
	if _, err := s.ConsumeApproval(ctx, use("a1", "d1", "i3"), now); err != nil {
		t.Fatalf("consuming after the release: %v", err)
	}
	if _, _, err := s.Approve(ctx, "a1", "spiffe://example.test/admin/carol", now); !errors.Is(err, state.ErrApprovalClosed) {
		t.Fatalf("approving a consumed approval: %v, want ErrApprovalClosed", err)
	}
	wantFound(t, s, "d1", now, "") // consumed
	// Single use: the identical request now needs a new approval.
	if n := mustRequest(t, s, pending("a3", "d1", 2, 2*time.Minute), 8, epoch.Add(2*time.Minute), true); n.ID != "a3" {
		t.Fatalf("request after consumption got %s", n.ID)
	}
	got, err := s.GetApproval(ctx, "a1")
	if err != nil || got.Status != state.ApprovalConsumed || got.ConsumedBy != "i3" {
		t.Fatalf("GetApproval(a1) = %+v, %v", got, err)
	}
}

// testApprovalsDenyExpire: a denial ends an approval and answers the
// identical request until it expires; an expired approval can be neither
// approved, denied nor consumed, is replaced by a new one on request, and is
// purged (returned) by the time passed in.
func testApprovalsDenyExpire(t *testing.T, h Harness) {
	s := open(t, h)
	mustRequest(t, s, pending("a1", "d1", 1, 0), 8, epoch, true)
	d, err := s.DenyApproval(ctx, "a1", admin1, "not today", epoch.Add(time.Second))
	if err != nil || d.Status != state.ApprovalDenied || d.DeniedBy != admin1 || d.DenyReason != "not today" {
		t.Fatalf("DenyApproval = %+v, %v", d, err)
	}
	if _, _, err := s.Approve(ctx, "a1", admin2, epoch.Add(2*time.Second)); !errors.Is(err, state.ErrApprovalClosed) {
		t.Fatalf("approving a denied approval: %v, want ErrApprovalClosed", err)
	}
	if _, err := s.DenyApproval(ctx, "a1", admin2, "", epoch.Add(2*time.Second)); !errors.Is(err, state.ErrApprovalClosed) {
		t.Fatalf("denying twice: %v, want ErrApprovalClosed", err)
	}
	if _, err := s.ConsumeApproval(ctx, use("a1", "d1", "i1"), epoch.Add(2*time.Second)); !errors.Is(err, state.ErrApprovalClosed) {
		t.Fatalf("consuming a denied approval: %v, want ErrApprovalClosed", err)
	}
	if got := mustRequest(t, s, pending("a2", "d1", 1, time.Minute), 8, epoch.Add(time.Minute), false); got.Status != state.ApprovalDenied {
		t.Fatalf("identical request after a denial got %+v, want the denial", got)
	}

	mustRequest(t, s, pending("b1", "d2", 1, 0), 8, epoch, true)
	end := epoch.Add(window)
	justBefore := end.Add(-time.Nanosecond)
	mustApprove(t, s, "b1", admin1, justBefore, true)
	if _, err := s.ConsumeApproval(ctx, use("b1", "d2", "i1"), end); !errors.Is(err, state.ErrApprovalExpired) {
		t.Fatalf("consuming at the window's end: %v, want ErrApprovalExpired", err)
	}
	mustRequest(t, s, pending("c1", "d3", 2, 0), 8, epoch, true)
	if _, _, err := s.Approve(ctx, "c1", admin1, end); !errors.Is(err, state.ErrApprovalExpired) {
		t.Fatalf("approving at the window's end: %v, want ErrApprovalExpired", err)
	}
	if _, err := s.DenyApproval(ctx, "c1", admin1, "", end); !errors.Is(err, state.ErrApprovalExpired) {
		t.Fatalf("denying at the window's end: %v, want ErrApprovalExpired", err)
	}
	wantFound(t, s, "d3", end.Add(-time.Nanosecond), "c1")
	wantFound(t, s, "d3", end, "") // expired
	// An expired approval is replaced on request.
	if got := mustRequest(t, s, pending("c2", "d3", 2, window), 8, end, true); got.ID != "c2" {
		t.Fatalf("request after expiry got %s, want c2", got.ID)
	}

	gone, err := s.PurgeApprovals(ctx, justBefore)
	if err != nil || len(gone) != 0 {
		t.Fatalf("purge before any expired = %v, %v", gone, err)
	}
	gone, err = s.PurgeApprovals(ctx, end)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, a := range gone {
		ids = append(ids, a.ID)
	}
	if !reflect.DeepEqual(ids, []string{"a1", "b1", "c1"}) {
		t.Fatalf("purged %v, want a1 b1 c1", ids)
	}
	list, err := s.ListApprovals(ctx, state.ApprovalFilter{})
	if err != nil || len(list) != 1 || list[0].ID != "c2" {
		t.Fatalf("left after the purge: %+v, %v; want c2", list, err)
	}
	// The purge kept c2's index entry: the identical request finds it.
	if got := mustRequest(t, s, pending("c3", "d3", 2, window), 8, end, false); got.ID != "c2" {
		t.Fatalf("after the purge the request got %s, want c2", got.ID)
	}
}

// testApprovalsBound: a requester has at most maxOpen open approvals; a
// repeated request costs nothing; decided or expired ones free a place;
// another requester is not affected; lists page by id.
func testApprovalsBound(t *testing.T, h Harness) {
	s := open(t, h)
	const maxOpen = 3
	for i := range maxOpen {
		mustRequest(t, s, pending(fmt.Sprintf("a%d", i), fmt.Sprintf("d%d", i), 1, 0), maxOpen, epoch, true)
	}
	_, _, err := s.RequestApproval(ctx, pending("a9", "d9", 1, 0), perRequester(maxOpen), epoch)
	var lim *state.ApprovalLimitError
	if !errors.As(err, &lim) || lim.Max != maxOpen || lim.Requester != requester {
		t.Fatalf("request over the bound: %v, want *ApprovalLimitError of %d", err, maxOpen)
	}
	mustRequest(t, s, pending("a9", "d1", 1, 0), maxOpen, epoch, false) // identical: still found
	other := pending("o1", "d9", 1, 0)
	other.Requester = "spiffe://example.test/ns/other/sa/other"
	mustRequest(t, s, other, maxOpen, epoch, true)

	if _, err := s.DenyApproval(ctx, "a0", admin1, "", epoch); err != nil {
		t.Fatal(err)
	}
	mustRequest(t, s, pending("a4", "d4", 1, 0), maxOpen, epoch, true)
	if _, _, err := s.RequestApproval(ctx, pending("a5", "d5", 1, 0), perRequester(maxOpen), epoch); !errors.As(err, &lim) {
		t.Fatalf("bound after a denial made room once: %v", err)
	}
	// Expired ones do not count, purged or not.
	mustRequest(t, s, pending("a5", "d5", 1, window), maxOpen, epoch.Add(window), true)

	page, err := s.ListApprovals(ctx, state.ApprovalFilter{After: "a1", Limit: 2})
	if err != nil || len(page) != 2 || page[0].ID != "a2" || page[1].ID != "a4" {
		t.Fatalf("page after a1 of 2 = %+v, %v; want a2 a4", page, err)
	}
}

// testApprovalsTotal: the store holds at most bound.Total approvals over
// all requesters (pending or granted, expired ones until purged); a
// repeated request still finds its approval at the bound; a denial or a
// consumption frees a place, and so does the purge of expired ones.
func testApprovalsTotal(t *testing.T, h Harness) {
	s := open(t, h)
	bound := state.ApprovalBound{PerRequester: 2, Total: 3}
	as := func(who, id, digest string) state.Approval {
		a := pending(id, digest, 1, 0)
		a.Requester = "spiffe://example.test/ns/capi-system/sa/" + who
		return a
	}
	mustRequestIn(t, s, as("r1", "a1", "d1"), bound, epoch, true)
	mustRequestIn(t, s, as("r1", "a2", "d2"), bound, epoch, true)
	mustRequestIn(t, s, as("r2", "b1", "d1"), bound, epoch, true)
	wantTotal := func(a state.Approval) {
		t.Helper()
		_, _, err := s.RequestApproval(ctx, a, bound, epoch)
		var lim *state.ApprovalLimitError
		if !errors.As(err, &lim) || !lim.Total || lim.Max != bound.Total {
			t.Fatalf("request %s over the total bound: %v, want *ApprovalLimitError of the total %d", a.ID, err, bound.Total)
		}
		if _, err := s.GetApproval(ctx, a.ID); !errors.Is(err, state.ErrNotFound) {
			t.Fatalf("refused approval %s was stored: %v", a.ID, err)
		}
	}
	wantTotal(as("r2", "b2", "d2"))
	wantTotal(as("r3", "c1", "d1"))                                // a requester with none open
	mustRequestIn(t, s, as("r1", "a9", "d1"), bound, epoch, false) // identical: still found

	if _, err := s.DenyApproval(ctx, "b1", admin1, "", epoch); err != nil {
		t.Fatal(err)
	}
	mustRequestIn(t, s, as("r3", "c1", "d1"), bound, epoch, true)
	wantTotal(as("r3", "c2", "d2"))
	mustApprove(t, s, "a1", admin1, epoch, true)
	if _, err := s.ConsumeApproval(ctx, state.ApprovalUse{ID: "a1", Digest: "d1", Requester: as("r1", "", "").Requester, IssuanceID: "i1"}, epoch); err != nil {
		t.Fatal(err)
	}
	mustRequestIn(t, s, as("r3", "c2", "d2"), bound, epoch, true)

	// Expired approvals hold their place until they are purged.
	end := epoch.Add(window)
	late := func(who, id, digest string) state.Approval {
		a := as(who, id, digest)
		a.CreatedAt, a.ExpiresAt = end, end.Add(window)
		return a
	}
	if _, _, err := s.RequestApproval(ctx, late("r4", "e1", "d1"), bound, end); err == nil {
		t.Fatal("an expired but unpurged approval freed its place")
	}
	if _, err := s.PurgeApprovals(ctx, end); err != nil {
		t.Fatal(err)
	}
	for i := range bound.Total {
		mustRequestIn(t, s, late(fmt.Sprintf("r%d", 4+i), fmt.Sprintf("e%d", i), "d1"), bound, end, true)
	}
}

// testApprovalsTotalConcurrent: requesters racing for the last places under
// the total bound, over the replicas if any, store exactly the bound.
func testApprovalsTotalConcurrent(t *testing.T, h Harness) {
	stores := racers(t, h)
	bound := state.ApprovalBound{PerRequester: 8, Total: 5}
	var created, refused atomic.Int32
	var wg sync.WaitGroup
	for i := range 16 {
		s := stores[i%len(stores)]
		wg.Add(1)
		go func() {
			defer wg.Done()
			a := pending(fmt.Sprintf("t%02d", i), "d1", 1, 0)
			a.Requester = fmt.Sprintf("spiffe://example.test/ns/c%d/sa/capa", i)
			_, ok, err := s.RequestApproval(ctx, a, bound, epoch)
			var lim *state.ApprovalLimitError
			switch {
			case ok:
				created.Add(1)
			case errors.As(err, &lim) && lim.Total:
				refused.Add(1)
			default:
				t.Errorf("RequestApproval(%s): %v, %v", a.ID, ok, err)
			}
		}()
	}
	wg.Wait()
	list, err := stores[0].ListApprovals(ctx, state.ApprovalFilter{})
	if err != nil {
		t.Fatal(err)
	}
	if created.Load() != int32(bound.Total) || refused.Load() != 16-int32(bound.Total) || len(list) != bound.Total {
		t.Fatalf("%d created, %d refused, %d stored; want %d, %d, %d", created.Load(), refused.Load(), len(list), bound.Total, 16-bound.Total, bound.Total)
	}
}

// testApprovalsConcurrent: many admins approving at once, each several
// times, are counted exactly (never more votes than Needed, each admin
// once); of many concurrent consumptions exactly one wins; concurrent
// identical requests store one approval. The goroutines are spread over
// the replicas, if any.
func testApprovalsConcurrent(t *testing.T, h Harness) {
	stores := racers(t, h)
	s := stores[0]
	n := 0
	// replica returns the store for the next goroutine, round the replicas.
	replica := func() state.Store { n++; return stores[n%len(stores)] }
	const admins, needed, tries = 12, 5, 3
	mustRequest(t, s, pending("a1", "d1", needed, 0), 8, epoch, true)
	mustRequest(t, s, pending("a2", "d2", admins, 0), 8, epoch, true)
	var counted [2]atomic.Int32
	var wg sync.WaitGroup
	for i := range admins {
		for range tries {
			for j, id := range []string{"a1", "a2"} {
				s := replica()
				wg.Add(1)
				go func() {
					defer wg.Done()
					_, ok, err := s.Approve(ctx, id, fmt.Sprintf("spiffe://example.test/admin/%d", i), epoch.Add(time.Second))
					if err != nil {
						t.Errorf("Approve: %v", err)
					}
					if ok {
						counted[j].Add(1)
					}
				}()
			}
		}
	}
	wg.Wait()
	for j, want := range []struct {
		id     string
		votes  int
		status state.ApprovalStatus
	}{{"a1", needed, state.ApprovalGranted}, {"a2", admins, state.ApprovalGranted}} {
		a, err := s.GetApproval(ctx, want.id)
		if err != nil {
			t.Fatal(err)
		}
		seen := map[string]bool{}
		for _, v := range a.Votes {
			if seen[v.Admin] {
				t.Fatalf("%s: %s counted twice", want.id, v.Admin)
			}
			seen[v.Admin] = true
		}
		if len(a.Votes) != want.votes || a.Status != want.status || int(counted[j].Load()) != want.votes {
			t.Fatalf("%s: %d votes (%d counted), %s; want %d, %s", want.id, len(a.Votes), counted[j].Load(), a.Status, want.votes, want.status)
		}
	}

	var wins atomic.Int32
	for i := range 16 {
		s := replica()
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := s.ConsumeApproval(ctx, use("a1", "d1", fmt.Sprintf("i%d", i)), epoch.Add(2*time.Second))
			switch {
			case err == nil:
				wins.Add(1)
			case !errors.Is(err, state.ErrApprovalClosed):
				t.Errorf("ConsumeApproval: %v", err)
			}
		}()
	}
	wg.Wait()
	if wins.Load() != 1 {
		t.Fatalf("%d concurrent consumptions won, want exactly 1", wins.Load())
	}

	var created atomic.Int32
	ids := make(chan string, 16)
	for i := range 16 {
		s := replica()
		wg.Add(1)
		go func() {
			defer wg.Done()
			a, ok, err := s.RequestApproval(ctx, pending(fmt.Sprintf("r%02d", i), "d3", 2, 0), perRequester(8), epoch)
			if err != nil {
				t.Errorf("RequestApproval: %v", err)
				return
			}
			if ok {
				created.Add(1)
			}
			ids <- a.ID
		}()
	}
	wg.Wait()
	close(ids)
	first := ""
	for id := range ids {
		if first == "" {
			first = id
		}
		if id != first {
			t.Fatalf("concurrent identical requests got %s and %s", first, id)
		}
	}
	if created.Load() != 1 {
		t.Fatalf("%d concurrent identical requests stored an approval, want 1", created.Load())
	}
}
