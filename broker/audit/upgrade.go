package audit

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"

	"go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// upgradeChunk is how many records upgrade links per write transaction, so
// that upgrading millions of records never holds them all in one.
var upgradeChunk = 50_000

// upgrade brings db to the current layout: it links every record not yet
// in audit.idx.links (all of them in a layout-1 database, none in an
// up-to-date one), a chunk per transaction, then drops the layout-1
// indexes. Each chunk commits its links with the heads they move, so an
// upgrade cut short resumes where it stopped on the next Open.
func upgrade(db *bbolt.DB) error {
	for {
		done := false
		err := db.Update(func(tx *bbolt.Tx) error {
			b, err := openBuckets(tx)
			if err != nil {
				return err
			}
			b.links.FillPercent = 1.0
			start := uint64(1)
			if k, _ := b.links.Cursor().Last(); k != nil {
				start = binary.BigEndian.Uint64(k) + 1
			}
			c := b.records.Cursor()
			n := 0
			for k, v := c.Seek(seqKey(start)); k != nil; k, v = c.Next() {
				if n == upgradeChunk {
					return nil
				}
				var r struct {
					Caller, Cluster string
					Decision        Decision
				}
				if err := json.Unmarshal(v, &r); err != nil {
					return fmt.Errorf("upgrade: decode record %x: %w", k, err)
				}
				if err := b.index(binary.BigEndian.Uint64(k), "", "", r.Caller, r.Cluster, r.Decision, nil); err != nil {
					return fmt.Errorf("upgrade: link record %x: %w", k, err)
				}
				n++
			}
			for _, name := range oldBuckets {
				if err := tx.DeleteBucket(name); err != nil && !errors.Is(err, berrors.ErrBucketNotFound) {
					return fmt.Errorf("upgrade: drop %s: %w", name, err)
				}
			}
			done = true
			if bytes.Equal(b.meta.Get(metaLayout), []byte(layoutVersion)) {
				return nil
			}
			return b.meta.Put(metaLayout, []byte(layoutVersion))
		})
		if err != nil || done {
			return err
		}
	}
}
