package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/credbroker/credbroker/broker/audit"
	"github.com/credbroker/credbroker/test/fakeclock"
)

// replicaExports writes n records to each of three replicas' audit logs,
// concurrently, and returns their export files as `audit export` writes them.
func replicaExports(t *testing.T, n int) []string {
	t.Helper()
	dir := t.TempDir()
	clock := fakeclock.NewStepping(time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC), time.Millisecond)
	var files []string
	var wg sync.WaitGroup
	for _, id := range []string{"credbroker-0", "credbroker-1", "credbroker-2"} {
		db, err := bbolt.Open(filepath.Join(dir, id+".db"), 0o600, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = db.Close() })
		l, err := audit.Open(db, audit.WithClock(clock.Now), audit.WithReplica(id))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = l.Close() })
		file := filepath.Join(dir, id+".jsonl")
		files = append(files, file)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range n {
				if _, err := l.Append(audit.Record{Decision: audit.DecisionIssued, Caller: "spiffe://td/c", IssuanceID: fmt.Sprint(i)}); err != nil {
					t.Error(err)
					return
				}
			}
			var buf bytes.Buffer
			if err := l.ExportStored(0, func(_ audit.Record, stored []byte) error {
				buf.Write(append(stored, '\n'))
				return nil
			}); err != nil {
				t.Error(err)
			}
			if err := os.WriteFile(file, buf.Bytes(), 0o600); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	return files
}

func TestAuditMergeAndVerifyFile(t *testing.T) {
	t.Parallel()
	files := replicaExports(t, 25)
	r := cli(t, nil, append([]string{"audit", "merge"}, files...)...)
	if r.code != 0 || !strings.Contains(r.stderr, "merged 75 records of 3 replicas") {
		t.Fatalf("merge: %+v", r)
	}
	merged := filepath.Join(t.TempDir(), "fleet.jsonl")
	if err := os.WriteFile(merged, []byte(r.stdout), 0o600); err != nil {
		t.Fatal(err)
	}
	// Deterministic: the files in another order merge to the same bytes.
	if again := cli(t, nil, "audit", "merge", files[2], files[0], files[1]); again.stdout != r.stdout {
		t.Fatal("merge depends on the order of its files")
	}

	v := cli(t, nil, "audit", "verify", "--file", merged)
	if v.code != 0 {
		t.Fatalf("verify --file: %+v", v)
	}
	for _, id := range []string{"credbroker-0", "credbroker-1", "credbroker-2"} {
		if !strings.Contains(v.stdout, fmt.Sprintf("replica %q OK: 25 records, seq 1 to 25", id)) {
			t.Fatalf("verify --file output lacks %s:\n%s", id, v.stdout)
		}
	}
	j := cli(t, nil, "-o", "json", "audit", "verify", "--file", merged)
	if j.code != 0 || !strings.Contains(j.stdout, `"ok": true`) {
		t.Fatalf("verify --file -o json: %+v", j)
	}

	// One record of one replica edited: that replica is named, exit 1.
	lines := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
	for i, line := range lines {
		if strings.Contains(line, `"seq":7,`) && strings.Contains(line, `"replica":"credbroker-1"`) {
			lines[i] = strings.Replace(line, `"issuance_id":"6"`, `"issuance_id":"66"`, 1)
		}
	}
	tampered := filepath.Join(t.TempDir(), "tampered.jsonl")
	if err := os.WriteFile(tampered, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	v = cli(t, nil, "audit", "verify", "--file", tampered)
	if v.code != 1 || !strings.Contains(v.stdout, `replica "credbroker-1" BROKEN at record seq 7`) ||
		!strings.Contains(v.stdout, `replica "credbroker-0" OK`) {
		t.Fatalf("tampered: %+v", v)
	}

	if u := cli(t, nil, "audit", "merge"); u.code != exitUsage {
		t.Fatalf("merge without files: %+v", u)
	}
	if u := cli(t, nil, "audit", "verify", "--file", merged, "--anchor", merged); u.code != exitUsage {
		t.Fatalf("--file with --anchor: %+v", u)
	}
}
