package boltstate

import (
	"errors"
	"fmt"
	"time"

	"go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// Options returns the bbolt options the broker runs with.
//
// The freelist is not written on each commit (NoFreelistSync) and is kept as
// a hash map: with an append-only audit log the freelist grows with the file,
// and syncing it made every commit rewrite it. bbolt rebuilds it by scanning
// the file on open instead; that is the trade etcd makes too. Every commit
// still fsyncs its data and meta pages, so durability is unchanged. The file
// is mapped with room to grow (see initialMmapSize).
func Options() *bbolt.Options {
	return &bbolt.Options{
		Timeout:         time.Second,
		NoFreelistSync:  true,
		FreelistType:    bbolt.FreelistMapType,
		InitialMmapSize: initialMmapSize,
	}
}

// initialMmapSize reserves address space (not memory) up front, so that a
// growing audit log does not remap the file, which blocks every reader and
// writer, each time it doubles.
const initialMmapSize = 1 << 30

// OpenDB opens (creating, mode 0600) the database at path with Options. If
// another process holds it, OpenDB fails after a second with an error that
// says so.
func OpenDB(path string) (*bbolt.DB, error) {
	db, err := bbolt.Open(path, 0o600, Options())
	if errors.Is(err, bolterrors.ErrTimeout) {
		return nil, fmt.Errorf("boltstate: %s is locked: is another credbroker running on this data dir?", path)
	}
	if err != nil {
		return nil, fmt.Errorf("boltstate: open %s: %w", path, err)
	}
	return db, nil
}
