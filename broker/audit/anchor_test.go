package audit

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/credbroker/credbroker/test/fakeclock"
)

// TestAnchorFilePublishing: the file holds the head after each publish
// (written whole, no temporary file left), is rewritten only when the head
// moves, and is left in place, with an error, once the chain no longer
// reaches it.
func TestAnchorFilePublishing(t *testing.T) {
	clock := fakeclock.New(epoch)
	l, db, path := tempLog(t, WithClock(clock.Now))
	dir := t.TempDir()
	file := filepath.Join(dir, "anchor.json")
	pub := NewAnchorPublisher(l, "spiffe://td/broker", "host-a", clock.Now, NewAnchorFile(file, l))

	if a, err := pub.Publish(); err != nil || a.Seq != 0 {
		t.Fatalf("Publish of an empty chain = %+v, %v", a, err)
	}
	for i := range 5 {
		mustAppend(t, l, genRecord(i))
	}
	clock.Advance(time.Minute)
	a, err := pub.Publish()
	seq, hash := l.Head()
	if err != nil || a.Seq != seq || a.Hash != hash || !a.Time.Equal(epoch.Add(time.Minute)) || a.BrokerID != "spiffe://td/broker" || a.Host != "host-a" {
		t.Fatalf("Publish = %+v, %v; head %d %s", a, err, seq, hash)
	}
	got, err := ReadAnchorFile(file)
	if err != nil || got != a {
		t.Fatalf("anchor file = %+v, %v; want %+v", got, err, a)
	}
	// The same head is not published again.
	clock.Advance(time.Minute)
	if _, err := pub.Publish(); err != nil {
		t.Fatal(err)
	}
	if got, _ := ReadAnchorFile(file); !got.Time.Equal(a.Time) {
		t.Fatalf("an unchanged head was rewritten: %+v", got)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("files beside the anchor: %v", entries)
	}
	if res, err := l.VerifyWith(VerifyOptions{Anchor: &got}); err != nil || !res.OK || !res.AnchorChecked {
		t.Fatalf("Verify with the published anchor = %+v, %v", res, err)
	}
	_ = l.Close()
	_ = db.Close()

	// Someone removes the newest records and moves the head back: the
	// broker that opens the file next does not anchor the shortened chain.
	editAndVerify(t, path, nil, truncateTail(2))
	l2, _ := openLog(t, path)
	pub2 := NewAnchorPublisher(l2, "spiffe://td/broker", "host-a", clock.Now, NewAnchorFile(file, l2))
	if _, err := pub2.Publish(); err == nil || !strings.Contains(err.Error(), "the chain no longer reaches the anchor") ||
		!strings.Contains(err.Error(), "the chain ends at seq 3, before seq 5") {
		t.Fatalf("Publish over a truncated chain: %v", err)
	}
	if got2, _ := ReadAnchorFile(file); got2 != got {
		t.Fatalf("the anchor was replaced: %+v", got2)
	}
	if res, _ := l2.VerifyWith(VerifyOptions{Anchor: &got}); res.OK {
		t.Fatalf("Verify with the anchor passed a truncated chain: %+v", res)
	}
}

// TestReadAnchorFileIsStrict: an anchor file must be one anchor.
func TestReadAnchorFileIsStrict(t *testing.T) {
	dir := t.TempDir()
	for name, body := range map[string]string{
		"no seq":        `{"hash":"ab"}`,
		"unknown field": `{"seq":1,"hash":"ab","extra":1}`,
		"not json":      `seq=1`,
		"too large":     `{"seq":1,"broker_id":"` + strings.Repeat("x", maxAnchorFile) + `"}`,
		"other type":    `{"type":"alert","seq":1,"hash":"ab"}`,
	} {
		p := filepath.Join(dir, strings.ReplaceAll(name, " ", "-"))
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		if a, err := ReadAnchorFile(p); err == nil {
			t.Errorf("%s: ReadAnchorFile = %+v, want an error", name, a)
		}
	}
}
