package broker

import (
	"testing"
	"time"

	"github.com/credbroker/credbroker/broker/audit"
	"github.com/credbroker/credbroker/broker/state"
)

type fakeFeed struct{ fn func(state.RevocationChange) }

func (f *fakeFeed) Select(time.Time, func(state.Revocation) bool) []state.Revocation { return nil }
func (f *fakeFeed) Subscribe(fn func(state.RevocationChange)) func() {
	f.fn = fn
	return func() { f.fn = nil }
}

type noIssuances struct{}

func (noIssuances) ByIssuance(string) ([]audit.Record, error) { return nil, nil }

// TestWatchOverflowEndsTheStream: publishing never blocks on a stream that
// does not keep up; once its buffer is full it is marked as lagging (its
// stream then ends for the client to watch afresh), and changes that do not
// concern it never reach its buffer.
func TestWatchOverflowEndsTheStream(t *testing.T) {
	feed := &fakeFeed{}
	w, err := NewWatches(feed, noIssuances{}, WatchConfig{PerIdentity: 1, Total: 1})
	if err != nil {
		t.Fatal(err)
	}
	me := "spiffe://example.test/me"
	sub, ok := w.subscribe(interest{identity: me, clusters: map[string]bool{}, held: map[string]heldIssuance{}, refs: map[string]bool{}})
	if !ok {
		t.Fatal("not subscribed")
	}
	for i := range 2 * watchBuffer {
		feed.fn(state.RevocationChange{Revocation: state.Revocation{ID: "other", Kind: state.RevokeIdentity, Target: "spiffe://example.test/other"}})
		if i < watchBuffer {
			feed.fn(state.RevocationChange{Revocation: state.Revocation{ID: "mine", Kind: state.RevokeIdentity, Target: me}})
		}
	}
	select {
	case <-sub.lagged:
		t.Fatal("lagging with a full buffer but nothing dropped")
	default:
	}
	if len(sub.events) != watchBuffer {
		t.Fatalf("%d events buffered, want %d (only the caller's)", len(sub.events), watchBuffer)
	}
	feed.fn(state.RevocationChange{Revocation: state.Revocation{ID: "mine", Kind: state.RevokeIdentity, Target: me}, Removed: true})
	select {
	case <-sub.lagged:
	default:
		t.Fatal("an overflowing stream is not marked as lagging")
	}
	w.Stop()
	if feed.fn != nil {
		t.Error("Stop did not stop listening to the index")
	}
}
