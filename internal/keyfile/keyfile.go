// Package keyfile keeps private keys and other owner-only files on disk: it
// reads them only when no one but their owner can access them, and writes
// them atomically (a crash never leaves half a file) with mode 0600.
package keyfile

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
)

// MaxSize bounds what Read reads; real key files are well under 1 KiB.
const MaxSize = 64 << 10

const pemType = "PRIVATE KEY"

// Read returns the contents of a regular file that grants no access to group
// or others and is owned by the user the process runs as (so a root process
// does not trust a file another user planted). Mode and owner are checked on
// the open file, so a swap between check and read cannot slip through.
// Errors wrap fs.ErrNotExist when the file is missing and never contain file
// contents.
func Read(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("keyfile: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("keyfile: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("keyfile: %s is not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("keyfile: %s has mode %#o: it must not be accessible by group or others (chmod 600 %s)", path, perm, path)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) != os.Geteuid() {
		return nil, fmt.Errorf("keyfile: %s is owned by uid %d, not by this process's uid %d", path, st.Uid, os.Geteuid())
	}
	b, err := io.ReadAll(io.LimitReader(f, MaxSize+1))
	if err != nil {
		return nil, fmt.Errorf("keyfile: reading %s: %w", path, err)
	}
	if len(b) > MaxSize {
		return nil, fmt.Errorf("keyfile: %s is larger than %d bytes", path, MaxSize)
	}
	return b, nil
}

// LoadEC reads a PEM PKCS#8 ECDSA P-256 private key with Read's checks.
func LoadEC(path string) (*ecdsa.PrivateKey, error) {
	b, err := Read(path)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(b)
	if block == nil || block.Type != pemType {
		return nil, fmt.Errorf("keyfile: %s: no PEM %q block", path, pemType)
	}
	parsed, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("keyfile: %s: not a PKCS#8 private key", path)
	}
	key, ok := parsed.(*ecdsa.PrivateKey)
	if !ok || key.Curve != elliptic.P256() {
		return nil, fmt.Errorf("keyfile: %s: not an ECDSA P-256 key", path)
	}
	return key, nil
}

// EncodeEC returns key as a PEM PKCS#8 block.
func EncodeEC(key *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("keyfile: encoding key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: pemType, Bytes: der}), nil
}

// Write replaces path with data atomically (temporary file, fsync, rename,
// directory fsync), with mode perm. The directory is created 0700 if missing.
func Write(path string, data []byte, perm os.FileMode) error {
	return install(path, data, perm, os.Rename)
}

// Create writes data to path with mode 0600 like Write, but fails with an
// error wrapping fs.ErrExist if path already exists: a file another process
// created first is never replaced.
func Create(path string, data []byte) error {
	return install(path, data, 0o600, os.Link)
}

func install(path string, data []byte, perm os.FileMode, place func(tmp, path string) error) (err error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("keyfile: %w", err)
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*") // created 0600
	if err != nil {
		return fmt.Errorf("keyfile: %w", err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // after a rename it is gone; after a link it is a second name
	defer func() {
		if err != nil {
			f.Close()
		}
	}()
	if err := f.Chmod(perm); err != nil {
		return fmt.Errorf("keyfile: %w", err)
	}
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("keyfile: writing %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("keyfile: writing %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("keyfile: writing %s: %w", path, err)
	}
	if err := place(tmp, path); err != nil {
		return fmt.Errorf("keyfile: installing %s: %w", path, err)
	}
	return syncDir(dir)
}

// syncDir makes a rename or link in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("keyfile: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("keyfile: syncing %s: %w", dir, err)
	}
	return nil
}
