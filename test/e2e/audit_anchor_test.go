package e2e

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/credbroker/credbroker/broker/audit"
	"github.com/credbroker/credbroker/internal/webhook"
)

// TestAuditAnchorEndToEnd: a broker with audit.anchor publishes its chain's
// head to a file outside the data dir and, signed, to a webhook; it
// anchors the head it stops at. Deleting the newest records from the
// database afterwards (with its head moved back) passes a plain `audit
// verify` — the limitation the anchor exists for — but not `audit verify
// --anchor`, and the restarted broker leaves the anchor in place, saying
// why. The webhook secret reaches neither the database nor the logs; an
// anchor file inside the data dir is refused at start.
func TestAuditAnchorEndToEnd(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	dataDir := filepath.Join(dir, "data")
	anchorFile := filepath.Join(dir, "anchors", "credbroker-anchor.json")
	if err := os.MkdirAll(filepath.Dir(anchorFile), 0o700); err != nil {
		t.Fatal(err)
	}
	const secret = "anchor-hmac-key-0123456789abcdef"

	received := make(chan audit.Anchor, 100)
	receiver := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if err := webhook.Verify([]byte(secret), r.Header.Get(webhook.SignatureHeader), body, time.Now(), webhook.DefaultTolerance); err != nil {
			t.Errorf("anchor webhook signature: %v", err)
			http.Error(w, "bad signature", http.StatusUnauthorized)
			return
		}
		// The body, saved as it arrives, is an anchor file.
		saved := filepath.Join(t.TempDir(), "received.json")
		if err := os.WriteFile(saved, body, 0o600); err != nil {
			t.Error(err)
		}
		an, err := audit.ReadAnchorFile(saved)
		if err != nil || !bytes.Contains(body, []byte(`"type":"audit_anchor"`)) {
			t.Errorf("anchor webhook body %s: %v", body, err)
		}
		received <- an
	}))
	defer receiver.Close()

	cfg := devConfigWith(t, "audit: {anchor: {file: "+anchorFile+", interval: 1s, webhook: {url: '"+receiver.URL+"/anchor', secret_env: CREDBROKER_ANCHOR_KEY}}}\n")
	env := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + dir, "CREDBROKER_ANCHOR_KEY=" + secret}
	b := startBrokerWith(t, dataDir, env, "--config", cfg)
	for range 3 {
		b.requestToken(t, "controller")
	}
	b.stop(t)
	b.stderr.waitFor(t, "msg=\"audit anchor published\" seq=3", time.Second)

	anchor, err := audit.ReadAnchorFile(anchorFile)
	if err != nil || anchor.Seq != 3 || len(anchor.Hash) != 64 || !strings.HasPrefix(anchor.BrokerID, "spiffe://dev.credbroker.test/") {
		t.Fatalf("anchor file: %+v, %v", anchor, err)
	}
	var last audit.Anchor
	for len(received) > 0 {
		last = <-received
	}
	if last.Seq != anchor.Seq || last.Hash != anchor.Hash {
		t.Fatalf("the webhook's last anchor %+v differs from the file's %+v", last, anchor)
	}
	secretNowhere(t, secret, dataDir, b.stderr.String())

	// Remove the newest two records as someone with write access to the
	// database would, moving the stored head back so the chain is whole.
	db, err := bbolt.Open(filepath.Join(dataDir, "credbroker.db"), 0o600, &bbolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bbolt.Tx) error {
		records, links := tx.Bucket([]byte("audit.records")), tx.Bucket([]byte("audit.idx.links"))
		for seq := uint64(2); seq <= 3; seq++ {
			key := binary.BigEndian.AppendUint64(nil, seq)
			if err := records.Delete(key); err != nil {
				return err
			}
			if err := links.Delete(key); err != nil {
				return err
			}
		}
		var first audit.Record
		if err := json.Unmarshal(records.Get(binary.BigEndian.AppendUint64(nil, 1)), &first); err != nil {
			return err
		}
		return tx.Bucket([]byte("audit.meta")).Put([]byte("head"), append(binary.BigEndian.AppendUint64(nil, 1), first.Hash...))
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}

	b = startBrokerWith(t, dataDir, env, "--config", cfg)
	if r := b.ctl(t, "audit", "verify"); r.code != 0 || !strings.Contains(r.stdout, "audit chain OK: 1 records") {
		t.Fatalf("plain audit verify of the shortened chain: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	r := b.ctl(t, "audit", "verify", "--anchor", anchorFile)
	if r.code != 1 || !strings.Contains(r.stdout, "audit chain BROKEN at record seq 2") ||
		!strings.Contains(r.stdout, "anchor not reached: the chain ends at seq 1, but seq 3 was its head") {
		t.Fatalf("audit verify --anchor of the shortened chain: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	b.stderr.waitFor(t, "the chain no longer reaches the anchor", 10*time.Second)
	if again, err := audit.ReadAnchorFile(anchorFile); err != nil || again != anchor {
		t.Fatalf("the anchor was replaced: %+v, %v", again, err)
	}
	b.stop(t)

	// An intact chain verifies against its anchor.
	dataDir2 := filepath.Join(dir, "data2")
	anchor2 := filepath.Join(dir, "anchors", "second.json")
	cfg2 := devConfigWith(t, "audit: {anchor: {file: "+anchor2+"}}\n")
	b = startBrokerWith(t, dataDir2, env, "--config", cfg2)
	b.requestToken(t, "controller")
	b.stop(t)
	b = startBrokerWith(t, dataDir2, env, "--config", cfg2)
	if r := b.ctl(t, "audit", "verify", "--anchor", anchor2); r.code != 0 || !strings.Contains(r.stdout, "anchor reached: seq 1 has the hash published at") {
		t.Fatalf("audit verify --anchor of an intact chain: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}

	// The anchor file may not live in the data dir, also when the data dir
	// comes from the command line.
	inside := devConfigWith(t, "audit: {anchor: {file: "+filepath.Join(dir, "data3", "anchor.json")+"}}\n")
	if r := runToolEnv(t, env, "credbroker", "serve", "--dev", "--config", inside, "--data-dir", filepath.Join(dir, "data3"),
		"--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"); r.code == 0 || !strings.Contains(r.stderr, "is inside the data directory") {
		t.Fatalf("a broker with its anchor file in its data dir: exit %d\n%s", r.code, r.stderr)
	}
}

// secretNowhere fails if secret is in any file under dir or in logs.
func secretNowhere(t *testing.T, secret, dir, logs string) {
	t.Helper()
	if strings.Contains(logs, secret) {
		t.Fatal("the webhook secret is in the broker's logs")
	}
	err := filepath.Walk(dir, func(path string, info os.FileInfo, err error) error {
		if err != nil || !info.Mode().IsRegular() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if bytes.Contains(b, []byte(secret)) {
			t.Errorf("the webhook secret is in %s", path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
