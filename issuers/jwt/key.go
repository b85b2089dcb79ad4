package jwt

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"time"

	"github.com/credbroker/credbroker/internal/keyfile"
)

// loadOrCreateKey returns the key in path and when it was made (the file's
// mtime), first generating it if the file does not exist. Creation is
// atomic and never replaces an existing file, so a crash or a concurrent
// broker never leaves a half-written key behind, and a key created
// concurrently by another process wins. A key it creates is dated by now
// (the issuer's clock), which the rotation schedule reads.
func loadOrCreateKey(path string, random io.Reader, now func() time.Time) (*ecdsa.PrivateKey, time.Time, error) {
	key, err := keyfile.LoadEC(path)
	if !errors.Is(err, fs.ErrNotExist) {
		if err != nil {
			return nil, time.Time{}, wrapKeyErr(err)
		}
		return loaded(path, key)
	}
	if key, err = generateKey(random); err != nil {
		return nil, time.Time{}, err
	}
	pemKey, err := keyfile.EncodeEC(key)
	if err != nil {
		return nil, time.Time{}, wrapKeyErr(err)
	}
	if err := keyfile.Create(path, pemKey); err != nil {
		if errors.Is(err, fs.ErrExist) {
			key, err := keyfile.LoadEC(path)
			if err != nil {
				return nil, time.Time{}, wrapKeyErr(err)
			}
			return loaded(path, key)
		}
		return nil, time.Time{}, wrapKeyErr(err)
	}
	t := now()
	if err := os.Chtimes(path, t, t); err != nil {
		return nil, time.Time{}, wrapKeyErr(err)
	}
	return key, t, nil
}

// loaded returns key with its file's mtime.
func loaded(path string, key *ecdsa.PrivateKey) (*ecdsa.PrivateKey, time.Time, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, time.Time{}, wrapKeyErr(err)
	}
	return key, fi.ModTime(), nil
}

func wrapKeyErr(err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("jwt: signing key: %w", err)
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
