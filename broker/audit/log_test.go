package audit

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"go.etcd.io/bbolt"
)

func TestRoundTrip(t *testing.T) {
	t.Parallel()
	l, _, _ := tempLog(t)
	in := []Record{
		{IssuanceID: "iss-1", Caller: "spiffe://td/ns/capi/sa/capa", Attestation: "x509-svid", Profile: "capa", Cluster: "ns/c1", Issuer: "awssts", Decision: DecisionIntent, TTL: 15 * time.Minute},
		{IssuanceID: "iss-1", Caller: "spiffe://td/ns/capi/sa/capa", Attestation: "x509-svid", Profile: "capa", Cluster: "ns/c1", Issuer: "awssts", Decision: DecisionIssued, TTL: 15 * time.Minute,
			ExpiresAt: time.Date(2026, 3, 1, 12, 16, 0, 123, time.FixedZone("x", 3600)), UpstreamRef: "ASIAEXAMPLE"},
		{Caller: "spiffe://td/evil", Attestation: "jwt-svid", Profile: "admin", Decision: DecisionDenied, Reason: "policy: no rule"},
		{IssuanceID: "iss-2", Caller: "spiffe://td/ns/capi/sa/capa", Profile: "capa", Cluster: "ns/c2", Decision: DecisionThrottled, Reason: "quota",
			ID: "ignored", Seq: 99, Hash: "ignored", PrevHash: "ignored"},
	}
	var out []Record
	prev := ""
	for i, r := range in {
		got := mustAppend(t, l, r)
		wantID := []string{"id-000001", "id-000002", "id-000003", "id-000004"}[i]
		if got.ID != wantID || got.Seq != uint64(i+1) || !got.Time.Equal(epoch.Add(time.Duration(i)*time.Second)) || got.Time.Location() != time.UTC {
			t.Fatalf("record %d: id %q seq %d time %v", i, got.ID, got.Seq, got.Time)
		}
		if got.PrevHash != prev {
			t.Fatalf("record %d: prev_hash %q, want %q", i, got.PrevHash, prev)
		}
		if h, _ := got.ComputeHash(); h != got.Hash || len(h) != 64 {
			t.Fatalf("record %d: hash %q, computed %q", i, got.Hash, h)
		}
		if got.Caller != r.Caller || got.Decision != r.Decision || got.TTL != r.TTL || !got.ExpiresAt.Equal(r.ExpiresAt) || got.UpstreamRef != r.UpstreamRef {
			t.Fatalf("record %d: caller fields changed: %+v", i, got)
		}
		prev = got.Hash
		out = append(out, got)
	}
	for _, want := range out {
		got, err := l.Get(want.ID)
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Fatalf("Get(%s) = %+v, %v; want %+v", want.ID, got, err, want)
		}
	}
	if _, err := l.Get("nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get(nope) error = %v, want ErrNotFound", err)
	}
	if got, err := l.ByIssuance("iss-1"); err != nil || !reflect.DeepEqual(got, out[:2]) {
		t.Fatalf("ByIssuance(iss-1) = %+v, %v", got, err)
	}
	if got, err := l.ByIssuance("iss-"); err != nil || len(got) != 0 {
		t.Fatalf("ByIssuance(iss-) = %+v, %v; want none (no prefix matching)", got, err)
	}
	if seq, hash := l.Head(); seq != 4 || hash != out[3].Hash {
		t.Fatalf("Head() = %d %q", seq, hash)
	}
	res := mustVerifyOK(t, l, 4)
	if res.HeadHash != out[3].Hash {
		t.Fatalf("HeadHash = %q, want %q", res.HeadHash, out[3].Hash)
	}

	var exported []Record
	if err := l.Export(0, func(r Record) error { exported = append(exported, r); return nil }); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(exported, out) {
		t.Fatalf("Export(0) = %+v", exported)
	}
	exported = nil
	if err := l.Export(2, func(r Record) error { exported = append(exported, r); return nil }); err != nil || !reflect.DeepEqual(exported, out[2:]) {
		t.Fatalf("Export(2) = %+v, %v", exported, err)
	}
	errStop := errors.New("stop")
	if err := l.Export(0, func(Record) error { return errStop }); !errors.Is(err, errStop) {
		t.Fatalf("Export error = %v, want errStop", err)
	}
}

// TestOutsideVerification re-checks exported JSON lines with the formula in
// the package documentation, as a tool without this package would.
func TestOutsideVerification(t *testing.T) {
	t.Parallel()
	l, _, _ := tempLog(t)
	for _, c := range []string{"a", "<b&c>", "ü"} {
		mustAppend(t, l, Record{Caller: "spiffe://td/" + c, Decision: DecisionDenied, Reason: `quote " and \ `})
	}
	prev := ""
	err := l.Export(0, func(r Record) error {
		line, err := json.Marshal(r)
		if err != nil {
			return err
		}
		suffix := []byte(`"hash":"` + r.Hash + `"}`)
		if !bytes.HasSuffix(line, suffix) {
			t.Fatalf("hash is not the last member: %s", line)
		}
		blank := append(bytes.TrimSuffix(line, suffix), `"hash":""}`...)
		sum := sha256.Sum256(append([]byte(prev), blank...))
		if hex.EncodeToString(sum[:]) != r.Hash || r.PrevHash != prev {
			t.Fatalf("seq %d does not verify from its exported line", r.Seq)
		}
		prev = r.Hash
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestAppendRejectsInvalid(t *testing.T) {
	t.Parallel()
	l, _, _ := tempLog(t)
	for name, r := range map[string]Record{
		"no decision":   {Caller: "x"},
		"bad decision":  {Decision: "allowed"},
		"invalid utf-8": {Decision: DecisionDenied, Caller: "\xff"},
		"too long":      {Decision: DecisionDenied, Reason: strings.Repeat("r", MaxFieldLen+1)},
	} {
		if got, err := l.Append(r); err == nil || !strings.HasPrefix(err.Error(), "audit: ") || got.Seq != 0 {
			t.Errorf("%s: Append = %+v, %v; want audit: error", name, got, err)
		}
	}
	if seq, _ := l.Head(); seq != 0 {
		t.Fatalf("Head seq = %d after only invalid appends", seq)
	}
}

func TestPersistence(t *testing.T) {
	t.Parallel()
	l, db, path := tempLog(t)
	var last Record
	for range 5 {
		last = mustAppend(t, l, Record{Caller: "spiffe://td/a", Decision: DecisionIntent})
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	l2, _ := openLog(t, path, WithNewID(newUUIDv7)) // seqIDs would restart at id-000001
	if seq, hash := l2.Head(); seq != 5 || hash != last.Hash {
		t.Fatalf("Head after reopen = %d %q, want 5 %q", seq, hash, last.Hash)
	}
	next := mustAppend(t, l2, Record{Caller: "spiffe://td/a", Decision: DecisionIssued})
	if next.Seq != 6 || next.PrevHash != last.Hash {
		t.Fatalf("after reopen: seq %d prev %q, want 6 %q", next.Seq, next.PrevHash, last.Hash)
	}
	mustVerifyOK(t, l2, 6)
}

func TestFailClosed(t *testing.T) {
	t.Parallel()
	t.Run("log closed", func(t *testing.T) {
		l, _, _ := tempLog(t)
		mustAppend(t, l, Record{Decision: DecisionIntent})
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		if got, err := l.Append(Record{Decision: DecisionIntent}); !errors.Is(err, ErrClosed) || got.Seq != 0 {
			t.Fatalf("Append after Close = %+v, %v; want ErrClosed", got, err)
		}
		_ = l.Close() // idempotent
	})
	t.Run("db closed", func(t *testing.T) {
		l, db, _ := tempLog(t)
		mustAppend(t, l, Record{Decision: DecisionIntent})
		if err := db.Close(); err != nil {
			t.Fatal(err)
		}
		// Several at once, so the shared-transaction failure path and the
		// one-by-one fallback both run.
		errs := make(chan error, 8)
		for range 8 {
			go func() {
				got, err := l.Append(Record{Decision: DecisionIntent})
				if err == nil || got.Seq != 0 {
					err = errors.New("append succeeded on a closed db")
				} else if !strings.HasPrefix(err.Error(), "audit: ") {
					err = errors.New("error not package-prefixed: " + err.Error())
				} else {
					err = nil
				}
				errs <- err
			}()
		}
		for range 8 {
			if err := <-errs; err != nil {
				t.Error(err)
			}
		}
	})
	t.Run("NoSync db refused", func(t *testing.T) {
		db := openDB(t, t.TempDir()+"/nosync.db")
		db.NoSync = true
		if _, err := Open(db); err == nil {
			t.Fatal("Open accepted a NoSync db")
		}
	})
	t.Run("duplicate id", func(t *testing.T) {
		l, _, _ := tempLog(t, WithNewID(func() (string, error) { return "same", nil }))
		mustAppend(t, l, Record{Decision: DecisionIntent})
		if _, err := l.Append(Record{Decision: DecisionIntent}); err == nil {
			t.Fatal("Append reused a record id")
		}
		mustVerifyOK(t, l, 1)
	})
}

func TestDefaultIDsAreUUIDv7(t *testing.T) {
	t.Parallel()
	db := openDB(t, t.TempDir()+"/audit.db")
	l, err := Open(db)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	a := mustAppend(t, l, Record{Decision: DecisionIntent})
	b := mustAppend(t, l, Record{Decision: DecisionIssued})
	if len(a.ID) != 36 || a.ID[14] != '7' || a.ID >= b.ID {
		t.Fatalf("ids %q %q are not ordered UUIDv7s", a.ID, b.ID)
	}
}

// TestOpsShareTheTransaction checks that an op's writes commit with the
// record, and that a failing op stores neither.
func TestOpsShareTheTransaction(t *testing.T) {
	t.Parallel()
	l, db, _ := tempLog(t)
	put := func(k string) func(tx *bbolt.Tx) error {
		return func(tx *bbolt.Tx) error {
			b, err := tx.CreateBucketIfNotExists([]byte("quota"))
			if err != nil {
				return err
			}
			return b.Put([]byte(k), []byte("1"))
		}
	}
	errQuota := errors.New("quota exceeded")
	appendWith := func(ops ...func(*bbolt.Tx) error) (Record, error) {
		return l.AppendWith(Record{Decision: DecisionIntent}, ops...)
	}
	if _, err := appendWith(put("a")); err != nil {
		t.Fatal(err)
	}
	_, err := appendWith(put("b"), func(*bbolt.Tx) error { return errQuota })
	if !errors.Is(err, errQuota) {
		t.Fatalf("err = %v, want errQuota", err)
	}
	_, err = appendWith(func(*bbolt.Tx) error { panic("boom") })
	if err == nil || !strings.Contains(err.Error(), "panicked") {
		t.Fatalf("panicking op: err = %v", err)
	}
	err = db.View(func(tx *bbolt.Tx) error {
		b := tx.Bucket([]byte("quota"))
		if b.Get([]byte("a")) == nil || b.Get([]byte("b")) != nil {
			t.Error("op writes did not follow their record's fate")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	mustVerifyOK(t, l, 1)
}

func TestBodySplicingMatchesRecordEncoding(t *testing.T) {
	t.Parallel()
	base := time.Date(2026, 5, 6, 7, 8, 9, 123456789, time.FixedZone("X", 3600))
	for i, r := range []Record{
		{Decision: DecisionDenied},
		{IssuanceID: "i", Caller: "spiffe://td/<a>&\"b\"", Attestation: "x509-svid", Profile: "p\u2028", Cluster: "ns/c",
			Issuer: "local", Decision: DecisionIssued, Reason: "why\n\t", TTL: time.Minute, ExpiresAt: base, UpstreamRef: "ref"},
		{Caller: "ünïcode ☃", Decision: DecisionThrottled, TTL: 1},
		{Decision: DecisionFailed, ExpiresAt: base.Add(time.Hour)},
		{Decision: DecisionIssued, UpstreamRef: "ASIAEXAMPLE", SourceIdentity: "ns.capi.sa.x@td", Reused: true},
		{Decision: DecisionRevoked, Reason: "node evicted by unix:uid=0"},
		{Replica: "credbroker-0", Decision: DecisionIssued, Caller: "c"},
	} {
		members, err := r.encodeBody()
		if err != nil {
			t.Fatal(err)
		}
		stored, err := r.seal(members, fmt.Sprintf("id-<%d>", i), uint64(i+1), base, strings.Repeat("ab", 32))
		if err != nil {
			t.Fatal(err)
		}
		want, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		if string(stored) != string(want) {
			t.Fatalf("record %d:\nspliced %s\nmarshal %s", i, stored, want)
		}
		if h, _ := r.ComputeHash(); h != r.Hash {
			t.Fatalf("record %d: hash %s, ComputeHash %s", i, r.Hash, h)
		}
	}
}

// FuzzBodySplicing checks that the spliced encoding equals encoding/json's
// for arbitrary field values (escaping, invalid-looking UTF-8 is refused by
// check before it gets here).
func FuzzBodySplicing(f *testing.F) {
	f.Add("spiffe://td/<x>", "ns/c", "reason & \"quotes\"", "id-1", int64(60e9))
	f.Add("", "", "", "\u2028", int64(0))
	f.Fuzz(func(t *testing.T, caller, cluster, reason, id string, ttl int64) {
		r := Record{Caller: caller, Cluster: cluster, Reason: reason, Decision: DecisionDenied, TTL: time.Duration(ttl)}
		if r.check() != nil || r.TTL < 0 {
			t.Skip()
		}
		members, err := r.encodeBody()
		if err != nil {
			t.Fatal(err)
		}
		stored, err := r.seal(members, id, 7, time.Unix(1, 2), "")
		if err != nil {
			t.Fatal(err)
		}
		want, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		if string(stored) != string(want) {
			t.Fatalf("spliced %s\nmarshal %s", stored, want)
		}
	})
}

func TestAdvancedWakesFollowers(t *testing.T) {
	t.Parallel()
	l, _, _ := tempLog(t)
	ch := l.Advanced(0)
	select {
	case <-ch:
		t.Fatal("Advanced(0) fired on an empty log")
	default:
	}
	if _, err := l.Append(Record{Decision: DecisionDenied}); err != nil {
		t.Fatal(err)
	}
	<-ch // closed by the commit; blocks forever (test timeout) if not
	select {
	case <-l.Advanced(0):
	default:
		t.Fatal("Advanced(0) not ready although the head is 1")
	}
	select {
	case <-l.Advanced(1):
		t.Fatal("Advanced(1) fired before record 2")
	default:
	}
}

// TestExportStoredIsTheStoredForm: the bytes ExportStored hands out are the
// record's canonical encoding, the one its hash covers.
func TestExportStoredIsTheStoredForm(t *testing.T) {
	t.Parallel()
	l, _, _ := tempLog(t)
	bulkAppend(t, l, exportChunk+5, genRecord)
	n := 0
	err := l.ExportStored(0, func(r Record, stored []byte) error {
		n++
		want, err := json.Marshal(r)
		if err != nil || !bytes.Equal(stored, want) {
			t.Fatalf("seq %d: stored %s, want %s (%v)", r.Seq, stored, want, err)
		}
		return nil
	})
	if err != nil || n != exportChunk+5 {
		t.Fatalf("ExportStored: %d records, %v", n, err)
	}
}
