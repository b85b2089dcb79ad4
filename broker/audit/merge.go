package audit

import (
	"bufio"
	"cmp"
	"container/heap"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"time"
)

// MaxExportLine bounds one line of an export read by MergeExports and
// VerifyExport. A record's fields are bounded (MaxFieldLen each), so a
// stored record is a few kilobytes at most; a longer line is not a record.
const MaxExportLine = 1 << 20

// MaxExportChains bounds how many replicas' chains one export may hold
// (VerifyExport keeps a few hundred bytes per chain).
const MaxExportChains = 10_000

// ExportInput is one export to merge: JSON lines as Log.ExportStored
// stores them (credbrokerctl audit export), or an earlier merge.
type ExportInput struct {
	// Name labels the input in errors (its file name).
	Name string
	R    io.Reader
}

// lineKey is what merging needs of a record.
type lineKey struct {
	Seq     uint64    `json:"seq"`
	Time    time.Time `json:"time"`
	Replica string    `json:"replica"`
}

// compare orders records by time, then replica id, then seq: the order of
// a merged export.
func (k lineKey) compare(o lineKey) int {
	if c := k.Time.Compare(o.Time); c != 0 {
		return c
	}
	if c := cmp.Compare(k.Replica, o.Replica); c != 0 {
		return c
	}
	return cmp.Compare(k.Seq, o.Seq)
}

// mergeSource is one input being merged, with its next line read.
type mergeSource struct {
	in    ExportInput
	sc    *bufio.Scanner
	line  []byte
	key   lineKey
	lines uint64
	index int
}

// next reads the source's next line; false at its end.
func (s *mergeSource) next() (bool, error) {
	if !s.sc.Scan() {
		if err := s.sc.Err(); err != nil {
			return false, fmt.Errorf("audit merge: %s line %d: %w", s.in.Name, s.lines+1, lineErr(err))
		}
		return false, nil
	}
	s.lines++
	s.line = s.sc.Bytes()
	s.key = lineKey{}
	if err := json.Unmarshal(s.line, &s.key); err != nil || s.key.Seq == 0 || s.key.Time.IsZero() {
		return false, fmt.Errorf("audit merge: %s line %d is not an audit record", s.in.Name, s.lines)
	}
	return true, nil
}

// lineErr explains a line too long to be a record.
func lineErr(err error) error {
	if errors.Is(err, bufio.ErrTooLong) {
		return fmt.Errorf("line longer than %d bytes: not an audit export", MaxExportLine)
	}
	return err
}

func newScanner(r io.Reader) *bufio.Scanner {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), MaxExportLine)
	return sc
}

// mergeHeap orders the sources by their next line, ties by input order.
type mergeHeap []*mergeSource

func (h mergeHeap) Len() int { return len(h) }
func (h mergeHeap) Less(i, j int) bool {
	if c := h[i].key.compare(h[j].key); c != 0 {
		return c < 0
	}
	return h[i].index < h[j].index
}
func (h mergeHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *mergeHeap) Push(x any)   { *h = append(*h, x.(*mergeSource)) }
func (h *mergeHeap) Pop() any {
	old := *h
	s := old[len(old)-1]
	*h = old[:len(old)-1]
	return s
}

// MergeStats says what MergeExports wrote.
type MergeStats struct {
	// Records is how many lines were written; Duplicates how many lines
	// were left out because an earlier input had the same record.
	Records, Duplicates uint64
	// Replicas counts the records written per replica id.
	Replicas map[string]uint64
}

// MergeExports writes the records of several exports (of one replica
// each, or merges) to w as one stream ordered by time, ties broken by
// replica id, then seq, so the same inputs always merge to the same bytes.
// Lines are copied byte for byte, so every replica's chain verifies in the
// merge as it did in its export (VerifyExport). The inputs are read once,
// one line of each held at a time: each must be in that order itself (an
// export is: a chain's records are stamped in seq and time order). A record
// found in more than one input (overlapping exports of one replica) is
// written once; two different records with the same replica and seq, or a
// replica's records out of seq order across inputs, are an error, and the
// output is then incomplete.
func MergeExports(w io.Writer, inputs ...ExportInput) (MergeStats, error) {
	stats := MergeStats{Replicas: map[string]uint64{}}
	h := make(mergeHeap, 0, len(inputs))
	for i, in := range inputs {
		s := &mergeSource{in: in, sc: newScanner(in.R), index: i}
		ok, err := s.next()
		if err != nil {
			return stats, err
		}
		if ok {
			h = append(h, s)
		}
	}
	heap.Init(&h)
	// The last record written of each replica, by seq and the digest of
	// its line: a duplicate must be the same bytes, not merely claim the
	// same hash.
	type last struct {
		seq  uint64
		line [sha256.Size]byte
	}
	written := map[string]last{}
	out := bufio.NewWriter(w)
	for h.Len() > 0 {
		s := h[0]
		k := s.key
		prev, seen := written[k.Replica]
		digest := sha256.Sum256(s.line)
		switch {
		case seen && k.Seq == prev.seq && digest == prev.line:
			stats.Duplicates++
		case seen && k.Seq <= prev.seq:
			if k.Seq == prev.seq {
				return stats, fmt.Errorf("audit merge: %s line %d: replica %q seq %d differs from the record of the same seq in an earlier input", s.in.Name, s.lines, k.Replica, k.Seq)
			}
			return stats, fmt.Errorf("audit merge: %s line %d: replica %q seq %d comes after its seq %d (an input out of order)", s.in.Name, s.lines, k.Replica, k.Seq, prev.seq)
		default:
			if len(written) >= MaxExportChains && !seen {
				return stats, fmt.Errorf("audit merge: more than %d replicas", MaxExportChains)
			}
			if _, err := out.Write(s.line); err != nil {
				return stats, fmt.Errorf("audit merge: write: %w", err)
			}
			if err := out.WriteByte('\n'); err != nil {
				return stats, fmt.Errorf("audit merge: write: %w", err)
			}
			written[k.Replica] = last{k.Seq, digest}
			stats.Records++
			stats.Replicas[k.Replica]++
		}
		ok, err := s.next()
		if err != nil {
			return stats, err
		}
		if ok {
			heap.Fix(&h, 0)
		} else {
			heap.Pop(&h)
		}
	}
	if err := out.Flush(); err != nil {
		return stats, fmt.Errorf("audit merge: write: %w", err)
	}
	return stats, nil
}

// ChainReport is what VerifyExport found of one replica's chain.
type ChainReport struct {
	// Replica is the chain's replica id ("" for records written before
	// replicas were named).
	Replica string `json:"replica"`
	// OK is true when every record of the chain in the export checks out.
	OK bool `json:"ok"`
	// Records is how many of the export's records are the chain's.
	Records uint64 `json:"records"`
	// FirstSeq and LastSeq bound the chain's records in the export (an
	// export may start after a seq, or after pruned records).
	FirstSeq uint64 `json:"first_seq"`
	LastSeq  uint64 `json:"last_seq"`
	// HeadHash is the hash of the chain's last record in the export.
	HeadHash string `json:"head_hash"`
	// UnnamedThrough, when not 0, says the chain's records up to this seq
	// carry no replica id (written before the broker named its replica)
	// and the first named record links to them.
	UnnamedThrough uint64 `json:"unnamed_through,omitempty"`
	// FirstBadSeq, FirstBadID and Problem describe the first record that
	// does not check out.
	FirstBadSeq uint64 `json:"first_bad_seq,omitempty"`
	FirstBadID  string `json:"first_bad_id,omitempty"`
	Problem     string `json:"problem,omitempty"`
}

// ExportVerifyResult is the outcome of VerifyExport.
type ExportVerifyResult struct {
	// OK is true when every line is a record and every chain checks out.
	OK bool `json:"ok"`
	// Lines is how many lines were read.
	Lines uint64 `json:"lines"`
	// Chains reports each replica's chain, by replica id.
	Chains []ChainReport `json:"chains"`
	// BadLine and Problem name a line that is not a record at all (which
	// chain it belonged to cannot be told); the walk stops there.
	BadLine uint64 `json:"bad_line,omitempty"`
	Problem string `json:"problem,omitempty"`
}

// exportChain is the walk of one replica's chain through an export.
type exportChain struct {
	rep      ChainReport
	next     uint64 // seq expected next
	prevHash string
}

func (c *exportChain) fail(seq uint64, id, problem string) {
	c.rep.FirstBadSeq, c.rep.FirstBadID, c.rep.Problem = seq, id, problem
}

// VerifyExport checks an export read from r (credbrokerctl audit export,
// or a merge of several replicas' exports, MergeExports) without the
// broker: every line must be a record in its stored, canonical form with
// the right hash, and the records of each replica id, in the order they
// come, must be a chain: seqs contiguous, each linking to its
// predecessor's hash. A record dropped, reordered or edited within a
// replica is reported against that replica, with its seq. The chains are
// independent: another replica's break leaves a chain's report OK.
//
// An export may start anywhere (after a seq, or after pruned records): a
// chain's first record is taken as its start unless it is seq 1, which
// must link to nothing. Records without a replica id (written before the
// broker named its replica) form the chain "", and a named chain whose
// first record links to that chain's last one continues it: a broker
// upgraded in place exports one chain. What an export cannot show is
// records removed from its ends; an anchor (audit.anchor) of each replica
// can.
//
// The error is only for failing to read r.
func VerifyExport(r io.Reader) (ExportVerifyResult, error) {
	var res ExportVerifyResult
	chains := map[string]*exportChain{}
	sc := newScanner(r)
	for sc.Scan() {
		res.Lines++
		line := sc.Bytes()
		var rec Record
		if err := json.Unmarshal(line, &rec); err != nil || rec.Seq == 0 {
			res.BadLine, res.Problem = res.Lines, "not an audit record"
			break
		}
		c := chains[rec.Replica]
		if c == nil {
			if len(chains) >= MaxExportChains {
				res.BadLine, res.Problem = res.Lines, fmt.Sprintf("more than %d replicas", MaxExportChains)
				break
			}
			c = startChain(chains, rec)
			chains[rec.Replica] = c
		}
		c.add(rec, line)
	}
	if err := sc.Err(); err != nil {
		if !errors.Is(err, bufio.ErrTooLong) {
			return ExportVerifyResult{}, fmt.Errorf("audit: verify export: %w", err)
		}
		res.BadLine, res.Problem = res.Lines+1, lineErr(err).Error()
	}
	res.OK = res.Problem == ""
	for _, id := range slices.Sorted(maps.Keys(chains)) {
		rep := chains[id].rep
		rep.OK = rep.Problem == ""
		res.OK = res.OK && rep.OK
		res.Chains = append(res.Chains, rep)
	}
	return res, nil
}

// startChain begins the chain of rec's replica at rec. A named chain
// whose first record links to the end of the unnamed chain takes that
// chain over: the same broker's records before and after it was named.
func startChain(chains map[string]*exportChain, rec Record) *exportChain {
	c := &exportChain{rep: ChainReport{Replica: rec.Replica, FirstSeq: rec.Seq}, next: rec.Seq, prevHash: rec.PrevHash}
	if u := chains[""]; rec.Replica != "" && u != nil && u.rep.Problem == "" && rec.Seq > 1 &&
		u.next == rec.Seq && u.prevHash == rec.PrevHash {
		delete(chains, "")
		u.rep.Replica, u.rep.UnnamedThrough = rec.Replica, u.rep.LastSeq
		return u
	}
	if rec.Seq == 1 {
		c.prevHash = ""
	}
	return c
}

// add checks rec, stored as line, as the chain's next record.
func (c *exportChain) add(rec Record, line []byte) {
	c.rep.Records++
	if c.rep.Problem != "" {
		return // the first problem is the one reported
	}
	switch {
	case rec.Seq > c.next:
		c.fail(c.next, "", fmt.Sprintf("missing seq %d (the next record is seq %d)", c.next, rec.Seq))
		return
	case rec.Seq < c.next:
		c.fail(rec.Seq, rec.ID, fmt.Sprintf("seq %d out of order: after seq %d", rec.Seq, c.next-1))
		return
	}
	want, isCanonical, err := hashStored(rec, line)
	switch {
	case rec.PrevHash != c.prevHash:
		c.fail(rec.Seq, rec.ID, "prev_hash does not link")
	case err != nil:
		c.fail(rec.Seq, rec.ID, "undecodable record: "+err.Error())
	case rec.Hash != want:
		c.fail(rec.Seq, rec.ID, "hash mismatch")
	case !isCanonical:
		c.fail(rec.Seq, rec.ID, "hash mismatch: the line is not the record's canonical form")
	}
	if c.rep.Problem != "" {
		return
	}
	c.next, c.prevHash = rec.Seq+1, rec.Hash
	c.rep.LastSeq, c.rep.HeadHash = rec.Seq, rec.Hash
}
