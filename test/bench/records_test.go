package bench

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/credbroker/credbroker/broker/audit"
	"github.com/credbroker/credbroker/broker/state/boltstate"
)

// The database P6 lists from. readerCount identities ("readers") have
// readerRecords issued records each, spread evenly over the chain; every
// other record belongs to one of fillerCallers node identities. Whatever
// the size of the database, a listing by a reader's identity returns the
// same number of records, one page (readerRecords is the API's default
// limit), so the ratio of the two p99s is what the database's size costs.
const (
	readerCount   = 5
	readerRecords = 100
	fillerCallers = 1000
	// appenders is how many goroutines append at once, so that group
	// commit fills its transactions.
	appenders = 512
)

// readerID is the SPIFFE ID of reader i.
func readerID(i int) string {
	return fmt.Sprintf("spiffe://%s/ns/audit/sa/reader-%d", td, i)
}

// writeRecords creates the bbolt file at path holding n issued records
// (n >= readerCount*readerRecords), written through the audit package as
// the broker writes them. It is setup, not measurement: the file is opened
// as the daemon opens it, but commits skip fsync (the audit log refuses a
// NoSync database at Open, so it is switched off after Open), and the file
// is synced once at the end.
func writeRecords(path string, n int) error {
	if n < readerCount*readerRecords {
		return fmt.Errorf("bench: %d records cannot hold %d per reader", n, readerRecords)
	}
	db, err := boltstate.OpenDB(path)
	if err != nil {
		return err
	}
	defer db.Close()
	log, err := audit.Open(db)
	if err != nil {
		return err
	}
	db.NoSync = true
	step := n / (readerCount * readerRecords)
	var (
		next     atomic.Int64
		wg       sync.WaitGroup
		errOnce  sync.Once
		firstErr error
	)
	now := time.Now()
	for range appenders {
		wg.Go(func() {
			for {
				j := int(next.Add(1)) - 1
				if j >= n {
					return
				}
				caller := fmt.Sprintf("spiffe://%s/capi/cluster/capi-prod/workload-%d/node/node-%d", td, j%fillerCallers%50, j%fillerCallers)
				if k := j / step; j%step == 0 && k < readerCount*readerRecords {
					caller = readerID(k % readerCount)
				}
				id, err := newID()
				if err == nil {
					_, err = log.Append(audit.Record{
						IssuanceID: id, Caller: caller, Attestation: "x509-svid", Profile: "capa-token",
						Cluster: fmt.Sprintf("capi-prod/workload-%d", j%50), Issuer: "local", Decision: audit.DecisionIssued,
						TTL: 5 * time.Minute, ExpiresAt: now.Add(5 * time.Minute), UpstreamRef: id,
					})
				}
				if err != nil {
					errOnce.Do(func() { firstErr = err })
					return
				}
			}
		})
	}
	wg.Wait()
	log.Close()
	if firstErr != nil {
		return firstErr
	}
	db.NoSync = false
	return db.Sync()
}

// cachedRecords puts a database of n records (writeRecords) at path. With
// cacheDir set it keeps a copy there, named for n and for a hash of the
// source that decides the file's content (the audit package and this file),
// and copies it when it is there: the writing takes minutes at a million
// records. It reports whether the copy came from the cache.
func cachedRecords(cacheDir, path string, n int) (bool, error) {
	if cacheDir == "" {
		return false, writeRecords(path, n)
	}
	key, err := sourceHash(filepath.Join("..", "..", "broker", "audit", "*.go"), "records_test.go")
	if err != nil {
		return false, err
	}
	cached := filepath.Join(cacheDir, fmt.Sprintf("audit-%d-%s.db", n, key[:16]))
	if err := copyFile(cached, path); err == nil {
		return true, nil
	} else if !os.IsNotExist(err) {
		return false, err
	}
	if err := writeRecords(path, n); err != nil {
		return false, err
	}
	if err := os.MkdirAll(cacheDir, 0o700); err != nil {
		return false, err
	}
	// Copies made from older source are of no more use: a million records
	// take more than a gigabyte.
	stale, err := filepath.Glob(filepath.Join(cacheDir, fmt.Sprintf("audit-%d-*.db*", n)))
	if err != nil {
		return false, err
	}
	for _, f := range stale {
		if err := os.Remove(f); err != nil {
			return false, err
		}
	}
	tmp := cached + ".tmp"
	if err := copyFile(path, tmp); err != nil {
		return false, err
	}
	return false, os.Rename(tmp, cached)
}

// sourceHash hashes the files matching the patterns, test files excluded
// unless named exactly.
func sourceHash(patterns ...string) (string, error) {
	h := sha256.New()
	for _, pat := range patterns {
		files, err := filepath.Glob(pat)
		if err != nil {
			return "", err
		}
		if len(files) == 0 {
			return "", fmt.Errorf("bench: no source matches %s", pat)
		}
		for _, f := range files {
			b, err := os.ReadFile(f)
			if err != nil {
				return "", err
			}
			fmt.Fprintf(h, "%s %d\n", filepath.Base(f), len(b))
			h.Write(b)
		}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// copyFile copies src to a new file dst (mode 0600).
func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
