package audit

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"go.etcd.io/bbolt"
)

// AnchorSink receives the chain heads an AnchorPublisher publishes.
type AnchorSink interface {
	// Name labels the sink in logs.
	Name() string
	// PublishAnchor publishes a; it should not block for long (a network
	// sink queues).
	PublishAnchor(a Anchor) error
}

// AnchorPublisher publishes the chain's head to sinks outside the broker
// host (audit.anchor), so that records removed from the end of the chain
// (with the stored head moved back, which the chain alone cannot show) are
// caught by verifying against the last head published.
type AnchorPublisher struct {
	log      *Log
	brokerID string
	now      func() time.Time
	host     string
	sinks    []AnchorSink
	last     map[string]uint64 // seq last published per sink (0: none)
	observe  func(sink string, a Anchor, err error)
}

// NewAnchorPublisher returns a publisher of l's head to sinks, stamped with
// now and naming brokerID and host.
func NewAnchorPublisher(l *Log, brokerID, host string, now func() time.Time, sinks ...AnchorSink) *AnchorPublisher {
	return &AnchorPublisher{log: l, brokerID: brokerID, host: host, now: now, sinks: sinks, last: map[string]uint64{},
		observe: func(string, Anchor, error) {}}
}

// Observe sets a function told of every publication to a sink and its
// outcome (metrics). Call it before publishing.
func (p *AnchorPublisher) Observe(fn func(sink string, a Anchor, err error)) { p.observe = fn }

// Publish publishes the current head to every sink that has not had it yet
// (each sink at most once per head), and returns the first error, naming
// its sink; the other sinks are published to regardless.
func (p *AnchorPublisher) Publish() (Anchor, error) {
	seq, hash := p.log.Head()
	a := Anchor{Seq: seq, Hash: hash, Time: p.now().UTC().Round(0), BrokerID: p.brokerID, Host: p.host}
	var first error
	for _, s := range p.sinks {
		if last, ok := p.last[s.Name()]; ok && last == seq {
			continue
		}
		err := s.PublishAnchor(a)
		p.observe(s.Name(), a, err)
		if err != nil {
			if first == nil {
				first = fmt.Errorf("audit anchor %s: %w", s.Name(), err)
			}
			continue
		}
		p.last[s.Name()] = seq
	}
	return a, first
}

// Run publishes at once, then at every tick until done closes; report
// receives each round's outcome. It is not safe to call Publish while Run
// runs: publish the head at shutdown after Run has returned.
func (p *AnchorPublisher) Run(done <-chan struct{}, tick <-chan time.Time, report func(Anchor, error)) {
	report(p.Publish())
	for {
		select {
		case <-done:
			return
		case <-tick:
			report(p.Publish())
		}
	}
}

// Reaches returns nil if the chain still reaches a: the record at a.Seq
// exists with a.Hash, or was pruned (as far as the newest checkpoint
// allows checking: the last record pruned must carry a.Hash). Otherwise it
// says why not: the chain ends before a.Seq, or the record there is another.
func (l *Log) Reaches(a Anchor) error {
	if a.Seq == 0 {
		return nil
	}
	return l.db.View(func(tx *bbolt.Tx) error {
		b, err := openBuckets(tx)
		if err != nil {
			return err
		}
		if v := b.records.Get(seqKey(a.Seq)); v != nil {
			var r prunable
			if err := json.Unmarshal(v, &r); err != nil || r.Hash != a.Hash {
				return fmt.Errorf("audit: record seq %d is not the one anchored at %s", a.Seq, a.Time.UTC().Format(time.RFC3339))
			}
			return nil
		}
		if first, _ := b.records.Cursor().First(); first != nil && binary.BigEndian.Uint64(first) > a.Seq {
			return nil // pruned since; Verify checks what the checkpoint allows
		}
		head, _, _ := decodeHead(b.meta.Get(metaHead))
		return fmt.Errorf("audit: the chain ends at seq %d, before seq %d anchored at %s", head, a.Seq, a.Time.UTC().Format(time.RFC3339))
	})
}

// AnchorFile publishes heads to a file, replaced atomically (a temporary
// file in the same directory, fsynced, renamed over it, and the directory
// fsynced), so a reader sees the previous head or the new one, never part
// of one. It refuses to replace an anchor the chain no longer reaches:
// after records were removed from the end of the chain, the file keeps the
// evidence instead of anchoring the shortened chain.
type AnchorFile struct {
	path string
	log  *Log
}

// NewAnchorFile returns the file sink at path for l's chain.
func NewAnchorFile(path string, l *Log) *AnchorFile { return &AnchorFile{path: path, log: l} }

// Name implements AnchorSink.
func (f *AnchorFile) Name() string { return "file" }

// PublishAnchor implements AnchorSink.
func (f *AnchorFile) PublishAnchor(a Anchor) error {
	prev, err := ReadAnchorFile(f.path)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return fmt.Errorf("reading the previous anchor (left in place): %w", err)
	default:
		if err := f.log.Reaches(prev); err != nil {
			return fmt.Errorf("the chain no longer reaches the anchor in %s (left in place): %w", f.path, err)
		}
	}
	return WriteAnchorFile(f.path, a)
}

// maxAnchorFile bounds the anchor file read; it is a few hundred bytes.
const maxAnchorFile = 64 << 10

// AnchorEventType marks a webhook's body as an anchor.
const AnchorEventType = "audit_anchor"

// AnchorEvent is the body a webhook sink POSTs: the anchor, marked as one.
// Saved as it arrives, it is an anchor file ReadAnchorFile reads.
type AnchorEvent struct {
	Type string `json:"type"`
	Anchor
}

// ReadAnchorFile reads an anchor file as AnchorFile writes it (or a
// webhook's AnchorEvent body).
func ReadAnchorFile(path string) (Anchor, error) {
	fh, err := os.Open(path)
	if err != nil {
		return Anchor{}, err
	}
	defer fh.Close()
	raw, err := io.ReadAll(io.LimitReader(fh, maxAnchorFile+1))
	if err != nil {
		return Anchor{}, err
	}
	if len(raw) > maxAnchorFile {
		return Anchor{}, fmt.Errorf("audit: anchor %s is larger than %d bytes", path, maxAnchorFile)
	}
	var a struct {
		Anchor
		Seq *uint64 `json:"seq"`
		// A webhook's body (AnchorEvent) is an anchor file too.
		Type string `json:"type"`
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&a); err != nil {
		return Anchor{}, fmt.Errorf("audit: anchor %s: %w", path, err)
	}
	if a.Seq == nil {
		return Anchor{}, fmt.Errorf("audit: anchor %s: no seq", path)
	}
	if a.Type != "" && a.Type != AnchorEventType {
		return Anchor{}, fmt.Errorf("audit: anchor %s: type %q is not %q", path, a.Type, AnchorEventType)
	}
	a.Anchor.Seq = *a.Seq
	return a.Anchor, nil
}

// WriteAnchorFile replaces path with a, atomically and durably.
func WriteAnchorFile(path string, a Anchor) error {
	body, err := json.Marshal(a)
	if err != nil {
		return err
	}
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // after a successful rename: gone already
	_, err = tmp.Write(append(body, '\n'))
	if err == nil {
		// An anchor is public (a seq and a hash); auditors read it.
		err = tmp.Chmod(0o644)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
