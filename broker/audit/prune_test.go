package audit

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/credbroker/credbroker/test/fakeclock"
)

// agedLog returns a log of old records at epoch followed by recent ones an
// hour later, on a clock the test moves.
func agedLog(t *testing.T, old, recent int) (*Log, *bbolt.DB, string, *fakeclock.Clock) {
	t.Helper()
	clock := fakeclock.New(epoch)
	l, db, path := tempLog(t, WithClock(clock.Now))
	bulkAppend(t, l, old, genRecord)
	clock.Advance(time.Hour)
	bulkAppend(t, l, recent, func(i int) Record { return genRecord(old + i) })
	return l, db, path, clock
}

// cutoff is a prune bound between the old and the recent records.
var cutoff = epoch.Add(30 * time.Minute)

// TestPruneThenVerify: pruning the old records in batches leaves a chain
// that verifies from the newest checkpoint, with no index entry left for a
// pruned record, and lists, lookups and exports that see only what is kept.
func TestPruneThenVerify(t *testing.T) {
	l, db, _, _ := agedLog(t, 2500, 500)
	res, err := l.Prune(PruneOptions{Before: cutoff, Batch: 1000})
	if err != nil {
		t.Fatal(err)
	}
	if res.Pruned != 2500 || len(res.Checkpoints) != 3 {
		t.Fatalf("Prune = %d records in %d checkpoints, want 2500 in 3 (batches of 1000)", res.Pruned, len(res.Checkpoints))
	}
	cp := res.Checkpoints[2]
	if cp.Decision != DecisionCheckpoint || cp.Seq != 3003 || cp.Checkpoint.FromSeq != 2001 || cp.Checkpoint.ThroughSeq != 2500 ||
		cp.Checkpoint.Count != 500 || !cp.Checkpoint.FirstTime.Equal(epoch) || !cp.Checkpoint.LastTime.Equal(epoch) {
		t.Fatalf("last checkpoint = %+v %+v", cp, cp.Checkpoint)
	}
	v := mustVerifyOK(t, l, 503)
	if v.FirstSeq != 2501 || v.PrunedThrough != 2500 || v.CheckpointSeq != 3003 || v.HeadSeq != 3003 {
		t.Fatalf("Verify = %+v", v)
	}
	// The first record kept links to the hash the checkpoint states.
	first := mustGetSeq(t, l, 2501)
	if first.PrevHash != cp.Checkpoint.ThroughHash {
		t.Fatalf("record 2501 links to %s, the checkpoint states %s", first.PrevHash, cp.Checkpoint.ThroughHash)
	}

	// No index entry names a pruned seq.
	err = db.View(func(tx *bbolt.Tx) error {
		b, _ := openBuckets(tx)
		for name, bk := range map[string]*bbolt.Bucket{"records": b.records, "links": b.links} {
			if k, _ := bk.Cursor().First(); k == nil || binary.BigEndian.Uint64(k) != 2501 {
				return fmt.Errorf("%s starts at %x, want seq 2501", name, k)
			}
		}
		for name, bk := range map[string]*bbolt.Bucket{"id": b.id, "heads": b.heads} {
			if err := bk.ForEach(func(k, v []byte) error {
				if binary.BigEndian.Uint64(v) <= 2500 {
					return fmt.Errorf("%s entry %q names pruned seq %d", name, k, binary.BigEndian.Uint64(v))
				}
				return nil
			}); err != nil {
				return err
			}
		}
		return b.issuance.ForEach(func(k, _ []byte) error {
			if seq := binary.BigEndian.Uint64(k[len(k)-8:]); seq <= 2500 {
				return fmt.Errorf("issuance entry names pruned seq %d", seq)
			}
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Get("id-000001"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get(pruned) = %v, want ErrNotFound", err)
	}
	if recs, err := l.ByIssuance("iss-10"); err != nil || len(recs) != 0 {
		t.Fatalf("ByIssuance(pruned) = %v, %v", recs, err)
	}
	// Chains of callers and clusters stop at the first record kept.
	for _, q := range []Query{{Caller: "spiffe://td/caller-1"}, {Cluster: "ns/cluster-2"}, {Caller: "spiffe://td/caller-1", Cluster: "ns/cluster-1"}, {}} {
		recs, err := l.List(q)
		if err != nil {
			t.Fatalf("List(%+v): %v", q, err)
		}
		for _, r := range recs {
			if r.Seq <= 2500 {
				t.Fatalf("List(%+v) returned pruned seq %d", q, r.Seq)
			}
		}
		if len(recs) == 0 {
			t.Fatalf("List(%+v) returned nothing", q)
		}
	}
	var exported []uint64
	if err := l.Export(0, func(r Record) error { exported = append(exported, r.Seq); return nil }); err != nil || len(exported) != 503 || exported[0] != 2501 {
		t.Fatalf("Export from 0: %d records from %v, %v", len(exported), exported[:min(1, len(exported))], err)
	}

	// Nothing more is old enough; new records go on the chain as before.
	if res, err := l.Prune(PruneOptions{Before: cutoff}); err != nil || res.Pruned != 0 || len(res.Checkpoints) != 0 {
		t.Fatalf("second Prune = %+v, %v", res, err)
	}
	mustAppend(t, l, genRecord(1))
	mustVerifyOK(t, l, 504)
}

// TestPruneAgainPrunesCheckpoints: a later prune may take earlier
// checkpoints with it; verification starts from the newest.
func TestPruneAgainPrunesCheckpoints(t *testing.T) {
	l, _, path, clock := agedLog(t, 10, 10)
	if res, err := l.Prune(PruneOptions{Before: cutoff, Batch: 4}); err != nil || res.Pruned != 10 || len(res.Checkpoints) != 3 {
		t.Fatalf("Prune = %+v, %v", res, err)
	}
	clock.Advance(time.Hour)
	mustAppend(t, l, genRecord(0)) // seq 24, after the checkpoints 21..23
	res, err := l.Prune(PruneOptions{Before: clock.Now()})
	if err != nil || res.Pruned != 13 || len(res.Checkpoints) != 1 {
		t.Fatalf("Prune of the kept records and the checkpoints = %+v, %v", res, err)
	}
	v := mustVerifyOK(t, l, 2)
	if v.FirstSeq != 24 || v.PrunedThrough != 23 || v.CheckpointSeq != 25 {
		t.Fatalf("Verify = %+v", v)
	}
	// Reopened, the log goes on from its head.
	_ = l.Close()
	l.DB().Close()
	l2, _ := openLog(t, path)
	mustAppend(t, l2, genRecord(1))
	mustVerifyOK(t, l2, 3)
}

// prunedLog is a pruned log, closed, at path: records 11..20 kept, the
// checkpoint at seq 21.
func prunedLog(t *testing.T) string {
	t.Helper()
	l, db, path, _ := agedLog(t, 10, 10)
	if _, err := l.Prune(PruneOptions{Before: cutoff}); err != nil {
		t.Fatal(err)
	}
	mustVerifyOK(t, l, 11)
	_ = l.Close()
	_ = db.Close()
	return path
}

// editAndVerify edits the closed log at path and verifies it reopened.
func editAndVerify(t *testing.T, path string, anchor *Anchor, edit func(tx *bbolt.Tx) error) VerifyResult {
	t.Helper()
	raw, err := bbolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := raw.Update(edit); err != nil {
		t.Fatal(err)
	}
	if err := raw.Close(); err != nil {
		t.Fatal(err)
	}
	l, db := openLog(t, path)
	res, err := l.VerifyWith(VerifyOptions{Anchor: anchor})
	if err != nil {
		t.Fatal(err)
	}
	_ = l.Close()
	_ = db.Close()
	return res
}

// TestPrunedChainTampering: after a prune, editing the checkpoint or a kept
// record, deleting more of the start, or removing or moving the database's
// pointer to the newest checkpoint, is a break.
func TestPrunedChainTampering(t *testing.T) {
	editCheckpoint := func(f func(cp *Checkpoint)) func(tx *bbolt.Tx) error {
		return func(tx *bbolt.Tx) error {
			b := tx.Bucket(bucketRecords)
			var r Record
			if err := json.Unmarshal(b.Get(seqKey(21)), &r); err != nil {
				return err
			}
			f(r.Checkpoint)
			v, _ := json.Marshal(r)
			return b.Put(seqKey(21), v)
		}
	}
	for name, tc := range map[string]struct {
		edit    func(tx *bbolt.Tx) error
		seq     uint64
		problem string
	}{
		"checkpoint count edited": {editCheckpoint(func(cp *Checkpoint) { cp.Count = 3 }), 21, "hash mismatch"},
		"checkpoint hash edited":  {editCheckpoint(func(cp *Checkpoint) { cp.ThroughHash = strings.Repeat("0", 64) }), 11, "prev_hash does not link"},
		"checkpoint cut moved":    {editCheckpoint(func(cp *Checkpoint) { cp.ThroughSeq = 11 }), 12, "missing seq 12"},
		"kept record edited": {func(tx *bbolt.Tx) error {
			b := tx.Bucket(bucketRecords)
			return b.Put(seqKey(15), bytes.Replace(b.Get(seqKey(15)), []byte("caller-"), []byte("callex-"), 1))
		}, 15, "hash mismatch"},
		"first kept record deleted": {func(tx *bbolt.Tx) error { return tx.Bucket(bucketRecords).Delete(seqKey(11)) }, 11, "missing seq 11"},
		"checkpoint pointer deleted": {func(tx *bbolt.Tx) error { return tx.Bucket(bucketMeta).Delete(metaCheckpoint) }, 1,
			"missing seq 1: the chain starts at seq 11 and no checkpoint accounts for the records before it"},
		"checkpoint pointer moved": {func(tx *bbolt.Tx) error { return tx.Bucket(bucketMeta).Put(metaCheckpoint, seqKey(15)) }, 15, "is not a checkpoint"},
		"checkpoint deleted":       {func(tx *bbolt.Tx) error { return tx.Bucket(bucketRecords).Delete(seqKey(21)) }, 21, "the newest checkpoint, seq 21, is missing"},
	} {
		t.Run(name, func(t *testing.T) {
			res := editAndVerify(t, prunedLog(t), nil, tc.edit)
			if res.OK || res.FirstBadSeq != tc.seq || !strings.Contains(res.Problem, tc.problem) {
				t.Fatalf("Verify = %+v, want a break at seq %d: %q", res, tc.seq, tc.problem)
			}
		})
	}
}

// TestTruncatedPrefixWithoutCheckpointFails: records deleted from the start
// of a chain never pruned are a break, however consistent the rest.
func TestTruncatedPrefixWithoutCheckpointFails(t *testing.T) {
	res := tamper(t, func(t *testing.T, b *bbolt.Bucket) {
		for seq := uint64(1); seq <= 3; seq++ {
			if err := b.Delete(seqKey(seq)); err != nil {
				t.Fatal(err)
			}
		}
	})
	if res.OK || res.FirstBadSeq != 1 || !strings.Contains(res.Problem, "no checkpoint accounts") {
		t.Fatalf("Verify = %+v", res)
	}
}

// TestPruneRequiresExport: with RequireExport nothing goes before an admin
// marks the chain exported, and pruning stops at the mark; the mark is an
// exported record, never moves back and cannot pass the head.
func TestPruneRequiresExport(t *testing.T) {
	l, _, _, _ := agedLog(t, 10, 10)
	if res, err := l.Prune(PruneOptions{Before: cutoff, RequireExport: true}); err != nil || res.Pruned != 0 {
		t.Fatalf("Prune before any mark = %+v, %v", res, err)
	}
	if _, _, err := l.MarkExported(22, Record{Caller: "unix:uid=0"}); err == nil || !strings.Contains(err.Error(), "past the chain's head 20") {
		t.Fatalf("MarkExported past the head: %v", err)
	}
	rec, mark, err := l.MarkExported(6, Record{Caller: "unix:uid=0", Attestation: "admin", Reason: "audit exported through seq 6 by unix:uid=0"})
	if err != nil || mark != 6 || rec.Decision != DecisionExported || rec.Seq != 21 {
		t.Fatalf("MarkExported = %+v, %d, %v", rec, mark, err)
	}
	if _, mark, err := l.MarkExported(3, Record{Caller: "unix:uid=0"}); err != nil || mark != 6 {
		t.Fatalf("MarkExported lower = %d, %v; want the mark kept at 6", mark, err)
	}
	res, err := l.Prune(PruneOptions{Before: cutoff, RequireExport: true})
	if err != nil || res.Pruned != 6 || res.Checkpoints[0].Checkpoint.ThroughSeq != 6 {
		t.Fatalf("Prune to the mark = %+v, %v", res, err)
	}
	// The mark past the old records: retention bounds again.
	if _, _, err := l.MarkExported(22, Record{Caller: "unix:uid=0"}); err != nil {
		t.Fatal(err)
	}
	if res, err := l.Prune(PruneOptions{Before: cutoff, RequireExport: true}); err != nil || res.Pruned != 4 {
		t.Fatalf("Prune after the second mark = %+v, %v", res, err)
	}
	if m, err := l.ExportedThrough(); err != nil || m != 22 {
		t.Fatalf("ExportedThrough = %d, %v", m, err)
	}
	mustVerifyOK(t, l, 15) // 10 recent, 3 marks, 2 checkpoints
	if _, err := l.Append(Record{Decision: DecisionExported}); err == nil {
		t.Fatal("Append wrote an exported record")
	}
	if _, err := l.Append(Record{Decision: DecisionIssued, Checkpoint: &Checkpoint{}}); err == nil {
		t.Fatal("Append wrote a checkpoint")
	}
}

// TestPruneKeepsUnexpiredCredentials: the record of a credential still
// valid at Now stops the prune, whatever its age.
func TestPruneKeepsUnexpiredCredentials(t *testing.T) {
	clock := fakeclock.New(epoch)
	l, _, _ := tempLog(t, WithClock(clock.Now))
	for i := range 5 {
		r := Record{IssuanceID: fmt.Sprint(i), Decision: DecisionIssued, ExpiresAt: epoch.Add(time.Minute)}
		if i == 3 {
			r.ExpiresAt = epoch.Add(48 * time.Hour)
		}
		mustAppend(t, l, r)
	}
	clock.Advance(24 * time.Hour)
	res, err := l.Prune(PruneOptions{Before: clock.Now(), Now: clock.Now()})
	if err != nil || res.Pruned != 3 {
		t.Fatalf("Prune = %+v, %v; want the 3 records before the unexpired one", res, err)
	}
	mustVerifyOK(t, l, 3)
}

// TestAnchorCatchesTailTruncation: deleting the newest records and moving
// the head back leaves a chain that verifies alone; the anchor published
// before catches it, and names a record whose hash differs.
func TestAnchorCatchesTailTruncation(t *testing.T) {
	l, db, path := tempLog(t)
	for i := range 10 {
		mustAppend(t, l, genRecord(i))
	}
	v := mustVerifyOK(t, l, 10)
	anchor := &Anchor{Seq: v.HeadSeq, Hash: v.HeadHash, Time: epoch, BrokerID: "b"}
	if res, err := l.VerifyWith(VerifyOptions{Anchor: anchor}); err != nil || !res.OK || !res.AnchorChecked {
		t.Fatalf("Verify with its own anchor = %+v, %v", res, err)
	}
	// An older anchor is reached too.
	old := mustGetSeq(t, l, 4)
	if res, _ := l.VerifyWith(VerifyOptions{Anchor: &Anchor{Seq: 4, Hash: old.Hash}}); !res.OK {
		t.Fatalf("Verify with an older anchor = %+v", res)
	}
	if res, _ := l.VerifyWith(VerifyOptions{Anchor: &Anchor{Seq: 4, Hash: v.HeadHash}}); res.OK || res.FirstBadSeq != 4 || !strings.Contains(res.Problem, "anchor mismatch") {
		t.Fatalf("Verify with a wrong anchored hash = %+v", res)
	}
	_ = l.Close()
	_ = db.Close()

	res := editAndVerify(t, path, nil, truncateTail(3))
	if !res.OK || res.Records != 7 {
		t.Fatalf("plain Verify of a chain cut back to seq 7 = %+v; the limitation the anchor exists for", res)
	}
	res = editAndVerify(t, path, anchor, func(*bbolt.Tx) error { return nil })
	if res.OK || res.FirstBadSeq != 8 || !strings.Contains(res.Problem, "anchor not reached: the chain ends at seq 7, but seq 10 was its head") {
		t.Fatalf("Verify with the anchor = %+v", res)
	}
}

// truncateTail deletes the newest n records and their index entries, and
// moves the head back, as someone with write access to the file would.
func truncateTail(n int) func(tx *bbolt.Tx) error {
	return func(tx *bbolt.Tx) error {
		b, err := openBuckets(tx)
		if err != nil {
			return err
		}
		k, _ := b.records.Cursor().Last()
		last := binary.BigEndian.Uint64(k)
		for seq := last - uint64(n) + 1; seq <= last; seq++ {
			if err := b.records.Delete(seqKey(seq)); err != nil {
				return err
			}
			if err := b.links.Delete(seqKey(seq)); err != nil {
				return err
			}
		}
		var r Record
		if err := json.Unmarshal(b.records.Get(seqKey(last-uint64(n))), &r); err != nil {
			return err
		}
		return b.meta.Put(metaHead, encodeHead(r.Seq, r.Hash))
	}
}

// TestAnchorAcrossPruning: an anchor on the last pruned record is checked
// against the checkpoint; one further back cannot be checked and fails.
func TestAnchorAcrossPruning(t *testing.T) {
	l, _, _, _ := agedLog(t, 10, 10)
	r10, r5 := mustGetSeq(t, l, 10), mustGetSeq(t, l, 5)
	if _, err := l.Prune(PruneOptions{Before: cutoff}); err != nil {
		t.Fatal(err)
	}
	if res, _ := l.VerifyWith(VerifyOptions{Anchor: &Anchor{Seq: 10, Hash: r10.Hash}}); !res.OK || !res.AnchorChecked {
		t.Fatalf("anchor on the last pruned record = %+v", res)
	}
	if res, _ := l.VerifyWith(VerifyOptions{Anchor: &Anchor{Seq: 10, Hash: r5.Hash}}); res.OK || !strings.Contains(res.Problem, "anchor mismatch") {
		t.Fatalf("wrong anchor on the last pruned record = %+v", res)
	}
	if res, _ := l.VerifyWith(VerifyOptions{Anchor: &Anchor{Seq: 5, Hash: r5.Hash}}); res.OK || !strings.Contains(res.Problem, "was pruned") {
		t.Fatalf("anchor before the checkpoint = %+v", res)
	}
}

// TestPruneWhileAppending: batches of a prune commit among concurrent
// appends (sharing their transactions) and the chain verifies after.
func TestPruneWhileAppending(t *testing.T) {
	l, _, _, clock := agedLog(t, 5000, 0)
	clock.Advance(time.Hour)
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 200 {
				if _, err := l.Append(genRecord(w*1000 + i)); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	res, err := l.Prune(PruneOptions{Before: cutoff, Batch: 250})
	wg.Wait()
	if err != nil || res.Pruned != 5000 || len(res.Checkpoints) != 20 {
		t.Fatalf("Prune = %d in %d checkpoints, %v", res.Pruned, len(res.Checkpoints), err)
	}
	mustVerifyOK(t, l, 800+20)
}

func mustGetSeq(t *testing.T, l *Log, seq uint64) Record {
	t.Helper()
	var r Record
	err := l.db.View(func(tx *bbolt.Tx) error {
		var err error
		r, err = readRecord(tx.Bucket(bucketRecords), seqKey(seq))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestVerifyAndExportDuringPrune: a verification running while batches are
// pruned never reports a break (Prune waits for it), and an export that
// would skip records pruned under it stops with ErrPrunedDuringExport.
func TestVerifyAndExportDuringPrune(t *testing.T) {
	l, _, _, _ := agedLog(t, 3*exportChunk, 10)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if _, err := l.Prune(PruneOptions{Before: cutoff, Batch: 100}); err != nil {
			t.Error(err)
		}
	}()
	for range 5 {
		if res, err := l.Verify(); err != nil || !res.OK {
			t.Fatalf("Verify during a prune = %+v, %v", res, err)
		}
	}
	wg.Wait()

	l2, _, _, _ := agedLog(t, 3*exportChunk, 10)
	n := 0
	err := l2.Export(0, func(r Record) error {
		if n++; n == 1 {
			// The first chunk is read; prune what the next would hold.
			if _, err := l2.Prune(PruneOptions{Before: cutoff}); err != nil {
				return err
			}
		}
		return nil
	})
	if !errors.Is(err, ErrPrunedDuringExport) || n != exportChunk {
		t.Fatalf("Export across a prune: %d records, %v; want the first chunk, then ErrPrunedDuringExport", n, err)
	}
}
