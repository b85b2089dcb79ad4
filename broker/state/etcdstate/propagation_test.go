package etcdstate_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/credbroker/credbroker/broker/state"
)

// propagationRounds is how many revocations TestRevocationReachesEveryReplica
// times.
const propagationRounds = 50

// testRevocationReachesEveryReplica: a revocation made through one member
// reaches the indexes of stores on the other members, each one, in order,
// and so does its lift. The time from the Revoke call to each delivery is
// logged (the figure the README reports); the test asserts delivery, not
// its speed.
func testRevocationReachesEveryReplica(t *testing.T, endpoints []string) {
	ctx := context.Background()
	dir := t.TempDir()
	maker := openOn(t, endpoints[:1], dir)
	type arrival struct {
		replica int
		change  state.RevocationChange
		at      time.Time
	}
	arrivals := make(chan arrival, 4*propagationRounds)
	for i := 1; i < len(endpoints); i++ {
		s := openOn(t, endpoints[i:i+1], dir)
		x, err := state.NewRevocationIndex(ctx, s, func(c state.RevocationChange) {
			arrivals <- arrival{i, c, time.Now()}
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(x.Close)
	}
	replicas := len(endpoints) - 1
	var made, lifted []time.Duration
	wait := func(id string, removed bool, start time.Time, into *[]time.Duration) {
		t.Helper()
		deadline := time.After(recoverWithin)
		for seen := 0; seen < replicas; {
			select {
			case a := <-arrivals:
				if a.change.Revocation.ID != id || a.change.Removed != removed {
					t.Fatalf("replica %d got %s (removed %v) while waiting for %s (removed %v): out of order", a.replica, a.change.Revocation.ID, a.change.Removed, id, removed)
				}
				*into = append(*into, a.at.Sub(start))
				seen++
			case <-deadline:
				t.Fatalf("%s (removed %v) reached %d of %d replicas in %s", id, removed, seen, replicas, recoverWithin)
			}
		}
	}
	for i := range propagationRounds {
		id := fmt.Sprintf("r%03d", i)
		start := time.Now()
		if _, err := maker.Revoke(ctx, state.Revocation{ID: id, Kind: state.RevokeIdentity, Target: "spiffe://example.test/ns/a/sa/w" + id, Admin: "unix:uid=0", CreatedAt: epoch}); err != nil {
			t.Fatal(err)
		}
		wait(id, false, start, &made)
		start = time.Now()
		if _, err := maker.LiftRevocation(ctx, id); err != nil {
			t.Fatal(err)
		}
		wait(id, true, start, &lifted)
	}
	t.Logf("revocation made through member 0 reached the watches on the other %d members: %s", replicas, quantiles(made))
	t.Logf("lift reached them: %s", quantiles(lifted))
}

func quantiles(ds []time.Duration) string {
	slices.Sort(ds)
	q := func(p float64) time.Duration { return ds[min(len(ds)-1, int(p*float64(len(ds))))] }
	return fmt.Sprintf("n=%d p50 %s, p99 %s, max %s", len(ds), q(0.5).Round(10*time.Microsecond), q(0.99).Round(10*time.Microsecond), ds[len(ds)-1].Round(10*time.Microsecond))
}
