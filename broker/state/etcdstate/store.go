package etcdstate

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/credbroker/credbroker/broker/state"
)

// Defaults of Options.
const (
	// DefaultOpTimeout bounds one operation (all of its round trips and
	// retries) when the caller's context has no earlier deadline.
	DefaultOpTimeout = 5 * time.Second
	// DefaultDialTimeout bounds the first connection Open makes.
	DefaultDialTimeout = 5 * time.Second
	// maxAttempts bounds the compare-and-swap rounds of one operation, as a
	// backstop: what bounds an operation is its deadline (OpTimeout). A
	// round lost is another replica's write committed, so the loop never
	// spins without the fleet making progress; and in a burst on one hot
	// key (a cluster's quota) a replica slower than the others (a busy
	// host, a farther member) loses round after round for as long as they
	// keep spending, then decides on the window they left: a refusal, once
	// the quota is spent. Counting 32 losses turned such requests into
	// UNAVAILABLE instead of a decision.
	maxAttempts = 1024
	// queueTimeout bounds how long an operation waits behind this Store's
	// other operations on the same keys before its own round trips start
	// (and OpTimeout starts counting). A burst on one hot key (a cluster's
	// quota) is served one transaction after another; on a loaded host a
	// few hundred of them take longer than one operation's timeout, and
	// every one of them must still be answered with a decision.
	queueTimeout = 30 * time.Second
	// maxQueued bounds the operations waiting on one key in one Store; one
	// more is refused at once (ErrContended) instead of holding a goroutine
	// and its request for the queue's whole length.
	maxQueued = 1024
	// pageSize is how many keys one range read returns at most.
	pageSize = 500
	// txnBatch is how many keys one purge transaction deletes at most (etcd
	// refuses transactions of more than 128 operations by default; a node
	// takes three).
	txnBatch = 40
)

// ErrContended means an operation lost its compare-and-swap race maxAttempts
// times in a row to other writers of the same keys; it wraps
// state.ErrUnavailable too, since a retry can succeed.
var ErrContended = errors.New("etcdstate: contended")

// Options tune a Store.
type Options struct {
	// Prefix is put before every key the Store reads or writes; it must
	// end in "/". Stores sharing a prefix share their state.
	Prefix string
	// OpTimeout bounds each operation when the caller's context has no
	// earlier deadline; zero means DefaultOpTimeout.
	OpTimeout time.Duration
	// ProbeInterval, when positive, is how often the Store checks with
	// etcd that its watch has delivered every revocation made so far; each
	// confirmation calls OnCurrent. A replica uses them to refuse issuing
	// while it cannot tell that its revocations are current.
	ProbeInterval time.Duration
	// OnCurrent, when set, is called (from the Store's goroutines; it must
	// be quick) each time the Store has confirmed that its watchers have
	// every revocation made before asOf: the time (from Now) just before
	// the probe that confirmed it asked etcd. A probe that waited out an
	// outage is dated when it was sent, and the next one when it is sent
	// (not when it was due), so the confirmations after an outage are not
	// dated back into it. No decision about the state depends on the time.
	OnCurrent func(asOf time.Time)
	// Now is the clock OnCurrent's times are read from; nil: time.Now.
	Now func() time.Time

	probed     func(confirmed bool) // tests only: called after each probe
	beforeSwap func()               // tests only: called before each compare-and-swap
	// maxAttempts, tests only: the compare-and-swap rounds of one
	// operation; zero means the package's maxAttempts.
	maxAttempts int
}

// Config is what Open needs to reach etcd.
type Config struct {
	// Endpoints are the etcd members' client URLs.
	Endpoints []string
	// TLS, when set, is the client's TLS configuration (with a client
	// certificate for mTLS); nil dials without TLS.
	TLS *tls.Config
	// DialTimeout bounds the first connection; zero means
	// DefaultDialTimeout.
	DialTimeout time.Duration
	Options
}

// Store is the etcd implementation of state.Store. It is safe for
// concurrent use; Close it to stop its watch.
type Store struct {
	cli        *clientv3.Client
	ownClient  bool
	prefix     string
	opTimeout  time.Duration
	probe      time.Duration
	onCurrent  func(asOf time.Time)
	now        func() time.Time
	probed     func(confirmed bool)
	beforeSwap func()
	// maxAttempts bounds the compare-and-swap rounds of one operation.
	maxAttempts int
	locks       keyLocks
	quotas      kvCache // the quota windows this Store last read or wrote
	budgets     kvCache // the upstream budgets this Store last read or wrote
	watch       *revWatch
}

var _ state.Store = (*Store)(nil)

// Open connects to etcd as cfg says and returns a Store over it that owns
// the client: Close closes it.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, errors.New("etcdstate: no endpoints")
	}
	dial := cfg.DialTimeout
	if dial <= 0 {
		dial = DefaultDialTimeout
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   cfg.Endpoints,
		TLS:         cfg.TLS,
		DialTimeout: dial,
		Context:     context.WithoutCancel(ctx),
		// The Store reports every failure as an error of its own; the
		// client's internal logging would only repeat it.
		Logger: zap.NewNop(),
	})
	if err != nil {
		return nil, fmt.Errorf("%w: etcdstate: connect to %s: %w", state.ErrUnavailable, strings.Join(cfg.Endpoints, ","), err)
	}
	s, err := New(ctx, cli, cfg.Options)
	if err != nil {
		_ = cli.Close()
		return nil, err
	}
	s.ownClient = true
	return s, nil
}

// New returns a Store over cli, which the caller keeps ownership of (close
// it after Close). It lists the revocations and starts watching them, so
// etcd must be reachable.
func New(ctx context.Context, cli *clientv3.Client, opts Options) (*Store, error) {
	if cli == nil {
		return nil, errors.New("etcdstate: nil client")
	}
	if opts.Prefix == "" || !strings.HasSuffix(opts.Prefix, "/") {
		return nil, fmt.Errorf("etcdstate: prefix %q must be non-empty and end in \"/\"", opts.Prefix)
	}
	s := &Store{cli: cli, prefix: opts.Prefix, opTimeout: opts.OpTimeout, probe: opts.ProbeInterval, onCurrent: opts.OnCurrent, now: opts.Now, probed: opts.probed, beforeSwap: opts.beforeSwap}
	if s.opTimeout <= 0 {
		s.opTimeout = DefaultOpTimeout
	}
	if s.now == nil {
		s.now = time.Now
	}
	w, err := startWatch(ctx, s)
	if err != nil {
		return nil, err
	}
	s.watch = w
	s.maxAttempts = cmp.Or(opts.maxAttempts, maxAttempts)
	return s, nil
}

// Close stops the revocation watch and, for a Store made by Open, closes
// the client. Watchers registered with WatchRevocations get nothing more.
func (s *Store) Close() error {
	s.watch.stop()
	if s.ownClient {
		return s.cli.Close()
	}
	return nil
}

// Directories under the prefix; see the package documentation.
const (
	dirQuota       = "quota/"
	dirJoinToken   = "jointoken/"
	dirNode        = "node/"
	dirNodeCluster = "node-cluster/"
	dirRevocation  = "revocation/"
	dirClusterRef  = "cluster-ref/"
	dirApproval    = "approval/"
	dirApprovalReq = "approval-req/"
	dirBudget      = "budget/"
	// keyRevocationGen is rewritten by every Revoke, in its transaction:
	// its mod revision is that of the latest revocation made.
	keyRevocationGen = "revocation-gen"
)

func (s *Store) key(dir, name string) string { return s.prefix + dir + name }

// opCtx bounds one operation by the Store's timeout and makes the member
// refuse at once when it has no leader.
func (s *Store) opCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(ctx, s.opTimeout)
	return clientv3.WithRequireLeader(ctx), cancel
}

// queue waits, at most queueTimeout (or until ctx ends), for this Store's
// turn on keys, and returns the function that ends it.
func (s *Store) queue(ctx context.Context, keys []string) (func(), error) {
	ctx, cancel := context.WithTimeout(ctx, queueTimeout)
	defer cancel()
	return s.locks.lock(ctx, keys)
}

// unavailable wraps an error of the etcd client, saying what failed.
func unavailable(what string, err error) error {
	return fmt.Errorf("%w: etcdstate: %s: %w", state.ErrUnavailable, what, err)
}

// getOps reads keys, in order.
func getOps(keys []string) []clientv3.Op {
	ops := make([]clientv3.Op, len(keys))
	for i, k := range keys {
		ops[i] = clientv3.OpGet(k)
	}
	return ops
}

// readKVs returns, per key, the value the range responses of a transaction
// made with getOps(keys) read (nil for an absent key).
func readKVs(keys []string, rs []*pb.ResponseOp) []*mvccpb.KeyValue {
	kvs := make([]*mvccpb.KeyValue, len(keys))
	for i := range keys {
		if i < len(rs) {
			if r := rs[i].GetResponseRange(); r != nil && len(r.Kvs) > 0 {
				kvs[i] = r.Kvs[0]
			}
		}
	}
	return kvs
}

// cas is the compare-and-swap loop every check-and-change runs: it reads
// keys in one transaction, asks decide for the writes to make given their
// values (nil for an absent key), and commits them only if none of the keys
// changed since it read them. When another writer got there first, the
// failed transaction has read the keys' new values, and decide is asked
// again. decide ends the loop by returning an error, or no writes (cas
// then returns a nil response). what names the operation in errors. The
// Store's own calls on any of the keys wait their turn (keyLocks), so the
// race is only ever with other replicas.
//
// With a cache, cas starts from the values the Store last read or wrote
// for the keys, when it has them all, and saves the read: a spend on a key
// this replica spent last is one round trip. A decision not to write made
// on remembered values may rest on stale ones, so it is made again on
// values read afresh before it stands.
func (s *Store) cas(ctx context.Context, what string, keys []string, cache *kvCache, decide func(kvs []*mvccpb.KeyValue) ([]clientv3.Op, error)) (*clientv3.TxnResponse, error) {
	unlock, err := s.queue(ctx, keys)
	if err != nil {
		return nil, err
	}
	defer unlock()
	ctx, cancel := s.opCtx(ctx)
	defer cancel()
	kvs, remembered := cache.get(keys)
	read := func() error {
		resp, err := s.cli.Txn(ctx).Then(getOps(keys)...).Commit()
		if err != nil {
			cache.forget(keys...)
			return unavailable(what, err)
		}
		kvs, remembered = readKVs(keys, resp.Responses), false
		cache.put(keys, kvs)
		return nil
	}
	if !remembered {
		if err := read(); err != nil {
			return nil, err
		}
	}
	for range s.maxAttempts {
		ops, err := decide(kvs)
		if (err != nil || len(ops) == 0) && remembered {
			if err := read(); err != nil {
				return nil, err
			}
			continue
		}
		if err != nil || len(ops) == 0 {
			return nil, err
		}
		cmps := make([]clientv3.Cmp, len(keys))
		for i, k := range keys {
			var rev int64
			if kvs[i] != nil {
				rev = kvs[i].ModRevision
			}
			cmps[i] = clientv3.Compare(clientv3.ModRevision(k), "=", rev)
		}
		if s.beforeSwap != nil {
			s.beforeSwap()
		}
		resp, err := s.cli.Txn(ctx).If(cmps...).Then(ops...).Else(getOps(keys)...).Commit()
		if err != nil {
			// Committed or not, nobody can tell: remember nothing.
			cache.forget(keys...)
			return nil, unavailable(what, err)
		}
		if resp.Succeeded {
			cache.wrote(keys, kvs, ops, resp.Header.Revision)
			return resp, nil
		}
		kvs, remembered = readKVs(keys, resp.Responses), false
		cache.put(keys, kvs)
	}
	return nil, fmt.Errorf("%w: %w: %s lost to concurrent writers %d times; retry", state.ErrUnavailable, ErrContended, what, s.maxAttempts)
}

// kvCacheMax bounds the keys a kvCache remembers; past it, it starts over.
const kvCacheMax = 10_000

// kvCache remembers, per key, the value and mod revision the Store last
// read or wrote (nil: absent), for cas to start from. A stale entry costs
// only the round trip it meant to save: the swap fails, and its Else branch
// reads the current values. Entries are never changed in place. A nil
// *kvCache remembers nothing.
type kvCache struct {
	mu sync.Mutex
	m  map[string]*mvccpb.KeyValue
}

// get returns the remembered values of keys, if it has all of them.
func (c *kvCache) get(keys []string) ([]*mvccpb.KeyValue, bool) {
	if c == nil {
		return nil, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	kvs := make([]*mvccpb.KeyValue, len(keys))
	for i, k := range keys {
		kv, ok := c.m[k]
		if !ok {
			return nil, false
		}
		kvs[i] = kv
	}
	return kvs, true
}

// put remembers kvs as the values of keys.
func (c *kvCache) put(keys []string, kvs []*mvccpb.KeyValue) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil || len(c.m)+len(keys) > kvCacheMax {
		c.m = make(map[string]*mvccpb.KeyValue, len(keys))
	}
	for i, k := range keys {
		c.m[k] = kvs[i]
	}
}

// wrote remembers keys as ops left them at revision rev, starting from
// kvs, their values before.
func (c *kvCache) wrote(keys []string, kvs []*mvccpb.KeyValue, ops []clientv3.Op, rev int64) {
	if c == nil {
		return
	}
	after := slices.Clone(kvs)
	for _, op := range ops {
		i := slices.Index(keys, string(op.KeyBytes()))
		switch {
		case i < 0:
			continue
		case op.IsPut():
			after[i] = &mvccpb.KeyValue{Key: op.KeyBytes(), Value: op.ValueBytes(), ModRevision: rev}
		case op.IsDelete():
			after[i] = nil
		}
	}
	c.put(keys, after)
}

// forget drops what is remembered of keys.
func (c *kvCache) forget(keys ...string) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, k := range keys {
		delete(c.m, k)
	}
}

// after returns the first key suffix that sorts after name ("" for none:
// from the start).
func after(name string) string {
	if name == "" {
		return ""
	}
	return name + "\x00"
}

// scan calls fn with every key-value under dir from dir+from on, in key
// order, reading pages of at most pageSize at one revision, until fn
// returns false, and returns that revision. what names the operation in
// errors.
func (s *Store) scan(ctx context.Context, what, dir, from string, fn func(kv *mvccpb.KeyValue) (more bool, err error)) (int64, error) {
	ctx, cancel := s.opCtx(ctx)
	defer cancel()
	start := s.key(dir, from)
	end := clientv3.GetPrefixRangeEnd(s.key(dir, ""))
	var rev int64
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(pageSize)}
		if rev != 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		resp, err := s.cli.Get(ctx, start, opts...)
		if err != nil {
			return 0, unavailable(what, err)
		}
		rev = resp.Header.Revision
		for _, kv := range resp.Kvs {
			more, err := fn(kv)
			if err != nil || !more {
				return rev, err
			}
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return rev, nil
		}
		start = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

// listPage decodes the values under dir in key order, after the key
// dir+last ("" for the start), keeping those keep accepts (nil keeps all),
// until it has limit of them (limit <= 0: no bound).
func listPage[T any](ctx context.Context, s *Store, what, dir, last string, limit int, decode func([]byte) (T, error), keep func(T) bool) ([]T, error) {
	var out []T
	_, err := s.scan(ctx, what, dir, after(last), func(kv *mvccpb.KeyValue) (bool, error) {
		item, err := decode(kv.Value)
		if err != nil {
			return false, err
		}
		if keep == nil || keep(item) {
			out = append(out, item)
		}
		return limit <= 0 || len(out) < limit, nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// staleKey is a key deleteWhere deletes, if it still has modRev, together
// with also (the index entries that go with it).
type staleKey struct {
	key    string
	modRev int64
	also   []clientv3.Op
	value  []byte
}

// deleteWhere deletes the keys under dir that stale picks (returning the
// operations on index entries to run with each), each only if it has not
// changed since it was read, in transactions of up to txnBatch keys made
// as the scan finds them, so that a purge holds one batch in memory
// however much it deletes; a batch in which some key changed is retried key
// by key (a changed one stays for the next purge to look at). It calls
// deleted with each key it deleted and returns how many, and the highest
// revision a deletion committed at.
func (s *Store) deleteWhere(ctx context.Context, what, dir string, stale func(kv *mvccpb.KeyValue) (also []clientv3.Op, ok bool, err error), deleted func(staleKey)) (int, int64, error) {
	ctx, cancel := s.opCtx(ctx)
	defer cancel()
	n, rev := 0, int64(0)
	commit := func(batch []staleKey) (bool, error) {
		cmps := make([]clientv3.Cmp, 0, len(batch))
		var ops []clientv3.Op
		for _, k := range batch {
			cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(k.key), "=", k.modRev))
			ops = append(append(ops, clientv3.OpDelete(k.key)), k.also...)
		}
		resp, err := s.cli.Txn(ctx).If(cmps...).Then(ops...).Commit()
		if err != nil {
			return false, unavailable(what, err)
		}
		if resp.Succeeded {
			n += len(batch)
			rev = max(rev, resp.Header.Revision)
			if deleted != nil {
				for _, k := range batch {
					deleted(k)
				}
			}
		}
		return resp.Succeeded, nil
	}
	flush := func(batch []staleKey) error {
		ok, err := commit(batch)
		if err != nil || ok {
			return err
		}
		for i := range batch {
			if _, err := commit(batch[i : i+1]); err != nil {
				return err
			}
		}
		return nil
	}
	var batch []staleKey
	_, err := s.scan(ctx, what, dir, "", func(kv *mvccpb.KeyValue) (bool, error) {
		also, ok, err := stale(kv)
		if err != nil {
			return false, err
		}
		if ok {
			batch = append(batch, staleKey{key: string(kv.Key), modRev: kv.ModRevision, also: also, value: kv.Value})
		}
		if len(batch) < txnBatch {
			return true, nil
		}
		err = flush(batch)
		batch = batch[:0]
		return err == nil, err
	})
	if err == nil && len(batch) > 0 {
		err = flush(batch)
	}
	return n, rev, err
}

// keyLocks queues the operations of one Store on the same quota keys, so
// that its goroutines do not race each other's compare-and-swap. Waiting
// respects the context; at most maxQueued wait on one key.
type keyLocks struct {
	mu sync.Mutex
	m  map[string]*keyLock
}

type keyLock struct {
	ch   chan struct{} // holds a token while locked
	refs int
}

// lock locks keys (in sorted order, so two lockers cannot deadlock) and
// returns the function that unlocks them.
func (l *keyLocks) lock(ctx context.Context, keys []string) (func(), error) {
	keys = slices.Clone(keys)
	slices.Sort(keys)
	keys = slices.Compact(keys)
	l.mu.Lock()
	if l.m == nil {
		l.m = map[string]*keyLock{}
	}
	for _, k := range keys {
		if kl := l.m[k]; kl != nil && kl.refs >= maxQueued {
			l.mu.Unlock()
			return nil, fmt.Errorf("%w: %w: %d updates of one key already queued; retry", state.ErrUnavailable, ErrContended, kl.refs)
		}
	}
	held := make([]*keyLock, len(keys))
	for i, k := range keys {
		kl := l.m[k]
		if kl == nil {
			kl = &keyLock{ch: make(chan struct{}, 1)}
			l.m[k] = kl
		}
		kl.refs++
		held[i] = kl
	}
	l.mu.Unlock()
	release := func(locked int) {
		for _, kl := range held[:locked] {
			<-kl.ch
		}
		l.mu.Lock()
		for i, kl := range held {
			if kl.refs--; kl.refs == 0 {
				delete(l.m, keys[i])
			}
		}
		l.mu.Unlock()
	}
	for i, kl := range held {
		select {
		case kl.ch <- struct{}{}:
		case <-ctx.Done():
			release(i)
			return nil, unavailable("waiting for a concurrent update", ctx.Err())
		}
	}
	return func() { release(len(held)) }, nil
}
