package svidfile_test

import (
	"crypto"
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/credbroker/credbroker/internal/ca"
	"github.com/credbroker/credbroker/internal/svidfile"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

func mint(t *testing.T) (*ca.CA, *x509svid.SVID) {
	t.Helper()
	c, err := ca.New(td)
	if err != nil {
		t.Fatal(err)
	}
	svid, err := c.MintX509SVID(spiffeid.RequireFromPath(td, "/controller"), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return c, svid
}

func TestWriteLoadRoundTrip(t *testing.T) {
	c, svid := mint(t)
	dir := filepath.Join(t.TempDir(), "a", "svid")
	if err := svidfile.Write(dir, svid, c.X509Bundle()); err != nil {
		t.Fatal(err)
	}

	for name, want := range map[string]os.FileMode{
		svidfile.CertFile: 0o644, svidfile.KeyFile: 0o600, svidfile.BundleFile: 0o644,
	} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s mode %04o, want %04o", name, fi.Mode().Perm(), want)
		}
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("dir mode %v (%v), want 0700", fi.Mode(), err)
	}
	key, err := os.ReadFile(filepath.Join(dir, svidfile.KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(key), "-----BEGIN PRIVATE KEY-----") {
		t.Error("key is not PEM PKCS#8")
	}

	got, bundle, err := svidfile.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != svid.ID || len(got.Certificates) != 1 || !got.Certificates[0].Equal(svid.Certificates[0]) {
		t.Errorf("loaded SVID %v differs", got.ID)
	}
	if !got.PrivateKey.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(svid.PrivateKey.Public()) {
		t.Error("loaded key differs")
	}
	if !bundle.Equal(c.X509Bundle()) {
		t.Error("loaded bundle differs")
	}
	if _, _, err := x509svid.Verify(got.Certificates, bundle); err != nil {
		t.Errorf("loaded SVID does not verify against loaded bundle: %v", err)
	}

	// Rewriting (rotation) replaces the files and leaves no temp files.
	_, svid2 := mint(t)
	if err := svidfile.Write(dir, svid2, c.X509Bundle()); err != nil {
		t.Fatal(err)
	}
	got, _, err = svidfile.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !got.Certificates[0].Equal(svid2.Certificates[0]) {
		t.Error("rewrite did not replace the SVID")
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 3 {
		t.Errorf("dir holds %d entries, want 3", len(ents))
	}
}

func TestWriteRejects(t *testing.T) {
	c, svid := mint(t)
	dir := t.TempDir()
	other := x509bundle.FromX509Authorities(spiffeid.RequireTrustDomainFromString("other.org"), []*x509.Certificate{c.Certificate()})
	if err := svidfile.Write(dir, svid, other); err == nil {
		t.Error("wrote a bundle for another trust domain")
	}
	if err := svidfile.Write(dir, svid, x509bundle.New(td)); err == nil {
		t.Error("wrote an empty bundle")
	}
}

func TestLoadErrorsNameTheFile(t *testing.T) {
	for _, name := range []string{svidfile.CertFile, svidfile.KeyFile, svidfile.BundleFile} {
		c, svid := mint(t)
		dir := t.TempDir()
		if err := svidfile.Write(dir, svid, c.X509Bundle()); err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, name)
		if err := os.Remove(path); err != nil {
			t.Fatal(err)
		}
		_, _, err := svidfile.Load(dir)
		if err == nil || !strings.Contains(err.Error(), path) || !strings.HasPrefix(err.Error(), "svidfile: ") {
			t.Errorf("missing %s: error %v should name %s", name, err, path)
		}
	}

	for _, name := range []string{svidfile.CertFile, svidfile.KeyFile, svidfile.BundleFile} {
		c, svid := mint(t)
		dir := t.TempDir()
		if err := svidfile.Write(dir, svid, c.X509Bundle()); err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte("-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		_, _, err := svidfile.Load(dir)
		if err == nil || !strings.Contains(err.Error(), path) {
			t.Errorf("corrupt %s: error %v should name %s", name, err, path)
		}
	}

	// An empty bundle file is an error, not an empty trust store.
	c, svid := mint(t)
	dir := t.TempDir()
	if err := svidfile.Write(dir, svid, c.X509Bundle()); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, svidfile.BundleFile), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := svidfile.Load(dir); err == nil || !strings.Contains(err.Error(), svidfile.BundleFile) {
		t.Errorf("empty bundle: %v", err)
	}

	// A key that does not belong to the certificate.
	_, other := mint(t)
	_, keyPEM, err := other.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, svidfile.KeyFile), keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, svidfile.BundleFile), mustMarshal(t, c.X509Bundle()), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := svidfile.Load(dir); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Errorf("mismatched key: %v", err)
	}
}

func mustMarshal(t *testing.T, b *x509bundle.Bundle) []byte {
	t.Helper()
	out, err := b.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return out
}
