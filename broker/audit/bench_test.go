package audit

import (
	"fmt"
	"path/filepath"
	"testing"

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
