package audit

import (
	"fmt"
	"reflect"
	"slices"
	"testing"
	"time"
)

var decisions = []Decision{DecisionIntent, DecisionIssued, DecisionDenied, DecisionThrottled, DecisionFailed}

func genRecord(i int) Record {
	return Record{
		IssuanceID: fmt.Sprintf("iss-%d", i/2),
		Caller:     fmt.Sprintf("spiffe://td/caller-%d", i%3),
		Cluster:    fmt.Sprintf("ns/cluster-%d", i%4),
		Profile:    "p",
		Decision:   decisions[i%len(decisions)],
	}
}

// bruteForce is List's specification: filter everything, newest first.
func bruteForce(all []Record, q Query) []Record {
	var out []Record
	for _, r := range slices.Backward(all) {
		if (q.Caller != "" && r.Caller != q.Caller) || (q.Cluster != "" && r.Cluster != q.Cluster) ||
			(q.Decision != "" && r.Decision != q.Decision) ||
			(!q.Since.IsZero() && r.Time.Before(q.Since)) || (!q.Until.IsZero() && !r.Time.Before(q.Until)) {
			continue
		}
		out = append(out, r)
		if q.Limit > 0 && len(out) == q.Limit {
			break
		}
	}
	return out
}

func exportAll(t testing.TB, l *Log) []Record {
	var all []Record
	if err := l.Export(0, func(r Record) error { all = append(all, r); return nil }); err != nil {
		t.Fatal(err)
	}
	return all
}

func TestList(t *testing.T) {
	t.Parallel()
	l, _, _ := tempLog(t)
	for i := range 120 {
		mustAppend(t, l, genRecord(i))
	}
	all := exportAll(t, l)
	at := func(i int) time.Time { return epoch.Add(time.Duration(i) * time.Second) } // record seq i+1
	for _, q := range []Query{
		{},
		{Limit: 7},
		{Caller: "spiffe://td/caller-1"},
		{Caller: "spiffe://td/caller-1", Limit: 5},
		{Caller: "spiffe://td/caller-", Limit: 5}, // no prefix matching
		{Caller: "spiffe://td/nobody"},
		{Cluster: "ns/cluster-2"},
		{Caller: "spiffe://td/caller-2", Cluster: "ns/cluster-3"},
		{Decision: DecisionDenied},
		{Cluster: "ns/cluster-0", Decision: DecisionIssued, Limit: 2},
		{Since: at(100)},
		{Until: at(10)},
		{Since: at(30), Until: at(60), Caller: "spiffe://td/caller-0"},
		{Since: at(30), Until: at(60), Cluster: "ns/cluster-1", Decision: DecisionFailed},
		{Since: at(200)},
	} {
		got, err := l.List(q)
		if err != nil {
			t.Fatalf("List(%+v): %v", q, err)
		}
		if want := bruteForce(all, q); !reflect.DeepEqual(got, want) {
			t.Errorf("List(%+v): got %d records %v, want %d %v", q, len(got), seqs(got), len(want), seqs(want))
		}
	}
	if _, err := l.List(Query{Decision: "bogus"}); err == nil {
		t.Error("List accepted an unknown decision")
	}
}

// TestClockSteppedBack: a record is never stamped earlier than its
// predecessor, even when the clock steps back, so that seq order is time
// order (List's Since and Until are binary searches over it); List still
// applies them exactly.
func TestClockSteppedBack(t *testing.T) {
	t.Parallel()
	times := []time.Time{epoch.Add(10 * time.Second), epoch, epoch.Add(5 * time.Second), epoch.Add(12 * time.Second)}
	i := 0
	l, _, path := tempLog(t, WithClock(func() time.Time { i++; return times[i-1] }))
	for range times {
		mustAppend(t, l, Record{Caller: "c", Decision: DecisionIntent})
	}
	all := exportAll(t, l)
	want := []time.Time{times[0], times[0], times[0], times[3]}
	for i, r := range all {
		if !r.Time.Equal(want[i]) {
			t.Errorf("seq %d stamped %v, want %v", r.Seq, r.Time, want[i])
		}
	}
	for _, q := range []Query{
		{Caller: "c", Since: epoch.Add(time.Second)},
		{Caller: "c", Since: epoch.Add(11 * time.Second)},
		{Until: epoch.Add(11 * time.Second)},
		{Until: epoch.Add(10 * time.Second)},
	} {
		got, err := l.List(q)
		if err != nil || !reflect.DeepEqual(seqs(got), seqs(bruteForce(all, q))) {
			t.Errorf("List(%+v) = %v, %v; want %v", q, seqs(got), err, seqs(bruteForce(all, q)))
		}
	}
	// The floor survives a reopen: it is the last record's time.
	l.Close()
	db := l.DB()
	db.Close()
	l2, _ := openLog(t, path, WithClock(func() time.Time { return epoch }), WithNewID(newUUIDv7))
	if r := mustAppend(t, l2, Record{Decision: DecisionDenied}); !r.Time.Equal(times[3]) {
		t.Errorf("after a reopen, a record is stamped %v before its predecessor's %v", r.Time, times[3])
	}
}

// TestListUsesIndexes checks on 50k records that a filtered List reads only
// the records it returns: the filtering happens in the index.
func TestListUsesIndexes(t *testing.T) {
	if testing.Short() {
		t.Skip("50k records")
	}
	t.Parallel()
	l, _, _ := tempLog(t)
	const n = 50_000
	bulkAppend(t, l, n, func(i int) Record {
		r := genRecord(i)
		if i%2500 == 7 {
			r.Caller = "spiffe://td/rare" // 20 records spread over the log
		}
		return r
	})
	all := exportAll(t, l)
	if len(all) != n {
		t.Fatalf("exported %d records", len(all))
	}
	for _, q := range []Query{
		{Caller: "spiffe://td/rare"},
		{Caller: "spiffe://td/rare", Limit: 3},
		{Caller: "spiffe://td/rare", Since: all[n/2].Time},
		{Cluster: "ns/cluster-1", Decision: DecisionDenied, Limit: 10},
		{Decision: DecisionThrottled, Limit: 10},
		{Until: all[100].Time, Limit: 10},
	} {
		before := l.recordReads.Load()
		got, err := l.List(q)
		if err != nil {
			t.Fatal(err)
		}
		if want := bruteForce(all, q); !reflect.DeepEqual(got, want) {
			t.Fatalf("List(%+v) = %v, want %v", q, seqs(got), seqs(want))
		}
		if reads := l.recordReads.Load() - before; reads != uint64(len(got)) {
			t.Errorf("List(%+v) read %d records to return %d", q, reads, len(got))
		}
	}
	mustVerifyOK(t, l, n)
}

func seqs(rs []Record) []uint64 {
	var out []uint64
	for _, r := range rs {
		out = append(out, r.Seq)
	}
	return out
}

// TestListResumesAfterARecord pages through a listing with BeforeSeq from
// each page's last record; with many records sharing a time,
// no record is skipped or repeated.
func TestListResumesAfterARecord(t *testing.T) {
	i := 0
	// Five records per instant, so pages end in the middle of a time.
	l, _, _ := tempLog(t, WithClock(func() time.Time { i++; return epoch.Add(time.Duration(i/5) * time.Second) }))
	for j := range 60 {
		mustAppend(t, l, genRecord(j))
	}
	all := exportAll(t, l)
	for _, base := range []Query{{}, {Caller: "spiffe://td/caller-1"}, {Cluster: "ns/cluster-2", Decision: DecisionIntent}} {
		want := bruteForce(all, base)
		var got []Record
		q := base
		q.Limit = 3
		for range 100 {
			page, err := l.List(q)
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, page...)
			if len(page) < q.Limit {
				break
			}
			q.BeforeSeq = page[len(page)-1].Seq
		}
		if !reflect.DeepEqual(seqs(got), seqs(want)) {
			t.Errorf("%+v paged: %v, want %v", base, seqs(got), seqs(want))
		}
	}
}
