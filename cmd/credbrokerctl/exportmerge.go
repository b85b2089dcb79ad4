package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"

	"github.com/credbroker/credbroker/broker/audit"
)

// errMergeEnded tells a replica's export that the merge reading it has
// ended (finished, or failed on another replica).
var errMergeEnded = errors.New("the merge ended")

// replicaExport is one replica's export as the merge reads it.
type replicaExport struct {
	target target
	r      *io.PipeReader
	last   uint64 // the last seq exported, once the export ended
}

// exportMerged writes the audit chains of several replicas to stdout as
// one export, merged by audit.MergeExports exactly as 'audit merge' merges
// files. Each replica's export streams into the merge through a pipe, so
// the merge holds one record of each replica (and the transport's
// buffers), never a whole export, and --timeout still bounds each
// replica's silence, not the time its records wait their turn.
//
// MergeExports reads every input's first record before it writes, so a
// replica that cannot be reached (or refuses) fails the command naming it
// with nothing on stdout. A replica failing later stops the export with an
// error naming it; what was written is then incomplete, and said so. With
// mark, once the whole merge is written, each replica is told its chain is
// exported through the last record it sent.
func (a *app) exportMerged(ctx context.Context, replicas []target, mark bool) error {
	named := map[target]bool{}
	for _, t := range replicas {
		if named[t] {
			return usagef("%s is named twice", t)
		}
		named[t] = true
	}
	mctx, cancel := context.WithCancel(ctx)
	defer cancel()
	exports := make([]*replicaExport, len(replicas))
	inputs := make([]audit.ExportInput, len(replicas))
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		failed error // the first replica's failure: it ends the merge
	)
	for i, t := range replicas {
		pr, pw := io.Pipe()
		e := &replicaExport{target: t, r: pr}
		exports[i], inputs[i] = e, audit.ExportInput{Name: t.String(), R: pr}
		wg.Add(1)
		go func() {
			defer wg.Done()
			last, err := a.exportAudit(mctx, t, 0, pw, nil)
			if err != nil && !strings.Contains(err.Error(), t.address()) {
				err = fmt.Errorf("export from %s: %w", t, err)
			}
			if err != nil {
				// Recorded before the pipe carries it to the merge, so
				// the merge's failure is known to be this one.
				mu.Lock()
				if failed == nil {
					failed = err
				}
				mu.Unlock()
			}
			e.last = last
			pw.CloseWithError(err)
		}()
	}
	stats, err := audit.MergeExports(a.stdout, inputs...)
	mu.Lock()
	cause := failed
	mu.Unlock()
	cancel()
	for _, e := range exports {
		e.r.CloseWithError(errMergeEnded)
	}
	wg.Wait()
	if err != nil {
		if cause != nil {
			err = cause
		}
		if stats.Records > 0 {
			return fmt.Errorf("%w; the export is incomplete: %d records were written, discard them", err, stats.Records)
		}
		return err
	}
	fmt.Fprintf(a.stderr, "merged %d records of %d replicas from %d brokers (%d duplicates left out)\n", stats.Records, len(stats.Replicas), len(replicas), stats.Duplicates)
	if !mark {
		return nil
	}
	for _, e := range exports {
		if e.last == 0 {
			continue
		}
		if err := a.markExported(ctx, e.target, e.last); err != nil {
			return fmt.Errorf("%s: %w", e.target, err)
		}
	}
	return nil
}
