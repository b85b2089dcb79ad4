package ca

import (
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/credbroker/credbroker/internal/svidfile"
)

// Files in a CA directory.
const (
	CertFile   = "ca.pem"
	KeyFile    = "ca_key.pem"
	JWTKeyFile = "jwt_key.pem"
)

// maxFileSize bounds what Load reads; real files are well under 4 KiB.
const maxFileSize = 64 << 10

// Save writes the CA to dir (created 0700 if missing): the root certificate
// to ca.pem, the root key to ca_key.pem and the JWT key to jwt_key.pem, keys
// PKCS#8 with mode 0600. Each file is replaced atomically.
func (c *CA) Save(dir string) error {
	keyDER, err := x509.MarshalPKCS8PrivateKey(c.key)
	if err != nil {
		return fmt.Errorf("ca: marshal root key: %w", err)
	}
	jwtDER, err := x509.MarshalPKCS8PrivateKey(c.jwtKey)
	if err != nil {
		return fmt.Errorf("ca: marshal JWT key: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("ca: %w", err)
	}
	files := []struct {
		name  string
		block *pem.Block
		perm  os.FileMode
	}{
		{KeyFile, &pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}, 0o600},
		{JWTKeyFile, &pem.Block{Type: "PRIVATE KEY", Bytes: jwtDER}, 0o600},
		{CertFile, &pem.Block{Type: "CERTIFICATE", Bytes: c.cert.Raw}, 0o644},
	}
	for _, f := range files {
		if err := svidfile.WriteFile(filepath.Join(dir, f.name), pem.EncodeToMemory(f.block), f.perm); err != nil {
			return fmt.Errorf("ca: %w", err)
		}
	}
	return nil
}

// Load reads a CA saved by Save. The trust domain is taken from the root
// certificate's URI SAN. Key files readable or writable by group or others
// are refused, as is a key that does not match the certificate.
func Load(dir string, opts ...Option) (*CA, error) {
	certPath := filepath.Join(dir, CertFile)
	certPEM, err := readFile(certPath, false)
	if err != nil {
		return nil, err
	}
	cert, err := parseCert(certPEM)
	if err != nil {
		return nil, fmt.Errorf("ca: %s: %w", certPath, err)
	}
	id, err := x509svid.IDFromCert(cert)
	if err != nil {
		return nil, fmt.Errorf("ca: %s: %w", certPath, err)
	}
	if !cert.IsCA || cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, fmt.Errorf("ca: %s: not a CA certificate", certPath)
	}

	key, err := loadKey(filepath.Join(dir, KeyFile))
	if err != nil {
		return nil, err
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		return nil, fmt.Errorf("ca: %s does not match %s", KeyFile, CertFile)
	}
	jwtKey, err := loadKey(filepath.Join(dir, JWTKeyFile))
	if err != nil {
		return nil, err
	}

	c := newCA(opts)
	c.td = id.TrustDomain()
	c.cert = cert
	c.key = key
	if err := c.setJWTKey(jwtKey); err != nil {
		return nil, err
	}
	return c, nil
}

func parseCert(b []byte) (*x509.Certificate, error) {
	block, rest := pem.Decode(b)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("no PEM CERTIFICATE block")
	}
	if len(rest) != 0 {
		if next, _ := pem.Decode(rest); next != nil {
			return nil, errors.New("more than one PEM block")
		}
	}
	return x509.ParseCertificate(block.Bytes)
}

// loadKey reads a PKCS#8 ECDSA key from a file that only its owner may read.
func loadKey(path string) (*ecdsa.PrivateKey, error) {
	b, err := readFile(path, true)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(b)
	if block == nil || block.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("ca: %s: no PEM PRIVATE KEY block", path)
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		// The parse error never includes key material.
		return nil, fmt.Errorf("ca: %s: %w", path, err)
	}
	ek, ok := k.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("ca: %s: want an ECDSA key, got %T", path, k)
	}
	return ek, nil
}

// readFile reads a regular file. When private is set it refuses a file whose
// mode grants any access to group or others; the mode is checked on the open
// file, so a swap between check and read cannot slip through.
func readFile(path string, private bool) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("ca: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("ca: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("ca: %s: not a regular file", path)
	}
	if private && fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("ca: %s: mode %04o is too open, want 0600", path, fi.Mode().Perm())
	}
	b, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("ca: %w", err)
	}
	if len(b) > maxFileSize {
		return nil, fmt.Errorf("ca: %s: larger than %d bytes", path, maxFileSize)
	}
	return b, nil
}
