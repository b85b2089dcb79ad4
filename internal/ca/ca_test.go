package ca_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io/fs"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/credbroker/credbroker/internal/ca"
)

var (
	td       = spiffeid.RequireTrustDomainFromString("example.org")
	workload = spiffeid.RequireFromPath(td, "/ns/capi-system/sa/capa")
)

// fixed returns a clock stopped at t.
func fixed(t time.Time) func() time.Time { return func() time.Time { return t } }

func newCA(t *testing.T, opts ...ca.Option) *ca.CA {
	t.Helper()
	c, err := ca.New(td, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestMintX509SVIDFollowsSpec(t *testing.T) {
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	c := newCA(t, ca.WithClock(fixed(now)))

	svid, err := c.MintX509SVID(workload, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if svid.ID != workload {
		t.Errorf("ID = %v, want %v", svid.ID, workload)
	}
	id, chains, err := x509svid.Verify(svid.Certificates, c.X509Bundle(), x509svid.WithTime(now))
	if err != nil {
		t.Fatalf("go-spiffe Verify: %v", err)
	}
	if id != workload || len(chains) != 1 {
		t.Errorf("Verify = %v, %d chains", id, len(chains))
	}
	// go-spiffe's Parse applies the X.509-SVID spec checks (key usage,
	// non-root path, key matches leaf).
	certPEM, keyPEM, err := svid.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := x509svid.Parse(certPEM, keyPEM); err != nil {
		t.Fatalf("go-spiffe Parse: %v", err)
	}

	leaf := svid.Certificates[0]
	if len(svid.Certificates) != 1 {
		t.Errorf("chain has %d certificates, want the leaf only", len(svid.Certificates))
	}
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != workload.String() {
		t.Errorf("URIs = %v, want exactly %v", leaf.URIs, workload)
	}
	if leaf.IsCA || !leaf.BasicConstraintsValid {
		t.Errorf("IsCA = %v, BasicConstraintsValid = %v", leaf.IsCA, leaf.BasicConstraintsValid)
	}
	if leaf.KeyUsage&x509.KeyUsageDigitalSignature == 0 || leaf.KeyUsage&(x509.KeyUsageCertSign|x509.KeyUsageCRLSign) != 0 {
		t.Errorf("KeyUsage = %b", leaf.KeyUsage)
	}
	if !hasEKU(leaf, x509.ExtKeyUsageServerAuth) || !hasEKU(leaf, x509.ExtKeyUsageClientAuth) {
		t.Errorf("ExtKeyUsage = %v", leaf.ExtKeyUsage)
	}
	if !leaf.NotAfter.Equal(now.Add(time.Hour)) {
		t.Errorf("NotAfter = %v, want %v", leaf.NotAfter, now.Add(time.Hour))
	}
	if skew := now.Sub(leaf.NotBefore); skew < 0 || skew > time.Minute {
		t.Errorf("NotBefore is %v before now, want a small backdate", skew)
	}
	if leaf.SerialNumber.Sign() <= 0 {
		t.Errorf("serial %v is not positive", leaf.SerialNumber)
	}
	if len(leaf.DNSNames) != 0 || len(leaf.IPAddresses) != 0 {
		t.Errorf("unexpected SANs %v %v", leaf.DNSNames, leaf.IPAddresses)
	}

	other, err := c.MintX509SVID(workload, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if other.Certificates[0].SerialNumber.Cmp(leaf.SerialNumber) == 0 {
		t.Error("two SVIDs share a serial number")
	}
	if other.PrivateKey.Public().(*ecdsa.PublicKey).Equal(svid.PrivateKey.Public()) {
		t.Error("two SVIDs share a key")
	}
}

func hasEKU(c *x509.Certificate, want x509.ExtKeyUsage) bool {
	for _, u := range c.ExtKeyUsage {
		if u == want {
			return true
		}
	}
	return false
}

func TestRootCertificate(t *testing.T) {
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	c := newCA(t, ca.WithClock(fixed(now)))
	root := c.Certificate()
	if !root.IsCA || root.KeyUsage&x509.KeyUsageCertSign == 0 {
		t.Errorf("root IsCA = %v, KeyUsage = %b", root.IsCA, root.KeyUsage)
	}
	if len(root.URIs) != 1 || root.URIs[0].String() != td.IDString() {
		t.Errorf("root URIs = %v, want %s", root.URIs, td.IDString())
	}
	if root.PublicKeyAlgorithm != x509.ECDSA || root.PublicKey.(*ecdsa.PublicKey).Curve != elliptic.P256() {
		t.Errorf("root key is not ECDSA P-256")
	}
	if got := root.NotAfter.Sub(now); got < 9*365*24*time.Hour {
		t.Errorf("root valid for %v, want about ten years", got)
	}
	if c.TrustDomain() != td || c.X509Bundle().TrustDomain() != td || c.JWTBundle().TrustDomain() != td {
		t.Error("trust domain mismatch")
	}
}

func TestMintX509SVIDServerSANs(t *testing.T) {
	c := newCA(t)
	svid, err := c.MintX509SVID(workload, time.Hour,
		ca.WithDNSNames("localhost", "broker.example.org"), ca.WithIPAddresses(net.IPv4(127, 0, 0, 1), net.IPv6loopback))
	if err != nil {
		t.Fatal(err)
	}
	leaf := svid.Certificates[0]
	for _, h := range []string{"localhost", "broker.example.org", "127.0.0.1", "::1"} {
		if err := leaf.VerifyHostname(h); err != nil {
			t.Errorf("VerifyHostname(%q): %v", h, err)
		}
	}
	if len(leaf.URIs) != 1 {
		t.Errorf("URIs = %v, want exactly one", leaf.URIs)
	}
}

func TestMintX509SVIDRejects(t *testing.T) {
	c := newCA(t)
	foreign := spiffeid.RequireFromString("spiffe://evil.org/workload")
	for name, tc := range map[string]struct {
		id  spiffeid.ID
		ttl time.Duration
	}{
		"foreign trust domain": {foreign, time.Hour},
		"root ID":              {td.ID(), time.Hour},
		"zero ttl":             {workload, 0},
		"negative ttl":         {workload, -time.Minute},
	} {
		if _, err := c.MintX509SVID(tc.id, tc.ttl); err == nil {
			t.Errorf("%s: minted, want error", name)
		} else if !strings.HasPrefix(err.Error(), "ca: ") {
			t.Errorf("%s: error %q lacks package prefix", name, err)
		}
	}
}

func TestMintX509SVIDClampsToRootExpiry(t *testing.T) {
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	c := newCA(t, ca.WithClock(fixed(now)))
	rootEnd := c.Certificate().NotAfter

	late := c.With(ca.WithClock(fixed(rootEnd.Add(-time.Hour))))
	svid, err := late.MintX509SVID(workload, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if !svid.Certificates[0].NotAfter.Equal(rootEnd) {
		t.Errorf("NotAfter = %v, want the root's %v", svid.Certificates[0].NotAfter, rootEnd)
	}
	if _, err := c.With(ca.WithClock(fixed(rootEnd.Add(time.Second)))).MintX509SVID(workload, time.Hour); err == nil {
		t.Error("minted with an expired root")
	}
}

func TestWithClockMintsExpiredSVID(t *testing.T) {
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	c := newCA(t, ca.WithClock(fixed(now)))
	old, err := c.With(ca.WithClock(fixed(now.Add(-2*time.Hour)))).MintX509SVID(workload, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	// Same root: the copy shares keys.
	if err := old.Certificates[0].CheckSignatureFrom(c.Certificate()); err != nil {
		t.Fatal(err)
	}
	_, _, err = x509svid.Verify(old.Certificates, c.X509Bundle(), x509svid.WithTime(now))
	var invalid x509.CertificateInvalidError
	if !errors.As(err, &invalid) || invalid.Reason != x509.Expired {
		t.Fatalf("Verify = %v, want expired", err)
	}
}

type failingReader struct{}

func (failingReader) Read([]byte) (int, error) { return 0, errors.New("no entropy") }

func TestWithRandIsUsed(t *testing.T) {
	c := newCA(t)
	if _, err := c.With(ca.WithRand(failingReader{})).MintX509SVID(workload, time.Hour); err == nil {
		t.Fatal("minted with a failing randomness source")
	}
	if _, err := ca.New(td, ca.WithRand(failingReader{})); err == nil {
		t.Fatal("New succeeded with a failing randomness source")
	}
}

func TestSaveLoadRoundTrip(t *testing.T) {
	now := time.Now()
	dir := filepath.Join(t.TempDir(), "ca")
	c := newCA(t)
	if err := c.Save(dir); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]os.FileMode{ca.CertFile: 0o644, ca.KeyFile: 0o600, ca.JWTKeyFile: 0o600} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s mode %04o, want %04o", name, fi.Mode().Perm(), want)
		}
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("dir: %v, %v; want mode 0700", fi.Mode(), err)
	}
	assertOnlyFiles(t, dir, ca.CertFile, ca.KeyFile, ca.JWTKeyFile)

	loaded, err := ca.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if loaded.TrustDomain() != td {
		t.Errorf("trust domain %v, want %v", loaded.TrustDomain(), td)
	}
	if !loaded.Certificate().Equal(c.Certificate()) {
		t.Error("root certificate changed")
	}
	if loaded.JWTKeyID() != c.JWTKeyID() || !loaded.JWTBundle().Equal(c.JWTBundle()) {
		t.Error("JWT key changed")
	}
	// The loaded CA signs with the same keys.
	svid, err := loaded.MintX509SVID(workload, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := x509svid.Verify(svid.Certificates, c.X509Bundle(), x509svid.WithTime(now)); err != nil {
		t.Errorf("SVID from loaded CA does not verify against original bundle: %v", err)
	}
	tok, err := loaded.MintJWTSVID(workload, []string{"aud"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := jwtsvid.ParseAndValidate(tok, c.JWTBundle(), []string{"aud"}); err != nil {
		t.Errorf("JWT from loaded CA does not validate against original bundle: %v", err)
	}

	// Saving again replaces the files in place.
	if err := loaded.Save(dir); err != nil {
		t.Fatal(err)
	}
	assertOnlyFiles(t, dir, ca.CertFile, ca.KeyFile, ca.JWTKeyFile)
}

func assertOnlyFiles(t *testing.T, dir string, want ...string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range ents {
		got = append(got, e.Name())
	}
	if strings.Join(got, ",") != strings.Join(slices.Sorted(slices.Values(want)), ",") {
		t.Errorf("dir holds %v, want %v (no temp files)", got, want)
	}
}

func TestLoadRefusesLooseKeyPermissions(t *testing.T) {
	for _, name := range []string{ca.KeyFile, ca.JWTKeyFile} {
		for _, mode := range []os.FileMode{0o640, 0o604, 0o644, 0o660} {
			dir := t.TempDir()
			if err := newCA(t).Save(dir); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(dir, name)
			if err := os.Chmod(path, mode); err != nil {
				t.Fatal(err)
			}
			_, err := ca.Load(dir)
			if err == nil {
				t.Errorf("%s mode %04o: loaded, want refusal", name, mode)
				continue
			}
			if !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "must not be accessible by group or others") {
				t.Errorf("%s mode %04o: error %q should name the file and the problem", name, mode, err)
			}
		}
	}
	// 0400 is fine.
	dir := t.TempDir()
	if err := newCA(t).Save(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(dir, ca.KeyFile), 0o400); err != nil {
		t.Fatal(err)
	}
	if _, err := ca.Load(dir); err != nil {
		t.Errorf("mode 0400: %v", err)
	}
}

func TestLoadRejectsBadDirectories(t *testing.T) {
	a, b := t.TempDir(), t.TempDir()
	if err := newCA(t).Save(a); err != nil {
		t.Fatal(err)
	}
	if err := newCA(t).Save(b); err != nil {
		t.Fatal(err)
	}
	// A root key that does not match the certificate.
	key, err := os.ReadFile(filepath.Join(b, ca.KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(a, ca.KeyFile), key, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ca.Load(a); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Errorf("mismatched key: %v", err)
	}

	// Missing files are named.
	for _, name := range []string{ca.CertFile, ca.KeyFile, ca.JWTKeyFile} {
		dir := t.TempDir()
		if err := newCA(t).Save(dir); err != nil {
			t.Fatal(err)
		}
		if err := os.Remove(filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
		// Callers (dev mode) rely on fs.ErrNotExist to decide to create a CA.
		if _, err := ca.Load(dir); !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), name) {
			t.Errorf("missing %s: %v, want fs.ErrNotExist naming the file", name, err)
		}
	}
}

func TestSignCSR(t *testing.T) {
	now := time.Now()
	c := newCA(t)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	// Subject and SANs in the CSR are ignored.
	csrDER, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject:  pkix.Name{CommonName: "admin"},
		DNSNames: []string{"evil.example"},
		URIs:     []*url.URL{{Scheme: "spiffe", Host: "evil.org", Path: "/admin"}},
	}, key)
	if err != nil {
		t.Fatal(err)
	}
	node := spiffeid.RequireFromPath(td, "/capi/cluster/default/c1/node/n1")
	chain, err := c.SignCSR(csrDER, node, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	leaf := chain[0]
	if !key.PublicKey.Equal(leaf.PublicKey) {
		t.Error("leaf does not carry the CSR's key")
	}
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != node.String() || len(leaf.DNSNames) != 0 || leaf.Subject.CommonName != "" {
		t.Errorf("leaf carries CSR names: URIs %v DNS %v CN %q", leaf.URIs, leaf.DNSNames, leaf.Subject.CommonName)
	}
	if id, _, err := x509svid.Verify(chain, c.X509Bundle(), x509svid.WithTime(now)); err != nil || id != node {
		t.Errorf("Verify = %v, %v", id, err)
	}

	// A CSR whose signature does not verify proves no key possession.
	bad := append([]byte(nil), csrDER...)
	bad[len(bad)-3] ^= 0xff
	if _, err := c.SignCSR(bad, node, time.Hour); err == nil || !strings.Contains(err.Error(), "ca: CSR signature") {
		t.Errorf("CSR with a bad signature: %v, want a signature error", err)
	}
	if _, err := c.SignCSR([]byte("not a csr"), node, time.Hour); err == nil {
		t.Error("signed garbage")
	}
	if _, err := c.SignCSR(csrDER, spiffeid.RequireFromString("spiffe://evil.org/n"), time.Hour); err == nil {
		t.Error("signed for a foreign trust domain")
	}
}

func TestMintJWTSVID(t *testing.T) {
	c := newCA(t)
	now := time.Now()
	tok, err := c.MintJWTSVID(workload, []string{"credbroker"}, 5*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	svid, err := jwtsvid.ParseAndValidate(tok, c.JWTBundle(), []string{"credbroker"})
	if err != nil {
		t.Fatalf("go-spiffe ParseAndValidate: %v", err)
	}
	if svid.ID != workload {
		t.Errorf("sub = %v", svid.ID)
	}
	if d := svid.Expiry.Sub(now); d < 4*time.Minute || d > 6*time.Minute {
		t.Errorf("exp is %v from now, want 5m", d)
	}

	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		t.Fatalf("token has %d parts", len(parts))
	}
	var header map[string]any
	decodeSegment(t, parts[0], &header)
	if header["alg"] != "ES256" || header["typ"] != "JWT" || header["kid"] != c.JWTKeyID() || c.JWTKeyID() == "" {
		t.Errorf("header = %v", header)
	}
	var claims map[string]any
	decodeSegment(t, parts[1], &claims)
	for _, k := range []string{"sub", "aud", "exp", "iat"} {
		if _, ok := claims[k]; !ok {
			t.Errorf("claim %s missing: %v", k, claims)
		}
	}
	if aud, ok := claims["aud"].([]any); !ok || len(aud) != 1 || aud[0] != "credbroker" {
		t.Errorf("aud = %#v, want [credbroker]", claims["aud"])
	}

	for name, f := range map[string]func() (string, error){
		"no audience":    func() (string, error) { return c.MintJWTSVID(workload, nil, time.Minute) },
		"empty audience": func() (string, error) { return c.MintJWTSVID(workload, []string{""}, time.Minute) },
		"zero ttl":       func() (string, error) { return c.MintJWTSVID(workload, []string{"a"}, 0) },
		"foreign": func() (string, error) {
			return c.MintJWTSVID(spiffeid.RequireFromString("spiffe://evil.org/x"), []string{"a"}, time.Minute)
		},
	} {
		if _, err := f(); err == nil {
			t.Errorf("%s: minted, want error", name)
		}
	}
}

func decodeSegment(t *testing.T, seg string, v any) {
	t.Helper()
	b, err := base64.RawURLEncoding.DecodeString(seg)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatal(err)
	}
}
