package broker_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/status"

	"github.com/credbroker/credbroker/broker"
	"github.com/credbroker/credbroker/broker/state"
	"github.com/credbroker/credbroker/broker/state/etcdstate"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/test/etcdtest"
)

// fakeClock is a clock the test moves, safe for concurrent reads.
type fakeClock struct{ ns atomic.Int64 }

func newFakeClock(t time.Time) *fakeClock {
	c := &fakeClock{}
	c.ns.Store(t.UnixNano())
	return c
}

func (c *fakeClock) Now() time.Time      { return time.Unix(0, c.ns.Load()).UTC() }
func (c *fakeClock) Add(d time.Duration) { c.ns.Add(int64(d)) }

// TestUpstreamBudgetAcrossReplicas: two replicas, each with its own etcd
// client, draw from one budget of 50 calls/s (burst 20) on a real etcd
// while time (injected) moves on in uneven steps; at each step every
// goroutine of both takes until refused. With leases of one token the
// fleet gets exactly burst + elapsed×rate; with leases of five, never more
// than burst + rate×d in any span d; every refusal is RATE_LIMITED naming
// the budget, with a retry delay of at most one interval.
func TestUpstreamBudgetAcrossReplicas(t *testing.T) {
	etcd := etcdtest.New(t, 1)
	spec := state.BudgetSpec{Rate: 50, Burst: 20} // a token every 20ms
	for _, lease := range []int{1, 5} {
		t.Run(fmt.Sprint("lease-", lease), func(t *testing.T) {
			prefix := fmt.Sprint("/budget-test-", lease, "/")
			start := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
			clock := newFakeClock(start)
			var replicas []*broker.UpstreamBudget
			for range 2 {
				st, err := etcdstate.Open(context.Background(), etcdstate.Config{Endpoints: etcd.Endpoints(), Options: etcdstate.Options{Prefix: prefix}})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { _ = st.Close() })
				b, err := broker.NewUpstreamBudget("aws-prod", spec, lease, st, clock.Now, broker.NewMetrics(prometheus.NewRegistry()))
				if err != nil {
					t.Fatal(err)
				}
				replicas = append(replicas, b)
			}
			const steps, goroutines = 30, 3
			var at []time.Duration // the time of each step
			var grants []int       // calls let through at each step
			for k := range steps {
				var n atomic.Int64
				var wg sync.WaitGroup
				errs := make(chan error, goroutines*len(replicas))
				for g := range goroutines * len(replicas) {
					b := replicas[g%len(replicas)]
					wg.Add(1)
					go func() {
						defer wg.Done()
						for {
							err := b.Take(context.Background())
							if err == nil {
								n.Add(1)
								continue
							}
							if err := refusedByBudget(err, spec.Interval()); err != nil {
								errs <- err
							}
							return
						}
					}()
				}
				wg.Wait()
				close(errs)
				for err := range errs {
					t.Fatal(err)
				}
				at = append(at, clock.Now().Sub(start))
				grants = append(grants, int(n.Load()))
				clock.Add(time.Duration(k%4+1) * 15 * time.Millisecond)
			}
			total := 0
			for _, g := range grants {
				total += g
			}
			elapsed := at[len(at)-1]
			ideal := spec.Burst + int(elapsed/spec.Interval())
			if lease == 1 && total != ideal {
				t.Fatalf("%d calls let through over %s, want exactly %d", total, elapsed, ideal)
			}
			if total < ideal/2 {
				t.Fatalf("%d calls let through over %s, want near %d", total, elapsed, ideal)
			}
			for i := range at {
				sum := 0
				for j := i; j < len(at); j++ {
					sum += grants[j]
					if limit := spec.Burst + int((at[j]-at[i])/spec.Interval()); sum > limit {
						t.Fatalf("%d calls between %s and %s, over the budget's %d", sum, at[i], at[j], limit)
					}
				}
			}
			t.Logf("lease %d: %d calls over %s (burst + rate×elapsed = %d)", lease, total, elapsed, ideal)
		})
	}
}

// refusedByBudget checks that err is the budget's refusal: RATE_LIMITED,
// naming the budget, with a retry delay within one interval.
func refusedByBudget(err error, interval time.Duration) error {
	st := status.Convert(broker.ToStatus(err))
	if st.Code() != broker.ReasonCode(credbrokerv1.ErrorReason_RATE_LIMITED) {
		return err
	}
	var named, delayed bool
	for _, d := range st.Details() {
		switch d := d.(type) {
		case *errdetails.ErrorInfo:
			named = d.Reason == "RATE_LIMITED" && d.Metadata["budget"] == "aws-prod" && d.Metadata["limit"] == "upstream budget"
		case *errdetails.RetryInfo:
			r := d.GetRetryDelay().AsDuration()
			delayed = r > 0 && r <= interval
		}
	}
	if !named || !delayed {
		return errors.New("refusal does not name the budget or retries outside (0, interval]: " + fmt.Sprint(st.Details()))
	}
	return nil
}

// TestUpstreamBudgetLeaseStaysWithinBurst: a replica that leased five
// tokens and spent one may spend the other four up to four intervals
// later, when the shared bucket has nearly refilled; the bucket is kept
// four tokens smaller for that, so the calls at that instant (the other
// replica draining the bucket, this one spending its lease) stay within
// the burst. Leased tokens are dropped once their time is up.
func TestUpstreamBudgetLeaseStaysWithinBurst(t *testing.T) {
	spec := state.BudgetSpec{Rate: 50, Burst: 20} // a token every 20ms
	var store state.MemoryBudgets
	clock := newFakeClock(time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC))
	newReplica := func() *broker.UpstreamBudget {
		b, err := broker.NewUpstreamBudget("aws-prod", spec, 5, &store, clock.Now, broker.NewMetrics(prometheus.NewRegistry()))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	a, b := newReplica(), newReplica()
	drain := func(r *broker.UpstreamBudget) int {
		n := 0
		for {
			err := r.Take(context.Background())
			if err == nil {
				n++
				continue
			}
			if err := refusedByBudget(err, spec.Interval()); err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	if err := a.Take(context.Background()); err != nil {
		t.Fatal(err)
	}
	clock.Add(79 * time.Millisecond)
	fromB := drain(b)
	fromA := drain(a)
	if fromA != 4 || fromB+fromA > spec.Burst {
		t.Fatalf("at one instant: %d calls from the replica holding a lease (want its 4) and %d from the other; over the burst of %d", fromA, fromB, spec.Burst)
	}

	// A lease's tokens are dropped once (lease-1) intervals have passed.
	clock.Add(time.Hour)
	if err := a.Take(context.Background()); err != nil {
		t.Fatal(err)
	}
	clock.Add(4 * spec.Interval())
	// The shared bucket (16) gave 5 and got 4 back: 15, and nothing held.
	if got := drain(a); got != 15 {
		t.Fatalf("after the lease ended: %d calls, want 15 from the shared bucket (the 4 leased tokens dropped)", got)
	}
}

// TestUpstreamBudgetKnownSpent: Spent refuses, without asking the store,
// only while this replica knows from a refusal that no token frees yet,
// and with the time left; a lease still held is spendable.
func TestUpstreamBudgetKnownSpent(t *testing.T) {
	spec := state.BudgetSpec{Rate: 10, Burst: 2} // a token every 100ms
	var store state.MemoryBudgets
	clock := newFakeClock(time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC))
	b, err := broker.NewUpstreamBudget("aws-prod", spec, 1, &store, clock.Now, broker.NewMetrics(prometheus.NewRegistry()))
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := b.Take(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Spent(); err != nil {
		t.Fatalf("Spent before any refusal: %v", err)
	}
	if err := refusedByBudget(b.Take(context.Background()), spec.Interval()); err != nil {
		t.Fatal(err)
	}
	clock.Add(40 * time.Millisecond)
	err = b.Spent()
	if err := refusedByBudget(err, spec.Interval()); err != nil {
		t.Fatal(err)
	}
	if d := retryDelay(t, broker.ToStatus(err)); d != 60*time.Millisecond {
		t.Fatalf("Spent says retry in %s, want 60ms", d)
	}
	clock.Add(60 * time.Millisecond)
	if err := b.Spent(); err != nil {
		t.Fatalf("Spent once the next token freed: %v", err)
	}
	if err := b.Take(context.Background()); err != nil {
		t.Fatal(err)
	}
}
