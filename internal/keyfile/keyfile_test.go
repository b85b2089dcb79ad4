package keyfile_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/credbroker/credbroker/internal/keyfile"
)

func TestWriteReplacesAtomicallyWithMode(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "secret")
	if err := os.WriteFile(path, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := keyfile.Write(path, []byte("new"), 0o600); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %04o, want 0600", fi.Mode().Perm())
	}
	if b, _ := os.ReadFile(path); string(b) != "new" {
		t.Errorf("content %q", b)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("dir holds %d entries, want 1 (no temp files)", len(ents))
	}
	// Missing parent directories are created owner-only.
	deep := filepath.Join(dir, "a", "b", "key")
	if err := keyfile.Write(deep, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(filepath.Join(dir, "a")); fi.Mode().Perm() != 0o700 {
		t.Errorf("created directory mode %04o, want 0700", fi.Mode().Perm())
	}
}

func TestCreateNeverReplaces(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "key.pem")
	if err := keyfile.Create(path, []byte("first")); err != nil {
		t.Fatal(err)
	}
	err := keyfile.Create(path, []byte("second"))
	if !errors.Is(err, fs.ErrExist) {
		t.Fatalf("second Create = %v, want fs.ErrExist", err)
	}
	if b, _ := os.ReadFile(path); string(b) != "first" {
		t.Fatalf("content %q: an existing file was replaced", b)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("dir holds %d entries, want 1 (no temp files)", len(ents))
	}
}

func TestReadRefusesLooseModesAndOddFiles(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "key")
	if err := os.WriteFile(path, []byte("k"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := keyfile.Read(path); err != nil {
		t.Fatal(err)
	}
	for _, mode := range []os.FileMode{0o640, 0o604, 0o660, 0o644, 0o610} {
		os.Chmod(path, mode)
		_, err := keyfile.Read(path)
		if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "chmod 600") {
			t.Errorf("mode %04o: %v", mode, err)
		}
	}
	if _, err := keyfile.Read(filepath.Join(dir, "missing")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: %v, want fs.ErrNotExist", err)
	}
	if _, err := keyfile.Read(dir); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("directory: %v", err)
	}
	big := filepath.Join(dir, "big")
	os.WriteFile(big, make([]byte, keyfile.MaxSize+1), 0o600)
	if _, err := keyfile.Read(big); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("oversized file: %v", err)
	}
}

func TestECRoundTrip(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pemKey, err := keyfile.EncodeEC(key)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "k.pem")
	if err := keyfile.Create(path, pemKey); err != nil {
		t.Fatal(err)
	}
	got, err := keyfile.LoadEC(path)
	if err != nil || !got.Equal(key) {
		t.Fatalf("LoadEC = %v, %v", got, err)
	}
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	other, _ := keyfile.EncodeEC(p384)
	for name, data := range map[string][]byte{
		"garbage": []byte("not pem"),
		"p384":    other,
		"cert":    []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
	} {
		p := filepath.Join(t.TempDir(), name)
		os.WriteFile(p, data, 0o600)
		if _, err := keyfile.LoadEC(p); err == nil {
			t.Errorf("%s: loaded", name)
		} else if strings.Contains(err.Error(), "AAAA") {
			t.Errorf("%s: error leaks file contents: %v", name, err)
		}
	}
}

// TestReadRefusesAnotherUsersFile: a process running as root must not trust
// an owner-only file that another user planted (creating one needs root).
func TestReadRefusesAnotherUsersFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "planted")
	if err := os.WriteFile(path, []byte("k"), 0o600); err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() != 0 {
		t.Log("not root: cannot give a file to another user; only the own-file case is checked")
		if _, err := keyfile.Read(path); err != nil {
			t.Fatal(err)
		}
		return
	}
	if err := os.Chown(path, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	_, err := keyfile.Read(path)
	if err == nil || !strings.Contains(err.Error(), "owned by uid 65534") {
		t.Fatalf("another user's file: %v", err)
	}
}
