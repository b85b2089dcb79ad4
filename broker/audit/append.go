package audit

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/bbolt"
)

// maxBatch bounds how many appends share one transaction.
const maxBatch = 512

// call is one Append waiting for the committer.
type call struct {
	rec     Record
	members []byte // rec's encoded body, see Record.encodeBody
	ops     []func(*bbolt.Tx) error
	// internal, for records the Log writes itself (checkpoints, export
	// marks), runs after ops with the seq the record gets, in the same
	// transaction.
	internal func(b buckets, seq uint64) error
	done     chan result // buffered, receives exactly once
}

type result struct {
	rec Record
	err error
}

// callError is a failure caused by one call of a batch (its op, its ID or its
// data), as opposed to a failure of the transaction as a whole.
type callError struct {
	index int
	err   error
}

func (e *callError) Error() string { return e.err.Error() }
func (e *callError) Unwrap() error { return e.err }

// Append assigns r's ID, Seq, Time, Replica, PrevHash and Hash, commits it durably
// and returns the stored record. It returns an error, and the record is not
// stored, if r is invalid, if the commit (including its fsync) fails, or if
// the Log is closed (ErrClosed).
func (l *Log) Append(r Record) (Record, error) { return l.AppendWith(r) }

// AppendWith is Append with ops that run, in order and before the record is
// written, inside the same bbolt write transaction, so that state kept in
// the same file (boltstate's quota windows) commits atomically with the
// record. If an op returns an error (or panics) nothing of this call is
// written and AppendWith returns that error, wrapped; concurrent appends are
// not affected. An op may run more than once (when a shared transaction is
// retried), so it must have no effect outside tx.
func (l *Log) AppendWith(r Record, ops ...func(tx *bbolt.Tx) error) (Record, error) {
	r.Replica = l.replica
	c, err := newCall(r, ops)
	if err != nil {
		return Record{}, err
	}
	return l.enqueue(c)
}

// appendInternal appends a record of the Log's own (a checkpoint, an export
// mark) with fn run in its transaction; see call.internal.
func (l *Log) appendInternal(r Record, fn func(b buckets, seq uint64) error) (Record, error) {
	r.Replica = l.replica
	if err := r.checkFields(); err != nil {
		return Record{}, err
	}
	members, err := r.encodeBody()
	if err != nil {
		return Record{}, err
	}
	return l.enqueue(&call{rec: r, members: members, internal: fn, done: make(chan result, 1)})
}

// enqueue hands c to the committer and waits for its outcome.
func (l *Log) enqueue(c *call) (Record, error) {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return Record{}, ErrClosed
	}
	l.queue = append(l.queue, c)
	l.mu.Unlock()
	l.signal()
	res := <-c.done
	return res.rec, res.err
}

// newCall validates r and encodes its body in the appender's goroutine.
func newCall(r Record, ops []func(*bbolt.Tx) error) (*call, error) {
	if err := r.check(); err != nil {
		return nil, err
	}
	members, err := r.encodeBody()
	if err != nil {
		return nil, err
	}
	return &call{rec: r, members: members, ops: ops, done: make(chan result, 1)}, nil
}

func (l *Log) signal() {
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

// run is the committer: it takes everything queued and commits it in one
// transaction, then repeats. While a commit is in flight new appends queue
// up, so under load each fsync covers many records; when idle an append is
// committed as soon as it arrives.
func (l *Log) run() {
	defer close(l.stopped)
	for {
		l.mu.Lock()
		batch := l.queue
		if len(batch) > maxBatch {
			batch, l.queue = batch[:maxBatch:maxBatch], batch[maxBatch:]
		} else {
			l.queue = nil
		}
		closed := l.closed
		l.mu.Unlock()
		if len(batch) == 0 {
			if closed {
				return
			}
			<-l.wake
			continue
		}
		l.commit(batch)
	}
}

// commit writes batch and reports to every call. A call whose own op or data
// fails is taken out and retried alone after the others, which are retried
// together; if the transaction itself fails, every call is retried alone, so
// each gets its own outcome (the DB.Batch semantic). A failing op rolls its
// transaction back without an fsync, so the retries cost CPU, not I/O.
func (l *Log) commit(batch []*call) {
	var solo []*call
	for len(batch) > 1 {
		recs, err := l.write(batch)
		if err == nil {
			for i, c := range batch {
				c.done <- result{rec: recs[i]}
			}
			batch = nil
			break
		}
		var ce *callError
		if !errors.As(err, &ce) {
			break // transaction-level failure: all of batch goes solo
		}
		solo = append(solo, batch[ce.index])
		batch = append(batch[:ce.index:ce.index], batch[ce.index+1:]...)
	}
	for _, c := range append(batch, solo...) {
		recs, err := l.write([]*call{c})
		if err != nil {
			c.done <- result{err: err}
			continue
		}
		c.done <- result{rec: recs[0]}
	}
}

// write commits batch in one transaction, assigning seqs from the head stored
// in the DB, and returns the stored records.
func (l *Log) write(batch []*call) ([]Record, error) {
	recs := make([]Record, len(batch))
	var seq uint64
	var hash string
	last := l.lastTime()
	err := l.db.Update(func(tx *bbolt.Tx) error {
		b, err := openBuckets(tx)
		if err != nil {
			return err
		}
		var ok bool
		seq, hash, ok = decodeHead(b.meta.Get(metaHead))
		if !ok {
			return errors.New("audit: corrupt head in meta bucket")
		}
		for i, c := range batch {
			// A record is never stamped earlier than its predecessor (a
			// clock stepped back), so that seq order is time order.
			now := l.now().UTC().Round(0)
			if now.Before(last) {
				now = last
			}
			r, err := l.add(b, c, seq+1, hash, now)
			if err != nil {
				return &callError{index: i, err: err}
			}
			recs[i], seq, hash, last = r, r.Seq, r.Hash, r.Time
		}
		return b.meta.Put(metaHead, encodeHead(seq, hash))
	})
	if err != nil {
		var ce *callError
		if errors.As(err, &ce) {
			return nil, err
		}
		return nil, fmt.Errorf("audit: commit: %w", err)
	}
	l.commits.Add(1)
	l.setHead(seq, hash, last)
	return recs, nil
}

// add runs c's ops and writes its record, stamped now, and index entries as
// seq.
func (l *Log) add(b buckets, c *call, seq uint64, prevHash string, now time.Time) (Record, error) {
	for _, op := range c.ops {
		if err := runOp(op, b.tx); err != nil {
			return Record{}, fmt.Errorf("audit: append op: %w", err)
		}
	}
	if c.internal != nil {
		if err := c.internal(b, seq); err != nil {
			return Record{}, err
		}
	}
	id, err := l.newID()
	if err != nil {
		return Record{}, fmt.Errorf("audit: new id: %w", err)
	}
	if id == "" || len(id) > MaxFieldLen {
		return Record{}, fmt.Errorf("audit: invalid record id %q", id)
	}
	if b.id.Get([]byte(id)) != nil {
		return Record{}, fmt.Errorf("audit: duplicate record id %q", id)
	}
	r := c.rec
	data, err := r.seal(c.members, id, seq, now, prevHash)
	if err != nil {
		return Record{}, err
	}
	if err := b.index(seq, id, r.IssuanceID, r.Caller, r.Cluster, r.Decision, data); err != nil {
		return Record{}, fmt.Errorf("audit: write record %d: %w", seq, err)
	}
	return r, nil
}

// index stores record seq (data, nil when it is already stored) and its
// index entries: by id, by issuance, and its link into the chains of its
// caller and cluster, whose heads move to seq.
func (b buckets) index(seq uint64, id, issuanceID, caller, cluster string, d Decision, data []byte) error {
	key := seqKey(seq)
	if data != nil {
		if err := b.records.Put(key, data); err != nil {
			return err
		}
	}
	if id != "" {
		if err := b.id.Put([]byte(id), key); err != nil {
			return err
		}
	}
	if issuanceID != "" {
		if err := b.issuance.Put(append(appendPrefix(nil, issuanceID), key...), []byte{}); err != nil {
			return err
		}
	}
	k := link{code: decisionCodes[d]}
	var err error
	if k.callerBack, err = b.chain(chainCaller, caller, seq); err != nil {
		return err
	}
	if k.clusterBack, err = b.chain(chainCluster, cluster, seq); err != nil {
		return err
	}
	return b.links.Put(key, k.encode())
}

// chain moves the head of the chain of kind for value to seq and returns
// how far back its previous head lies (0: seq starts the chain, or value is
// empty and not indexed).
func (b buckets) chain(kind byte, value string, seq uint64) (uint64, error) {
	if value == "" {
		return 0, nil
	}
	hk := headKey(kind, value)
	var back uint64
	if v := b.heads.Get(hk); len(v) == 8 {
		if prev := binary.BigEndian.Uint64(v); prev < seq {
			back = seq - prev
		}
	}
	return back, b.heads.Put(hk, seqKey(seq))
}

func runOp(op func(*bbolt.Tx) error, tx *bbolt.Tx) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("op panicked: %v", p)
		}
	}()
	return op(tx)
}

// buckets holds a transaction's audit buckets.
type buckets struct {
	tx                                        *bbolt.Tx
	records, meta, id, issuance, links, heads *bbolt.Bucket
}

func openBuckets(tx *bbolt.Tx) (buckets, error) {
	b := buckets{
		tx:       tx,
		records:  tx.Bucket(bucketRecords),
		meta:     tx.Bucket(bucketMeta),
		id:       tx.Bucket(bucketID),
		issuance: tx.Bucket(bucketIssuance),
		links:    tx.Bucket(bucketLinks),
		heads:    tx.Bucket(bucketHeads),
	}
	for _, x := range []*bbolt.Bucket{b.records, b.meta, b.id, b.issuance, b.links, b.heads} {
		if x == nil {
			return buckets{}, errors.New("audit: bucket missing")
		}
	}
	// Records and links only ever grow at their end, and record ids (UUIDv7,
	// monotonic in a process) almost so: fill pages completely instead of
	// splitting them half full. Issuance ids are taken when a request
	// starts, so their entries land near, not at, the end: bbolt's default.
	b.records.FillPercent = 1.0
	b.links.FillPercent = 1.0
	b.id.FillPercent = 0.95
	return b, nil
}
