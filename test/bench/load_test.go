package bench

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"
)

// load is how hard and how long a round drives a server.
type load struct {
	concurrency int           // closed-loop client goroutines
	round       time.Duration // length of one round
	rounds      int           // measured rounds per variant
	warmup      time.Duration // one unmeasured round per variant first
}

// loadFromEnv reads BENCH_CONCURRENCY, BENCH_ROUND and BENCH_ROUNDS.
func loadFromEnv() (load, error) {
	l := load{concurrency: 32, round: 2 * time.Second, rounds: 5, warmup: 500 * time.Millisecond}
	var err error
	if l.concurrency, err = envInt("BENCH_CONCURRENCY", l.concurrency); err != nil {
		return l, err
	}
	if l.rounds, err = envInt("BENCH_ROUNDS", l.rounds); err != nil {
		return l, err
	}
	if s := os.Getenv("BENCH_ROUND"); s != "" {
		if l.round, err = time.ParseDuration(s); err != nil || l.round <= 0 {
			return l, fmt.Errorf("bench: BENCH_ROUND=%q is not a positive duration", s)
		}
	}
	return l, nil
}

func envInt(name string, def int) (int, error) {
	s := os.Getenv(name)
	if s == "" {
		return def, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 {
		return 0, fmt.Errorf("bench: %s=%q is not a positive integer", name, s)
	}
	return n, nil
}

// result is what one round measured.
type result struct {
	requests int
	elapsed  time.Duration
	latency  []time.Duration // sorted
	// cpu is the process's CPU time over the round (servers and clients) as
	// a fraction of GOMAXPROCS cores: near 1 the round was CPU-bound, well
	// below it the variant was waiting (on the disk, for the audit log).
	cpu float64
}

func (r result) qps() float64 { return float64(r.requests) / r.elapsed.Seconds() }

// percentile returns the p-th percentile latency (0 < p <= 100), nearest rank.
func (r result) percentile(p float64) time.Duration {
	if len(r.latency) == 0 {
		return 0
	}
	rank := int(p/100*float64(len(r.latency))+0.5) - 1
	return r.latency[min(max(rank, 0), len(r.latency)-1)]
}

// round runs concurrency closed-loop clients against t for d: each sends a
// request, waits for the answer and sends the next. Requests in flight when d
// ends are waited for and counted. Any failed request fails the round: a
// benchmark of errors measures nothing.
func round(t *target, concurrency int, d time.Duration) (result, error) {
	return roundFunc(concurrency, d, func(w int) func(context.Context) error {
		client := t.client()
		req := t.request
		if req == nil {
			req = request
		}
		return func(ctx context.Context) error {
			_, err := client.IssueCredential(ctx, req())
			return err
		}
	})
}

// roundFunc is round for any call: worker(w) returns worker w's call.
func roundFunc(concurrency int, d time.Duration, worker func(w int) func(context.Context) error) (result, error) {
	var stop atomic.Bool
	// Bounded in time even if a server stops answering: no call outlives
	// the round by more than a minute.
	bounded, cancel := context.WithTimeout(context.Background(), d+time.Minute)
	defer cancel()
	g, ctx := errgroup.WithContext(bounded)
	lat := make([][]time.Duration, concurrency)
	cpu0 := cpuTime()
	start := time.Now()
	timer := time.AfterFunc(d, func() { stop.Store(true) })
	defer timer.Stop()
	for w := range concurrency {
		call := worker(w)
		g.Go(func() error {
			for !stop.Load() {
				t0 := time.Now()
				if err := call(ctx); err != nil {
					stop.Store(true)
					return fmt.Errorf("bench: request failed: %w", err)
				}
				lat[w] = append(lat[w], time.Since(t0))
			}
			return nil
		})
	}
	err := g.Wait()
	r := result{elapsed: time.Since(start), latency: slices.Concat(lat...)}
	r.cpu = (cpuTime() - cpu0).Seconds() / r.elapsed.Seconds() / float64(runtime.GOMAXPROCS(0))
	r.requests = len(r.latency)
	slices.Sort(r.latency)
	return r, err
}

// cpuTime is the user and system CPU time the process has used so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// median returns the median of xs (the mean of the middle two for an even
// count); xs is not modified.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Sorted(slices.Values(xs))
	if n := len(s); n%2 == 0 {
		return (s[n/2-1] + s[n/2]) / 2
	}
	return s[len(s)/2]
}
