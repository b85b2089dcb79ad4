package e2e

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/credbroker/credbroker/broker/audit"
	"github.com/credbroker/credbroker/broker/config"
)

// seedOldRecords writes n audit records stamped at a fixed time long past
// into the data dir's database, through the audit package (an injected
// clock), before the broker first opens it.
func seedOldRecords(t *testing.T, dataDir string, n int) {
	t.Helper()
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		t.Fatal(err)
	}
	db, err := bbolt.Open(filepath.Join(dataDir, "credbroker.db"), 0o600, &bbolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	past := time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)
	l, err := audit.Open(db, audit.WithClock(func() time.Time { return past }))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for i := range n {
		if _, err := l.Append(audit.Record{IssuanceID: fmt.Sprintf("old-%d", i), Caller: "spiffe://dev.credbroker.test/old", Decision: audit.DecisionDenied}); err != nil {
			t.Fatal(err)
		}
	}
}

// devConfigWith writes the dev configuration with extra top-level keys.
func devConfigWith(t *testing.T, extra string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, append(config.DevYAML(), "\n"+extra...), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestAuditRetentionEndToEnd: a broker with audit.retention and
// require_export prunes old records only as far as an admin marked them
// exported (audit exported --through, then audit export --mark-exported),
// behind checkpoint records; `audit verify` passes from the checkpoint, and
// fails once the checkpoint is edited.
func TestAuditRetentionEndToEnd(t *testing.T) {
	t.Parallel()
	dataDir := filepath.Join(t.TempDir(), "data")
	seedOldRecords(t, dataDir, 600)
	cfg := devConfigWith(t, "housekeeping_interval: 1s\naudit: {retention: 24h, require_export: true}\n")
	b := startBrokerWith(t, dataDir, nil, "--config", cfg)
	b.requestToken(t, "controller") // seq 601, now: never pruned

	if r := b.ctl(t, "audit", "exported", "--through", "200"); r.code != 0 || !strings.Contains(r.stderr, "audit marked exported through seq 200 (record seq 602)") {
		t.Fatalf("audit exported: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	b.stderr.waitFor(t, `msg="purged audit records past retention" count=200`, 30*time.Second)
	r := b.ctl(t, "audit", "verify")
	if r.code != 0 || !strings.Contains(r.stdout, "audit chain OK: 403 records") || !strings.Contains(r.stdout, "records 1 to 200 pruned: verified from the checkpoint at seq 603, records 201 to 603") {
		t.Fatalf("audit verify after pruning to the mark: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}

	// An export marked exported lets the rest of the old records go.
	r = b.ctl(t, "audit", "export", "--mark-exported")
	if r.code != 0 || strings.Count(r.stdout, "\n") != 403 || !strings.Contains(r.stderr, "audit marked exported through seq 603 (record seq 604)") {
		t.Fatalf("audit export --mark-exported: exit %d, %d lines\n%s", r.code, strings.Count(r.stdout, "\n"), r.stderr)
	}
	b.stderr.waitFor(t, `msg="purged audit records past retention" count=400`, 30*time.Second)
	r = b.ctl(t, "-o", "json", "audit", "verify")
	var v struct {
		OK            bool   `json:"ok"`
		FirstSeq      string `json:"first_seq"`
		PrunedThrough string `json:"pruned_through"`
		CheckpointSeq string `json:"checkpoint_seq"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &v); err != nil || r.code != 0 || !v.OK || v.FirstSeq != "601" || v.PrunedThrough != "600" {
		t.Fatalf("audit verify -o json after the export: exit %d %+v (%v)\n%s", r.code, v, err, r.stdout)
	}
	r = b.ctl(t, "-o", "json", "audit", "tail", "-n", "1")
	if !strings.Contains(r.stdout, `"decision":"checkpoint"`) || !strings.Contains(r.stdout, `"through_seq":600`) {
		t.Fatalf("the newest record is not the checkpoint:\n%s", r.stdout)
	}
	cpSeq := v.CheckpointSeq
	b.stop(t)

	// Editing the checkpoint (as someone with write access to the file
	// would) breaks the chain.
	db, err := bbolt.Open(filepath.Join(dataDir, "credbroker.db"), 0o600, &bbolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bbolt.Tx) error {
		bk := tx.Bucket([]byte("audit.records"))
		var seq uint64
		fmt.Sscan(cpSeq, &seq)
		key := binary.BigEndian.AppendUint64(nil, seq)
		return bk.Put(key, []byte(strings.Replace(string(bk.Get(key)), `"count":`, `"count":1`, 1)))
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	b = startBrokerWith(t, dataDir, nil, "--config", cfg)
	if r := b.ctl(t, "audit", "verify"); r.code != 1 || !strings.Contains(r.stdout, "audit chain BROKEN at record seq "+cpSeq) || !strings.Contains(r.stdout, "hash mismatch") {
		t.Fatalf("audit verify of an edited checkpoint: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
}
