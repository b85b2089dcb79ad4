package jointoken

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
	"time"

	"go.etcd.io/bbolt"

	"github.com/credbroker/credbroker/attest"
	"github.com/credbroker/credbroker/test/fakeclock"
)

const cluster = "capi-clusters/prod-eu-1"

var epoch = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func openDB(t *testing.T, path string) *bbolt.DB {
	t.Helper()
	db, err := bbolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatalf("open db: %v", err)
	}
	return db
}

// newStore opens a Store on a fresh database file, closed at cleanup.
func newStore(t *testing.T, clk *fakeclock.Clock, opts ...Option) (*Store, *bbolt.DB, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "credbroker.db")
	db := openDB(t, path)
	t.Cleanup(func() { db.Close() })
	s, err := Open(db, append([]Option{WithClock(clk.Now)}, opts...)...)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return s, db, path
}

func mustCreate(t *testing.T, s *Store, node string, ttl time.Duration) (string, Token) {
	t.Helper()
	secret, tok, err := s.Create(cluster, node, ttl)
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	return secret, tok
}

func TestCreateConsume(t *testing.T) {
	clk := fakeclock.New(epoch)
	s, _, _ := newStore(t, clk)

	secret, tok, err := s.Create(cluster, "ip-10-0-1-23.ec2.internal", 0)
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	if !strings.HasPrefix(secret, "cbjt_") || len(secret) != 5+43 {
		t.Fatalf("secret %q: want cbjt_ and 43 base64url characters", secret)
	}
	want := Token{
		ID:        ID(secret),
		Cluster:   cluster,
		Node:      "ip-10-0-1-23.ec2.internal",
		CreatedAt: epoch,
		ExpiresAt: epoch.Add(DefaultTTL),
	}
	if tok != want {
		t.Fatalf("Create token = %+v, want %+v", tok, want)
	}

	clk.Advance(time.Minute)
	got, err := s.Consume(secret)
	if err != nil {
		t.Fatalf("Consume: %v", err)
	}
	want.UsedAt = epoch.Add(time.Minute)
	if got != want {
		t.Fatalf("Consume token = %+v, want %+v", got, want)
	}

	clk.Advance(time.Minute)
	got, err = s.Consume(secret)
	if !errors.Is(err, ErrUsed) || !errors.Is(err, attest.ErrNodeRejected) {
		t.Fatalf("second Consume: err = %v, want ErrUsed matching attest.ErrNodeRejected", err)
	}
	if got != want {
		t.Fatalf("second Consume returned %+v, want the used token %+v", got, want)
	}
}

func TestID(t *testing.T) {
	const secret = "cbjt_anything"
	h := sha256.Sum256([]byte(secret))
	if got, want := ID(secret), hex.EncodeToString(h[:])[:16]; got != want {
		t.Fatalf("ID = %q, want %q", got, want)
	}
}

func TestWithRand(t *testing.T) {
	clk := fakeclock.New(epoch)
	raw := bytes.Repeat([]byte{0xfb}, 32)
	s, _, _ := newStore(t, clk, WithRand(bytes.NewReader(raw)))
	secret, _, err := s.Create(cluster, "", 0)
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	if want := "cbjt_" + base64.RawURLEncoding.EncodeToString(raw); secret != want {
		t.Fatalf("secret = %q, want %q", secret, want)
	}
	// The reader is now empty: Create must fail rather than use short
	// randomness, and the same bytes again would collide.
	if _, _, err := s.Create(cluster, "", 0); err == nil {
		t.Fatal("Create with an exhausted random source succeeded")
	}
	s2, _, _ := newStore(t, clk, WithRand(iotest.ErrReader(errors.New("no entropy"))))
	if _, _, err := s2.Create(cluster, "", 0); err == nil || !strings.HasPrefix(err.Error(), "jointoken: ") {
		t.Fatalf("Create with a failing random source: err = %v", err)
	}
}

func TestCreateRefusesDuplicateKey(t *testing.T) {
	clk := fakeclock.New(epoch)
	raw := bytes.Repeat([]byte{7}, 32)
	s, _, _ := newStore(t, clk, WithRand(bytes.NewReader(append(raw, raw...))))
	secret, _ := mustCreate(t, s, "", 0)
	if _, err := s.Consume(secret); err != nil {
		t.Fatalf("Consume: %v", err)
	}
	if _, _, err := s.Create(cluster, "", 0); err == nil {
		t.Fatal("Create overwrote an existing token with a repeated secret")
	}
	// The used token must not have been revived.
	if _, err := s.Consume(secret); !errors.Is(err, ErrUsed) {
		t.Fatalf("Consume after duplicate Create: err = %v, want ErrUsed", err)
	}
}

func TestExpired(t *testing.T) {
	clk := fakeclock.New(epoch)
	s, _, _ := newStore(t, clk)
	secret, tok := mustCreate(t, s, "", time.Hour)

	clk.Advance(time.Hour) // ExpiresAt itself is already too late
	got, err := s.Consume(secret)
	if !errors.Is(err, ErrExpired) || !errors.Is(err, attest.ErrNodeRejected) {
		t.Fatalf("Consume: err = %v, want ErrExpired matching attest.ErrNodeRejected", err)
	}
	if got != tok {
		t.Fatalf("Consume returned %+v, want %+v", got, tok)
	}
	// Refusal consumed nothing.
	ts, err := s.List()
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	if len(ts) != 1 || !ts[0].UsedAt.IsZero() {
		t.Fatalf("after expired Consume, List = %+v, want the token unused", ts)
	}

	clk.Set(epoch.Add(time.Hour - time.Nanosecond))
	if _, err := s.Consume(secret); err != nil {
		t.Fatalf("Consume just before expiry: %v", err)
	}
}

func TestUnknownAndMalformed(t *testing.T) {
	clk := fakeclock.New(epoch)
	s, _, _ := newStore(t, clk)
	secret, _ := mustCreate(t, s, "", 0)
	body := secret[len("cbjt_"):]

	never := "cbjt_" + base64.RawURLEncoding.EncodeToString(make([]byte, 32))
	for name, in := range map[string]string{
		"never issued":   never,
		"empty":          "",
		"no prefix":      body,
		"wrong prefix":   "cbxx_" + body,
		"too short":      secret[:len(secret)-1],
		"too long":       secret + "A",
		"not base64url":  "cbjt_" + strings.Repeat("+", 43),
		"padding":        "cbjt_" + body[:42] + "=",
		"noncanonical":   "cbjt_" + body[:42] + noncanonical(body[42]),
		"upper prefix":   "CBJT_" + body,
		"trailing space": secret[:len(secret)-1] + " ",
	} {
		t.Run(name, func(t *testing.T) {
			got, err := s.Consume(in)
			if !errors.Is(err, ErrUnknown) || !errors.Is(err, attest.ErrNodeRejected) {
				t.Fatalf("Consume(%q): err = %v, want ErrUnknown matching attest.ErrNodeRejected", in, err)
			}
			if got != (Token{}) {
				t.Fatalf("Consume(%q) returned %+v, want the zero Token", in, got)
			}
		})
	}
	// None of that touched the real token.
	if _, err := s.Consume(secret); err != nil {
		t.Fatalf("Consume of the real secret: %v", err)
	}
}

// noncanonical returns the last base64url character with its unused low bits
// set, which a lenient decoder would accept as the same bytes.
func noncanonical(c byte) string {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	i := strings.IndexByte(alphabet, c)
	return string(alphabet[i|3])
}

func TestSentinels(t *testing.T) {
	for _, err := range []error{ErrUnknown, ErrUsed, ErrExpired} {
		if !errors.Is(err, attest.ErrNodeRejected) {
			t.Errorf("%v does not match attest.ErrNodeRejected", err)
		}
		if !strings.HasPrefix(err.Error(), "jointoken: ") {
			t.Errorf("%q lacks the package prefix", err)
		}
	}
	if errors.Is(ErrUsed, ErrUnknown) || errors.Is(ErrExpired, ErrUsed) {
		t.Error("sentinels match each other")
	}
}

func TestConcurrentConsume(t *testing.T) {
	clk := fakeclock.NewStepping(epoch, time.Microsecond)
	s, _, _ := newStore(t, clk)
	secret, _ := mustCreate(t, s, "", 0)

	const n = 200
	var (
		wg    sync.WaitGroup
		start = make(chan struct{})
		errs  = make([]error, n)
		toks  = make([]Token, n)
	)
	for i := range n {
		wg.Go(func() {
			<-start
			toks[i], errs[i] = s.Consume(secret)
		})
	}
	close(start)
	wg.Wait()

	ok, used := 0, 0
	var winner Token
	for i, err := range errs {
		switch {
		case err == nil:
			ok++
			winner = toks[i]
		case errors.Is(err, ErrUsed):
			used++
		default:
			t.Errorf("Consume %d: unexpected error %v", i, err)
		}
	}
	if ok != 1 || used != n-1 {
		t.Fatalf("%d successes and %d ErrUsed, want 1 and %d", ok, used, n-1)
	}
	// Every loser saw the winner's record.
	for i, err := range errs {
		if err != nil && toks[i] != winner {
			t.Fatalf("Consume %d returned %+v, want the winner's %+v", i, toks[i], winner)
		}
	}
}

func TestPurge(t *testing.T) {
	clk := fakeclock.New(epoch)
	s, _, _ := newStore(t, clk)
	usedShort, _ := mustCreate(t, s, "", time.Minute)
	if _, err := s.Consume(usedShort); err != nil {
		t.Fatalf("Consume: %v", err)
	}
	unusedShort, _ := mustCreate(t, s, "", 2*time.Minute)
	usedLong, _ := mustCreate(t, s, "", time.Hour)
	if _, err := s.Consume(usedLong); err != nil {
		t.Fatalf("Consume: %v", err)
	}
	_, unusedLong := mustCreate(t, s, "", time.Hour)

	if n, err := s.Purge(); err != nil || n != 0 {
		t.Fatalf("Purge before any expiry = %d, %v; want 0", n, err)
	}
	clk.Advance(2 * time.Minute)
	n, err := s.Purge()
	if err != nil || n != 2 {
		t.Fatalf("Purge = %d, %v; want 2", n, err)
	}
	ts, err := s.List()
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	if len(ts) != 2 || !sameIDs(ts, ID(usedLong), unusedLong.ID) {
		t.Fatalf("after Purge List = %+v, want the two hour-long tokens", ts)
	}
	// Purged tokens are now unknown; the kept used one is still a replay.
	for _, sec := range []string{usedShort, unusedShort} {
		if _, err := s.Consume(sec); !errors.Is(err, ErrUnknown) {
			t.Fatalf("Consume of a purged token: err = %v, want ErrUnknown", err)
		}
	}
	if _, err := s.Consume(usedLong); !errors.Is(err, ErrUsed) {
		t.Fatalf("replay of a kept token: err = %v, want ErrUsed", err)
	}
}

// sameIDs reports whether ts holds exactly the tokens ids, in any order.
func sameIDs(ts []Token, ids ...string) bool {
	var got []string
	for _, tok := range ts {
		got = append(got, tok.ID)
	}
	slices.Sort(got)
	ids = slices.Sorted(slices.Values(ids))
	return slices.Equal(got, ids)
}

func TestListSorted(t *testing.T) {
	clk := fakeclock.New(epoch)
	s, _, _ := newStore(t, clk)
	var want []string
	for i := range 5 {
		clk.Set(epoch.Add(time.Duration(5-i) * time.Second)) // created newest first
		_, tok := mustCreate(t, s, "", 0)
		want = append([]string{tok.ID}, want...)
	}
	ts, err := s.List()
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	var got []string
	for _, tok := range ts {
		got = append(got, tok.ID)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("List order = %v, want %v", got, want)
	}
}

func TestSecretNeverStored(t *testing.T) {
	clk := fakeclock.New(epoch)
	s, db, path := newStore(t, clk)
	secret, _ := mustCreate(t, s, "node-a", 0)
	if _, err := s.Consume(secret); err != nil {
		t.Fatalf("Consume: %v", err)
	}
	raw, err := base64.RawURLEncoding.DecodeString(secret[len("cbjt_"):])
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	file, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for name, needle := range map[string][]byte{
		"secret":      []byte(secret),
		"base64 body": []byte(secret[len("cbjt_"):]),
		"raw bytes":   raw,
	} {
		if bytes.Contains(file, needle) {
			t.Errorf("the database file contains the %s", name)
		}
	}
	// The check itself must be able to see what is stored.
	key := sha256.Sum256([]byte(secret))
	if !bytes.Contains(file, key[:]) || !bytes.Contains(file, []byte(ID(secret))) {
		t.Fatal("the hashed key or the id is not in the file: the search is not looking at the data")
	}
}

func TestPersistsAcrossReopen(t *testing.T) {
	clk := fakeclock.New(epoch)
	s, db, path := newStore(t, clk)
	used, _ := mustCreate(t, s, "", 0)
	usedTok, err := s.Consume(used)
	if err != nil {
		t.Fatalf("Consume: %v", err)
	}
	fresh, freshTok := mustCreate(t, s, "node-b", time.Hour)
	before, err := s.List()
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	db = openDB(t, path)
	defer db.Close()
	s, err = Open(db, WithClock(clk.Now))
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	after, err := s.List()
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	if !reflect.DeepEqual(after, before) {
		t.Fatalf("List after reopen = %+v, want %+v", after, before)
	}
	if got, err := s.Consume(used); !errors.Is(err, ErrUsed) || got != usedTok {
		t.Fatalf("replay after reopen = %+v, %v; want %+v, ErrUsed", got, err, usedTok)
	}
	got, err := s.Consume(fresh)
	if err != nil {
		t.Fatalf("Consume after reopen: %v", err)
	}
	freshTok.UsedAt = epoch
	if got != freshTok {
		t.Fatalf("Consume after reopen = %+v, want %+v", got, freshTok)
	}
}

func TestCreateRejectsBadInput(t *testing.T) {
	clk := fakeclock.New(epoch)
	s, _, _ := newStore(t, clk)
	for _, tc := range []struct {
		name, cluster, node string
		ttl                 time.Duration
	}{
		{"empty cluster", "", "", 0},
		{"cluster without namespace", "prod", "", 0},
		{"cluster with uppercase", "NS/prod", "", 0},
		{"cluster with extra slash", "ns/prod/x", "", 0},
		{"bad node", cluster, "Node_1", 0},
		{"node with slash", cluster, "a/b", 0},
		{"negative ttl", cluster, "", -time.Second},
		{"ttl over max", cluster, "", MaxTTL + time.Nanosecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			secret, tok, err := s.Create(tc.cluster, tc.node, tc.ttl)
			if err == nil {
				t.Fatalf("Create(%q, %q, %s) succeeded", tc.cluster, tc.node, tc.ttl)
			}
			if !strings.HasPrefix(err.Error(), "jointoken: ") {
				t.Errorf("error %q lacks the package prefix", err)
			}
			if secret != "" || tok != (Token{}) {
				t.Errorf("Create returned %q, %+v with an error", secret, tok)
			}
		})
	}
	if ts, err := s.List(); err != nil || len(ts) != 0 {
		t.Fatalf("List after rejected creates = %+v, %v; want none", ts, err)
	}
	// The bounds themselves are allowed.
	if _, tok := mustCreate(t, s, "", MaxTTL); !tok.ExpiresAt.Equal(epoch.Add(MaxTTL)) {
		t.Fatalf("ExpiresAt = %s, want %s", tok.ExpiresAt, epoch.Add(MaxTTL))
	}
}

func TestOpenNilDB(t *testing.T) {
	if _, err := Open(nil); err == nil {
		t.Fatal("Open(nil) succeeded")
	}
}
