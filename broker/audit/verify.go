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

	"go.etcd.io/bbolt"
)

// VerifyResult is the outcome of Verify.
type VerifyResult struct {
	// OK is true when the whole chain and its head check out.
	OK bool
	// Records is how many records the log holds.
	Records uint64
	// HeadHash is the hash of the last record (when OK, the value to anchor
	// outside the broker host).
	HeadHash string
	// FirstBadSeq is the seq of the first bad or missing record (0 when OK).
	FirstBadSeq uint64
	// FirstBadID is that record's ID, when it could be decoded.
	FirstBadID string
	// Problem says what is wrong, e.g. "hash mismatch", "missing seq 5".
	Problem string
}

// Verify walks the whole chain in seq order and checks that seqs are
// contiguous from 1, every record decodes, is stored in canonical form, links
// to its predecessor and carries the right hash, and that the last record is
// the stored head. It reports the first problem found; the error is only for
// failures to read the DB. The walk uses one short read transaction per chunk
// of records, so it does not block writers or pin pages for long.
func (l *Log) Verify() (VerifyResult, error) { return l.VerifyProgress(nil) }

// VerifyProgress is Verify reporting its progress: after every chunk of
// records it calls progress (when not nil) with the records checked so far
// and the chain's length when the walk began, outside any transaction, so a
// slow consumer slows the walk but not the log. An error from progress stops
// the walk and is returned wrapped.
func (l *Log) VerifyProgress(progress func(done, total uint64) error) (VerifyResult, error) {
	total, _ := l.Head()
	v := verifier{next: 1}
	for !v.done {
		if err := l.db.View(v.chunk); err != nil {
			return VerifyResult{}, fmt.Errorf("audit: verify: %w", err)
		}
		if progress != nil && !v.done {
			if err := progress(v.res.Records, total); err != nil {
				return VerifyResult{}, fmt.Errorf("audit: verify: %w", err)
			}
		}
	}
	v.res.OK = v.res.Problem == ""
	if v.res.OK {
		v.res.HeadHash = v.prevHash
	}
	return v.res, nil
}

// verifier carries the walk from one read transaction to the next.
type verifier struct {
	next     uint64 // seq expected next
	prevHash string // hash of record next-1
	lastID   string // ID of record next-1
	lastKey  []byte // last key read; the next chunk starts after it
	done     bool
	res      VerifyResult
}

func (v *verifier) fail(seq uint64, id, problem string) {
	if v.res.Problem == "" {
		v.res.FirstBadSeq, v.res.FirstBadID, v.res.Problem = seq, id, problem
	}
}

func (v *verifier) chunk(tx *bbolt.Tx) error {
	b, err := openBuckets(tx)
	if err != nil {
		return err
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
		v.done = true
	}
	return nil
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
