package statetest

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/credbroker/credbroker/attest/jointoken"
	"github.com/credbroker/credbroker/broker/state"
)

// newToken returns a key and a token for cluster team-a/alpha bound to node
// ("" for none), created at epoch+created, living ttl. Keys are derived
// from name so that tests can refer to them again.
func newToken(name, node string, created, ttl time.Duration) (jointoken.Key, jointoken.Token) {
	key := jointoken.Key(sha256.Sum256([]byte("statetest " + name)))
	return key, jointoken.Token{
		ID:        fmt.Sprintf("%x", key[:8]),
		Cluster:   "team-a/alpha",
		Node:      node,
		CreatedAt: epoch.Add(created),
		ExpiresAt: epoch.Add(created + ttl),
	}
}

func mustCreate(t *testing.T, s state.JoinTokens, key jointoken.Key, tok jointoken.Token) {
	t.Helper()
	if err := s.CreateJoinToken(ctx, key, tok); err != nil {
		t.Fatalf("CreateJoinToken(%s): %v", tok.ID, err)
	}
}

// refused asserts that a consume failed with want and returned the stored
// token, unchanged (not used).
func refused(t *testing.T, got jointoken.Token, err, want error, stored jointoken.Token) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("err = %v, want %v", err, want)
	}
	if !reflect.DeepEqual(got, stored) {
		t.Fatalf("refused consume returned %+v, want the stored token %+v", got, stored)
	}
}

// testJoinToken: a token is consumed once; a replay is ErrUsed, a late
// attempt ErrExpired, an unknown key ErrUnknown; the list shows them all.
func testJoinToken(t *testing.T, h Harness) {
	s := open(t, h)
	key, tok := newToken("a", "worker-1", 0, 10*time.Minute)
	mustCreate(t, s, key, tok)
	if err := s.CreateJoinToken(ctx, key, tok); !errors.Is(err, state.ErrExists) {
		t.Fatalf("second create under one key: err = %v, want ErrExists", err)
	}
	if _, err := s.ConsumeJoinToken(ctx, jointoken.Key{1}, "worker-1", epoch); !errors.Is(err, jointoken.ErrUnknown) {
		t.Fatalf("unknown key: err = %v, want ErrUnknown", err)
	}

	now := epoch.Add(time.Minute)
	got, err := s.ConsumeJoinToken(ctx, key, "", now)
	if err != nil {
		t.Fatalf("consume: %v", err)
	}
	used := tok
	used.UsedAt, used.UsedBy = now, "worker-1"
	if !reflect.DeepEqual(got, used) {
		t.Fatalf("consumed token %+v, want %+v", got, used)
	}
	got, err = s.ConsumeJoinToken(ctx, key, "worker-1", now.Add(time.Second))
	refused(t, got, err, jointoken.ErrUsed, used)

	key2, tok2 := newToken("b", "", time.Minute, 10*time.Minute)
	mustCreate(t, s, key2, tok2)
	// ExpiresAt itself is too late.
	got, err = s.ConsumeJoinToken(ctx, key2, "worker-2", tok2.ExpiresAt)
	refused(t, got, err, jointoken.ErrExpired, tok2)

	list, err := s.ListJoinTokens(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := []jointoken.Token{used, tok2}; !reflect.DeepEqual(list, want) {
		t.Fatalf("list = %+v, want %+v", list, want)
	}
}

// testJoinTokenBinding: attempts that cannot succeed leave the token for
// the rightful node.
func testJoinTokenBinding(t *testing.T, h Harness) {
	s := open(t, h)
	key, tok := newToken("bound", "worker-1", 0, time.Hour)
	mustCreate(t, s, key, tok)
	got, err := s.ConsumeJoinToken(ctx, key, "intruder", epoch)
	refused(t, got, err, jointoken.ErrWrongNode, tok)
	if got, err = s.ConsumeJoinToken(ctx, key, "worker-1", epoch); err != nil || got.UsedBy != "worker-1" {
		t.Fatalf("the rightful node after a wrong attempt: %+v, %v", got, err)
	}

	key, tok = newToken("unbound", "", 0, time.Hour)
	mustCreate(t, s, key, tok)
	got, err = s.ConsumeJoinToken(ctx, key, "", epoch)
	refused(t, got, err, jointoken.ErrNoNode, tok)
	if got, err = s.ConsumeJoinToken(ctx, key, "worker-7", epoch); err != nil || got.UsedBy != "worker-7" || got.Node != "" {
		t.Fatalf("an unbound token names its node on use: %+v, %v", got, err)
	}
}

// testJoinTokenConcurrent: of many concurrent consumes of one token (spread
// over the replicas, if any) exactly one succeeds; all others see ErrUsed.
func testJoinTokenConcurrent(t *testing.T, h Harness) {
	stores := racers(t, h)
	key, tok := newToken("race", "", 0, time.Hour)
	mustCreate(t, stores[0], key, tok)
	const goroutines = 32
	var wg sync.WaitGroup
	start := make(chan struct{})
	results := make(chan error, goroutines)
	for g := range goroutines {
		s := stores[g%len(stores)]
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			_, err := s.ConsumeJoinToken(ctx, key, fmt.Sprintf("node-%d", g), epoch.Add(time.Minute))
			results <- err
		}()
	}
	close(start)
	wg.Wait()
	close(results)
	wins := 0
	for err := range results {
		switch {
		case err == nil:
			wins++
		case !errors.Is(err, jointoken.ErrUsed):
			t.Errorf("loser: err = %v, want ErrUsed", err)
		}
	}
	if wins != 1 {
		t.Fatalf("%d consumes of one token succeeded, want exactly 1", wins)
	}
}

// testJoinTokenPurge: expired tokens go, used or not; the rest stay.
func testJoinTokenPurge(t *testing.T, h Harness) {
	s := open(t, h)
	k1, t1 := newToken("short", "n1", 0, time.Minute)
	k2, t2 := newToken("short-used", "n2", 0, time.Minute)
	k3, t3 := newToken("long", "n3", 0, time.Hour)
	for _, c := range []struct {
		k jointoken.Key
		t jointoken.Token
	}{{k1, t1}, {k2, t2}, {k3, t3}} {
		mustCreate(t, s, c.k, c.t)
	}
	if _, err := s.ConsumeJoinToken(ctx, k2, "", epoch); err != nil {
		t.Fatal(err)
	}
	if n, err := s.PurgeJoinTokens(ctx, epoch.Add(time.Minute-time.Nanosecond)); err != nil || n != 0 {
		t.Fatalf("purge before expiry = %d, %v; want 0", n, err)
	}
	if n, err := s.PurgeJoinTokens(ctx, epoch.Add(time.Minute)); err != nil || n != 2 {
		t.Fatalf("purge at expiry = %d, %v; want 2", n, err)
	}
	if _, err := s.ConsumeJoinToken(ctx, k2, "", epoch); !errors.Is(err, jointoken.ErrUnknown) {
		t.Fatalf("replay of a purged token: err = %v, want ErrUnknown", err)
	}
	list, err := s.ListJoinTokens(ctx)
	if err != nil || !reflect.DeepEqual(list, []jointoken.Token{t3}) {
		t.Fatalf("after purge: %+v, %v; want only the long-lived token", list, err)
	}
}
