package state

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"
)

// RevocationIndex answers "is this request covered by a revocation" from
// memory, cheaply enough for every request. It is loaded from a Revocations
// store and kept current by the store's watch, so a change is in the index
// before the operation that made it returns (on one node), or as soon as the
// watch delivers it (replicas).
type RevocationIndex struct {
	mu       sync.RWMutex
	byID     map[string]Revocation
	byTarget map[revTarget][]string // ids, in creation order
	hooks    []func(RevocationChange)
	cancel   func()

	subMu   sync.RWMutex
	subs    map[int]func(RevocationChange)
	nextSub int
}

type revTarget struct {
	kind   RevocationKind
	target string
}

// NewRevocationIndex loads every revocation in r and watches it for changes.
// Each hook is called after the index has applied a change, in the watch's
// order (to drop reused credentials a new revocation covers, say); hooks
// must be quick and must not call back into r. Close the index to stop
// watching.
func NewRevocationIndex(ctx context.Context, r Revocations, hooks ...func(RevocationChange)) (*RevocationIndex, error) {
	x := &RevocationIndex{byID: map[string]Revocation{}, byTarget: map[revTarget][]string{}, hooks: hooks}
	// Watch first, so that no change is missed between the load and the
	// watch. A change seen while loading is newer than the loaded copy of
	// the same revocation, which may have been read before it.
	var loading sync.Mutex
	touched := map[string]bool{}
	inLoad := true
	x.cancel = r.WatchRevocations(func(c RevocationChange) {
		loading.Lock()
		if inLoad {
			touched[c.Revocation.ID] = true
		}
		loading.Unlock()
		x.apply(c)
	})
	var all []Revocation
	after := ""
	for {
		page, err := r.ListRevocations(ctx, RevocationFilter{After: after, Limit: 1000})
		if err != nil {
			x.cancel()
			return nil, fmt.Errorf("state: loading revocations: %w", err)
		}
		all = append(all, page...)
		if len(page) < 1000 {
			break
		}
		after = page[len(page)-1].ID
	}
	loading.Lock()
	x.mu.Lock()
	for _, rev := range all {
		if !touched[rev.ID] {
			x.add(rev)
		}
	}
	x.mu.Unlock()
	inLoad = false
	loading.Unlock()
	return x, nil
}

// Close stops watching the store; the index keeps what it has.
func (x *RevocationIndex) Close() { x.cancel() }

func (x *RevocationIndex) apply(c RevocationChange) {
	x.mu.Lock()
	x.remove(c.Revocation.ID)
	if !c.Removed {
		x.add(c.Revocation)
	}
	x.mu.Unlock()
	for _, h := range x.hooks {
		h(c)
	}
	x.subMu.RLock()
	defer x.subMu.RUnlock()
	for _, fn := range x.subs {
		fn(c)
	}
}

// Subscribe adds fn to the index's hooks until cancel is called: it is told
// of every change applied after Subscribe returns, after the constructor's
// hooks, under the same rules (quick, no calls back into the store or the
// index's Subscribe).
func (x *RevocationIndex) Subscribe(fn func(RevocationChange)) (cancel func()) {
	x.subMu.Lock()
	defer x.subMu.Unlock()
	if x.subs == nil {
		x.subs = map[int]func(RevocationChange){}
	}
	id := x.nextSub
	x.nextSub++
	x.subs[id] = fn
	return func() {
		x.subMu.Lock()
		defer x.subMu.Unlock()
		delete(x.subs, id)
	}
}

// add and remove are called with mu held.
func (x *RevocationIndex) add(r Revocation) {
	x.byID[r.ID] = r
	k := revTarget{r.Kind, r.Target}
	x.byTarget[k] = append(x.byTarget[k], r.ID)
}

func (x *RevocationIndex) remove(id string) {
	r, ok := x.byID[id]
	if !ok {
		return
	}
	delete(x.byID, id)
	k := revTarget{r.Kind, r.Target}
	ids := x.byTarget[k]
	for i, v := range ids {
		if v == id {
			ids = append(ids[:i:i], ids[i+1:]...)
			break
		}
	}
	if len(ids) == 0 {
		delete(x.byTarget, k)
	} else {
		x.byTarget[k] = ids
	}
}

// Covering returns the revocation active at now that covers a request or
// credential with this issuance id, caller identity and cluster (any may be
// empty), checking the identity first, then the cluster, then the issuance;
// false when none does.
func (x *RevocationIndex) Covering(now time.Time, issuanceID, identity, cluster string) (Revocation, bool) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	for _, k := range []revTarget{{RevokeIdentity, identity}, {RevokeCluster, cluster}, {RevokeIssuance, issuanceID}} {
		if k.target == "" {
			continue
		}
		for _, id := range x.byTarget[k] {
			if r := x.byID[id]; r.Active(now) {
				return r, true
			}
		}
	}
	return Revocation{}, false
}

// Select returns the revocations active at now for which keep is true, in
// no particular order. keep runs under the index's read lock: it must be
// quick and must not call back into the index.
func (x *RevocationIndex) Select(now time.Time, keep func(Revocation) bool) []Revocation {
	x.mu.RLock()
	defer x.mu.RUnlock()
	var out []Revocation
	for _, r := range x.byID {
		if r.Active(now) && keep(r) {
			out = append(out, r)
		}
	}
	return out
}

// All returns a copy of every revocation the index holds, ended ones
// included until they are purged, in no particular order.
func (x *RevocationIndex) All() []Revocation {
	x.mu.RLock()
	defer x.mu.RUnlock()
	all := make([]Revocation, 0, len(x.byID))
	for _, r := range x.byID {
		all = append(all, r)
	}
	return all
}

// Len returns how many revocations the index holds, ended ones included
// until they are purged.
func (x *RevocationIndex) Len() int {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return len(x.byID)
}

// Describe words r for a refused caller: what is revoked, why, since when,
// by whom, and the revocation id to quote when asking for it to be lifted.
func Describe(r Revocation) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s is revoked", r.Kind, r.Target)
	if r.Reason != "" {
		fmt.Fprintf(&b, " (%s)", r.Reason)
	}
	fmt.Fprintf(&b, " since %s by %s", r.CreatedAt.UTC().Format(time.RFC3339), r.Admin)
	if !r.Until.IsZero() {
		fmt.Fprintf(&b, " until %s", r.Until.UTC().Format(time.RFC3339))
	}
	fmt.Fprintf(&b, "; ask a broker admin, quoting revocation %s", r.ID)
	return b.String()
}
