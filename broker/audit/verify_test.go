package audit

import (
	"bytes"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.etcd.io/bbolt"
)

// tamper builds a 10-record log at a fresh path, closes it, edits the bbolt
// file directly with edit, and returns the Verify result of a reopened Log.
func tamper(t *testing.T, edit func(t *testing.T, records *bbolt.Bucket)) VerifyResult {
	t.Helper()
	l, db, path := tempLog(t)
	for i := range 10 {
		mustAppend(t, l, genRecord(i))
	}
	mustVerifyOK(t, l, 10)
	_ = l.Close()
	_ = db.Close()

	raw, err := bbolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := raw.Update(func(tx *bbolt.Tx) error { edit(t, tx.Bucket(bucketRecords)); return nil }); err != nil {
		t.Fatal(err)
	}
	if err := raw.Close(); err != nil {
		t.Fatal(err)
	}

	l2, _ := openLog(t, path)
	res, err := l2.Verify()
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	return res
}

func getRecord(t *testing.T, b *bbolt.Bucket, seq uint64) Record {
	t.Helper()
	var r Record
	if err := json.Unmarshal(b.Get(seqKey(seq)), &r); err != nil {
		t.Fatal(err)
	}
	return r
}

func putRecord(t *testing.T, b *bbolt.Bucket, r Record) {
	t.Helper()
	v, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Put(seqKey(r.Seq), v); err != nil {
		t.Fatal(err)
	}
}

// rehash rewrites seq with a changed caller and a hash that matches it.
func rehash(seq uint64) func(t *testing.T, b *bbolt.Bucket) {
	return func(t *testing.T, b *bbolt.Bucket) {
		r := getRecord(t, b, seq)
		r.Caller = "spiffe://td/someone-else"
		h, err := r.ComputeHash()
		if err != nil {
			t.Fatal(err)
		}
		r.Hash = h
		putRecord(t, b, r)
	}
}

func del(seq uint64) func(t *testing.T, b *bbolt.Bucket) {
	return func(t *testing.T, b *bbolt.Bucket) {
		if err := b.Delete(seqKey(seq)); err != nil {
			t.Fatal(err)
		}
	}
}

func TestVerifyDetectsTampering(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name        string
		edit        func(t *testing.T, b *bbolt.Bucket)
		records     uint64
		badSeq      uint64
		badID       string
		problemHead string // prefix of Problem
	}{
		{"edit a field", func(t *testing.T, b *bbolt.Bucket) {
			r := getRecord(t, b, 5)
			r.Decision = DecisionIssued
			putRecord(t, b, r)
		}, 10, 5, "id-000005", "hash mismatch"},
		{"add a member", func(t *testing.T, b *bbolt.Bucket) {
			v := bytes.Replace(b.Get(seqKey(4)), []byte(`{"id"`), []byte(`{"note":"x","id"`), 1)
			if err := b.Put(seqKey(4), v); err != nil {
				t.Fatal(err)
			}
		}, 10, 4, "id-000004", "hash mismatch: stored bytes are not canonical"},
		{"delete a middle record", del(5), 9, 5, "", "missing seq 5"},
		{"delete the first record", del(1), 9, 1, "", "missing seq 1"},
		{"delete the last record", del(10), 9, 10, "", "head mismatch"},
		{"rewrite a record and its hash", rehash(5), 10, 6, "id-000006", "prev_hash does not link"},
		{"rewrite the last record and its hash", rehash(10), 10, 10, "id-000010", "head mismatch"},
		{"garbage record", func(t *testing.T, b *bbolt.Bucket) {
			if err := b.Put(seqKey(3), []byte("{not json")); err != nil {
				t.Fatal(err)
			}
		}, 10, 3, "", "undecodable record"},
		{"record moved to another seq", func(t *testing.T, b *bbolt.Bucket) {
			v := b.Get(seqKey(10))
			if err := b.Put(seqKey(11), bytes.Clone(v)); err != nil {
				t.Fatal(err)
			}
			del(10)(t, b)
		}, 10, 10, "", "missing seq 10"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := tamper(t, tc.edit)
			if res.OK || res.Records != tc.records || res.FirstBadSeq != tc.badSeq || res.FirstBadID != tc.badID ||
				!strings.HasPrefix(res.Problem, tc.problemHead) || res.HeadHash != "" {
				t.Fatalf("Verify = %+v; want records %d, first bad seq %d id %q, problem %q...",
					res, tc.records, tc.badSeq, tc.badID, tc.problemHead)
			}
		})
	}
}

func TestVerifyEmptyAndIntact(t *testing.T) {
	t.Parallel()
	l, _, _ := tempLog(t)
	if res := mustVerifyOK(t, l, 0); res.HeadHash != "" {
		t.Fatalf("empty log HeadHash = %q", res.HeadHash)
	}
	for i := range 3 {
		mustAppend(t, l, genRecord(i))
	}
	_, head := l.Head()
	if res := mustVerifyOK(t, l, 3); res.HeadHash != head || res.FirstBadSeq != 0 || res.Problem != "" {
		t.Fatalf("Verify = %+v, head %q", res, head)
	}
}

// TestVerifyAcrossChunks checks walks longer than one read transaction.
func TestVerifyAcrossChunks(t *testing.T) {
	t.Parallel()
	l, db, _ := tempLog(t)
	const n = 3*exportChunk + 17
	bulkAppend(t, l, n, genRecord)
	mustVerifyOK(t, l, n)
	if got := exportAll(t, l); len(got) != n || got[n-1].Seq != n {
		t.Fatalf("Export returned %d records", len(got))
	}
	const bad = 2*exportChunk + 3
	err := db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketRecords)
		r := getRecord(t, b, bad)
		r.Reason = "edited"
		putRecord(t, b, r)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	res, err := l.Verify()
	if err != nil || res.OK || res.FirstBadSeq != bad || res.Problem != "hash mismatch" || res.Records != n {
		t.Fatalf("Verify = %+v, %v", res, err)
	}
}

func TestVerifyProgress(t *testing.T) {
	l, _, _ := tempLog(t)
	const n = 2*exportChunk + 100
	bulkAppend(t, l, n, genRecord)
	var calls [][2]uint64
	res, err := l.VerifyProgress(func(done, total uint64) error {
		calls = append(calls, [2]uint64{done, total})
		return nil
	})
	if err != nil || !res.OK || res.Records != n {
		t.Fatalf("VerifyProgress = %+v, %v", res, err)
	}
	// One call per full chunk; the result reports the end.
	want := [][2]uint64{{exportChunk, n}, {2 * exportChunk, n}}
	if !slices.Equal(calls, want) {
		t.Fatalf("progress calls %v, want %v", calls, want)
	}
	// An error from progress (a client gone away) stops the walk.
	stop := errors.New("client gone")
	calls = nil
	_, err = l.VerifyProgress(func(done, total uint64) error {
		calls = append(calls, [2]uint64{done, total})
		return stop
	})
	if !errors.Is(err, stop) || len(calls) != 1 {
		t.Fatalf("VerifyProgress with a failing callback: %v after %d calls", err, len(calls))
	}
}

// BenchmarkVerify walks a 100k-record chain, reporting the CPU time it
// takes per record (all cores together) beside the wall-clock rate.
func BenchmarkVerify(b *testing.B) {
	l, _, _ := tempLog(b)
	bulkAppend(b, l, 100_000, genRecord)
	cpu0 := cpuTime(b)
	for b.Loop() {
		if res, err := l.Verify(); err != nil || !res.OK {
			b.Fatal(res, err)
		}
	}
	b.ReportMetric(float64((cpuTime(b)-cpu0).Nanoseconds())/float64(100_000*b.N), "cpu-ns/record")
	b.ReportMetric(float64(100_000*b.N)/b.Elapsed().Seconds(), "records/s")
}

// cpuTime is the process's user and system CPU time so far.
func cpuTime(tb testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
