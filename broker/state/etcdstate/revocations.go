package etcdstate

import (
	"context"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/credbroker/credbroker/broker/state"
	"github.com/credbroker/credbroker/broker/state/internal/record"
)

// Revoke implements state.Revocations. It returns once this Store's watch
// has delivered the revocation to its watchers, or, should the watch lag
// past the operation's deadline, once the revocation is stored: it is in
// force for every replica either way, and this one applies it when its
// watch catches up.
func (s *Store) Revoke(ctx context.Context, r state.Revocation) (state.Revocation, error) {
	if err := state.ValidateRevocation(r); err != nil {
		return state.Revocation{}, err
	}
	r.CreatedAt, r.Until, r.CoveredUntil = state.NormTime(r.CreatedAt), state.NormTime(r.Until), state.NormTime(r.CoveredUntil)
	v, err := record.EncodeRevocation(r)
	if err != nil {
		return state.Revocation{}, err
	}
	ctx, cancel := s.opCtx(ctx)
	defer cancel()
	k := s.key(dirRevocation, r.ID)
	// The generation key moves with every new revocation, so that a probe
	// can tell from one key whether the watch has delivered them all.
	ops := []clientv3.Op{clientv3.OpPut(k, string(v)), clientv3.OpPut(s.key(keyRevocationGen, ""), r.ID)}
	if r.Kind == state.RevokeCluster {
		ops = append(ops, s.putRef(r.Target, refRevocation, r.ID, ""))
	}
	resp, err := s.cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(k), "=", 0)).Then(ops...).Commit()
	if err != nil {
		return state.Revocation{}, unavailable("revoke", err)
	}
	if !resp.Succeeded {
		return state.Revocation{}, fmt.Errorf("%w: revocation %s", state.ErrExists, r.ID)
	}
	s.watch.waitFor(ctx, resp.Header.Revision)
	return r, nil
}

// LiftRevocation implements state.Revocations: a compare-and-swap delete, so
// of concurrent lifts of one revocation exactly one finds it.
func (s *Store) LiftRevocation(ctx context.Context, id string) (state.Revocation, error) {
	ctx, cancel := s.opCtx(ctx)
	defer cancel()
	k := s.key(dirRevocation, id)
	var r state.Revocation
	resp, err := s.cas(ctx, "lift revocation", []string{k}, nil, func(kvs []*mvccpb.KeyValue) ([]clientv3.Op, error) {
		if kvs[0] == nil {
			return nil, fmt.Errorf("%w: revocation %s", state.ErrNotFound, id)
		}
		var err error
		if r, err = record.DecodeRevocation(kvs[0].Value); err != nil {
			return nil, err
		}
		return append([]clientv3.Op{clientv3.OpDelete(k)}, s.revocationRefOps(r)...), nil
	})
	if err != nil {
		return state.Revocation{}, err
	}
	s.watch.waitFor(ctx, resp.Header.Revision)
	return r, nil
}

// revocationRefOps drops r's cluster reference, if it has one.
func (s *Store) revocationRefOps(r state.Revocation) []clientv3.Op {
	if r.Kind != state.RevokeCluster {
		return nil
	}
	return []clientv3.Op{s.deleteRef(r.Target, refRevocation, r.ID)}
}

// ListRevocations implements state.Revocations.
func (s *Store) ListRevocations(ctx context.Context, f state.RevocationFilter) ([]state.Revocation, error) {
	return listPage(ctx, s, "list revocations", dirRevocation, f.After, f.Limit, record.DecodeRevocation, nil)
}

// PurgeRevocations implements state.Revocations.
func (s *Store) PurgeRevocations(ctx context.Context, now time.Time) (int, error) {
	n, rev, err := s.deleteWhere(ctx, "purge revocations", dirRevocation, func(kv *mvccpb.KeyValue) ([]clientv3.Op, bool, error) {
		r, err := record.DecodeRevocation(kv.Value)
		if err != nil || r.Active(now) {
			return nil, false, err
		}
		return s.revocationRefOps(r), true, nil
	}, nil)
	if rev != 0 {
		wctx, cancel := s.opCtx(ctx)
		s.watch.waitFor(wctx, rev)
		cancel()
	}
	return n, err
}

// WatchRevocations implements state.Revocations. Every watcher of a Store
// is fed by the Store's one etcd watch, in revision order.
func (s *Store) WatchRevocations(fn func(state.RevocationChange)) (cancel func()) {
	return s.watch.add(fn)
}

// revWatch is a Store's one watch of the revocations, delivering each
// change to the registered watchers.
type revWatch struct {
	s       *Store
	cancel  context.CancelFunc
	done    chan struct{}
	probing sync.WaitGroup
	probed  func(confirmed bool) // tests only: after each probe

	mu        sync.Mutex
	fns       map[int]func(state.RevocationChange)
	next      int
	delivered int64         // every change up to this revision is delivered
	advanced  chan struct{} // closed (and replaced) when delivered grows

	// known is what the watch has delivered: the revocations as of
	// delivered. Only the watch goroutine touches it after startWatch.
	known map[string]state.Revocation
}

// Backoff between attempts to resume a broken watch.
const (
	watchRetryMin = 50 * time.Millisecond
	watchRetryMax = 2 * time.Second
)

// startWatch lists the revocations at one revision and starts watching from
// the next.
func startWatch(ctx context.Context, s *Store) (*revWatch, error) {
	known, rev, err := listRevocations(ctx, s)
	if err != nil {
		return nil, err
	}
	wctx, cancel := context.WithCancel(context.Background())
	w := &revWatch{s: s, cancel: cancel, done: make(chan struct{}), fns: map[int]func(state.RevocationChange){},
		delivered: rev, advanced: make(chan struct{}), known: known}
	w.probed = s.probed
	go w.run(wctx)
	if s.probe > 0 {
		w.probing.Add(1)
		go w.probeLoop(wctx)
	}
	return w, nil
}

// listRevocations reads every revocation at one revision.
func listRevocations(ctx context.Context, s *Store) (map[string]state.Revocation, int64, error) {
	known := map[string]state.Revocation{}
	rev, err := s.scan(ctx, "list revocations", dirRevocation, "", func(kv *mvccpb.KeyValue) (bool, error) {
		r, err := record.DecodeRevocation(kv.Value)
		known[r.ID] = r
		return true, err
	})
	if err != nil {
		return nil, 0, err
	}
	return known, rev, nil
}

func (w *revWatch) stop() {
	w.cancel()
	<-w.done
	w.probing.Wait()
}

// probeLoop confirms, every probe interval, that the watch has delivered
// every revocation made so far: one linearizable read of the generation
// key, whose mod revision is that of the latest Revoke. A read that fails
// (etcd unreachable, no quorum) or finds a revocation the watch has not
// delivered yet confirms nothing. Lifts and purges do not move the key:
// missing one only refuses more, for a moment.
func (w *revWatch) probeLoop(ctx context.Context) {
	defer w.probing.Done()
	t := time.NewTicker(w.s.probe)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		// Not the tick's time: after a probe that waited out an outage the
		// ticker holds one it scheduled during it.
		sent := w.s.now()
		w.mu.Lock()
		delivered := w.delivered
		w.mu.Unlock()
		pctx, cancel := w.s.opCtx(ctx)
		resp, err := w.s.cli.Get(pctx, w.s.key(keyRevocationGen, ""))
		cancel()
		confirmed := err == nil && (len(resp.Kvs) == 0 || resp.Kvs[0].ModRevision <= delivered)
		if confirmed && w.s.onCurrent != nil {
			w.s.onCurrent(sent)
		}
		if w.probed != nil {
			w.probed(confirmed)
		}
	}
}

func (w *revWatch) add(fn func(state.RevocationChange)) func() {
	w.mu.Lock()
	defer w.mu.Unlock()
	id := w.next
	w.next++
	w.fns[id] = fn
	return func() {
		w.mu.Lock()
		delete(w.fns, id)
		w.mu.Unlock()
	}
}

// waitFor waits until every change up to rev is delivered, the context
// ends, or the watch stops.
func (w *revWatch) waitFor(ctx context.Context, rev int64) {
	for {
		w.mu.Lock()
		delivered, advanced := w.delivered, w.advanced
		w.mu.Unlock()
		if delivered >= rev {
			return
		}
		select {
		case <-advanced:
		case <-ctx.Done():
			return
		case <-w.done:
			return
		}
	}
}

// deliver calls every watcher with cs, in order, then records that every
// change up to rev is delivered.
func (w *revWatch) deliver(cs []state.RevocationChange, rev int64) {
	w.mu.Lock()
	ids := slices.Sorted(maps.Keys(w.fns))
	fns := make([]func(state.RevocationChange), len(ids))
	for i, id := range ids {
		fns[i] = w.fns[id]
	}
	w.mu.Unlock()
	for _, c := range cs {
		for _, fn := range fns {
			fn(c)
		}
	}
	w.mu.Lock()
	if rev > w.delivered {
		w.delivered = rev
		close(w.advanced)
		w.advanced = make(chan struct{})
	}
	w.mu.Unlock()
}

// run watches until stopped: from the revision after the last delivered
// one, resuming after errors, and listing afresh when that revision has
// been compacted away.
func (w *revWatch) run(ctx context.Context) {
	defer close(w.done)
	dir := w.s.key(dirRevocation, "")
	retry := watchRetryMin
	for ctx.Err() == nil {
		w.mu.Lock()
		from := w.delivered + 1
		w.mu.Unlock()
		compacted := false
		// Each attempt has its own context, so that giving up on a watch
		// (to resume it, or to list afresh) ends it in the client too.
		actx, endAttempt := context.WithCancel(ctx)
		wch := w.s.cli.Watch(clientv3.WithRequireLeader(actx), dir, clientv3.WithPrefix(), clientv3.WithRev(from))
		for resp := range wch {
			if resp.CompactRevision != 0 {
				compacted = true
				break
			}
			if resp.Err() != nil {
				break
			}
			retry = watchRetryMin
			if resp.IsProgressNotify() {
				w.deliver(nil, resp.Header.Revision)
				continue
			}
			var cs []state.RevocationChange
			var rev int64
			for _, ev := range resp.Events {
				if c, ok := w.apply(ev); ok {
					cs = append(cs, c)
				}
				rev = max(rev, ev.Kv.ModRevision)
			}
			w.deliver(cs, rev)
		}
		endAttempt()
		if ctx.Err() != nil {
			return
		}
		if compacted {
			if err := w.relist(ctx); err == nil {
				retry = watchRetryMin
				continue
			}
		}
		t := time.NewTimer(retry)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		retry = min(2*retry, watchRetryMax)
	}
}

// apply updates known with one event and returns the change to deliver;
// false for a deletion of a revocation the watch never saw (nothing to
// report) or a record it cannot read.
func (w *revWatch) apply(ev *clientv3.Event) (state.RevocationChange, bool) {
	id := strings.TrimPrefix(string(ev.Kv.Key), w.s.key(dirRevocation, ""))
	if ev.Type == mvccpb.DELETE {
		r, ok := w.known[id]
		delete(w.known, id)
		return state.RevocationChange{Revocation: r, Removed: true}, ok
	}
	r, err := record.DecodeRevocation(ev.Kv.Value)
	if err != nil {
		return state.RevocationChange{}, false
	}
	w.known[id] = r
	return state.RevocationChange{Revocation: r}, true
}

// relist reads the revocations afresh and delivers what changed since the
// watch last delivered: after a compaction the events in between are gone.
func (w *revWatch) relist(ctx context.Context) error {
	now, rev, err := listRevocations(ctx, w.s)
	if err != nil {
		return err
	}
	var cs []state.RevocationChange
	for _, id := range slices.Sorted(maps.Keys(w.known)) {
		if _, ok := now[id]; !ok {
			cs = append(cs, state.RevocationChange{Revocation: w.known[id], Removed: true})
		}
	}
	for _, id := range slices.Sorted(maps.Keys(now)) {
		if old, ok := w.known[id]; !ok || !reflect.DeepEqual(old, now[id]) {
			cs = append(cs, state.RevocationChange{Revocation: now[id]})
		}
	}
	w.known = now
	w.deliver(cs, rev)
	return nil
}
