package sidecar

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// armedTimer is one wait the Watcher asked for; the test fires it.
type armedTimer struct {
	d  time.Duration
	ch chan time.Time
}

// watchRig is a Watcher over two Refreshers (clusters ns/a and ns/b) and a
// scripted broker; its waits are handed to the test, never slept.
type watchRig struct {
	b       *fakeBroker
	clk     *fakeClock
	a, bb   *Refresher
	w       *Watcher
	dropped chan string // credential names dropped
	armed   chan armedTimer
	done    chan struct{}
	cancel  func()
}

func newWatchRig(t *testing.T, watching bool) *watchRig {
	t.Helper()
	b, client := startBroker(t)
	if watching {
		b.watches = make(chan *fakeWatch, 10)
	}
	var n atomic.Int32
	b.set(func(req *credbrokerv1.IssueCredentialRequest) (*credbrokerv1.IssueCredentialResponse, error) {
		return awsResponse(fmt.Sprintf("K%d-%s", n.Add(1), strings.ReplaceAll(req.GetCluster(), "/", "-")), req, t0.Add(time.Hour)), nil
	})
	rig := &watchRig{b: b, clk: newFakeClock(t0), dropped: make(chan string, 10), armed: make(chan armedTimer, 1000), done: make(chan struct{})}
	opts := []Option{WithClock(rig.clk), WithRand(constRand(0.5)), WithDropped(func(s Spec, _ Notice) { rig.dropped <- s.Name })}
	var err error
	if rig.a, err = NewRefresher(Spec{Name: "a", Profile: "capa", Cluster: "ns/a"}, client, opts...); err != nil {
		t.Fatal(err)
	}
	if rig.bb, err = NewRefresher(Spec{Name: "b", Profile: "capa", Cluster: "ns/b"}, client, opts...); err != nil {
		t.Fatal(err)
	}
	for _, r := range []*Refresher{rig.a, rig.bb} {
		if _, err := r.Refresh(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	rig.w = NewWatcher(client, []*Refresher{rig.a, rig.bb}, nil)
	rig.w.rand = constRand(0.5)
	rig.w.after = func(d time.Duration) <-chan time.Time {
		ch := make(chan time.Time, 1)
		rig.armed <- armedTimer{d, ch}
		return ch
	}
	ctx, cancel := context.WithCancel(context.Background())
	rig.cancel = cancel
	go func() { defer close(rig.done); rig.w.Run(ctx) }()
	t.Cleanup(rig.stop)
	return rig
}

func (r *watchRig) stop() {
	r.cancel()
	<-r.done
}

func (r *watchRig) nextWatch(t *testing.T) *fakeWatch {
	t.Helper()
	select {
	case w := <-r.b.watches:
		return w
	case <-time.After(watchdog):
		t.Fatal("the Watcher did not open a watch")
		return nil
	}
}

func (r *watchRig) awaitDropped(t *testing.T, want ...string) {
	t.Helper()
	var got []string
	for range want {
		select {
		case name := <-r.dropped:
			got = append(got, name)
		case <-time.After(watchdog):
			t.Fatalf("dropped %v, want %v", got, want)
		}
	}
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Fatalf("dropped %v, want %v", got, want)
	}
}

// fireBackoff fires the next wait that is not a heartbeat watchdog and
// returns its length.
func (r *watchRig) fireBackoff(t *testing.T) time.Duration {
	t.Helper()
	for {
		select {
		case a := <-r.armed:
			if a.d == MissedHeartbeats*firstHeartbeat || a.d == MissedHeartbeats*10*time.Second {
				continue // a heartbeat watchdog
			}
			a.ch <- time.Time{}
			return a.d
		case <-time.After(watchdog):
			t.Fatal("the Watcher did not back off")
			return 0
		}
	}
}

// awaitResumed waits for r to be told to try at once (Resume or a retry
// after a revoked issuance), which is what its loop would wake on.
func awaitResumed(t *testing.T, rs ...*Refresher) {
	t.Helper()
	for _, r := range rs {
		select {
		case <-r.wake:
		case <-time.After(watchdog):
			t.Fatalf("%s was not resumed", r.Spec().Name)
		}
	}
}

func send(t *testing.T, w *fakeWatch, m *credbrokerv1.WatchRevocationsResponse) {
	t.Helper()
	select {
	case w.send <- m:
	case <-time.After(watchdog):
		t.Fatal("the watch is not being served")
	}
}

func heartbeat() *credbrokerv1.WatchRevocationsResponse {
	return &credbrokerv1.WatchRevocationsResponse{Event: &credbrokerv1.WatchRevocationsResponse_Heartbeat{
		Heartbeat: &credbrokerv1.WatchHeartbeat{Interval: durationpb.New(10 * time.Second)}}}
}

func revocation(id string, kind credbrokerv1.RevocationKind, target string, ids ...string) *credbrokerv1.RevocationEvent {
	return &credbrokerv1.RevocationEvent{IssuanceIds: ids, Revocation: &credbrokerv1.Revocation{
		RevocationId: id, Kind: kind, Target: target, Reason: "pod compromised", Admin: "spiffe://example.test/admin", CreatedAt: timestamppb.New(t0)}}
}

func revoked(ev *credbrokerv1.RevocationEvent) *credbrokerv1.WatchRevocationsResponse {
	return &credbrokerv1.WatchRevocationsResponse{Event: &credbrokerv1.WatchRevocationsResponse_Revoked{Revoked: ev}}
}

func lifted(ev *credbrokerv1.RevocationEvent) *credbrokerv1.WatchRevocationsResponse {
	return &credbrokerv1.WatchRevocationsResponse{Event: &credbrokerv1.WatchRevocationsResponse_Lifted{Lifted: ev}}
}

func revokedStatus(id string) error {
	st, _ := status.New(codes.FailedPrecondition, "identity spiffe://example.test/me is revoked (pod compromised); ask a broker admin, quoting revocation "+id).
		WithDetails(&errdetails.ErrorInfo{Reason: "REVOKED", Domain: "credbroker.dev", Metadata: map[string]string{"revocation_id": id, "revoked_by": "spiffe://example.test/admin"}})
	return st.Err()
}

func held(t *testing.T, r *Refresher) Credential {
	t.Helper()
	c, ok := r.Current()
	if !ok {
		t.Fatalf("%s holds no credential", r.Spec().Name)
	}
	return c
}

// TestWatcherDropsWhatARevocationCovers: a revoked issuance is dropped and
// replaced at once, the other credential untouched; the watch restarts
// naming the new issuance; a revoked identity drops both, the endpoint
// answers 403 CredentialRevoked naming the revocation, and the broker is
// not asked again before the backoff; the lift resumes at once.
func TestWatcherDropsWhatARevocationCovers(t *testing.T) {
	rig := newWatchRig(t, true)
	a, b := held(t, rig.a), held(t, rig.bb)
	w := rig.nextWatch(t)
	if got := slices.Sorted(slices.Values(w.req.GetIssuanceIds())); !slices.Equal(got, slices.Sorted(slices.Values([]string{a.IssuanceID, b.IssuanceID}))) {
		t.Fatalf("watch names %v, want the held %s and %s", got, a.IssuanceID, b.IssuanceID)
	}
	send(t, w, heartbeat())

	// Another identity's revocation cannot arrive (the broker filters), but
	// one of another cluster or issuance must not drop anything here.
	send(t, w, revoked(revocation("r0", credbrokerv1.RevocationKind_REVOCATION_KIND_CLUSTER, "ns/other")))
	send(t, w, revoked(revocation("r1", credbrokerv1.RevocationKind_REVOCATION_KIND_ISSUANCE, b.IssuanceID, b.IssuanceID)))
	rig.awaitDropped(t, "b")
	awaitResumed(t, rig.bb) // a fresh one is asked for at once
	if c := held(t, rig.a); c != a {
		t.Fatalf("a changed to %s when b's issuance was revoked", c)
	}
	calls := rig.b.calls.Load()
	fresh, err := rig.bb.Get(t.Context()) // replaced at once: no backoff
	if err != nil || fresh.AccessKeyID == b.AccessKeyID || rig.b.calls.Load() != calls+1 {
		t.Fatalf("b after its issuance was revoked: %s, %v", fresh, err)
	}
	rig.w.Renewed()
	w = rig.nextWatch(t)
	if !slices.Contains(w.req.GetIssuanceIds(), fresh.IssuanceID) || slices.Contains(w.req.GetIssuanceIds(), b.IssuanceID) {
		t.Fatalf("the restarted watch names %v, want the new %s", w.req.GetIssuanceIds(), fresh.IssuanceID)
	}
	send(t, w, heartbeat())

	// The identity: everything goes, and stays gone without broker calls.
	send(t, w, revoked(revocation("r2", credbrokerv1.RevocationKind_REVOCATION_KIND_IDENTITY, "spiffe://example.test/me", a.IssuanceID, fresh.IssuanceID)))
	rig.awaitDropped(t, "a", "b")
	h, err := NewHandler("tok", []*Refresher{rig.a, rig.bb}, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	calls = rig.b.calls.Load()
	for _, name := range []string{"a", "b"} {
		req, _ := http.NewRequest(http.MethodGet, srv.URL+CredentialsPath+name, nil)
		req.Header.Set("Authorization", "tok")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden || !strings.Contains(string(body), `"code":"CredentialRevoked"`) ||
			!strings.Contains(string(body), "revocation r2 by spiffe://example.test/admin") || !strings.Contains(string(body), "pod compromised") {
			t.Fatalf("%s: HTTP %d %s", name, resp.StatusCode, body)
		}
	}
	if n := rig.b.calls.Load(); n != calls {
		t.Fatalf("%d broker calls while revoked and within the backoff", n-calls)
	}
	if next := rig.a.NextAttempt(); !next.After(rig.clk.Now()) {
		t.Fatalf("next attempt %v, not after now %v: the broker would be asked at once", next, rig.clk.Now())
	}

	// Lifted: the next attempt is now.
	send(t, w, lifted(revocation("r2", credbrokerv1.RevocationKind_REVOCATION_KIND_IDENTITY, "spiffe://example.test/me")))
	awaitResumed(t, rig.a, rig.bb)
	for _, r := range []*Refresher{rig.a, rig.bb} {
		if next := r.NextAttempt(); next.After(rig.clk.Now()) {
			t.Fatalf("%s: next attempt %v after the lift, want now", r.Spec().Name, next)
		}
		if _, err := r.Get(t.Context()); err != nil {
			t.Fatalf("%s after the lift: %v", r.Spec().Name, err)
		}
	}
}

// TestWatcherReconnects: a broken stream is reopened after a backoff; a
// watch refused REVOKED (the identity) drops everything; a later watch
// that no longer has that revocation in force resumes the credentials; a
// silent stream is given up after MissedHeartbeats intervals.
func TestWatcherReconnects(t *testing.T) {
	rig := newWatchRig(t, true)
	w := rig.nextWatch(t)
	send(t, w, heartbeat())
	w.end <- status.Error(codes.Unavailable, "broker going away")
	if d := rig.fireBackoff(t); d <= 0 || d > MaxBackoff {
		t.Fatalf("backoff %v", d)
	}
	w = rig.nextWatch(t)
	w.end <- revokedStatus("r9")
	rig.awaitDropped(t, "a", "b")
	if n, ok := rig.a.Revoked(); !ok || n.RevocationID != "r9" {
		t.Fatalf("notice %v %v", n, ok)
	}
	rig.fireBackoff(t)
	w = rig.nextWatch(t)
	send(t, w, heartbeat()) // nothing in force: r9 was lifted meanwhile
	awaitResumed(t, rig.a, rig.bb)
	if next := rig.bb.NextAttempt(); next.After(rig.clk.Now()) {
		t.Fatalf("next attempt %v after a watch without the revocation, want now", next)
	}
	// Silence: the watchdog of 3 intervals fires and the watch is reopened.
	for fired := false; !fired; {
		select {
		case a := <-rig.armed:
			if a.d == MissedHeartbeats*10*time.Second {
				a.ch <- time.Time{}
				fired = true
			}
		case <-time.After(watchdog):
			t.Fatal("no heartbeat watchdog armed")
		}
	}
	rig.fireBackoff(t)
	rig.nextWatch(t)
}

// TestWatcherGivesUpOnAnOlderBroker: a broker without WatchRevocations
// (UNIMPLEMENTED) ends the Watcher, which does not retry.
func TestWatcherGivesUpOnAnOlderBroker(t *testing.T) {
	rig := newWatchRig(t, false)
	select {
	case <-rig.done:
	case <-time.After(watchdog):
		t.Fatal("the Watcher kept trying a broker without revocation watches")
	}
}

// TestRefreshRefusedRevokedDropsTheCredential: a refresh the broker refuses
// REVOKED drops the credential held, even without a watch.
func TestRefreshRefusedRevokedDropsTheCredential(t *testing.T) {
	b, client := startBroker(t)
	b.give("K1", t0.Add(time.Hour))
	var dropped []string
	r := newTestRefresher(t, newFakeClock(t0), client, WithDropped(func(s Spec, n Notice) { dropped = append(dropped, n.RevocationID) }))
	mustGet(t, r, "K1")
	b.fail(revokedStatus("r7"))
	if _, err := r.Refresh(t.Context()); err == nil {
		t.Fatal("refresh succeeded")
	}
	if _, ok := r.Current(); ok {
		t.Fatal("the credential is still served after a REVOKED refusal")
	}
	_, err := r.Get(t.Context())
	if !errors.Is(err, ErrRevoked) || !strings.Contains(err.Error(), "r7") || !slices.Equal(dropped, []string{"r7"}) {
		t.Fatalf("Get: %v; dropped %v", err, dropped)
	}
}

// TestWatcherDropsACredentialOfARevokedCluster: a cluster revocation drops
// the credential for that cluster only, and it is not asked for again
// before the backoff.
func TestWatcherDropsACredentialOfARevokedCluster(t *testing.T) {
	rig := newWatchRig(t, true)
	b := held(t, rig.bb)
	w := rig.nextWatch(t)
	send(t, w, heartbeat())
	send(t, w, revoked(revocation("r3", credbrokerv1.RevocationKind_REVOCATION_KIND_CLUSTER, "ns/a")))
	rig.awaitDropped(t, "a")
	if c := held(t, rig.bb); c != b {
		t.Fatalf("b (cluster ns/b) changed to %s when ns/a was revoked", c)
	}
	if _, err := rig.a.Get(t.Context()); !errors.Is(err, ErrRevoked) || !strings.Contains(err.Error(), "cluster ns/a is revoked") {
		t.Fatalf("a: %v", err)
	}
}
