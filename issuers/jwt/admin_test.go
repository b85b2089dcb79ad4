package jwt

import (
	"context"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	jwtlib "github.com/golang-jwt/jwt/v5"

	"github.com/credbroker/credbroker/issuers"
)

// TestRotateSigningKeyOnDemand: an admin's rotation signs with a new key at
// once, on disk across a restart; a rotation whose record fails changes
// nothing; a next key waiting to sign is withdrawn with it; the retired
// keys kept published are bounded.
func TestRotateSigningKeyOnDemand(t *testing.T) {
	t.Parallel()
	now := testNow
	clock := func() time.Time { return now }
	path := filepath.Join(t.TempDir(), "jwt.key")
	cfg := Config{IssuerURL: testIssuerURL, KeyFile: path, Clock: clock, RotationPeriod: 2 * time.Hour, MaxTTL: time.Hour}
	iss, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	kids := func() []string {
		t.Helper()
		keys, err := ParseJWKS(iss.JWKS())
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for kid := range keys {
			out = append(out, kid)
		}
		slices.Sort(out)
		return out
	}
	mint := func() string {
		t.Helper()
		c, err := iss.Issue(ctx, testRequest())
		if err != nil {
			t.Fatal(err)
		}
		return c.Token
	}
	verifies := func(token string) error {
		_, err := Verify(iss.JWKS(), token, jwtlib.WithTimeFunc(clock))
		return err
	}

	// The scheduled rotation has made its next key, published ahead.
	now = now.Add(2*time.Hour - DefaultPublishAhead)
	if err := iss.Maintain(ctx); err != nil {
		t.Fatal(err)
	}
	old := iss.KeyID()
	oldToken := mint()
	if len(kids()) != 2 {
		t.Fatalf("JWKS %v, want the current and the next key", kids())
	}
	before := string(iss.JWKS())

	// A record that cannot be written: nothing changes.
	refused := errors.New("audit store unavailable")
	if _, err := iss.RotateSigningKey(ctx, false, func(string, string) error { return refused }); !errors.Is(err, refused) {
		t.Fatalf("rotation with a failing record: %v", err)
	}
	if iss.KeyID() != old || string(iss.JWKS()) != before {
		t.Fatal("a rotation whose record failed changed the keys")
	}
	if _, err := os.Stat(rotatingKeyFile(path)); !os.IsNotExist(err) {
		t.Fatalf("the unused key's file was left behind: %v", err)
	}

	var recorded [2]string
	rot, err := iss.RotateSigningKey(ctx, false, func(kid, prev string) error { recorded = [2]string{kid, prev}; return nil })
	if err != nil {
		t.Fatal(err)
	}
	if rot.KID != iss.KeyID() || rot.PreviousKID != old || recorded != [2]string{rot.KID, old} || !rot.PreviousNotAfter.Equal(now.Add(time.Hour)) {
		t.Fatalf("rotation %+v, recorded %v; signing with %s", rot, recorded, iss.KeyID())
	}
	newToken := mint()
	// The next key is gone (JWKS and disk); the previous one stays.
	if got := kids(); !slices.Equal(got, sortedOf(old, rot.KID)) {
		t.Fatalf("JWKS %v after the rotation, want the previous and the new key", got)
	}
	if _, err := os.Stat(nextKeyFile(path)); !os.IsNotExist(err) {
		t.Fatalf("the withdrawn next key's file is still there: %v", err)
	}
	for _, tok := range []string{oldToken, newToken} {
		if err := verifies(tok); err != nil {
			t.Fatal(err)
		}
	}
	keys, err := iss.SigningKeys(ctx)
	if err != nil || len(keys) != 2 || keys[0].KID != rot.KID || keys[0].State != issuers.KeyActive ||
		keys[1].KID != old || keys[1].State != issuers.KeyRetired || !keys[1].NotAfter.Equal(rot.PreviousNotAfter) {
		t.Fatalf("SigningKeys: %+v, %v", keys, err)
	}
	// The new key is on disk: a restart signs with it.
	again, err := New(cfg)
	if err != nil || again.KeyID() != rot.KID {
		t.Fatalf("restarted: %v, signing with the new key %v", err, again.KeyID() == rot.KID)
	}

	// Retiring the previous key withdraws it at once.
	retired, err := iss.RotateSigningKey(ctx, true, func(string, string) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	if err := verifies(newToken); err == nil {
		t.Fatal("a token of the retired key still verifies")
	}
	if err := verifies(oldToken); err != nil {
		t.Fatalf("a token of the key retired earlier, without withdrawal: %v", err)
	}
	if !retired.PreviousNotAfter.Equal(now) || !slices.Equal(kids(), sortedOf(old, retired.KID)) {
		t.Fatalf("rotation %+v, JWKS %v", retired, kids())
	}

	// Retired keys kept published are bounded; retiring needs no room.
	for range MaxRetiredKeys - 1 {
		if _, err := iss.RotateSigningKey(ctx, false, func(string, string) error { return nil }); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := iss.RotateSigningKey(ctx, false, func(string, string) error { return nil }); !errors.Is(err, issuers.ErrTooManyKeys) {
		t.Fatalf("rotation past %d retired keys: %v", MaxRetiredKeys, err)
	}
	if len(kids()) != MaxRetiredKeys+1 {
		t.Fatalf("%d keys in the JWKS, want %d retired and the active one", len(kids()), MaxRetiredKeys)
	}
	if _, err := iss.RotateSigningKey(ctx, true, func(string, string) error { return nil }); err != nil {
		t.Fatalf("retiring rotation at the bound: %v", err)
	}
}

func sortedOf(s ...string) []string {
	slices.Sort(s)
	return s
}

// TestWithdrawnNextKeyStaysWithdrawnAfterACrash: a rotation on demand
// withdraws the next key waiting to sign and deletes its file after the
// new key's file has replaced the current one. A process that dies between
// the two leaves the withdrawn key's file behind; the restarted issuer must
// not publish it again, nor sign with it at the next scheduled rotation.
func TestWithdrawnNextKeyStaysWithdrawnAfterACrash(t *testing.T) {
	t.Parallel()
	now := testNow
	clock := func() time.Time { return now }
	path := filepath.Join(t.TempDir(), "jwt.key")
	cfg := Config{IssuerURL: testIssuerURL, KeyFile: path, Clock: clock, RotationPeriod: 2 * time.Hour, MaxTTL: time.Hour}
	iss, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	now = now.Add(2*time.Hour - DefaultPublishAhead)
	if err := iss.Maintain(ctx); err != nil {
		t.Fatal(err)
	}
	keys, err := iss.SigningKeys(ctx)
	if err != nil || len(keys) != 2 || keys[1].State != issuers.KeyPublished {
		t.Fatalf("SigningKeys %+v, %v; want the active and the next key", keys, err)
	}
	withdrawn := keys[1].KID
	nextPEM, err := os.ReadFile(nextKeyFile(path))
	if err != nil {
		t.Fatal(err)
	}
	fi := mustStat(t, nextKeyFile(path))

	now = now.Add(time.Minute)
	rot, err := iss.RotateSigningKey(ctx, false, func(string, string) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	// What a crash right after the rename leaves on disk.
	if err := os.WriteFile(nextKeyFile(path), nextPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(nextKeyFile(path), fi.ModTime(), fi.ModTime()); err != nil {
		t.Fatal(err)
	}

	again, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if again.KeyID() != rot.KID {
		t.Fatalf("restarted signing with %s, want the rotated-in key %s", again.KeyID(), rot.KID)
	}
	published := func() map[string]bool {
		t.Helper()
		set, err := ParseJWKS(again.JWKS())
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]bool{}
		for kid := range set {
			out[kid] = true
		}
		return out
	}
	if published()[withdrawn] {
		t.Fatalf("the withdrawn next key %s is in the restarted issuer's JWKS", withdrawn)
	}
	if _, err := os.Stat(nextKeyFile(path)); !os.IsNotExist(err) {
		t.Fatalf("the withdrawn next key's file is still on disk after the restart: %v", err)
	}
	// Through the new key's scheduled rotation (2h): the withdrawn key
	// never comes back, and what signs next is a key made after the restart.
	for range 14 {
		now = now.Add(DefaultPublishAhead)
		if err := again.Maintain(ctx); err != nil {
			t.Fatal(err)
		}
		if again.KeyID() == withdrawn || published()[withdrawn] {
			t.Fatalf("the withdrawn next key %s is back (signing with %s)", withdrawn, again.KeyID())
		}
	}
	if again.KeyID() == rot.KID {
		t.Fatal("no scheduled rotation after the restart")
	}
}

// mapKeyStore is a KeyStore in memory.
type mapKeyStore struct {
	mu   sync.Mutex
	keys map[string]PublishedKey
}

func (s *mapKeyStore) PublishKey(_ context.Context, k PublishedKey, now time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.keys == nil {
		s.keys = map[string]PublishedKey{}
	}
	if !k.NotAfter.After(now) {
		delete(s.keys, k.Replica+"/"+k.KID)
		return nil
	}
	s.keys[k.Replica+"/"+k.KID] = k
	return nil
}

func (s *mapKeyStore) ListKeys(_ context.Context, now time.Time) ([]PublishedKey, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []PublishedKey
	for _, k := range s.keys {
		if k.NotAfter.After(now) {
			out = append(out, k)
		}
	}
	return out, nil
}

// TestRotationCutShortIsWithdrawnAtStart: a process that stops after a
// rotation on demand published its new key (and put it on record), before
// the new key's file replaced the key file, restarts signing with the
// previous key. The new key, which never signed and whose private half is
// only in KEY_FILE.rotating, must not stay in the JWKS for its whole
// publication (MaxTTL and more) with that file left on disk: the file is
// deleted and the key withdrawn from the store at start.
func TestRotationCutShortIsWithdrawnAtStart(t *testing.T) {
	t.Parallel()
	now := testNow
	clock := func() time.Time { return now }
	path := filepath.Join(t.TempDir(), "jwt.key")
	store := &mapKeyStore{}
	cfg := Config{IssuerURL: testIssuerURL, KeyFile: path, Clock: clock, Keys: store, Replica: "replica-a", MaxTTL: time.Hour}
	iss, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := iss.Maintain(ctx); err != nil {
		t.Fatal(err)
	}
	previous := iss.KeyID()
	previousPEM, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	previousTime := mustStat(t, path).ModTime()

	// What is on disk and in the store when the process stops right after
	// the record: the new key published, its file not yet renamed.
	var rotatingPEM []byte
	var crashed map[string]PublishedKey
	now = now.Add(time.Minute)
	rot, err := iss.RotateSigningKey(ctx, true, func(string, string) error {
		if rotatingPEM, err = os.ReadFile(rotatingKeyFile(path)); err != nil {
			return err
		}
		store.mu.Lock()
		crashed = maps.Clone(store.keys)
		store.mu.Unlock()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for file, pem := range map[string][]byte{path: previousPEM, rotatingKeyFile(path): rotatingPEM} {
		if err := os.WriteFile(file, pem, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chtimes(path, previousTime, previousTime); err != nil {
		t.Fatal(err)
	}
	store.mu.Lock()
	store.keys = crashed
	store.mu.Unlock()
	if _, ok := crashed["replica-a/"+rot.KID]; !ok {
		t.Fatalf("the new key %s was not published before its record", rot.KID)
	}

	again, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if again.KeyID() != previous {
		t.Fatalf("restarted signing with %s, want the previous key %s", again.KeyID(), previous)
	}
	if _, err := os.Stat(rotatingKeyFile(path)); !os.IsNotExist(err) {
		t.Fatalf("the cut-short rotation's key file is still on disk: %v", err)
	}
	if got := again.AbandonedRotation(); got != rot.KID {
		t.Fatalf("AbandonedRotation = %q, want the cut-short key %s", got, rot.KID)
	}
	if got := iss.AbandonedRotation(); got != "" {
		t.Fatalf("AbandonedRotation of an issuer that found none = %q", got)
	}
	served := func() map[string]bool {
		t.Helper()
		set, err := ParseJWKS(again.JWKS())
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]bool{}
		for kid := range set {
			out[kid] = true
		}
		return out
	}
	if served()[rot.KID] {
		t.Fatalf("the restarted issuer serves the key %s that never signed", rot.KID)
	}
	if err := again.Maintain(ctx); err != nil {
		t.Fatal(err)
	}
	if served()[rot.KID] {
		t.Fatalf("the key %s that never signed is served after Maintain", rot.KID)
	}
	keys, err := store.ListKeys(ctx, now)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if k.KID == rot.KID {
			t.Fatalf("the key %s that never signed is still published in the store", rot.KID)
		}
	}
}
