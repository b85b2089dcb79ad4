package audit

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/bbolt"
)

// DefaultPruneBatch is how many records one prune transaction deletes when
// PruneOptions.Batch is 0. The transaction is shared with the appends that
// queue while it commits, so its size is what a concurrent append may wait
// for; BenchmarkPruneConcurrentAppend measures it.
const DefaultPruneBatch = 250

// ErrPruneMoved is returned when the start of the chain is not where the
// prune planned it, which only a second pruner (or someone editing the file)
// causes; nothing is deleted.
var ErrPruneMoved = errors.New("audit: prune: the start of the chain moved")

// PruneOptions says which records Prune may delete.
type PruneOptions struct {
	// Before: only records with Time < Before are pruned (now minus the
	// retention). Required.
	Before time.Time
	// Now: a record of a credential that expires after Now (ExpiresAt) is
	// never pruned, nor anything after it, whatever Before says.
	Now time.Time
	// RequireExport prunes only records an admin has marked exported
	// (MarkExported); nothing before the first mark.
	RequireExport bool
	// Batch bounds the records deleted per transaction; 0 means
	// DefaultPruneBatch.
	Batch int
}

// PruneResult says what Prune did.
type PruneResult struct {
	// Pruned is how many records were deleted.
	Pruned uint64
	// Checkpoints are the checkpoint records written, one per batch.
	Checkpoints []Record
}

// Prune deletes, from the start of the chain, the records that o allows, a
// batch per transaction, and appends a checkpoint record (Record.Checkpoint)
// in each batch's transaction, so the chain verifies after every batch and
// after a crash between two. It deletes the records' index entries (by id,
// by issuance, their links, and the heads of callers and clusters whose
// newest record goes). The record pruning stops at is always the one the
// checkpoint names as kept; the checkpoint itself is appended at the end of
// the chain, like any record. Prune returns when nothing more may go.
func (l *Log) Prune(o PruneOptions) (PruneResult, error) {
	var res PruneResult
	if o.Before.IsZero() {
		return res, errors.New("audit: prune: no time bound")
	}
	if o.Batch <= 0 {
		o.Batch = DefaultPruneBatch
	}
	l.pruneMu.Lock()
	defer l.pruneMu.Unlock()
	for {
		cut, err := l.planPrune(o)
		if err != nil || cut == nil {
			return res, err
		}
		rec := Record{
			Decision:   DecisionCheckpoint,
			Reason:     fmt.Sprintf("pruned %d records, seq %d to %d (%s to %s)", cut.cp.Count, cut.cp.FromSeq, cut.cp.ThroughSeq, cut.cp.FirstTime.Format(time.RFC3339), cut.cp.LastTime.Format(time.RFC3339)),
			Checkpoint: &cut.cp,
		}
		stored, err := l.appendInternal(rec, cut.apply)
		if err != nil {
			return res, fmt.Errorf("audit: prune: %w", err)
		}
		res.Pruned += cut.cp.Count
		res.Checkpoints = append(res.Checkpoints, stored)
	}
}

// pruneCut is one planned batch: the records to delete and what the
// checkpoint says about them.
type pruneCut struct {
	cp      Checkpoint
	entries []prunedEntry
}

// prunedEntry is what a pruned record has in the indexes.
type prunedEntry struct {
	seq                           uint64
	id, issuance, caller, cluster string
}

// prunable is the part of a stored record planPrune reads.
type prunable struct {
	ID         string    `json:"id"`
	Seq        uint64    `json:"seq"`
	Time       time.Time `json:"time"`
	IssuanceID string    `json:"issuance_id"`
	Caller     string    `json:"caller"`
	Cluster    string    `json:"cluster"`
	ExpiresAt  time.Time `json:"expires_at"`
	Hash       string    `json:"hash"`
}

// planPrune reads, in a read transaction, the next batch o allows: from the
// first record on, while records are older than o.Before, at or before the
// export mark (RequireExport), and not of a credential unexpired at o.Now.
// It returns nil when nothing may be pruned.
func (l *Log) planPrune(o PruneOptions) (*pruneCut, error) {
	var cut *pruneCut
	err := l.db.View(func(tx *bbolt.Tx) error {
		b, err := openBuckets(tx)
		if err != nil {
			return err
		}
		limit := uint64(1<<64 - 1)
		if o.RequireExport {
			v := b.meta.Get(metaExported)
			if len(v) != 8 {
				return nil // never marked: nothing may go
			}
			limit = binary.BigEndian.Uint64(v)
		}
		c := b.records.Cursor()
		var pc pruneCut
		var last prunable
		for k, v := c.First(); k != nil && len(pc.entries) < o.Batch; k, v = c.Next() {
			seq := binary.BigEndian.Uint64(k)
			if seq > limit {
				break
			}
			var r prunable
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("audit: prune: decode record %d: %w", seq, err)
			}
			if r.Seq != seq || !r.Time.Before(o.Before) || (!o.Now.IsZero() && r.ExpiresAt.After(o.Now)) {
				break
			}
			if len(pc.entries) == 0 {
				pc.cp.FromSeq, pc.cp.FirstTime = seq, r.Time.UTC()
			} else if seq != last.Seq+1 {
				return fmt.Errorf("audit: prune: seq %d is missing", last.Seq+1)
			}
			pc.entries = append(pc.entries, prunedEntry{seq: seq, id: r.ID, issuance: r.IssuanceID, caller: r.Caller, cluster: r.Cluster})
			last = r
		}
		if len(pc.entries) == 0 {
			return nil
		}
		pc.cp.ThroughSeq, pc.cp.ThroughHash, pc.cp.LastTime = last.Seq, last.Hash, last.Time.UTC()
		pc.cp.Count = uint64(len(pc.entries))
		cut = &pc
		return nil
	})
	return cut, err
}

// apply deletes the planned records and their index entries and makes the
// checkpoint record (seq) the newest, in the checkpoint's transaction. It
// fails, deleting nothing, if the chain no longer starts where planned or
// the last record planned is not the one read.
func (p *pruneCut) apply(b buckets, seq uint64) error {
	first, _ := b.records.Cursor().First()
	if first == nil || binary.BigEndian.Uint64(first) != p.cp.FromSeq {
		return ErrPruneMoved
	}
	var r prunable
	if err := json.Unmarshal(b.records.Get(seqKey(p.cp.ThroughSeq)), &r); err != nil || r.Hash != p.cp.ThroughHash {
		return ErrPruneMoved
	}
	for _, e := range p.entries {
		key := seqKey(e.seq)
		if e.id != "" && bytes.Equal(b.id.Get([]byte(e.id)), key) {
			if err := b.id.Delete([]byte(e.id)); err != nil {
				return err
			}
		}
		if e.issuance != "" {
			if err := b.issuance.Delete(append(appendPrefix(nil, e.issuance), key...)); err != nil {
				return err
			}
		}
		for _, h := range []struct {
			kind  byte
			value string
		}{{chainCaller, e.caller}, {chainCluster, e.cluster}} {
			if h.value == "" {
				continue
			}
			// The chain's newest record goes: so does the chain. Older
			// links into the pruned range are never followed, as walks
			// stop at the first record kept.
			if hk := headKey(h.kind, h.value); bytes.Equal(b.heads.Get(hk), key) {
				if err := b.heads.Delete(hk); err != nil {
					return err
				}
			}
		}
		if err := b.links.Delete(key); err != nil {
			return err
		}
		if err := b.records.Delete(key); err != nil {
			return err
		}
	}
	return b.meta.Put(metaCheckpoint, seqKey(seq))
}

// MarkExported records that an admin has exported the chain through seq
// through: with PruneOptions.RequireExport, records up to it may then be
// pruned. The mark only moves forward (a lower through leaves it); through
// beyond the head is refused. rec names who marked it (Caller, Attestation,
// Reason); the Log writes it as an exported record in the same transaction
// as the mark, and returns the stored record and the mark now held.
func (l *Log) MarkExported(through uint64, rec Record) (Record, uint64, error) {
	if through == 0 {
		return Record{}, 0, errors.New("audit: mark exported: through must be a seq")
	}
	rec.Decision = DecisionExported
	rec.Checkpoint = nil
	var mark uint64
	stored, err := l.appendInternal(rec, func(b buckets, seq uint64) error {
		if through >= seq {
			return fmt.Errorf("audit: mark exported: seq %d is past the chain's head %d", through, seq-1)
		}
		mark = through
		if v := b.meta.Get(metaExported); len(v) == 8 {
			mark = max(mark, binary.BigEndian.Uint64(v))
		}
		return b.meta.Put(metaExported, seqKey(mark))
	})
	return stored, mark, err
}

// ExportedThrough returns the export mark (0: never marked).
func (l *Log) ExportedThrough() (uint64, error) {
	var mark uint64
	err := l.db.View(func(tx *bbolt.Tx) error {
		if v := tx.Bucket(bucketMeta).Get(metaExported); len(v) == 8 {
			mark = binary.BigEndian.Uint64(v)
		}
		return nil
	})
	return mark, err
}
