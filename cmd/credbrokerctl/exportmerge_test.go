package main

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/credbroker/credbroker/broker/config"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// startReplica starts a dev broker whose audit chain is replica id's.
func startReplica(t *testing.T, id string) *devBroker {
	t.Helper()
	cfg := filepath.Join(t.TempDir(), id+".yaml")
	if err := os.WriteFile(cfg, append(config.DevYAML(), []byte("\nreplica_id: "+id+"\n")...), 0o600); err != nil {
		t.Fatal(err)
	}
	return startDevBrokerWith(t, cfg)
}

// TestAuditExportMergesReplicas: three real brokers (two reached on their
// admin sockets, one over mTLS with its admin SVID) exported in one
// command give one stream that 'audit verify --file' accepts, every
// replica's chain whole, the same bytes as their exports merged by
// 'audit merge'; an edited record fails it naming its replica. A replica
// that cannot be reached fails the export naming it, with nothing written.
func TestAuditExportMergesReplicas(t *testing.T) {
	t.Parallel()
	ids := []string{"credbroker-0", "credbroker-1", "credbroker-2"}
	var brokers []*devBroker
	for i, id := range ids {
		b := startReplica(t, id)
		brokers = append(brokers, b)
		controller := b.dial(t, filepath.Join(b.dir, "dev", "controller"))
		for n := range i + 2 {
			if _, err := issueDev(controller, fmt.Sprintf("capi-a/c%d", n)); err != nil {
				t.Fatal(err)
			}
		}
	}
	// The third replica over mTLS, as a fleet's replicas are reached.
	viaTLS := []string{"--broker", brokers[2].addr, "--svid-dir", filepath.Join(brokers[2].dir, "dev", "admin")}
	replicas := append([]string{"--socket", brokers[0].socket, "--socket", brokers[1].socket}, viaTLS...)

	r := cli(t, nil, append(replicas, "audit", "export")...)
	wantCode(t, r, 0)
	// 2, 3 and 4 issuances: one issued record each (the local JWT issuer
	// has no upstream side effect, so no intent record).
	if !strings.Contains(r.stderr, "merged 9 records of 3 replicas from 3 brokers") {
		t.Fatalf("stderr %q, want the counts", r.stderr)
	}
	dir := t.TempDir()
	merged := filepath.Join(dir, "fleet.jsonl")
	if err := os.WriteFile(merged, []byte(r.stdout), 0o600); err != nil {
		t.Fatal(err)
	}
	v := cli(t, nil, "audit", "verify", "--file", merged)
	wantCode(t, v, 0)
	for _, id := range ids {
		if !strings.Contains(v.stdout, fmt.Sprintf("replica %q OK", id)) {
			t.Errorf("verify --file lacks replica %s:\n%s", id, v.stdout)
		}
	}

	// The same bytes as each replica exported alone and merged offline:
	// one merge, wherever the exports come from.
	var files []string
	for i, b := range brokers {
		args := []string{"--socket", b.socket, "audit", "export"}
		if i == 2 {
			args = append(viaTLS, "audit", "export")
		}
		one := cli(t, nil, args...)
		wantCode(t, one, 0)
		files = append(files, filepath.Join(dir, ids[i]+".jsonl"))
		if err := os.WriteFile(files[i], []byte(one.stdout), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if offline := cli(t, nil, append([]string{"audit", "merge"}, files...)...); offline.code != 0 || offline.stdout != r.stdout {
		t.Fatalf("audit merge of the separate exports differs from the merged export:\n%s\n---\n%s", offline.stdout, r.stdout)
	}

	// One record of one replica edited: that chain fails, the others hold.
	lines := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
	edited := false
	for i, line := range lines {
		if !edited && strings.Contains(line, `"replica":"credbroker-1"`) && strings.Contains(line, `"seq":2,`) {
			lines[i], edited = strings.Replace(line, `"caller":"spiffe://`, `"caller":"spiffe://x`, 1), true
		}
	}
	if !edited {
		t.Fatal("no record seq 2 of credbroker-1 in the export")
	}
	tampered := filepath.Join(dir, "tampered.jsonl")
	if err := os.WriteFile(tampered, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	v = cli(t, nil, "audit", "verify", "--file", tampered)
	wantCode(t, v, 1)
	if !strings.Contains(v.stdout, `replica "credbroker-1" BROKEN at record seq 2`) || !strings.Contains(v.stdout, `replica "credbroker-0" OK`) {
		t.Fatalf("tampered export:\n%s", v.stdout)
	}

	// A replica down: its socket left behind (refused on the first
	// record's stream), or its address refusing connections. The command
	// fails naming it and writes nothing: never a partial export.
	stale := staleSocket(t)
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refusing := tcp.Addr().String()
	tcp.Close()
	for _, down := range []struct{ args []string }{
		{[]string{"--socket", brokers[0].socket, "--socket", stale}},
		{append([]string{"--socket", brokers[0].socket, "--socket", brokers[1].socket, "--broker", refusing}, viaTLS[2:]...)},
	} {
		r := cli(t, nil, append(down.args, "audit", "export")...)
		wantCode(t, r, 1)
		name := down.args[len(down.args)-1]
		if strings.HasPrefix(name, "/") && !strings.HasSuffix(name, "admin.sock") {
			name = refusing // the last argument was --svid-dir's
		}
		if r.stdout != "" || !strings.Contains(r.stderr, "cannot reach broker") || !strings.Contains(r.stderr, name) {
			t.Errorf("%v: stdout %q, stderr %q; want nothing written and an error naming %s", down.args, r.stdout, r.stderr, name)
		}
	}

	// --mark-exported marks each replica through its own last record.
	r = cli(t, nil, append(replicas, "audit", "export", "--mark-exported")...)
	wantCode(t, r, 0)
	for _, seq := range []int{2, 3, 4} {
		if !strings.Contains(r.stderr, fmt.Sprintf("audit marked exported through seq %d ", seq)) {
			t.Errorf("--mark-exported: stderr %q lacks the mark through seq %d", r.stderr, seq)
		}
	}

	// Several replicas are for audit export only, and from the start.
	for _, args := range [][]string{
		{"--socket", brokers[0].socket, "--socket", brokers[1].socket, "issuances", "list"},
		{"--broker", "a:1", "--broker", "b:1", "audit", "verify"},
		{"--socket", brokers[0].socket, "--socket", brokers[1].socket, "audit", "export", "--after-seq", "3"},
		{"--socket", brokers[0].socket, "--socket", brokers[0].socket, "audit", "export"},
	} {
		wantCode(t, cli(t, nil, args...), exitUsage)
	}
}

// TestAuditExportMergeWaitIsNotSilence: while the merge waits on a slow
// replica, a fast one's records wait their turn; --timeout bounds each
// broker's silence, not that wait, so the export completes.
func TestAuditExportMergeWaitIsNotSilence(t *testing.T) {
	t.Parallel()
	start := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	replica := func(id string, n int, from time.Time) *fakeAdmin {
		f := &fakeAdmin{}
		for i := range n {
			f.records = append(f.records, &credbrokerv1.AuditRecord{RecordId: fmt.Sprintf("%s-%d", id, i+1), Seq: uint64(i + 1),
				Time: timestamppb.New(from.Add(time.Duration(i) * time.Second)), Replica: id, Hash: strings.Repeat("a", 64)})
		}
		return f
	}
	// The slow replica holds the earliest records and takes longer than
	// --timeout in all (25 records 100 ms apart: 2.5 s), yet sends one
	// well within it (a loaded machine has 1.4 s to spare at each). The
	// other's later records fill its buffer (4 KiB) within 0.3 s and wait
	// for the slow one's, about 2 s, longer than --timeout, while its
	// broker is still sending: were the wait counted as its silence, its
	// stream would be cut.
	slow := replica("slow", 25, start)
	slow.sendEvery = 100 * time.Millisecond
	other := replica("other", 200, start.Add(time.Hour))
	other.sendEvery = 10 * time.Millisecond
	r := cli(t, nil, "--timeout", "1500ms", "--socket", serve(t, slow), "--socket", serve(t, other), "audit", "export")
	wantCode(t, r, 0)
	if n := strings.Count(r.stdout, "\n"); n != 225 || !strings.Contains(r.stderr, "merged 225 records of 2 replicas") {
		t.Fatalf("%d lines; stderr %q", n, r.stderr)
	}
}
