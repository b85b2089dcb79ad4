package nodes

import (
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.etcd.io/bbolt"

	"github.com/credbroker/credbroker/attest"
	"github.com/credbroker/credbroker/test/fakeclock"
)

var (
	epoch = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	td    = spiffeid.RequireTrustDomainFromString("example.org")
)

func openDB(t testing.TB, path string) *bbolt.DB {
	t.Helper()
	db, err := bbolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatalf("open db: %v", err)
	}
	return db
}

func newRegistry(t testing.TB, clk *fakeclock.Clock) (*Registry, *bbolt.DB, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "credbroker.db")
	db := openDB(t, path)
	t.Cleanup(func() { db.Close() })
	r, err := Open(db, WithClock(clk.Now))
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return r, db, path
}

// node returns the Node attestation would report for cluster/name.
func node(t testing.TB, cluster, name string) Node {
	t.Helper()
	ns, cl, _ := strings.Cut(cluster, "/")
	id, err := attest.NodeID(td, ns, cl, name)
	if err != nil {
		t.Fatalf("NodeID: %v", err)
	}
	return Node{
		SPIFFEID:    id.String(),
		Cluster:     cluster,
		Name:        name,
		Attestation: attest.MethodJoinToken,
		Detail:      "join token 0123456789abcdef",
		ExpiresAt:   epoch.Add(time.Hour),
		Serial:      "01",
	}
}

func mustAttest(t testing.TB, r *Registry, n Node) Node {
	t.Helper()
	got, err := r.Attested(n)
	if err != nil {
		t.Fatalf("Attested(%s): %v", n.SPIFFEID, err)
	}
	return got
}

func mustGet(t testing.TB, r *Registry, id string) Node {
	t.Helper()
	n, err := r.Get(id)
	if err != nil {
		t.Fatalf("Get(%s): %v", id, err)
	}
	return n
}

func TestAttestedUpsertKeepsFirstAttestedAt(t *testing.T) {
	clk := fakeclock.New(epoch)
	r, _, _ := newRegistry(t, clk)
	in := node(t, "ns/prod", "node-a")
	in.AttestedAt = epoch.Add(-time.Hour) // ignored
	in.EvictedAt = epoch                  // ignored: Attested never evicts

	got := mustAttest(t, r, in)
	want := in
	want.AttestedAt, want.RenewedAt, want.EvictedAt = epoch, epoch, time.Time{}
	if got != want {
		t.Fatalf("Attested = %+v, want %+v", got, want)
	}
	if g := mustGet(t, r, in.SPIFFEID); g != want {
		t.Fatalf("Get = %+v, want %+v", g, want)
	}

	clk.Advance(time.Hour)
	again := in
	again.Attestation, again.Detail = attest.MethodK8sPSAT, "pod x"
	again.ExpiresAt, again.Serial = epoch.Add(2*time.Hour), "02"
	got = mustAttest(t, r, again)
	want = again
	want.AttestedAt, want.RenewedAt, want.EvictedAt = epoch, epoch.Add(time.Hour), time.Time{}
	if got != want {
		t.Fatalf("second Attested = %+v, want %+v", got, want)
	}
	if g := mustGet(t, r, in.SPIFFEID); g != want {
		t.Fatalf("Get = %+v, want %+v", g, want)
	}
}

func TestAttestedRejectsInconsistentNode(t *testing.T) {
	clk := fakeclock.New(epoch)
	r, _, _ := newRegistry(t, clk)
	good := node(t, "ns/prod", "node-a")
	for name, mutate := range map[string]func(*Node){
		"empty id":        func(n *Node) { n.SPIFFEID = "" },
		"not a spiffe id": func(n *Node) { n.SPIFFEID = "node-a" },
		"not a node id":   func(n *Node) { n.SPIFFEID = "spiffe://example.org/ns/capi-system/sa/ctrl" },
		"other cluster":   func(n *Node) { n.Cluster = "ns/staging" },
		"other name":      func(n *Node) { n.Name = "node-b" },
		"bad cluster":     func(n *Node) { n.Cluster = "prod" },
		"empty name":      func(n *Node) { n.Name = "" },
	} {
		t.Run(name, func(t *testing.T) {
			n := good
			mutate(&n)
			if _, err := r.Attested(n); err == nil || !strings.HasPrefix(err.Error(), "nodes: ") {
				t.Fatalf("Attested(%+v): err = %v, want a nodes: error", n, err)
			}
		})
	}
	if ns, err := r.List(""); err != nil || len(ns) != 0 {
		t.Fatalf("List after rejections = %+v, %v; want none", ns, err)
	}
}

func TestRenewed(t *testing.T) {
	clk := fakeclock.New(epoch)
	r, _, _ := newRegistry(t, clk)
	in := node(t, "ns/prod", "node-a")
	first := mustAttest(t, r, in)

	clk.Advance(30 * time.Minute)
	exp := epoch.Add(90 * time.Minute)
	got, err := r.Renewed(in.SPIFFEID, "0a0b", exp)
	if err != nil {
		t.Fatalf("Renewed: %v", err)
	}
	want := first
	want.RenewedAt, want.ExpiresAt, want.Serial = epoch.Add(30*time.Minute), exp, "0a0b"
	if got != want {
		t.Fatalf("Renewed = %+v, want %+v", got, want)
	}
	if g := mustGet(t, r, in.SPIFFEID); g != want {
		t.Fatalf("Get = %+v, want %+v", g, want)
	}

	unknown := node(t, "ns/prod", "node-z").SPIFFEID
	if got, err := r.Renewed(unknown, "01", exp); !errors.Is(err, ErrNotFound) || got != (Node{}) {
		t.Fatalf("Renewed(unknown) = %+v, %v; want ErrNotFound", got, err)
	}
	if _, err := r.Get(unknown); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Renewed(unknown) created a record: Get err = %v", err)
	}
}

func TestEvict(t *testing.T) {
	clk := fakeclock.New(epoch)
	r, _, _ := newRegistry(t, clk)
	in := node(t, "ns/prod", "node-a")
	mustAttest(t, r, in)

	if ev, err := r.Evicted(in.SPIFFEID); err != nil || ev {
		t.Fatalf("Evicted before Evict = %v, %v; want false", ev, err)
	}
	clk.Advance(time.Minute)
	evicted, err := r.Evict(in.SPIFFEID)
	if err != nil {
		t.Fatalf("Evict: %v", err)
	}
	if !evicted.Evicted() || !evicted.EvictedAt.Equal(epoch.Add(time.Minute)) {
		t.Fatalf("Evict = %+v, want EvictedAt %s", evicted, epoch.Add(time.Minute))
	}
	if ev, err := r.Evicted(in.SPIFFEID); err != nil || !ev {
		t.Fatalf("Evicted after Evict = %v, %v; want true", ev, err)
	}

	// Idempotent: the first eviction time stays.
	clk.Advance(time.Minute)
	if again, err := r.Evict(in.SPIFFEID); err != nil || again != evicted {
		t.Fatalf("second Evict = %+v, %v; want %+v", again, err, evicted)
	}

	// Neither attestation nor renewal brings it back, and neither changes it.
	clk.Advance(time.Minute)
	re := in
	re.Serial = "ff"
	if got, err := r.Attested(re); !errors.Is(err, ErrEvicted) || got != evicted {
		t.Fatalf("Attested after Evict = %+v, %v; want %+v, ErrEvicted", got, err, evicted)
	}
	if got, err := r.Renewed(in.SPIFFEID, "ff", epoch.Add(5*time.Hour)); !errors.Is(err, ErrEvicted) || got != evicted {
		t.Fatalf("Renewed after Evict = %+v, %v; want %+v, ErrEvicted", got, err, evicted)
	}
	if g := mustGet(t, r, in.SPIFFEID); g != evicted {
		t.Fatalf("Get after refused changes = %+v, want %+v", g, evicted)
	}

	unknown := node(t, "ns/prod", "node-z").SPIFFEID
	if _, err := r.Evict(unknown); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Evict(unknown): err = %v, want ErrNotFound", err)
	}
	if ev, err := r.Evicted(unknown); err != nil || ev {
		t.Fatalf("Evicted(unknown) = %v, %v; want false, nil", ev, err)
	}
}

func TestGetUnknown(t *testing.T) {
	r, _, _ := newRegistry(t, fakeclock.New(epoch))
	if _, err := r.Get("spiffe://example.org/nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get(unknown): err = %v, want ErrNotFound", err)
	}
}

func TestEvictedFailsClosedOnCorruptRecord(t *testing.T) {
	r, db, _ := newRegistry(t, fakeclock.New(epoch))
	id := node(t, "ns/prod", "node-a").SPIFFEID
	err := db.Update(func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketByID).Put([]byte(id), []byte("{not json"))
	})
	if err != nil {
		t.Fatal(err)
	}
	if ev, err := r.Evicted(id); err == nil || !ev {
		t.Fatalf("Evicted(corrupt) = %v, %v; want true and an error", ev, err)
	}
}

func TestListFilterAndOrder(t *testing.T) {
	clk := fakeclock.New(epoch)
	r, _, _ := newRegistry(t, clk)
	// Attest out of order; List must sort by SPIFFE ID.
	for _, cn := range [][2]string{
		{"ns/prod", "node-c"}, {"ns/staging", "node-a"}, {"ns/prod", "node-a"},
		{"ns/prod-2", "node-a"}, {"other/prod", "node-b"}, {"ns/prod", "node-b"},
	} {
		mustAttest(t, r, node(t, cn[0], cn[1]))
	}
	if _, err := r.Evict(node(t, "ns/prod", "node-b").SPIFFEID); err != nil {
		t.Fatal(err)
	}

	ids := func(cluster string) []string {
		ns, err := r.List(cluster)
		if err != nil {
			t.Fatalf("List(%q): %v", cluster, err)
		}
		var out []string
		for _, n := range ns {
			out = append(out, n.Cluster+" "+n.Name)
		}
		return out
	}
	for cluster, want := range map[string][]string{
		"ns/prod":    {"ns/prod node-a", "ns/prod node-b", "ns/prod node-c"},
		"ns/prod-2":  {"ns/prod-2 node-a"},
		"other/prod": {"other/prod node-b"},
		"ns/none":    nil,
		// By SPIFFE ID: ".../ns/prod-2/..." sorts before ".../ns/prod/...".
		"": {
			"ns/prod-2 node-a", "ns/prod node-a", "ns/prod node-b", "ns/prod node-c",
			"ns/staging node-a", "other/prod node-b",
		},
	} {
		if got := ids(cluster); !reflect.DeepEqual(got, want) {
			t.Errorf("List(%q) = %q, want %q", cluster, got, want)
		}
	}
}

func TestPersistsAcrossReopen(t *testing.T) {
	clk := fakeclock.New(epoch)
	r, db, path := newRegistry(t, clk)
	a, b := node(t, "ns/prod", "node-a"), node(t, "ns/prod", "node-b")
	mustAttest(t, r, a)
	mustAttest(t, r, b)
	clk.Advance(time.Minute)
	if _, err := r.Renewed(a.SPIFFEID, "aa", epoch.Add(3*time.Hour)); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Evict(b.SPIFFEID); err != nil {
		t.Fatal(err)
	}
	before, err := r.List("")
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	db = openDB(t, path)
	defer db.Close()
	r, err = Open(db, WithClock(clk.Now))
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	after, err := r.List("")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(after, before) {
		t.Fatalf("List after reopen = %+v, want %+v", after, before)
	}
	if ev, err := r.Evicted(b.SPIFFEID); err != nil || !ev {
		t.Fatalf("Evicted after reopen = %v, %v; want true", ev, err)
	}
	if _, err := r.Attested(b); !errors.Is(err, ErrEvicted) {
		t.Fatalf("Attested of evicted node after reopen: err = %v, want ErrEvicted", err)
	}
}

// TestConcurrentAttestedEvict races attestations and renewals of one node
// against evictions. The clock steps on every reading and is read inside
// each transaction, so times order like commits: every change that
// succeeded must precede the (single, first) eviction, and every change
// after it must have been refused.
func TestConcurrentAttestedEvict(t *testing.T) {
	clk := fakeclock.NewStepping(epoch, time.Microsecond)
	r, _, _ := newRegistry(t, clk)
	n := node(t, "ns/prod", "node-a")
	mustAttest(t, r, n)

	const workers, rounds = 8, 25
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		okTimes  []time.Time
		refused  int
		evictAts []time.Time
		start    = make(chan struct{})
	)
	for w := range workers {
		wg.Go(func() {
			<-start
			for i := range rounds {
				var (
					got Node
					err error
				)
				switch {
				case w == 0 && i == rounds/2, w == 1 && i == rounds-1:
					got, err = r.Evict(n.SPIFFEID)
					if err != nil {
						t.Errorf("Evict: %v", err)
						return
					}
					mu.Lock()
					evictAts = append(evictAts, got.EvictedAt)
					mu.Unlock()
					continue
				case i%2 == 0:
					got, err = r.Attested(n)
				default:
					got, err = r.Renewed(n.SPIFFEID, fmt.Sprintf("%x", w*rounds+i), epoch.Add(time.Hour))
				}
				mu.Lock()
				switch {
				case err == nil:
					okTimes = append(okTimes, got.RenewedAt)
				case errors.Is(err, ErrEvicted):
					refused++
				default:
					t.Errorf("unexpected error: %v", err)
				}
				mu.Unlock()
			}
		})
	}
	close(start)
	wg.Wait()

	final := mustGet(t, r, n.SPIFFEID)
	if !final.Evicted() {
		t.Fatalf("node not evicted at the end: %+v", final)
	}
	for _, at := range evictAts {
		if !at.Equal(final.EvictedAt) {
			t.Fatalf("Evict returned EvictedAt %s, stored %s: a second eviction moved it", at, final.EvictedAt)
		}
	}
	for _, at := range okTimes {
		if !at.Before(final.EvictedAt) {
			t.Fatalf("a change at %s succeeded after the eviction at %s", at, final.EvictedAt)
		}
	}
	if !final.RenewedAt.Before(final.EvictedAt) {
		t.Fatalf("stored RenewedAt %s is not before EvictedAt %s", final.RenewedAt, final.EvictedAt)
	}
	if final.AttestedAt != epoch {
		t.Fatalf("AttestedAt = %s, want the first attestation %s", final.AttestedAt, epoch)
	}
	if total := len(okTimes) + refused; total != workers*rounds-2 {
		t.Fatalf("%d outcomes, want %d", total, workers*rounds-2)
	}
	t.Logf("%d changes before eviction, %d refused after", len(okTimes), refused)
}

func TestOpenNilDB(t *testing.T) {
	if _, err := Open(nil); err == nil {
		t.Fatal("Open(nil) succeeded")
	}
}

func BenchmarkEvicted(b *testing.B) {
	r, _, _ := newRegistry(b, fakeclock.New(epoch))
	for i := range 1000 {
		mustAttest(b, r, node(b, "ns/prod", fmt.Sprintf("node-%d", i)))
	}
	id := node(b, "ns/prod", "node-500").SPIFFEID
	b.ReportAllocs()
	for b.Loop() {
		if ev, err := r.Evicted(id); err != nil || ev {
			b.Fatal(ev, err)
		}
	}
}
