package etcdstate_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/credbroker/credbroker/broker/state"
	"github.com/credbroker/credbroker/broker/state/etcdstate"
	"github.com/credbroker/credbroker/test/etcdtest"
)

// probes records what a Store's revocation probes found.
type probes chan bool

// open opens a Store on endpoints that probes every 10ms into p.
func (p probes) open(t *testing.T, endpoints []string, prefix string) *etcdstate.Store {
	t.Helper()
	opts := etcdstate.WithProbed(etcdstate.Options{Prefix: prefix, OpTimeout: outageTimeout, ProbeInterval: 10 * time.Millisecond},
		func(confirmed bool) {
			select {
			case p <- confirmed:
			default: // the test is not listening
			}
		})
	s, err := etcdstate.Open(context.Background(), etcdstate.Config{Endpoints: endpoints, Options: opts})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// next returns the next probe's finding.
func (p probes) next(t *testing.T) bool {
	t.Helper()
	select {
	case c := <-p:
		return c
	case <-time.After(recoverWithin):
		t.Fatalf("no probe in %s", recoverWithin)
		return false
	}
}

// until reads probes until one found want.
func (p probes) until(t *testing.T, want bool) {
	t.Helper()
	deadline := time.Now().Add(recoverWithin)
	for p.next(t) != want {
		if time.Now().After(deadline) {
			t.Fatalf("no probe found %v in %s", want, recoverWithin)
		}
	}
}

// all asserts that the next n probes all found want.
func (p probes) all(t *testing.T, n int, want bool) {
	t.Helper()
	for i := range n {
		if got := p.next(t); got != want {
			t.Fatalf("probe %d after the change found %v, want %v", i+1, got, want)
		}
	}
}

// TestProbeConfirmsOnlyWhatTheWatchDelivered: while a revocation made on
// another Store has not been delivered by this Store's watch (its watcher
// is held), no probe confirms the revocations current; once delivered, the
// next ones do.
func TestProbeConfirmsOnlyWhatTheWatchDelivered(t *testing.T) {
	// A prefix of this run's own: the shared etcd outlives the run, and a
	// run again (-count) must not find its revocation already made.
	prefix := prefixFor(t.TempDir())
	p := make(probes, 16)
	s := p.open(t, shared, prefix)
	maker, err := etcdstate.Open(context.Background(), etcdstate.Config{Endpoints: shared, Options: etcdstate.Options{Prefix: prefix}})
	if err != nil {
		t.Fatal(err)
	}
	defer maker.Close()

	release := make(chan struct{})
	var once sync.Once
	unblock := func() { once.Do(func() { close(release) }) }
	defer unblock()
	cancel := s.WatchRevocations(func(c state.RevocationChange) {
		if c.Revocation.ID == "r-held" {
			<-release
		}
	})
	defer cancel()

	p.until(t, true)
	if _, err := maker.Revoke(context.Background(), state.Revocation{ID: "r-held", Kind: state.RevokeCluster, Target: "team-a/alpha", Admin: "unix:uid=0", CreatedAt: epoch}); err != nil {
		t.Fatal(err)
	}
	// A probe under way when the revocation committed may still confirm;
	// every one after the first that does not must not either.
	p.until(t, false)
	p.all(t, 3, false)
	unblock()
	p.until(t, true)
}

// TestWatchRelistsAfterCompaction: a Store cut off from etcd while
// revocations are made and lifted, and the history compacted past what its
// watch delivered, cannot resume its watch there; it lists afresh and its
// index ends up with exactly what etcd holds (the lifted one gone, the new
// one in), and the probes confirm it current again.
func TestWatchRelistsAfterCompaction(t *testing.T) {
	ctx := context.Background()
	c := etcdtest.New(t, 1)
	p := make(probes, 16)
	s := p.open(t, c.Endpoints(), "/relist/")
	other := openWithTimeout(t, []string{c.DirectEndpoint(0)}, "/relist/")
	x, err := state.NewRevocationIndex(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	defer x.Close()
	rev := func(id, cluster string) state.Revocation {
		return state.Revocation{ID: id, Kind: state.RevokeCluster, Target: cluster, Admin: "unix:uid=0", CreatedAt: epoch}
	}
	if _, err := other.Revoke(ctx, rev("r1", "team-a/alpha")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "r1 in the index", func() error {
		if _, ok := x.Covering(epoch, "", "", "team-a/alpha"); !ok {
			return errors.New("not yet")
		}
		return nil
	})

	c.Disconnect(0)
	p.until(t, false)
	if _, err := other.LiftRevocation(ctx, "r1"); err != nil {
		t.Fatal(err)
	}
	if _, err := other.Revoke(ctx, rev("r2", "team-b/beta")); err != nil {
		t.Fatal(err)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{c.DirectEndpoint(0)}, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	head, err := cli.Get(ctx, "/relist/")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Compact(ctx, head.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}
	c.Reconnect(0)

	eventually(t, "the index after the relist", func() error {
		_, lifted := x.Covering(epoch, "", "", "team-a/alpha")
		_, made := x.Covering(epoch, "", "", "team-b/beta")
		if lifted || !made {
			return fmt.Errorf("r1 covered %v (want false), r2 covered %v (want true)", lifted, made)
		}
		return nil
	})
	if x.Len() != 1 {
		t.Fatalf("index holds %d revocations, want 1", x.Len())
	}
	p.until(t, true)
}

// TestProbeDatesConfirmationsWhenSent: across an outage (the member cut off
// long enough for probes to wait on it, then back), every confirmation is
// dated after the previous one was reported: a probe is dated when it asks
// etcd, never by a tick the ticker held while the previous probe waited
// out the outage, which would date a confirmation back into the outage and
// make a replica that just recovered look stale again.
func TestProbeDatesConfirmationsWhenSent(t *testing.T) {
	c := etcdtest.New(t, 1)
	type confirmation struct{ asOf, reported time.Time }
	var mu sync.Mutex
	var got []confirmation
	p := make(probes, 16)
	opts := etcdstate.WithProbed(etcdstate.Options{Prefix: "/dated/", OpTimeout: outageTimeout, ProbeInterval: 10 * time.Millisecond,
		OnCurrent: func(asOf time.Time) {
			mu.Lock()
			got = append(got, confirmation{asOf, time.Now()})
			mu.Unlock()
		}},
		func(confirmed bool) {
			select {
			case p <- confirmed:
			default:
			}
		})
	s, err := etcdstate.Open(context.Background(), etcdstate.Config{Endpoints: c.Endpoints(), Options: opts})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	p.until(t, true)
	c.Disconnect(0)
	// Probes made before the cut, or under way across it, may still
	// confirm (and wait in p); every one after the first that does not
	// must not either.
	p.until(t, false)
	p.all(t, 3, false)
	c.Reconnect(0)
	p.until(t, true)
	p.all(t, 5, true)

	mu.Lock()
	defer mu.Unlock()
	for i := 1; i < len(got); i++ {
		if got[i].asOf.Before(got[i-1].reported) {
			t.Fatalf("confirmation %d of %d dated %s, before the previous one was reported (%s)", i+1, len(got), got[i].asOf.Format(time.StampMicro), got[i-1].reported.Format(time.StampMicro))
		}
	}
}
