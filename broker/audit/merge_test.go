package audit

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/credbroker/credbroker/test/fakeclock"
)

// exportLines returns l's export as credbrokerctl audit export writes it.
func exportLines(t *testing.T, l *Log) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := l.ExportStored(0, func(_ Record, stored []byte) error {
		buf.Write(stored)
		buf.WriteByte('\n')
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// replicaLogs opens one Log per replica id, all on clock, and appends n
// records to each, the replicas concurrently.
func replicaLogs(t *testing.T, clock func() time.Time, n int, ids ...string) map[string]*Log {
	t.Helper()
	logs := map[string]*Log{}
	for _, id := range ids {
		l, _ := openLog(t, filepath.Join(t.TempDir(), id+".db"), WithClock(clock), WithReplica(id))
		logs[id] = l
	}
	var wg sync.WaitGroup
	errs := make(chan error, len(ids)*n)
	for _, id := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range n {
				if _, err := logs[id].Append(Record{Caller: "spiffe://td/" + id, Decision: DecisionIssued, IssuanceID: fmt.Sprint(i)}); err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	return logs
}

func merge(t *testing.T, exports ...[]byte) []byte {
	t.Helper()
	var in []ExportInput
	for i, e := range exports {
		in = append(in, ExportInput{Name: fmt.Sprintf("export-%d", i), R: bytes.NewReader(e)})
	}
	var out bytes.Buffer
	if _, err := MergeExports(&out, in...); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

func verifyExport(t *testing.T, b []byte) ExportVerifyResult {
	t.Helper()
	res, err := VerifyExport(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func chain(t *testing.T, res ExportVerifyResult, replica string) ChainReport {
	t.Helper()
	for _, c := range res.Chains {
		if c.Replica == replica {
			return c
		}
	}
	t.Fatalf("no chain %q in %+v", replica, res)
	return ChainReport{}
}

func lines(b []byte) [][]byte { return bytes.Split(bytes.TrimSuffix(b, []byte("\n")), []byte("\n")) }

func joinLines(ls [][]byte) []byte { return append(bytes.Join(ls, []byte("\n")), '\n') }

func TestMergedReplicaExportsVerify(t *testing.T) {
	t.Parallel()
	clock := fakeclock.NewStepping(epoch, time.Millisecond)
	logs := replicaLogs(t, clock.Now, 40, "a", "b", "c")
	merged := merge(t, exportLines(t, logs["c"]), exportLines(t, logs["a"]), exportLines(t, logs["b"]))

	res := verifyExport(t, merged)
	if !res.OK || res.Lines != 120 || len(res.Chains) != 3 {
		t.Fatalf("merged export: %+v", res)
	}
	for _, id := range []string{"a", "b", "c"} {
		c := chain(t, res, id)
		seq, hash := logs[id].Head()
		if !c.OK || c.Records != 40 || c.FirstSeq != 1 || c.LastSeq != seq || c.HeadHash != hash {
			t.Fatalf("chain %s: %+v, want 40 records ending at the log's head %d %s", id, c, seq, hash)
		}
	}
	// One time-ordered stream, ties by replica then seq.
	var prev lineKey
	for i, line := range lines(merged) {
		var k lineKey
		if err := json.Unmarshal(line, &k); err != nil {
			t.Fatal(err)
		}
		if k.Replica == "" {
			t.Fatalf("line %d carries no replica id: %s", i+1, line)
		}
		if i > 0 && prev.compare(k) >= 0 {
			t.Fatalf("line %d (%+v) does not come after line %d (%+v)", i+1, k, i, prev)
		}
		prev = k
	}
}

func TestMergeIsDeterministic(t *testing.T) {
	t.Parallel()
	// A clock that never moves: every record ties on time, so the order is
	// replica id, then seq, whatever the order of the inputs.
	clock := fakeclock.New(epoch)
	logs := replicaLogs(t, clock.Now, 3, "b", "a", "c")
	ea, eb, ec := exportLines(t, logs["a"]), exportLines(t, logs["b"]), exportLines(t, logs["c"])
	first := merge(t, ea, eb, ec)
	for _, order := range [][][]byte{{ec, eb, ea}, {eb, ec, ea}, {first}, {ea, first, ec}} {
		if got := merge(t, order...); !bytes.Equal(got, first) {
			t.Fatalf("merge differs with the inputs reordered:\n%s\nvs\n%s", got, first)
		}
	}
	var got []string
	for _, line := range lines(first) {
		var k lineKey
		if err := json.Unmarshal(line, &k); err != nil {
			t.Fatal(err)
		}
		got = append(got, fmt.Sprintf("%s%d", k.Replica, k.Seq))
	}
	if want := "a1 a2 a3 b1 b2 b3 c1 c2 c3"; strings.Join(got, " ") != want {
		t.Fatalf("order %v, want %s", got, want)
	}
}

func TestVerifyExportNamesTheBrokenReplica(t *testing.T) {
	t.Parallel()
	clock := fakeclock.NewStepping(epoch, time.Millisecond)
	logs := replicaLogs(t, clock.Now, 10, "a", "b", "c")
	merged := lines(merge(t, exportLines(t, logs["a"]), exportLines(t, logs["b"]), exportLines(t, logs["c"])))

	// index returns the line of replica's record seq.
	index := func(replica string, seq uint64) int {
		for i, line := range merged {
			var k lineKey
			if err := json.Unmarshal(line, &k); err != nil {
				t.Fatal(err)
			}
			if k.Replica == replica && k.Seq == seq {
				return i
			}
		}
		t.Fatalf("no record %s/%d", replica, seq)
		return -1
	}
	edit := func(fn func(ls [][]byte) [][]byte) ExportVerifyResult {
		ls := make([][]byte, len(merged))
		for i := range merged {
			ls[i] = bytes.Clone(merged[i])
		}
		return verifyExport(t, joinLines(fn(ls)))
	}
	expectBroken := func(name string, res ExportVerifyResult, replica string, seq uint64, problem string) {
		t.Helper()
		if res.OK {
			t.Fatalf("%s: verified OK", name)
		}
		for _, c := range res.Chains {
			// A record moved to another replica breaks that one too.
			if c.Replica != replica && !c.OK && name != "moved to another replica" {
				t.Fatalf("%s: chain %s reported broken too: %+v", name, c.Replica, c)
			}
		}
		c := chain(t, res, replica)
		if c.OK || c.FirstBadSeq != seq || !strings.Contains(c.Problem, problem) {
			t.Fatalf("%s: chain %s: %+v, want broken at seq %d (%s)", name, replica, c, seq, problem)
		}
	}

	expectBroken("tampered", edit(func(ls [][]byte) [][]byte {
		i := index("b", 4)
		ls[i] = bytes.Replace(ls[i], []byte(`"caller":"spiffe://td/b"`), []byte(`"caller":"spiffe://td/x"`), 1)
		return ls
	}), "b", 4, "hash mismatch")

	expectBroken("dropped", edit(func(ls [][]byte) [][]byte {
		i := index("c", 6)
		return append(ls[:i], ls[i+1:]...)
	}), "c", 6, "missing seq 6")

	expectBroken("reordered", edit(func(ls [][]byte) [][]byte {
		i, j := index("a", 3), index("a", 4)
		ls[i], ls[j] = ls[j], ls[i]
		return ls
	}), "a", 3, "missing seq 3")

	expectBroken("moved to another replica", edit(func(ls [][]byte) [][]byte {
		i := index("a", 5)
		ls[i] = bytes.Replace(ls[i], []byte(`"replica":"a"`), []byte(`"replica":"c"`), 1)
		return ls
	}), "a", 5, "missing seq 5")

	res := edit(func(ls [][]byte) [][]byte {
		return append(ls[:3:3], append([][]byte{[]byte("not json")}, ls[3:]...)...)
	})
	if res.OK || res.BadLine != 4 {
		t.Fatalf("a line that is no record: %+v", res)
	}
}

func TestUnnamedRecordsVerifyAsOneChain(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "audit.db")
	db := openDB(t, path)
	// Written before the broker named its replica.
	old, err := Open(db, WithClock(newFakeClock().Now), WithNewID(seqIDs()))
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := old.Append(Record{Decision: DecisionDenied}); err != nil {
			t.Fatal(err)
		}
	}
	if old.Replica() != "" {
		t.Fatalf("replica %q, want none", old.Replica())
	}
	unnamed := exportLines(t, old)
	res := verifyExport(t, unnamed)
	if c := chain(t, res, ""); !res.OK || c.Records != 3 {
		t.Fatalf("an export without replica ids: %+v", res)
	}
	if err := old.Close(); err != nil {
		t.Fatal(err)
	}

	// Upgraded in place: the host name names the chain from now on.
	clock := fakeclock.NewStepping(epoch.Add(time.Hour), time.Second)
	l, err := Open(db, WithClock(clock.Now), WithNewID(func() (string, error) { return "new-" + clock.Now().String(), nil }), WithDefaultReplica("host-1"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for range 2 {
		if _, err := l.Append(Record{Decision: DecisionDenied}); err != nil {
			t.Fatal(err)
		}
	}
	res = verifyExport(t, exportLines(t, l))
	if c := chain(t, res, "host-1"); !res.OK || len(res.Chains) != 1 || c.Records != 5 || c.UnnamedThrough != 3 || c.FirstSeq != 1 {
		t.Fatalf("an upgraded chain: %+v", res)
	}
	if v := mustVerifyOK(t, l, 5); v.HeadSeq != 5 {
		t.Fatal(v)
	}
}

func TestReplicaIDIsKept(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "audit.db")
	db := openDB(t, path)
	l, err := Open(db, WithDefaultReplica("host-a"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Append(Record{Decision: DecisionDenied}); err != nil {
		t.Fatal(err)
	}
	l.Close()

	// The host name changed (the volume moved): the chain keeps its name.
	l, err = Open(db, WithDefaultReplica("host-b"))
	if err != nil {
		t.Fatal(err)
	}
	r, err := l.Append(Record{Decision: DecisionDenied, Replica: "forged"})
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	if l.Replica() != "host-a" || r.Replica != "host-a" {
		t.Fatalf("replica %q, record %q; want host-a", l.Replica(), r.Replica)
	}

	// Configured to another name: refused, nothing written.
	if _, err := Open(db, WithReplica("replica-2")); !errors.Is(err, ErrReplicaMismatch) {
		t.Fatalf("Open with another replica id: %v, want ErrReplicaMismatch", err)
	}
	l, err = Open(db, WithReplica("host-a"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if seq, _ := l.Head(); seq != 2 {
		t.Fatalf("head %d", seq)
	}
}

func TestMergeOverlappingExports(t *testing.T) {
	t.Parallel()
	clock := fakeclock.NewStepping(epoch, time.Millisecond)
	logs := replicaLogs(t, clock.Now, 6, "a", "b")
	ea := lines(exportLines(t, logs["a"]))
	eb := exportLines(t, logs["b"])
	// Two exports of a overlapping in seqs 3 and 4.
	first, second := joinLines(ea[:4]), joinLines(ea[2:])
	var out bytes.Buffer
	stats, err := MergeExports(&out, ExportInput{"a1", bytes.NewReader(first)}, ExportInput{"b", bytes.NewReader(eb)}, ExportInput{"a2", bytes.NewReader(second)})
	if err != nil {
		t.Fatal(err)
	}
	if stats.Records != 12 || stats.Duplicates != 2 || stats.Replicas["a"] != 6 {
		t.Fatalf("stats %+v", stats)
	}
	if res := verifyExport(t, out.Bytes()); !res.OK {
		t.Fatalf("%+v", res)
	}

	// The same seq with another record in the second input: refused.
	forged := bytes.Replace(ea[3], []byte(`"caller":"spiffe://td/a"`), []byte(`"caller":"spiffe://td/z"`), 1)
	_, err = MergeExports(&bytes.Buffer{}, ExportInput{"a1", bytes.NewReader(first)},
		ExportInput{"a2", bytes.NewReader(joinLines(append([][]byte{ea[2], forged}, ea[4:]...)))})
	if err == nil || !strings.Contains(err.Error(), `a2 line 2: replica "a" seq 4 differs`) {
		t.Fatalf("conflicting inputs: %v", err)
	}
	_, err = MergeExports(&bytes.Buffer{}, ExportInput{"junk", strings.NewReader("{}\n")})
	if err == nil || !strings.Contains(err.Error(), "junk line 1 is not an audit record") {
		t.Fatalf("junk input: %v", err)
	}
}
