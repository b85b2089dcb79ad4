package boltstate_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/credbroker/credbroker/attest/jointoken"

	"github.com/credbroker/credbroker/broker/state"
	"github.com/credbroker/credbroker/broker/state/boltstate"
	"github.com/credbroker/credbroker/broker/state/statetest"
)

// openStore opens the state in dir/credbroker.db the way the broker does.
func openStore(t testing.TB, dir string) state.Store {
	t.Helper()
	db, err := boltstate.OpenDB(filepath.Join(dir, "credbroker.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	s, err := boltstate.New(db)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestConformance(t *testing.T) {
	statetest.Run(t, statetest.Harness{Open: openStore})
}

// TestJoinTokenSecretNeverStored: only the SHA-256 of a secret reaches the
// file, never the secret, its encoding or its random bytes.
func TestJoinTokenSecretNeverStored(t *testing.T) {
	path := filepath.Join(t.TempDir(), "credbroker.db")
	db, err := boltstate.OpenDB(path)
	if err != nil {
		t.Fatal(err)
	}
	s, err := boltstate.New(db)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	secret, key, tok, err := jointoken.New(rand.Reader, now, "team-a/alpha", "worker-1", 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.CreateJoinToken(context.Background(), key, tok); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ConsumeJoinToken(context.Background(), key, "", now); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	file, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := base64.RawURLEncoding.DecodeString(strings.TrimPrefix(secret, "cbjt_"))
	if err != nil {
		t.Fatal(err)
	}
	for name, needle := range map[string][]byte{
		"secret":      []byte(secret),
		"base64 body": []byte(strings.TrimPrefix(secret, "cbjt_")),
		"raw bytes":   raw,
	} {
		if bytes.Contains(file, needle) {
			t.Errorf("the database file contains the %s", name)
		}
	}
	// The search must be able to see what is stored.
	if !bytes.Contains(file, key[:]) || !bytes.Contains(file, []byte(tok.ID)) {
		t.Fatal("the key or the id is not in the file: the search is not looking at the data")
	}
}
