package audit

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"testing"

	"go.etcd.io/bbolt"
)

func TestConcurrentAppends(t *testing.T) {
	t.Parallel()
	const goroutines, each = 64, 200
	l, _, _ := tempLog(t, WithNewID(newUUIDv7))
	var wg sync.WaitGroup
	seen := make([][]uint64, goroutines)
	errs := make(chan error, goroutines)
	for g := range goroutines {
		wg.Go(func() {
			for i := range each {
				r, err := l.Append(Record{Caller: fmt.Sprintf("spiffe://td/g%d", g), IssuanceID: fmt.Sprintf("%d-%d", g, i), Decision: DecisionIntent})
				if err != nil {
					errs <- err
					return
				}
				seen[g] = append(seen[g], r.Seq)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	used := make([]bool, goroutines*each+1)
	for g, ss := range seen {
		for i, s := range ss {
			if s == 0 || s > goroutines*each || used[s] {
				t.Fatalf("seq %d out of range or assigned twice", s)
			}
			used[s] = true
			if i > 0 && s <= ss[i-1] {
				t.Fatalf("goroutine %d: seq %d after %d", g, s, ss[i-1])
			}
		}
	}
	mustVerifyOK(t, l, goroutines*each)
	commits := l.commits.Load()
	t.Logf("%d records in %d commits", goroutines*each, commits)
	if commits >= goroutines*each {
		t.Errorf("no group commit: %d records took %d commits", goroutines*each, commits)
	}
	if got, err := l.List(Query{Caller: "spiffe://td/g7"}); err != nil || len(got) != each {
		t.Fatalf("List(g7) = %d records, %v", len(got), err)
	}
}

// blockCommitter starts an append whose op holds the committer inside its
// transaction until the returned release is called.
func blockCommitter(t *testing.T, l *Log) (release func() Record) {
	entered, unblock := make(chan struct{}), make(chan struct{})
	done := make(chan Record, 1)
	go func() {
		r, err := l.AppendWith(Record{Decision: DecisionIntent, Reason: "blocker"}, func(*bbolt.Tx) error {
			close(entered)
			<-unblock
			return nil
		})
		if err != nil {
			t.Error(err)
		}
		done <- r
	}()
	<-entered
	return func() Record { close(unblock); return <-done }
}

// waitQueued spins (no sleeping) until n appends wait for the committer.
func waitQueued(l *Log, n int) {
	for l.queueLen() < n {
		runtime.Gosched()
	}
}

// TestGroupCommit queues appends behind an in-flight commit and checks that
// they are committed together in one transaction, that those whose op fails
// are not stored and get their own error, and that the rest are unaffected.
func TestGroupCommit(t *testing.T) {
	t.Parallel()
	l, db, _ := tempLog(t)
	release := blockCommitter(t, l)
	commitsBefore := l.commits.Load()

	const n = 24
	errBoom := errors.New("boom")
	type outcome struct {
		i   int
		r   Record
		err error
	}
	out := make(chan outcome, n)
	for i := range n {
		go func() {
			op := func(tx *bbolt.Tx) error {
				b, err := tx.CreateBucketIfNotExists([]byte("side"))
				if err != nil {
					return err
				}
				if err := b.Put(fmt.Appendf(nil, "k%d", i), nil); err != nil {
					return err
				}
				if i%5 == 0 {
					return errBoom // after writing, to show the write is undone
				}
				return nil
			}
			r, err := l.AppendWith(Record{Caller: fmt.Sprintf("c%d", i), Decision: DecisionIntent}, op)
			out <- outcome{i, r, err}
		}()
	}
	waitQueued(l, n)
	if r := release(); r.Seq != 1 {
		t.Fatalf("blocker got seq %d", r.Seq)
	}
	stored := map[uint64]bool{}
	for range n {
		o := <-out
		switch {
		case o.i%5 == 0:
			if !errors.Is(o.err, errBoom) || o.r.Seq != 0 {
				t.Errorf("append %d: %+v, %v; want errBoom", o.i, o.r, o.err)
			}
		case o.err != nil:
			t.Errorf("append %d failed beside a failing op: %v", o.i, o.err)
		default:
			stored[o.r.Seq] = true
		}
	}
	const ok = n - (n+4)/5
	for s := uint64(2); s < 2+ok; s++ {
		if !stored[s] {
			t.Fatalf("seqs not contiguous: %v", stored)
		}
	}
	if got := l.commits.Load() - commitsBefore; got != 2 {
		t.Errorf("%d queued appends took %d commits after the blocker's, want 1 shared", n, got-1)
	}
	mustVerifyOK(t, l, 1+ok)
	err := db.View(func(tx *bbolt.Tx) error {
		b := tx.Bucket([]byte("side"))
		for i := range n {
			if (b.Get(fmt.Appendf(nil, "k%d", i)) != nil) != (i%5 != 0) {
				t.Errorf("op write k%d survived = %v", i, i%5 != 0)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestCloseDrainsQueue checks that appends queued before Close are
// committed, and later ones are refused.
func TestCloseDrainsQueue(t *testing.T) {
	t.Parallel()
	l, _, _ := tempLog(t)
	release := blockCommitter(t, l)
	const n = 10
	errs := make(chan error, n)
	for range n {
		go func() {
			_, err := l.Append(Record{Decision: DecisionIntent})
			errs <- err
		}()
	}
	waitQueued(l, n)
	closed := make(chan struct{})
	go func() { _ = l.Close(); close(closed) }()
	for !l.isClosed() {
		runtime.Gosched()
	}
	if _, err := l.Append(Record{Decision: DecisionIntent}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Append during Close = %v, want ErrClosed", err)
	}
	release()
	<-closed
	for range n {
		if err := <-errs; err != nil {
			t.Fatalf("queued append lost on Close: %v", err)
		}
	}
	mustVerifyOK(t, l, 1+n)
}
