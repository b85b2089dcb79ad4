package ca

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/credbroker/credbroker/internal/keyfile"
)

// Files in a CA directory.
const (
	CertFile   = "ca.pem"
	KeyFile    = "ca_key.pem"
	JWTKeyFile = "jwt_key.pem"
)

// Save writes the CA to dir (created 0700 if missing): the root certificate
// to ca.pem, the root key to ca_key.pem and the JWT key to jwt_key.pem, keys
// PKCS#8 with mode 0600. Each file is replaced atomically.
func (c *CA) Save(dir string) error {
	keyPEM, err := keyfile.EncodeEC(c.key)
	if err != nil {
		return fmt.Errorf("ca: root key: %w", err)
	}
	jwtPEM, err := keyfile.EncodeEC(c.jwtKey)
	if err != nil {
		return fmt.Errorf("ca: JWT key: %w", err)
	}
	files := []struct {
		name string
		data []byte
		perm os.FileMode
	}{
		{KeyFile, keyPEM, 0o600},
		{JWTKeyFile, jwtPEM, 0o600},
		{CertFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.cert.Raw}), 0o644},
	}
	for _, f := range files {
		if err := keyfile.Write(filepath.Join(dir, f.name), f.data, f.perm); err != nil {
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
	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		return nil, fmt.Errorf("ca: %w", err)
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

	key, err := keyfile.LoadEC(filepath.Join(dir, KeyFile))
	if err != nil {
		return nil, fmt.Errorf("ca: %w", err)
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		return nil, fmt.Errorf("ca: %s does not match %s", KeyFile, CertFile)
	}
	jwtKey, err := keyfile.LoadEC(filepath.Join(dir, JWTKeyFile))
	if err != nil {
		return nil, fmt.Errorf("ca: %w", err)
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
