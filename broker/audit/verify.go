package audit

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"runtime"
	"sync"
	"time"

	"go.etcd.io/bbolt"
)

// VerifyResult is the outcome of Verify.
type VerifyResult struct {
	// OK is true when the whole chain and its head check out (and, when
	// verifying against an anchor, the chain reaches it).
	OK bool
	// Records is how many records the log holds.
	Records uint64
	// HeadHash is the hash of the last record (when OK, the value to anchor
	// outside the broker host).
	HeadHash string
	// HeadSeq is the seq of the last record (when OK).
	HeadSeq uint64
	// FirstSeq is the seq of the first record kept (1 unless pruned).
	FirstSeq uint64
	// PrunedThrough is the last seq pruned (0: none), as the newest
	// checkpoint states; the walk started from its hash.
	PrunedThrough uint64
	// CheckpointSeq is the seq of the newest checkpoint record (0: none).
	CheckpointSeq uint64
	// AnchorChecked is true when an anchor was given and the chain reaches
	// it with the anchored hash.
	AnchorChecked bool
	// FirstBadSeq is the seq of the first bad or missing record (0 when OK).
	FirstBadSeq uint64
	// FirstBadID is that record's ID, when it could be decoded.
	FirstBadID string
	// Problem says what is wrong, e.g. "hash mismatch", "missing seq 5".
	Problem string
}

// Anchor is a chain head published outside the broker (audit.anchor): the
// last record's seq and hash when it was published. Verifying against it
// proves the chain still reaches that record unchanged, which the chain
// alone cannot: someone who deletes the newest records and moves the head
// back leaves a chain that verifies.
type Anchor struct {
	// Seq and Hash are the head's (0 and "" for an empty chain).
	Seq  uint64 `json:"seq"`
	Hash string `json:"hash"`
	// Time is when the anchor was published.
	Time time.Time `json:"time"`
	// BrokerID names the broker whose chain it is (its SPIFFE ID), and Host
	// the host it ran on: replicas sharing a SPIFFE ID keep a chain each.
	BrokerID string `json:"broker_id"`
	Host     string `json:"host,omitempty"`
}

// VerifyOptions configure VerifyWith.
type VerifyOptions struct {
	// Progress, when not nil, is called after every chunk of records with
	// the records checked so far and the chain's length when the walk
	// began, outside any transaction, so a slow consumer slows the walk but
	// not the log. An error from it stops the walk and is returned wrapped.
	Progress func(done, total uint64) error
	// Anchor, when not nil, must be reached: the record at Anchor.Seq must
	// exist with Anchor.Hash (or be the last pruned record, with the
	// newest checkpoint stating that hash).
	Anchor *Anchor
}

// Verify walks the whole chain in seq order and checks that seqs are
// contiguous, every record decodes, is stored in canonical form, links to
// its predecessor and carries the right hash, and that the last record is
// the stored head. The chain starts at seq 1 with an empty prev_hash, or,
// once pruned, after the newest checkpoint's ThroughSeq with its
// ThroughHash; the checkpoint the database names must be the newest in the
// chain, and records missing before the first kept one with no checkpoint
// accounting for them are a break. It reports the first problem found; the
// error is only for failures to read the DB. The walk uses one short read
// transaction per chunk of records, so it does not block writers or pin
// pages for long; Prune waits for it.
func (l *Log) Verify() (VerifyResult, error) { return l.VerifyWith(VerifyOptions{}) }

// VerifyProgress is Verify reporting its progress; see VerifyOptions.
func (l *Log) VerifyProgress(progress func(done, total uint64) error) (VerifyResult, error) {
	return l.VerifyWith(VerifyOptions{Progress: progress})
}

// VerifyWith is Verify with options: progress reports and an anchor.
func (l *Log) VerifyWith(o VerifyOptions) (VerifyResult, error) {
	// No prune in the middle of the walk: the walk reads a chunk per
	// transaction, and records pruned between two would look deleted.
	l.pruneMu.RLock()
	defer l.pruneMu.RUnlock()
	head, _ := l.Head()
	v := verifier{next: 1, anchor: o.Anchor}
	for !v.done {
		if err := l.db.View(v.chunk); err != nil {
			return VerifyResult{}, fmt.Errorf("audit: verify: %w", err)
		}
		if o.Progress != nil && !v.done {
			if err := o.Progress(v.res.Records, head-min(head, v.res.PrunedThrough)); err != nil {
				return VerifyResult{}, fmt.Errorf("audit: verify: %w", err)
			}
		}
	}
	v.res.OK = v.res.Problem == ""
	if v.res.OK {
		v.res.HeadHash, v.res.HeadSeq = v.prevHash, v.next-1
		v.res.AnchorChecked = o.Anchor != nil
	}
	return v.res, nil
}

// verifier carries the walk from one read transaction to the next.
type verifier struct {
	next       uint64 // seq expected next
	prevHash   string // hash of record next-1
	lastID     string // ID of record next-1
	lastKey    []byte // last key read; the next chunk starts after it
	started    bool   // the start (checkpoint) has been read
	startHash  string // the hash the first record kept links to
	checkpoint uint64 // the newest checkpoint, as audit.meta names it
	lastCP     uint64 // the newest checkpoint met in the walk
	anchor     *Anchor
	done       bool
	res        VerifyResult
}

func (v *verifier) fail(seq uint64, id, problem string) {
	if v.res.Problem == "" {
		v.res.FirstBadSeq, v.res.FirstBadID, v.res.Problem = seq, id, problem
	}
}

// start sets where the walk begins: seq 1, or after the records the newest
// checkpoint (named in audit.meta) says were pruned, linking to their last
// hash. The checkpoint is not trusted for more than that: it is checked as
// a record of the chain when the walk reaches it, so an edited checkpoint
// breaks either the first kept record's link or its own hash.
func (v *verifier) start(b buckets) {
	v.started = true
	p := b.meta.Get(metaCheckpoint)
	if p == nil {
		return
	}
	if len(p) != 8 {
		v.fail(0, "", "the newest checkpoint's seq is undecodable")
		v.done = true
		return
	}
	seq := binary.BigEndian.Uint64(p)
	val := b.records.Get(p)
	if val == nil {
		v.fail(seq, "", fmt.Sprintf("the newest checkpoint, seq %d, is missing", seq))
		v.done = true
		return
	}
	var r Record
	if err := json.Unmarshal(val, &r); err != nil || r.Decision != DecisionCheckpoint || r.Checkpoint == nil || r.Checkpoint.ThroughSeq >= seq {
		v.fail(seq, r.ID, fmt.Sprintf("seq %d is named the newest checkpoint but is not a checkpoint", seq))
		v.done = true
		return
	}
	v.checkpoint = seq
	v.next, v.prevHash, v.startHash = r.Checkpoint.ThroughSeq+1, r.Checkpoint.ThroughHash, r.Checkpoint.ThroughHash
	v.res.PrunedThrough, v.res.CheckpointSeq = r.Checkpoint.ThroughSeq, seq
}

func (v *verifier) chunk(tx *bbolt.Tx) error {
	b, err := openBuckets(tx)
	if err != nil {
		return err
	}
	if !v.started {
		if v.start(b); v.done {
			return nil
		}
		v.res.FirstSeq = v.next
	}
	c := b.records.Cursor()
	var k, val []byte
	if v.lastKey == nil {
		k, val = c.First()
	} else if k, val = c.Seek(v.lastKey); bytes.Equal(k, v.lastKey) {
		k, val = c.Next()
	}
	var keys, vals [][]byte
	for ; k != nil && len(keys) < exportChunk; k, val = c.Next() {
		keys, vals = append(keys, k), append(vals, val)
	}
	v.res.Records += uint64(len(keys))
	if v.res.Problem == "" {
		// Decoding and hashing a record needs nothing from its neighbours,
		// so a chunk's records are examined on every core; the links, and
		// which problem comes first, are then checked in order.
		ex := examineAll(vals)
		for i := range keys {
			if v.res.Problem != "" {
				break
			}
			v.check(keys[i], ex[i])
		}
	}
	if len(keys) > 0 {
		v.lastKey = bytes.Clone(keys[len(keys)-1])
	}
	if k == nil {
		if v.res.Problem == "" {
			v.checkHead(b.meta)
		}
		if v.res.Problem == "" {
			v.checkEnd()
		}
		v.done = true
	}
	return nil
}

// checkEnd checks, once the whole chain has verified, that the checkpoint
// audit.meta names is the newest one in the chain, and that the chain
// reaches the anchor.
func (v *verifier) checkEnd() {
	last := v.next - 1
	if v.lastCP != v.checkpoint {
		v.fail(v.lastCP, "", fmt.Sprintf("checkpoint mismatch: the newest checkpoint in the chain is seq %d, the database names seq %d", v.lastCP, v.checkpoint))
		return
	}
	a := v.anchor
	if a == nil || a.Seq == 0 {
		return
	}
	at := a.Time.UTC().Format(time.RFC3339)
	switch {
	case a.Seq > last:
		v.fail(last+1, "", fmt.Sprintf("anchor not reached: the chain ends at seq %d, but seq %d was its head at %s (records were removed from the end)", last, a.Seq, at))
	case a.Seq < v.res.FirstSeq-1:
		v.fail(a.Seq, "", fmt.Sprintf("anchor cannot be checked: seq %d (anchored at %s) was pruned; the chain starts at seq %d", a.Seq, at, v.res.FirstSeq))
	case a.Seq == v.res.FirstSeq-1 && a.Hash != v.startHash:
		v.fail(a.Seq, "", fmt.Sprintf("anchor mismatch: seq %d was pruned with a hash other than the one anchored at %s", a.Seq, at))
	}
}

// examined is what a stored record says about itself.
type examined struct {
	r           Record
	decodeErr   error  // the stored bytes are not a record
	want        string // the hash r should carry
	isCanonical bool   // the stored bytes are r's canonical encoding
	hashErr     error
}

// examineAll examines every stored record of vals, spread over half the
// CPUs (at most 4), so that a verification on a busy broker leaves the rest
// to issuance.
func examineAll(vals [][]byte) []examined {
	out := make([]examined, len(vals))
	workers := max(1, min(runtime.GOMAXPROCS(0)/2, 4, len(vals)))
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < len(vals); i += workers {
				e := &out[i]
				if e.decodeErr = json.Unmarshal(vals[i], &e.r); e.decodeErr == nil {
					e.want, e.isCanonical, e.hashErr = hashStored(e.r, vals[i])
				}
			}
		}()
	}
	wg.Wait()
	return out
}

// check verifies one examined record against the walk and advances it.
func (v *verifier) check(k []byte, e examined) {
	if len(k) != 8 {
		v.fail(v.next, "", fmt.Sprintf("malformed key %x", k))
		return
	}
	seq := binary.BigEndian.Uint64(k)
	if seq != v.next {
		if v.next == v.res.FirstSeq && seq > v.next {
			v.fail(v.next, "", fmt.Sprintf("missing seq %d: the chain starts at seq %d and no checkpoint accounts for the records before it", v.next, seq))
			return
		}
		v.fail(v.next, "", fmt.Sprintf("missing seq %d", v.next))
		return
	}
	if e.decodeErr != nil {
		v.fail(seq, "", "undecodable record: "+e.decodeErr.Error())
		return
	}
	r := e.r
	switch {
	case r.Seq != seq:
		v.fail(seq, r.ID, fmt.Sprintf("record says seq %d", r.Seq))
	case r.PrevHash != v.prevHash:
		v.fail(seq, r.ID, "prev_hash does not link")
	case e.hashErr != nil:
		v.fail(seq, r.ID, "undecodable record: "+e.hashErr.Error())
	case r.Hash != e.want:
		v.fail(seq, r.ID, "hash mismatch")
	case !e.isCanonical:
		// Same hash, different bytes: e.g. an added or duplicated member.
		v.fail(seq, r.ID, "hash mismatch: stored bytes are not canonical")
	}
	if v.res.Problem != "" {
		return
	}
	if r.Decision == DecisionCheckpoint {
		if r.Checkpoint == nil || r.Checkpoint.ThroughSeq >= seq {
			v.fail(seq, r.ID, "malformed checkpoint")
			return
		}
		v.lastCP = seq
	}
	if a := v.anchor; a != nil && a.Seq == seq && a.Hash != r.Hash {
		v.fail(seq, r.ID, fmt.Sprintf("anchor mismatch: the record's hash is not the one anchored at %s", a.Time.UTC().Format(time.RFC3339)))
		return
	}
	v.next, v.prevHash, v.lastID = seq+1, r.Hash, r.ID
}

// hashStored returns the hash r should carry (Record.ComputeHash) and
// whether stored is r's canonical encoding, encoding r once: the canonical
// form with Hash blanked is the encoding with its last member emptied.
func hashStored(r Record, stored []byte) (want string, isCanonical bool, err error) {
	enc, err := json.Marshal(r)
	if err != nil {
		return "", false, fmt.Errorf("audit: encode record: %w", err)
	}
	isCanonical = bytes.Equal(enc, stored)
	tail := `"hash":"` + r.Hash + `"}`
	if !isHexHash(r.Hash) || !bytes.HasSuffix(enc, []byte(tail)) {
		want, err = r.ComputeHash()
		return want, isCanonical, err
	}
	blank := append(enc[:len(enc)-len(tail)], emptyHashSuffix...)
	h := sha256.New()
	h.Write([]byte(r.PrevHash))
	h.Write(blank)
	var sum [sha256.Size]byte
	return hex.EncodeToString(h.Sum(sum[:0])), isCanonical, nil
}

// isHexHash reports whether s looks like a stored hash: 64 lowercase hex
// digits, which encoding/json writes unescaped.
func isHexHash(s string) bool {
	if len(s) != 2*sha256.Size {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// checkHead compares the end of the walk with the stored head, which every
// append updates in the same transaction: a removed tail (or a rewritten last
// record) no longer matches it.
func (v *verifier) checkHead(meta *bbolt.Bucket) {
	last := v.next - 1
	seq, hash, ok := decodeHead(meta.Get(metaHead))
	switch {
	case !ok:
		v.fail(last+1, "", "head mismatch: head is undecodable")
	case seq > last:
		v.fail(last+1, "", fmt.Sprintf("head mismatch: head is seq %d but the chain ends at seq %d", seq, last))
	case seq < last:
		// Unreachable through Append, which moves the head with every record.
		v.fail(seq+1, "", fmt.Sprintf("head mismatch: head is seq %d but the chain runs to seq %d", seq, last))
	case hash != v.prevHash:
		v.fail(last, v.lastID, "head mismatch: last record's hash differs from the head")
	}
}
