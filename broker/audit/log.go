package audit

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"go.etcd.io/bbolt"
)

// ErrNotFound is returned by Get when no record has the given ID.
var ErrNotFound = errors.New("audit: record not found")

// ErrPrunedDuringExport is returned by Export when records it was about to
// export were pruned meanwhile (an export slower than the retention, or
// started just before a prune): the export would have a gap there.
var ErrPrunedDuringExport = errors.New("audit: records pruned while being exported")

// ErrReplicaMismatch is returned by Open when WithReplica names another
// replica than the one the database's chain belongs to.
var ErrReplicaMismatch = errors.New("audit: the database's chain belongs to another replica")

// ErrClosed is returned by Append after Close.
var ErrClosed = errors.New("audit: log is closed")

// Log is the audit log. It is safe for concurrent use. Its methods other than
// Append keep working after Close, as long as the bbolt DB is open.
type Log struct {
	db    *bbolt.DB
	now   func() time.Time
	newID func() (string, error)

	// replica names the chain (audit.meta "replica"); strict: Open fails
	// when the database names another.
	replica string
	strict  bool

	mu      sync.Mutex
	queue   []*call // appends waiting for the committer
	closed  bool
	wake    chan struct{} // capacity 1: "the queue may be non-empty"
	stopped chan struct{} // closed when the committer has drained and exited

	headMu   sync.RWMutex
	headSeq  uint64
	headHash string
	headTime time.Time     // Time of the last record: no record is stamped earlier
	advanced chan struct{} // closed, and replaced, whenever the head moves

	// pruneMu: Prune holds it, one at a time; Verify holds it for reading
	// across its chunked walk, which records deleted between two chunks
	// would break.
	pruneMu sync.RWMutex

	commits     atomic.Uint64 // committed write transactions (tests)
	recordReads atomic.Uint64 // records fetched by List (tests)
}

// Option configures Open.
type Option func(*Log)

// WithClock sets the clock that stamps Record.Time. The default is time.Now.
func WithClock(now func() time.Time) Option {
	return func(l *Log) { l.now = now }
}

// WithNewID sets the generator of record IDs. The default is a UUIDv7.
// Generated IDs must be unique; Append fails a record whose ID is taken.
func WithNewID(newID func() (string, error)) Option {
	return func(l *Log) { l.newID = newID }
}

// WithReplica names the replica whose chain this is; every record carries
// it (Record.Replica), so that the chains of several replicas, exported and
// merged, verify each on its own (VerifyExport). The first Open of a
// database stores the id; an Open naming another fails with
// ErrReplicaMismatch: a chain keeps one name, or a merged export would
// show it as two chains, the second one starting mid-way.
func WithReplica(id string) Option {
	return func(l *Log) { l.replica, l.strict = id, true }
}

// WithDefaultReplica is WithReplica for an id the operator did not choose
// (the host name): it names a database that has no replica id yet, and
// yields to the one a database already has, so that a chain keeps its name
// when its volume moves to another host.
func WithDefaultReplica(id string) Option {
	return func(l *Log) { l.replica, l.strict = id, false }
}

func newUUIDv7() (string, error) {
	id, err := uuid.NewV7()
	if err != nil {
		return "", fmt.Errorf("audit: new id: %w", err)
	}
	return id.String(), nil
}

// Open creates the audit buckets in db if needed, loads the chain head and
// starts the committer goroutine; call Close to stop it. The Log does not own
// db: close db after the Log. Open fails if db has NoSync set, because Append
// would then return before records are durable.
func Open(db *bbolt.DB, opts ...Option) (*Log, error) {
	if db == nil {
		return nil, errors.New("audit: nil db")
	}
	if db.NoSync {
		return nil, errors.New("audit: db has NoSync set; records would not be durable")
	}
	l := &Log{
		db:      db,
		now:     time.Now,
		newID:   newUUIDv7,
		wake:    make(chan struct{}, 1),
		stopped: make(chan struct{}),
	}
	for _, o := range opts {
		o(l)
	}
	err := db.Update(func(tx *bbolt.Tx) error {
		for _, name := range allBuckets {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return fmt.Errorf("create bucket %s: %w", name, err)
			}
		}
		seq, hash, ok := decodeHead(tx.Bucket(bucketMeta).Get(metaHead))
		if !ok {
			return errors.New("corrupt head in meta bucket")
		}
		l.headSeq, l.headHash = seq, hash
		if err := l.loadReplica(tx.Bucket(bucketMeta)); err != nil {
			return err
		}
		// The floor for the next record's time. A last record whose time
		// cannot be read leaves none: Verify names that record.
		if _, v := tx.Bucket(bucketRecords).Cursor().Last(); v != nil {
			if t, err := recordTime(v); err == nil {
				l.headTime = t
			}
		}
		return nil
	})
	if err == nil {
		err = upgrade(db)
	}
	if err != nil {
		return nil, fmt.Errorf("audit: open: %w", err)
	}
	go l.run()
	return l, nil
}

// loadReplica settles the chain's replica id with the one stored in meta:
// stores it on first use, adopts the stored one, or refuses another.
func (l *Log) loadReplica(meta *bbolt.Bucket) error {
	if len(l.replica) > MaxFieldLen || !utf8.ValidString(l.replica) {
		return fmt.Errorf("replica id %q: at most %d bytes of UTF-8", l.replica, MaxFieldLen)
	}
	stored := meta.Get(metaReplica)
	switch {
	case stored == nil && l.replica == "":
	case stored == nil:
		return meta.Put(metaReplica, []byte(l.replica))
	case l.strict && string(stored) != l.replica:
		return fmt.Errorf("%w: it is %q, the configuration says %q", ErrReplicaMismatch, stored, l.replica)
	default:
		l.replica = string(stored)
	}
	return nil
}

// Replica returns the replica id the chain's records carry ("" when none
// was given to a database without one).
func (l *Log) Replica() string { return l.replica }

// Close makes further Appends fail with ErrClosed, waits for queued appends
// to be committed and stops the committer goroutine. It does not close the
// bbolt DB. Close is idempotent and always returns nil.
func (l *Log) Close() error {
	l.mu.Lock()
	l.closed = true
	l.mu.Unlock()
	l.signal()
	<-l.stopped
	return nil
}

// DB returns the database the Log writes to, so that state committed with
// its records (AppendWith) can be checked to live in the same file.
func (l *Log) DB() *bbolt.DB { return l.db }

// Commits returns how many write transactions the Log has committed: with
// the number of records appended, it shows how well group commit batches.
func (l *Log) Commits() uint64 { return l.commits.Load() }

// Head returns the seq and hash of the last record committed through this
// Log (0 and "" for an empty log).
func (l *Log) Head() (seq uint64, hash string) {
	l.headMu.RLock()
	defer l.headMu.RUnlock()
	return l.headSeq, l.headHash
}

// lastTime returns the Time of the last record committed.
func (l *Log) lastTime() time.Time {
	l.headMu.RLock()
	defer l.headMu.RUnlock()
	return l.headTime
}

func (l *Log) setHead(seq uint64, hash string, last time.Time) {
	l.headMu.Lock()
	l.headSeq, l.headHash, l.headTime = seq, hash, last
	if l.advanced != nil {
		close(l.advanced)
		l.advanced = nil
	}
	l.headMu.Unlock()
}

// Advanced returns a channel that is closed once the chain grows past seq
// (at once if it already has). Followers of the log, such as a streaming
// export, wait on it instead of polling.
func (l *Log) Advanced(seq uint64) <-chan struct{} {
	l.headMu.Lock()
	defer l.headMu.Unlock()
	if l.headSeq > seq {
		done := make(chan struct{})
		close(done)
		return done
	}
	if l.advanced == nil {
		l.advanced = make(chan struct{})
	}
	return l.advanced
}
