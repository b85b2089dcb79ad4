package page

import (
	"errors"
	"testing"
	"time"
)

func TestTokenRoundTrip(t *testing.T) {
	f := Filter("spiffe://td/a", "ns/c", "")
	p := Position{Time: time.Date(2026, 5, 6, 12, 0, 0, 123, time.UTC), Seq: 42, Key: "spiffe://td/n"}
	got, err := Decode(Encode("issuances", f, p), "issuances", f)
	if err != nil || !got.Time.Equal(p.Time) || got.Seq != p.Seq || got.Key != p.Key {
		t.Fatalf("Decode = %+v, %v; want %+v", got, err, p)
	}
}

func TestDecodeRefuses(t *testing.T) {
	f := Filter("a")
	good := Encode("nodes", f, Position{Key: "k"})
	for name, tc := range map[string]struct{ token, list, filter string }{
		"garbage":         {"!!", "nodes", f},
		"not JSON":        {"aGVsbG8", "nodes", f},
		"unknown field":   {"eyJ2IjoxLCJsIjoibm9kZXMiLCJmIjoiIiwieCI6MX0", "nodes", Filter()},
		"trailing data":   {good + "e30", "nodes", f},
		"other listing":   {good, "issuances", f},
		"other filters":   {good, "nodes", Filter("b")},
		"filter boundary": {Encode("nodes", Filter("ab", "c"), Position{}), "nodes", Filter("a", "bc")},
		"too long":        {string(make([]byte, 4096)), "nodes", f},
	} {
		if _, err := Decode(tc.token, tc.list, tc.filter); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", name, err)
		}
	}
}

func TestSize(t *testing.T) {
	for _, tc := range []struct {
		in   int32
		want int
		err  bool
	}{{0, 100, false}, {1, 1, false}, {1000, 1000, false}, {1001, 1000, false}, {-1, 0, true}} {
		got, err := Size(tc.in, 100, 1000)
		if got != tc.want || (err != nil) != tc.err {
			t.Errorf("Size(%d) = %d, %v", tc.in, got, err)
		}
	}
}
