package audit

import (
	"reflect"
	"testing"
	"time"

	"go.etcd.io/bbolt"
)

// TestUpgradeFromLayout1: a database written with layout 1 (caller, cluster
// and time indexes, no links) is upgraded by Open, in several transactions,
// to the same answers, and the old indexes are dropped.
//
// Not parallel: it sets upgradeChunk, which every Open reads.
func TestUpgradeFromLayout1(t *testing.T) {
	defer func(n int) { upgradeChunk = n }(upgradeChunk)
	upgradeChunk = 7

	path := t.TempDir() + "/audit.db"
	l, db := openLog(t, path)
	for i := range 60 {
		mustAppend(t, l, genRecord(i))
	}
	all := exportAll(t, l)
	l.Close()
	// Turn it into what layout 1 left: the same records, id and issuance
	// indexes, its three other indexes, and neither links nor heads.
	err := db.Update(func(tx *bbolt.Tx) error {
		for _, name := range [][]byte{bucketLinks, bucketHeads} {
			if err := tx.DeleteBucket(name); err != nil {
				return err
			}
		}
		for _, name := range oldBuckets {
			b, err := tx.CreateBucket(name)
			if err != nil {
				return err
			}
			if err := b.Put([]byte("layout-1 entry"), []byte("issued")); err != nil {
				return err
			}
		}
		return tx.Bucket(bucketMeta).Delete(metaLayout)
	})
	if err != nil {
		t.Fatal(err)
	}

	l, err = Open(db, WithClock(newFakeClock().Now), WithNewID(newUUIDv7))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	err = db.View(func(tx *bbolt.Tx) error {
		for _, name := range oldBuckets {
			if tx.Bucket(name) != nil {
				t.Errorf("layout-1 bucket %s is still there", name)
			}
		}
		if got := string(tx.Bucket(bucketMeta).Get(metaLayout)); got != layoutVersion {
			t.Errorf("layout = %q, want %q", got, layoutVersion)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	at := func(i int) time.Time { return all[i].Time }
	for _, q := range []Query{
		{},
		{Caller: "spiffe://td/caller-1"},
		{Cluster: "ns/cluster-2", Decision: DecisionIssued},
		{Caller: "spiffe://td/caller-2", Since: at(20), Until: at(40)},
	} {
		got, err := l.List(q)
		if err != nil || !reflect.DeepEqual(got, bruteForce(all, q)) {
			t.Errorf("after the upgrade List(%+v) = %v, %v; want %v", q, seqs(got), err, seqs(bruteForce(all, q)))
		}
	}
	// New records join the upgraded chains.
	r := mustAppend(t, l, genRecord(1))
	got, err := l.List(Query{Caller: r.Caller, Limit: 2})
	if err != nil || len(got) != 2 || got[0].Seq != r.Seq || got[1].Seq != bruteForce(all, Query{Caller: r.Caller})[0].Seq {
		t.Errorf("List after an append = %v, %v", seqs(got), err)
	}
	mustVerifyOK(t, l, uint64(len(all)+1))
}
