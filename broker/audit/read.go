package audit

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	"go.etcd.io/bbolt"
)

// exportChunk is how many records Export and Verify read per read
// transaction, so that no transaction stays open across fn or a huge walk.
const exportChunk = 1024

// Get returns the record with the given ID, or an error wrapping ErrNotFound.
func (l *Log) Get(id string) (Record, error) {
	var r Record
	err := l.db.View(func(tx *bbolt.Tx) error {
		b, err := openBuckets(tx)
		if err != nil {
			return err
		}
		key := b.id.Get([]byte(id))
		if key == nil {
			return fmt.Errorf("audit: record %q: %w", id, ErrNotFound)
		}
		r, err = readRecord(b.records, key)
		return err
	})
	return r, err
}

// ByIssuance returns the records of one issuance in chain order.
func (l *Log) ByIssuance(issuanceID string) ([]Record, error) {
	if issuanceID == "" {
		return nil, errors.New("audit: empty issuance id")
	}
	var out []Record
	err := l.db.View(func(tx *bbolt.Tx) error {
		b, err := openBuckets(tx)
		if err != nil {
			return err
		}
		prefix := appendPrefix(nil, issuanceID)
		c := b.issuance.Cursor()
		for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix) && len(k) == len(prefix)+8; k, _ = c.Next() {
			r, err := readRecord(b.records, k[len(prefix):])
			if err != nil {
				return err
			}
			out = append(out, r)
		}
		return nil
	})
	return out, err
}

// Query selects records for List. Zero fields do not filter.
type Query struct {
	// Caller keeps records whose Caller equals it.
	Caller string
	// Cluster keeps records whose Cluster equals it.
	Cluster string
	// Decision keeps records with this decision.
	Decision Decision
	// Since keeps records with Time >= Since.
	Since time.Time
	// Until keeps records with Time < Until.
	Until time.Time
	// BeforeSeq keeps records with Seq < BeforeSeq (0: no bound). A listing
	// resumes after its last record r with BeforeSeq = r.Seq: newest first
	// is by seq, even among records that share a time.
	BeforeSeq uint64
	// Limit caps the number of records returned; 0 means no cap.
	Limit int
}

// List returns the records matching q, newest (by Time, then Seq: the same
// order, as times never step back along the chain) first. Since and Until
// become a range of seqs by binary search over the records' times. With a
// Caller or Cluster it follows only that value's chain of links, from its
// newest record back; otherwise it walks the links of every record in the
// range. The decision is in each link, so records are read only when they
// are returned (or, with both Caller and Cluster, checked for the cluster).
func (l *Log) List(q Query) ([]Record, error) {
	if q.Decision != "" && !q.Decision.Valid() {
		return nil, fmt.Errorf("audit: unknown decision %q", q.Decision)
	}
	if q.Limit < 0 {
		return nil, errors.New("audit: negative limit")
	}
	var out []Record
	err := l.db.View(func(tx *bbolt.Tx) error {
		b, err := openBuckets(tx)
		if err != nil {
			return err
		}
		lo, hi, err := seqRange(b.records, q.Since, q.Until)
		if q.BeforeSeq > 0 {
			hi = min(hi, q.BeforeSeq-1)
		}
		if err != nil || lo > hi {
			return err
		}
		var want byte
		if q.Decision != "" {
			want = decisionCodes[q.Decision]
		}
		// visit takes record seq with its link; it reports whether the
		// limit is reached.
		visit := func(seq uint64, k link) (bool, error) {
			if want != 0 && k.code != want {
				return false, nil
			}
			l.recordReads.Add(1)
			r, err := readRecord(b.records, seqKey(seq))
			if err != nil {
				return false, err
			}
			if q.Cluster != "" && r.Cluster != q.Cluster {
				return false, nil
			}
			out = append(out, r)
			return q.Limit > 0 && len(out) >= q.Limit, nil
		}
		switch {
		case q.Caller != "":
			return walkChain(b, chainCaller, q.Caller, lo, hi, visit)
		case q.Cluster != "":
			return walkChain(b, chainCluster, q.Cluster, lo, hi, visit)
		}
		c := b.links.Cursor()
		k, v := c.Seek(seqKey(hi))
		if k == nil || binary.BigEndian.Uint64(k) > hi {
			k, v = c.Prev()
		}
		for ; k != nil && binary.BigEndian.Uint64(k) >= lo; k, v = c.Prev() {
			lk, ok := decodeLink(v)
			if !ok {
				return fmt.Errorf("audit: corrupt link %x", k)
			}
			if stop, err := visit(binary.BigEndian.Uint64(k), lk); stop || err != nil {
				return err
			}
		}
		return nil
	})
	return out, err
}

// walkChain visits, newest first, the records in [lo, hi] of the chain of
// kind for value, following each record's link back to the previous one.
func walkChain(b buckets, kind byte, value string, lo, hi uint64, visit func(uint64, link) (bool, error)) error {
	v := b.heads.Get(headKey(kind, value))
	if len(v) != 8 {
		return nil
	}
	for seq := binary.BigEndian.Uint64(v); seq >= lo && seq > 0; {
		lk, ok := decodeLink(b.links.Get(seqKey(seq)))
		if !ok {
			return fmt.Errorf("audit: chain of %q names seq %d, whose link is missing or corrupt", value, seq)
		}
		if seq <= hi {
			if stop, err := visit(seq, lk); stop || err != nil {
				return err
			}
		}
		back := lk.back(kind)
		if back == 0 || back >= seq {
			return nil
		}
		seq -= back
	}
	return nil
}

// seqRange returns the seqs [lo, hi] of the records with since <= Time <
// until (a zero bound does not bound), found by binary search: record times
// never decrease along the chain. lo > hi when there are none.
func seqRange(records *bbolt.Bucket, since, until time.Time) (lo, hi uint64, err error) {
	c := records.Cursor()
	first, _ := c.First()
	last, _ := c.Last()
	if first == nil {
		return 1, 0, nil
	}
	lo, hi = binary.BigEndian.Uint64(first), binary.BigEndian.Uint64(last)
	// firstAtOrAfter is the first seq in [lo, hi+1) whose time is >= t.
	firstAtOrAfter := func(t time.Time) (uint64, error) {
		var ferr error
		n := sort.Search(int(hi-lo+1), func(i int) bool {
			v := records.Get(seqKey(lo + uint64(i)))
			if v == nil {
				ferr = fmt.Errorf("audit: seq %d is missing", lo+uint64(i))
				return true
			}
			rt, err := recordTime(v)
			if err != nil {
				ferr = err
				return true
			}
			return !rt.Before(t)
		})
		return lo + uint64(n), ferr
	}
	from, to := lo, hi
	if !since.IsZero() {
		if from, err = firstAtOrAfter(since); err != nil {
			return 0, 0, err
		}
	}
	if !until.IsZero() {
		end, err := firstAtOrAfter(until)
		if err != nil {
			return 0, 0, err
		}
		if end == 0 {
			return 1, 0, nil
		}
		to = end - 1
	}
	return from, to, nil
}

// timeMember precedes a stored record's time: records are stored in their
// canonical form, which starts {"id":...,"seq":N,"time":"...".
var timeMember = []byte(`,"time":"`)

// recordTime returns the Time of a stored record without decoding the rest.
func recordTime(v []byte) (time.Time, error) {
	if i := bytes.Index(v, timeMember); i >= 0 {
		rest := v[i+len(timeMember):]
		if j := bytes.IndexByte(rest, '"'); j >= 0 {
			if t, err := time.Parse(time.RFC3339Nano, string(rest[:j])); err == nil {
				return t, nil
			}
		}
	}
	var r struct {
		Time time.Time `json:"time"`
	}
	if err := json.Unmarshal(v, &r); err != nil {
		return time.Time{}, fmt.Errorf("audit: decode record time: %w", err)
	}
	return r.Time, nil
}

// Export calls fn for every record with Seq > afterSeq, in chain order,
// from the first record kept (after pruning) on. It reads in chunks and
// calls fn outside any transaction, so fn may block (on a network stream,
// say). An error from fn stops the export and is returned wrapped. Records
// pruned while the export runs, after its first record, stop it with
// ErrPrunedDuringExport instead of leaving a gap.
func (l *Log) Export(afterSeq uint64, fn func(Record) error) error {
	return l.ExportStored(afterSeq, func(r Record, _ []byte) error { return fn(r) })
}

// ExportStored is Export handing fn each record's stored bytes too: its
// canonical JSON with the hash filled in, what an export writes, so that a
// record is not encoded again to be exported. fn must not keep stored.
func (l *Log) ExportStored(afterSeq uint64, fn func(r Record, stored []byte) error) error {
	started := false
	for {
		var chunk []Record
		var stored [][]byte
		err := l.db.View(func(tx *bbolt.Tx) error {
			b, err := openBuckets(tx)
			if err != nil {
				return err
			}
			c := b.records.Cursor()
			for k, v := c.Seek(seqKey(afterSeq + 1)); k != nil && len(chunk) < exportChunk; k, v = c.Next() {
				r, err := decodeRecord(k, v)
				if err != nil {
					return err
				}
				chunk, stored = append(chunk, r), append(stored, bytes.Clone(v))
			}
			return nil
		})
		if err != nil {
			return err
		}
		for i, r := range chunk {
			if started && r.Seq != afterSeq+1 {
				return fmt.Errorf("audit: export: records %d to %d: %w", afterSeq+1, r.Seq-1, ErrPrunedDuringExport)
			}
			started = true
			if err := fn(r, stored[i]); err != nil {
				return fmt.Errorf("audit: export seq %d: %w", r.Seq, err)
			}
			afterSeq = r.Seq
		}
		if len(chunk) < exportChunk {
			return nil
		}
	}
}

// readRecord reads and decodes the record stored under key.
func readRecord(records *bbolt.Bucket, key []byte) (Record, error) {
	v := records.Get(key)
	if v == nil {
		return Record{}, fmt.Errorf("audit: index names seq %d, which is missing", binary.BigEndian.Uint64(key))
	}
	return decodeRecord(key, v)
}

func decodeRecord(key, v []byte) (Record, error) {
	var r Record
	if err := json.Unmarshal(v, &r); err != nil {
		return Record{}, fmt.Errorf("audit: decode record %x: %w", key, err)
	}
	return r, nil
}
