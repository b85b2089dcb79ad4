// Package svidfile reads and writes the SVID directory that credbroker
// clients use:
//
//	DIR/svid.pem      the X.509-SVID, leaf first, then any intermediates
//	DIR/svid_key.pem  its private key, PKCS#8, mode 0600
//	DIR/bundle.pem    the trust bundle (CA certificates) of the SVID's trust domain
//
// Each file is replaced atomically, but the three are not replaced together:
// a reader racing a rotation can see a new certificate with an old key. Load
// then fails with a key mismatch and the reader should simply retry.
package svidfile

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/credbroker/credbroker/internal/keyfile"
)

// File names inside an SVID directory.
const (
	CertFile   = "svid.pem"
	KeyFile    = "svid_key.pem"
	BundleFile = "bundle.pem"
)

// Write stores svid and bundle in dir, creating dir (mode 0700) if needed.
// The key file is written with mode 0600, the certificate files with 0644.
func Write(dir string, svid *x509svid.SVID, bundle *x509bundle.Bundle) error {
	if svid == nil || bundle == nil {
		return errors.New("svidfile: svid and bundle are required")
	}
	if bundle.TrustDomain() != svid.ID.TrustDomain() {
		return fmt.Errorf("svidfile: bundle is for trust domain %q, SVID for %q", bundle.TrustDomain(), svid.ID.TrustDomain())
	}
	if bundle.Empty() {
		return errors.New("svidfile: bundle has no CA certificates")
	}
	certPEM, keyPEM, err := svid.Marshal()
	if err != nil {
		return fmt.Errorf("svidfile: %w", err)
	}
	bundlePEM, err := bundle.Marshal()
	if err != nil {
		return fmt.Errorf("svidfile: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("svidfile: %w", err)
	}
	// Bundle first: during a CA rotation the new bundle still trusts the old
	// SVID, and the new SVID needs the new bundle.
	files := []struct {
		name string
		data []byte
		perm os.FileMode
	}{
		{BundleFile, bundlePEM, 0o644},
		{KeyFile, keyPEM, 0o600},
		{CertFile, certPEM, 0o644},
	}
	for _, f := range files {
		if err := keyfile.Write(filepath.Join(dir, f.name), f.data, f.perm); err != nil {
			return err
		}
	}
	return nil
}

// Load reads the SVID and bundle stored in dir by Write. The bundle is taken
// to be for the SVID's trust domain. Errors name the file at fault.
func Load(dir string) (*x509svid.SVID, *x509bundle.Bundle, error) {
	certPath := filepath.Join(dir, CertFile)
	keyPath := filepath.Join(dir, KeyFile)
	bundlePath := filepath.Join(dir, BundleFile)

	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		return nil, nil, fmt.Errorf("svidfile: %w", err) // *PathError names the file
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, nil, fmt.Errorf("svidfile: %w", err)
	}
	bundlePEM, err := os.ReadFile(bundlePath)
	if err != nil {
		return nil, nil, fmt.Errorf("svidfile: %w", err)
	}

	svid, err := x509svid.Parse(certPEM, keyPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("svidfile: %s, %s: %w", certPath, keyPath, err)
	}
	bundle, err := x509bundle.Parse(svid.ID.TrustDomain(), bundlePEM)
	if err != nil {
		return nil, nil, fmt.Errorf("svidfile: %s: %w", bundlePath, err)
	}
	if bundle.Empty() {
		return nil, nil, fmt.Errorf("svidfile: %s: no CA certificates", bundlePath)
	}
	return svid, bundle, nil
}
