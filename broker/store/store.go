// Package store opens the broker's bbolt database with the options every
// user of it (the server, tools, benchmarks) must share.
package store

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

// Open opens (creating, mode 0600) the database at path. If another process
// holds it, Open fails after a second with an error that says so.
func Open(path string) (*bbolt.DB, error) {
	db, err := bbolt.Open(path, 0o600, Options())
	if errors.Is(err, bolterrors.ErrTimeout) {
		return nil, fmt.Errorf("store: %s is locked: is another credbroker running on this data dir?", path)
	}
	if err != nil {
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	return db, nil
}
