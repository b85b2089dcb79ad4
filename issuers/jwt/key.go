package jwt

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

const pemType = "PRIVATE KEY"

// loadOrCreateKey returns the key in path, first generating it if the file
// does not exist. Creation is atomic (temporary file, then link), so a crash
// or a concurrent broker never leaves a half-written key behind, and a key
// created concurrently by another process wins.
func loadOrCreateKey(path string, random io.Reader) (*ecdsa.PrivateKey, error) {
	key, err := loadKey(path)
	if !errors.Is(err, fs.ErrNotExist) {
		return key, err
	}
	key, err = generateKey(random)
	if err != nil {
		return nil, err
	}
	if err := writeKey(path, key); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return loadKey(path)
		}
		return nil, err
	}
	return key, nil
}

// loadKey reads a PKCS#8 P-256 key. Errors wrap fs.ErrNotExist when the file
// is missing. Key material never appears in an error.
func loadKey(path string) (*ecdsa.PrivateKey, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("jwt: opening key file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("jwt: key file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("jwt: key file %s is not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("jwt: key file %s has mode %#o: it must not be accessible by group or others (chmod 600 %s)", path, perm, path)
	}
	data, err := io.ReadAll(io.LimitReader(f, 64<<10))
	if err != nil {
		return nil, fmt.Errorf("jwt: reading key file %s: %w", path, err)
	}
	block, _ := pem.Decode(data)
	if block == nil || block.Type != pemType {
		return nil, fmt.Errorf("jwt: key file %s: no PEM %q block", path, pemType)
	}
	parsed, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("jwt: key file %s: not a PKCS#8 private key", path)
	}
	key, ok := parsed.(*ecdsa.PrivateKey)
	if !ok || key.Curve != elliptic.P256() {
		return nil, fmt.Errorf("jwt: key file %s: not an ECDSA P-256 key (ES256 needs one)", path)
	}
	return key, nil
}

// generateKey makes a P-256 key. Since Go 1.26 ecdsa.GenerateKey ignores its
// reader, so an injected reader is honoured by drawing the scalar from it
// directly (rejection sampling: out-of-range candidates are redrawn).
func generateKey(random io.Reader) (*ecdsa.PrivateKey, error) {
	if random == nil {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, fmt.Errorf("jwt: generating key: %w", err)
		}
		return key, nil
	}
	buf := make([]byte, 32)
	for range 64 {
		if _, err := io.ReadFull(random, buf); err != nil {
			return nil, fmt.Errorf("jwt: generating key: %w", err)
		}
		if key, err := ecdsa.ParseRawPrivateKey(elliptic.P256(), buf); err == nil {
			return key, nil
		}
	}
	return nil, errors.New("jwt: generating key: random source yields no valid P-256 scalar")
}

// writeKey writes key to path with mode 0600. It fails with an error wrapping
// fs.ErrExist when path already exists.
func writeKey(path string, key *ecdsa.PrivateKey) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("jwt: encoding key: %w", err)
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("jwt: key directory: %w", err)
	}
	tmp, err := os.CreateTemp(dir, ".jwt-key-*") // mode 0600
	if err != nil {
		return fmt.Errorf("jwt: creating key file: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return fmt.Errorf("jwt: creating key file: %w", err)
	}
	err = pem.Encode(tmp, &pem.Block{Type: pemType, Bytes: der})
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("jwt: writing key file: %w", err)
	}
	// Link, unlike rename, refuses to replace a key another process made.
	if err := os.Link(tmp.Name(), path); err != nil {
		return fmt.Errorf("jwt: installing key file: %w", err)
	}
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("jwt: syncing key directory: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("jwt: syncing key directory: %w", err)
	}
	return nil
}
