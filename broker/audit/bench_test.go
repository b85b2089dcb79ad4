package audit

import (
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/bbolt"
)

func reportRate(b *testing.B) {
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
}

func benchRecord() Record {
	return Record{IssuanceID: "0199a1b2-0000-7000-8000-000000000000", Caller: "spiffe://td/ns/capi-system/sa/capa-controller-manager",
		Attestation: "x509-svid", Profile: "capa", Cluster: "default/c1", Issuer: "awssts", Decision: DecisionIntent}
}

// BenchmarkAppendSerial is one caller appending back to back: the latency of
// one durable commit, with no batching delay added.
func BenchmarkAppendSerial(b *testing.B) {
	l, _, _ := tempLog(b, WithNewID(newUUIDv7))
	r := benchRecord()
	for b.Loop() {
		if _, err := l.Append(r); err != nil {
			b.Fatal(err)
		}
	}
	reportRate(b)
}

// BenchmarkAppendParallel is many callers at once: group commit shares each
// fsync among the appends that queued during the previous one.
func BenchmarkAppendParallel(b *testing.B) {
	l, _, _ := tempLog(b, WithNewID(newUUIDv7))
	r := benchRecord()
	b.SetParallelism(32)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := l.Append(r); err != nil {
				b.Error(err)
				return
			}
		}
	})
	reportRate(b)
	b.ReportMetric(float64(b.N)/float64(l.commits.Load()), "records/commit")
}

// BenchmarkDBBatchSerial is the alternative the package avoids: bbolt's
// DB.Batch makes a lone caller wait for MaxBatchDelay before committing.
func BenchmarkDBBatchSerial(b *testing.B) {
	db := openDB(b, filepath.Join(b.TempDir(), "batch.db"))
	var n uint64
	for b.Loop() {
		n++
		err := db.Batch(func(tx *bbolt.Tx) error {
			bk, err := tx.CreateBucketIfNotExists([]byte("x"))
			if err != nil {
				return err
			}
			return bk.Put(seqKey(n), []byte("record"))
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	reportRate(b)
}

// BenchmarkList runs filtered queries over a 100k-record log.
func BenchmarkList(b *testing.B) {
	l, _, _ := tempLog(b)
	bulkAppend(b, l, 100_000, func(i int) Record {
		r := genRecord(i)
		r.Caller = fmt.Sprintf("spiffe://td/caller-%d", i%100)
		r.Cluster = fmt.Sprintf("ns/cluster-%d", i%50)
		return r
	})
	for _, q := range []Query{
		{Limit: 50},
		{Caller: "spiffe://td/caller-42", Limit: 50},
		{Caller: "spiffe://td/caller-42"}, // all 1000
		{Cluster: "ns/cluster-7", Decision: DecisionDenied, Limit: 50},
	} {
		b.Run(fmt.Sprintf("caller=%q,cluster=%q,decision=%q,limit=%d", q.Caller, q.Cluster, q.Decision, q.Limit), func(b *testing.B) {
			for b.Loop() {
				if _, err := l.List(q); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// issuanceRecords returns the records of n local issuances as the broker
// writes them: one issued record each (with its token's jti and expiry),
// from 100 callers over 50 clusters, each with its own UUIDv7 issuance id.
func issuanceRecords(tb testing.TB, n int) []Record {
	tb.Helper()
	out := make([]Record, n)
	for i := range out {
		id, err := newUUIDv7()
		if err != nil {
			tb.Fatal(err)
		}
		out[i] = Record{IssuanceID: id, Caller: fmt.Sprintf("spiffe://example.test/ns/capi-system/sa/capa-controller-manager-%d", i%100),
			Attestation: "x509-svid", Profile: "capa-token", Cluster: fmt.Sprintf("capi-prod/workload-%d", i%50), Issuer: "local",
			Decision: DecisionIssued, TTL: 5 * time.Minute, ExpiresAt: epoch.Add(5 * time.Minute), UpstreamRef: id}
	}
	return out
}

// BenchmarkAppendIssued is 32 callers appending the records of local
// issuances, as the broker does under load: the cost of one record, in
// time and in bytes of database file.
func BenchmarkAppendIssued(b *testing.B) {
	// The broker's bbolt options (boltstate.Options, which imports this
	// package): no freelist sync, map freelist.
	db, err := bbolt.Open(filepath.Join(b.TempDir(), "audit.db"), 0o600, &bbolt.Options{NoFreelistSync: true, FreelistType: bbolt.FreelistMapType, InitialMmapSize: 1 << 30})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { db.Close() })
	l, err := Open(db, WithNewID(newUUIDv7))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { l.Close() })
	recs := issuanceRecords(b, 4096)
	var next atomic.Uint64
	size0 := fileSize(b, db)
	b.SetParallelism(16)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := l.Append(recs[next.Add(1)%uint64(len(recs))]); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	reportRate(b)
	b.ReportMetric(float64(b.N)/float64(l.commits.Load()), "records/commit")
	b.ReportMetric(float64(fileSize(b, db)-size0)/float64(b.N), "bytes/record")
}

func fileSize(tb testing.TB, db *bbolt.DB) int64 {
	tb.Helper()
	var size int64
	if err := db.View(func(tx *bbolt.Tx) error { size = tx.Size(); return nil }); err != nil {
		tb.Fatal(err)
	}
	return size
}

// BenchmarkListByCaller is `issuances list --caller` (the newest 100 issued
// records of one of 100 callers) on logs of 1k and 1M records: following a
// caller's chain costs the same however long the log is.
func BenchmarkListByCaller(b *testing.B) {
	for _, n := range []int{1_000, 1_000_000} {
		b.Run(fmt.Sprintf("records=%d", n), func(b *testing.B) {
			l, _, _ := tempLog(b)
			bulkAppend(b, l, n, func(i int) Record {
				r := genRecord(i)
				r.Caller = fmt.Sprintf("spiffe://td/caller-%d", i%100)
				r.Decision = DecisionIssued
				return r
			})
			q := Query{Caller: "spiffe://td/caller-42", Decision: DecisionIssued, Limit: 100}
			for b.Loop() {
				if _, err := l.List(q); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// oldLog builds a log of n records stamped an hour before the clock it
// returns reads, with benchRecord's fields and distinct issuances.
func oldLog(b *testing.B, n int) (*Log, func() time.Time) {
	b.Helper()
	var now atomic.Int64
	now.Store(epoch.UnixNano())
	clock := func() time.Time { return time.Unix(0, now.Load()).UTC() }
	l, _, _ := tempLog(b, WithClock(clock), WithNewID(newUUIDv7))
	bulkAppend(b, l, n, func(i int) Record {
		r := benchRecord()
		r.IssuanceID = fmt.Sprintf("0199a1b2-0000-7000-8000-%012d", i)
		r.Decision = DecisionIssued
		return r
	})
	now.Store(epoch.Add(time.Hour).UnixNano())
	return l, clock
}

// BenchmarkPrune is the throughput of pruning with each batch size: every
// batch is one transaction (deleting the records and their index entries)
// with its checkpoint record.
func BenchmarkPrune(b *testing.B) {
	const n = 20_000
	for _, batch := range []int{250, 1000, 4000} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			var pruned uint64
			for b.Loop() {
				b.StopTimer()
				l, _ := oldLog(b, n)
				b.StartTimer()
				res, err := l.Prune(PruneOptions{Before: epoch.Add(time.Minute), Batch: batch})
				if err != nil || res.Pruned != n {
					b.Fatalf("Prune = %d, %v", res.Pruned, err)
				}
				pruned += res.Pruned
			}
			b.ReportMetric(float64(pruned)/b.Elapsed().Seconds(), "pruned/s")
		})
	}
}

// BenchmarkPruneConcurrentAppend measures what a prune costs the appends
// that run beside it: 8 callers append back to back while 50,000 old records
// are pruned (batch=0: nobody prunes, the baseline), and the appends'
// latency percentiles are reported.
func BenchmarkPruneConcurrentAppend(b *testing.B) {
	const old, appenders, perAppender = 50_000, 8, 300
	for _, batch := range []int{0, 250, 1000, 4000} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			var lat []time.Duration
			var mu sync.Mutex
			for b.Loop() {
				b.StopTimer()
				l, _ := oldLog(b, old)
				b.StartTimer()
				pruned := make(chan error, 1)
				go func() {
					if batch == 0 {
						pruned <- nil
						return
					}
					_, err := l.Prune(PruneOptions{Before: epoch.Add(time.Minute), Batch: batch})
					pruned <- err
				}()
				var wg sync.WaitGroup
				for range appenders {
					wg.Add(1)
					go func() {
						defer wg.Done()
						mine := make([]time.Duration, 0, perAppender)
						for range perAppender {
							start := time.Now()
							if _, err := l.Append(benchRecord()); err != nil {
								b.Error(err)
								return
							}
							mine = append(mine, time.Since(start))
						}
						mu.Lock()
						lat = append(lat, mine...)
						mu.Unlock()
					}()
				}
				wg.Wait()
				if err := <-pruned; err != nil {
					b.Fatal(err)
				}
			}
			slices.Sort(lat)
			pct := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))].Microseconds()) }
			b.ReportMetric(pct(0.5), "p50-µs")
			b.ReportMetric(pct(0.99), "p99-µs")
			b.ReportMetric(pct(1), "max-µs")
		})
	}
}
