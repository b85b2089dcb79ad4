package limits

import (
	"fmt"
	"math"
	"testing"
	"time"

	"golang.org/x/time/rate"
)

func TestBucketsPerKeyAndTotal(t *testing.T) {
	now := time.Unix(1000, 0)
	b, err := NewBuckets(Spec{Rate: 1, Burst: 2}, &Spec{Rate: 1, Burst: 3}, 0)
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []bool{true, true, false} {
		if ok, why := b.Take("a", now); ok != want || (!ok && (why.Total || why.RetryAfter != time.Second)) {
			t.Fatalf("a take %d = %v, %+v", i, ok, why)
		}
	}
	if ok, _ := b.Take("b", now); !ok {
		t.Fatal("b's first token")
	}
	// The total (3) is spent; b's own bucket still has a token, and keeps it.
	ok, why := b.Take("b", now)
	if ok || !why.Total || why.RetryAfter != time.Second {
		t.Fatalf("b over the total = %v, %+v", ok, why)
	}
	now = now.Add(time.Second)
	if ok, _ := b.Take("b", now); !ok {
		t.Fatal("b after a second: the total refilled one token and b's own bucket kept its")
	}
}

func TestBucketsRejectUnboundedSpecs(t *testing.T) {
	for _, s := range []Spec{{}, {Rate: 1}, {Burst: 1}, {Rate: -1, Burst: 1}, {Rate: rate.Limit(math.NaN()), Burst: 1}, {Rate: rate.Inf, Burst: 1}} {
		if _, err := NewBuckets(s, nil, 0); err == nil {
			t.Errorf("NewBuckets(%+v) accepted", s)
		}
		if _, err := NewBuckets(Spec{Rate: 1, Burst: 1}, &s, 0); err == nil {
			t.Errorf("NewBuckets(total %+v) accepted", s)
		}
	}
}

// TestBucketsMemoryIsBoundedWithoutRefills: a table full of busy keys sends
// new keys to one shared overflow bucket instead of evicting (refilling)
// anyone; buckets that are full again are dropped.
func TestBucketsMemoryIsBoundedWithoutRefills(t *testing.T) {
	now := time.Unix(1000, 0)
	const maxKeys = 50
	b, err := NewBuckets(Spec{Rate: 1, Burst: 1}, nil, maxKeys)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 10*maxKeys; i++ {
		b.Take(fmt.Sprint("k", i), now)
	}
	if n := b.Len(); n > maxKeys+1 {
		t.Fatalf("%d keys tracked, want at most %d and the overflow", n, maxKeys)
	}
	// k0 is still empty: not evicted, so not refilled.
	if ok, _ := b.Take("k0", now); ok {
		t.Fatal("a tracked key got a fresh bucket while the table was full")
	}
	// The new keys shared one bucket: one token between them.
	if ok, _ := b.Take("newcomer", now); ok {
		t.Fatal("a key beyond the table got its own bucket")
	}
	// Once every bucket is full again, they are dropped.
	now = now.Add(time.Hour)
	if ok, _ := b.Take("later", now); !ok {
		t.Fatal("a new key after the table emptied")
	}
	if n := b.Len(); n != 1 {
		t.Fatalf("%d keys tracked after they all went idle, want 1", n)
	}
}
