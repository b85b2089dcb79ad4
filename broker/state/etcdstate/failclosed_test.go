package etcdstate_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/credbroker/credbroker/attest/jointoken"
	"github.com/credbroker/credbroker/broker/state"
	"github.com/credbroker/credbroker/broker/state/etcdstate"
	"github.com/credbroker/credbroker/test/etcdtest"
)

var (
	epoch    = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	identity = state.QuotaKey{Kind: state.QuotaIdentity, Name: "spiffe://example.test/ns/a/sa/alice"}
	cluster  = state.QuotaKey{Kind: state.QuotaCluster, Name: "team-a/alpha"}
	charges  = []state.Charge{
		{Key: identity, Quota: state.Quota{Max: 100, Window: time.Hour}},
		{Key: cluster, Quota: state.Quota{Max: 100, Window: time.Hour}},
	}
)

// outageTimeout bounds each operation while etcd is away, so that a refusal
// comes within it; recoverWithin bounds how long the tests wait for etcd to
// serve again.
const (
	outageTimeout = time.Second
	recoverWithin = time.Minute
)

// openWithTimeout opens a Store on endpoints whose operations give up after
// outageTimeout.
func openWithTimeout(t *testing.T, endpoints []string, prefix string) *etcdstate.Store {
	t.Helper()
	s, err := etcdstate.Open(context.Background(), etcdstate.Config{
		Endpoints: endpoints, Options: etcdstate.Options{Prefix: prefix, OpTimeout: outageTimeout},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func usedOf(t *testing.T, s state.Quotas, k state.QuotaKey) int {
	t.Helper()
	u, err := s.Usage(context.Background(), epoch, k)
	if err != nil {
		t.Fatalf("Usage(%s): %v", k, err)
	}
	return u.Used
}

// eventually polls try until it succeeds or recoverWithin has passed.
func eventually(t *testing.T, what string, try func() error) {
	t.Helper()
	deadline := time.Now().Add(recoverWithin)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		err := try()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still failing after %s: %v", what, recoverWithin, err)
		}
		<-tick.C
	}
}

// refusedUnavailable asserts that err is the store's refusal for want of
// etcd: state.ErrUnavailable, and not a decision (no quota refusal, no
// token verdict).
func refusedUnavailable(t *testing.T, what string, err error) {
	t.Helper()
	var ex *state.ExhaustedError
	if !errors.Is(err, state.ErrUnavailable) || errors.As(err, &ex) || errors.Is(err, jointoken.ErrUsed) || errors.Is(err, jointoken.ErrUnknown) {
		t.Fatalf("%s without etcd: err = %v, want state.ErrUnavailable", what, err)
	}
}

// outage checks what a Store does while its etcd cannot decide, given
// stop and restart to take it away and give it back: every operation is
// refused with state.ErrUnavailable within the Store's deadline; a spend in
// flight is applied whole or not at all; the Store's probes stop
// confirming its revocations current; once etcd serves again, the same
// Store (no new client) spends and consumes, a token whose consume failed
// is still usable, the probes confirm again, and the revocation watch has
// resumed.
func outage(t *testing.T, s *etcdstate.Store, p probes, other state.Store, stop func(), restart func() error) {
	ctx := context.Background()
	p.until(t, true)
	if _, err := s.Spend(ctx, epoch, charges); err != nil {
		t.Fatal(err)
	}
	key := jointoken.Key(sha256.Sum256([]byte("outage")))
	tok := jointoken.Token{ID: "outage", Cluster: "team-a/alpha", Node: "worker-1", CreatedAt: epoch, ExpiresAt: epoch.Add(time.Hour)}
	if err := s.CreateJoinToken(ctx, key, tok); err != nil {
		t.Fatal(err)
	}
	index, err := state.NewRevocationIndex(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	defer index.Close()

	stop()
	// A probe under way when etcd went may have confirmed; none after.
	p.until(t, false)
	p.all(t, 2, false)
	_, err = s.Spend(ctx, epoch, charges)
	refusedUnavailable(t, "Spend", err)
	_, err = s.ConsumeJoinToken(ctx, key, "worker-1", epoch)
	refusedUnavailable(t, "ConsumeJoinToken", err)
	_, err = s.GetNode(ctx, "spiffe://example.test/capi/cluster/team-a/alpha/node/worker-1")
	refusedUnavailable(t, "GetNode", err)
	_, err = s.Revoke(ctx, state.Revocation{ID: "r-outage", Kind: state.RevokeCluster, Target: "team-b/beta", Admin: "unix:uid=0", CreatedAt: epoch})
	refusedUnavailable(t, "Revoke", err)

	if err := restart(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "spend after etcd returned", func() error {
		_, err := s.Spend(ctx, epoch, charges)
		return err
	})
	p.until(t, true)
	// The spend refused during the outage may have been committed after
	// all (its answer was lost), but only whole: both keys moved together.
	idUsed, clUsed := usedOf(t, s, identity), usedOf(t, s, cluster)
	if idUsed != clUsed || idUsed < 2 || idUsed > 3 {
		t.Fatalf("after the outage identity used %d, cluster %d; want both 2 (or both 3, had the refused spend committed late)", idUsed, clUsed)
	}
	got, err := s.ConsumeJoinToken(ctx, key, "worker-1", epoch)
	if err != nil && !errors.Is(err, jointoken.ErrUsed) {
		t.Fatalf("consume after the outage: %v", err)
	}
	if err == nil && got.UsedBy != "worker-1" {
		t.Fatalf("consumed %+v", got)
	}
	// A revocation made elsewhere after the outage reaches this Store's
	// index through its resumed watch.
	r := state.Revocation{ID: "r-after", Kind: state.RevokeCluster, Target: "team-c/gamma", Admin: "unix:uid=0", CreatedAt: epoch}
	eventually(t, "revoke on another store", func() error {
		_, err := other.Revoke(ctx, r)
		if errors.Is(err, state.ErrExists) {
			return nil
		}
		return err
	})
	eventually(t, "the revocation reaching this store's index", func() error {
		if _, ok := index.Covering(epoch, "", "", "team-c/gamma"); !ok {
			return errors.New("not covered yet")
		}
		return nil
	})
}

// TestFailsClosedWhileEtcdIsDown: the one member stops and starts again on
// its data.
func TestFailsClosedWhileEtcdIsDown(t *testing.T) {
	t.Parallel() // a stopping member waits out its clients' streams
	c := etcdtest.New(t, 1)
	p := make(probes, 16)
	s := p.open(t, c.Endpoints(), "/outage/")
	other := openWithTimeout(t, c.Endpoints(), "/outage/")
	outage(t, s, p, other, func() { c.Stop(0) }, func() error { return c.Restart(0) })
}

// TestFailsClosedWithoutQuorum: two of three members stop; the Store's
// member is up but cannot decide anything; the two return.
func TestFailsClosedWithoutQuorum(t *testing.T) {
	t.Parallel()
	c := etcdtest.New(t, 3)
	p := make(probes, 16)
	s := p.open(t, []string{c.Endpoint(0)}, "/quorum/")
	other := openWithTimeout(t, []string{c.Endpoint(2)}, "/quorum/")
	outage(t, s, p, other, func() { c.Stop(1); c.Stop(2) }, func() error { return c.Restart(1, 2) })
}

// TestOpenRefusesBadPrefixes: the prefix must end in "/", so that one
// prefix is never the start of another's keys.
func TestOpenRefusesBadPrefixes(t *testing.T) {
	for _, p := range []string{"", "/credbroker"} {
		if s, err := etcdstate.Open(context.Background(), etcdstate.Config{Endpoints: shared, Options: etcdstate.Options{Prefix: p}}); err == nil {
			_ = s.Close()
			t.Errorf("prefix %q accepted", p)
		}
	}
}

// TestPurgeInBatches: a purge of more windows than one transaction takes
// deletes them all, batch after batch, and only them.
func TestPurgeInBatches(t *testing.T) {
	s := openOn(t, shared, t.TempDir())
	ctx := context.Background()
	const ended, live = 95, 3
	for i := range ended + live {
		window := time.Hour
		if i >= ended {
			window = 2 * time.Hour
		}
		k := state.QuotaKey{Kind: state.QuotaIdentity, Name: fmt.Sprintf("spiffe://example.test/w/%03d", i)}
		if _, err := s.Spend(ctx, epoch, []state.Charge{{Key: k, Quota: state.Quota{Max: 1, Window: window}}}); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := s.PurgeQuotas(ctx, epoch.Add(time.Hour)); err != nil || n != ended {
		t.Fatalf("PurgeQuotas = %d, %v; want %d", n, err, ended)
	}
	if n, err := s.PurgeQuotas(ctx, epoch.Add(2*time.Hour)); err != nil || n != live {
		t.Fatalf("second PurgeQuotas = %d, %v; want the %d that were live", n, err, live)
	}
}

// TestSpendFromRememberedValues: a Store starts a spend from the window it
// last saw; when another replica has changed it meanwhile, the outcome is
// the one the current window gives, whether that is a refusal the
// remembered one would not have given, or a spend it would have refused.
func TestSpendFromRememberedValues(t *testing.T) {
	dir := t.TempDir()
	a, b := openOn(t, shared, dir), openOn(t, shared, dir)
	ctx := context.Background()
	c := []state.Charge{{Key: cluster, Quota: state.Quota{Max: 3, Window: time.Hour}}}
	if _, err := a.Spend(ctx, epoch, c); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if _, err := b.Spend(ctx, epoch, c); err != nil {
			t.Fatal(err)
		}
	}
	var ex *state.ExhaustedError
	if _, err := a.Spend(ctx, epoch, c); !errors.As(err, &ex) {
		t.Fatalf("a spend after another replica took the rest: %v, want *ExhaustedError", err)
	}
	if err := b.ResetQuota(ctx, cluster); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Spend(ctx, epoch, c); err != nil {
		t.Fatalf("a spend after another replica reset the window a saw full: %v", err)
	}
	if got := usedOf(t, b, cluster); got != 1 {
		t.Fatalf("used %d after the reset and one spend, want 1", got)
	}
}

// TestContentionIsBounded: a spend that loses its compare-and-swap every
// time (another writer changes the window just before each attempt) gives
// up after a bounded number of attempts with a retriable error
// (ErrContended, state.ErrUnavailable), having spent nothing itself.
func TestContentionIsBounded(t *testing.T) {
	const bound = 32
	ctx := context.Background()
	dir := t.TempDir()
	other := openOn(t, shared, dir)
	attempts := 0
	opts := etcdstate.WithBeforeSwap(etcdstate.Options{Prefix: prefixFor(dir)}, func() {
		attempts++
		if _, err := other.Spend(ctx, epoch, charges); err != nil {
			t.Error(err)
		}
	})
	s, err := etcdstate.Open(ctx, etcdstate.Config{Endpoints: shared, Options: etcdstate.WithMaxAttempts(opts, bound)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	_, err = s.Spend(ctx, epoch, charges)
	if !errors.Is(err, etcdstate.ErrContended) || !errors.Is(err, state.ErrUnavailable) {
		t.Fatalf("spend that always loses: %v, want ErrContended and state.ErrUnavailable", err)
	}
	if attempts != bound || usedOf(t, other, cluster) != attempts || usedOf(t, other, identity) != attempts {
		t.Fatalf("%d attempts; used %d and %d: want %d attempts and every unit the other writer's", attempts, usedOf(t, other, cluster), usedOf(t, other, identity), bound)
	}
}

// TestContentionEndsInADecision: a replica that loses every
// compare-and-swap on a hot quota while another spends it (as a replica
// slower than the others does in a burst) keeps trying, past the 32 lost
// rounds that once made it give up, and once the other has spent the
// quota it decides: a refusal (*state.ExhaustedError), not UNAVAILABLE.
func TestContentionEndsInADecision(t *testing.T) {
	const spendable = 48
	ctx := context.Background()
	dir := t.TempDir()
	other := openOn(t, shared, dir)
	hot := []state.Charge{{Key: cluster, Quota: state.Quota{Max: spendable, Window: time.Hour}}}
	attempts := 0
	opts := etcdstate.WithBeforeSwap(etcdstate.Options{Prefix: prefixFor(dir)}, func() {
		attempts++
		if _, err := other.Spend(ctx, epoch, hot); err != nil {
			t.Errorf("the other writer's spend %d: %v", attempts, err)
		}
	})
	s, err := etcdstate.Open(ctx, etcdstate.Config{Endpoints: shared, Options: opts})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	_, err = s.Spend(ctx, epoch, hot)
	var ex *state.ExhaustedError
	if !errors.As(err, &ex) {
		t.Fatalf("a spend that lost every round until the quota was spent: %v, want *state.ExhaustedError", err)
	}
	if attempts != spendable || usedOf(t, other, cluster) != spendable {
		t.Fatalf("%d attempts, used %d: want %d of each, every unit the other writer's", attempts, usedOf(t, other, cluster), spendable)
	}
}
