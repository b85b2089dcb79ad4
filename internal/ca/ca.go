// Package ca is a small SPIFFE certificate authority: a self-signed ECDSA
// P-256 root that signs X.509-SVIDs, and an ES256 key that signs JWT-SVIDs.
// It backs `credbroker serve --dev`, the tests, and node attestation (which
// signs a node's CSR).
//
// A CA is immutable once made and safe for concurrent use.
package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/url"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

const (
	// rootTTL is the lifetime of a root made by New.
	rootTTL = 10 * 365 * 24 * time.Hour
	// backdate is how far NotBefore is set before now, to tolerate small
	// clock skew between the CA and verifiers.
	backdate = 30 * time.Second
)

// CA signs X.509-SVIDs and JWT-SVIDs for one trust domain.
type CA struct {
	td       spiffeid.TrustDomain
	cert     *x509.Certificate
	key      *ecdsa.PrivateKey
	jwtKey   *ecdsa.PrivateKey
	jwtKeyID string
	now      func() time.Time
	rand     io.Reader
}

// Option configures a CA.
type Option func(*CA)

// WithClock sets the clock used for validity periods (default time.Now).
func WithClock(now func() time.Time) Option {
	return func(c *CA) { c.now = now }
}

// WithRand sets the randomness source (default crypto/rand.Reader). It is
// used for serial numbers and passed to key generation and signing; note
// that since Go 1.26 the standard library ignores a custom reader for keys
// and signatures unless GODEBUG=cryptocustomrand=1.
func WithRand(r io.Reader) Option {
	return func(c *CA) { c.rand = r }
}

func newCA(opts []Option) *CA {
	c := &CA{now: time.Now, rand: rand.Reader}
	for _, o := range opts {
		o(c)
	}
	return c
}

// New makes a CA for td with a fresh self-signed root valid for ten years and
// a fresh JWT signing key.
func New(td spiffeid.TrustDomain, opts ...Option) (*CA, error) {
	if td.IsZero() {
		return nil, errors.New("ca: trust domain is required")
	}
	c := newCA(opts)
	c.td = td

	key, err := ecdsa.GenerateKey(elliptic.P256(), c.rand)
	if err != nil {
		return nil, fmt.Errorf("ca: generate root key: %w", err)
	}
	serial, err := c.serial()
	if err != nil {
		return nil, err
	}
	now := c.now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject: pkix.Name{
			Organization: []string{"credbroker"},
			CommonName:   "credbroker CA " + td.Name(),
		},
		URIs:                  []*url.URL{td.ID().URL()},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(rootTTL),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(c.rand, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("ca: create root certificate: %w", err)
	}
	if c.cert, err = x509.ParseCertificate(der); err != nil {
		return nil, fmt.Errorf("ca: parse root certificate: %w", err)
	}
	c.key = key

	jwtKey, err := ecdsa.GenerateKey(elliptic.P256(), c.rand)
	if err != nil {
		return nil, fmt.Errorf("ca: generate JWT key: %w", err)
	}
	if err := c.setJWTKey(jwtKey); err != nil {
		return nil, err
	}
	return c, nil
}

// With returns a copy of c that shares its keys and root but has opts
// applied. Tests use it to mint SVIDs that are already expired or not yet
// valid: c.With(WithClock(past)).MintX509SVID(...).
func (c *CA) With(opts ...Option) *CA {
	cp := *c
	for _, o := range opts {
		o(&cp)
	}
	return &cp
}

// setJWTKey installs the JWT signing key and derives its key id from the
// public key, so that a loaded CA publishes the same kid it had when saved.
func (c *CA) setJWTKey(k *ecdsa.PrivateKey) error {
	if k.Curve != elliptic.P256() {
		return errors.New("ca: JWT key must be ECDSA P-256 (ES256)")
	}
	spki, err := x509.MarshalPKIXPublicKey(k.Public())
	if err != nil {
		return fmt.Errorf("ca: marshal JWT public key: %w", err)
	}
	sum := sha256.Sum256(spki)
	c.jwtKey = k
	c.jwtKeyID = base64.RawURLEncoding.EncodeToString(sum[:16])
	return nil
}

// serial returns a random positive 128-bit serial number.
func (c *CA) serial() (*big.Int, error) {
	b := make([]byte, 16)
	if _, err := io.ReadFull(c.rand, b); err != nil {
		return nil, fmt.Errorf("ca: serial number: %w", err)
	}
	b[0] &= 0x7f // positive
	b[0] |= 0x40 // and never short
	return new(big.Int).SetBytes(b), nil
}

// TrustDomain returns the CA's trust domain.
func (c *CA) TrustDomain() spiffeid.TrustDomain { return c.td }

// Certificate returns the root certificate.
func (c *CA) Certificate() *x509.Certificate { return c.cert }

// X509Bundle returns a new X.509 bundle holding the root.
func (c *CA) X509Bundle() *x509bundle.Bundle {
	return x509bundle.FromX509Authorities(c.td, []*x509.Certificate{c.cert})
}

// JWTBundle returns a new JWT bundle holding the JWT signing key.
func (c *CA) JWTBundle() *jwtbundle.Bundle {
	return jwtbundle.FromJWTAuthorities(c.td, map[string]crypto.PublicKey{c.jwtKeyID: c.jwtKey.Public()})
}

// JWTKeyID returns the key id ("kid") of the JWT signing key.
func (c *CA) JWTKeyID() string { return c.jwtKeyID }

// SVIDOption adds to an X.509-SVID made by MintX509SVID.
type SVIDOption func(*x509.Certificate)

// WithDNSNames adds DNS SANs, e.g. for the broker's own serving certificate.
func WithDNSNames(names ...string) SVIDOption {
	return func(t *x509.Certificate) { t.DNSNames = append(t.DNSNames, names...) }
}

// WithIPAddresses adds IP SANs, e.g. 127.0.0.1 for a dev server.
func WithIPAddresses(ips ...net.IP) SVIDOption {
	return func(t *x509.Certificate) { t.IPAddresses = append(t.IPAddresses, ips...) }
}

// MintX509SVID makes a new ECDSA P-256 key and an X.509-SVID for id, valid
// from now (less a small backdate for clock skew) for ttl, but never beyond
// the root's expiry. id must be in the CA's trust domain and have a path.
func (c *CA) MintX509SVID(id spiffeid.ID, ttl time.Duration, opts ...SVIDOption) (*x509svid.SVID, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), c.rand)
	if err != nil {
		return nil, fmt.Errorf("ca: generate key: %w", err)
	}
	leaf, err := c.sign(key.Public(), id, ttl, opts)
	if err != nil {
		return nil, err
	}
	return &x509svid.SVID{ID: id, Certificates: []*x509.Certificate{leaf}, PrivateKey: key}, nil
}

// SignCSR issues an X.509-SVID for id to the public key in a PKCS#10 CSR. The
// CSR's signature must verify (proof of possession); its subject, SANs and
// extensions are ignored. It returns the chain to present, leaf first (the
// root is not included).
func (c *CA) SignCSR(csrDER []byte, id spiffeid.ID, ttl time.Duration) ([]*x509.Certificate, error) {
	csr, err := parseCSR(csrDER)
	if err != nil {
		return nil, err
	}
	leaf, err := c.sign(csr.PublicKey, id, ttl, nil)
	if err != nil {
		return nil, err
	}
	return []*x509.Certificate{leaf}, nil
}

// CheckCSR returns the error SignCSR would refuse csrDER with, without
// signing anything.
func (c *CA) CheckCSR(csrDER []byte) error {
	_, err := parseCSR(csrDER)
	return err
}

// parseCSR parses a PKCS#10 CSR and checks its signature (proof that the
// requester holds the key) and its key type.
func parseCSR(csrDER []byte) (*x509.CertificateRequest, error) {
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		return nil, fmt.Errorf("ca: parse CSR: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("ca: CSR signature: %w", err)
	}
	if err := checkPublicKey(csr.PublicKey); err != nil {
		return nil, err
	}
	return csr, nil
}

// checkPublicKey accepts the key types and sizes we are willing to certify.
func checkPublicKey(pub crypto.PublicKey) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256(), elliptic.P384(), elliptic.P521():
			return nil
		}
		return errors.New("ca: CSR key: unsupported ECDSA curve")
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return errors.New("ca: CSR key: RSA key shorter than 2048 bits")
		}
		return nil
	case ed25519.PublicKey:
		return nil
	default:
		return fmt.Errorf("ca: CSR key: unsupported key type %T", pub)
	}
}

// sign issues a leaf X.509-SVID for pub per the SPIFFE X.509-SVID spec:
// exactly one URI SAN, not a CA, digitalSignature, serverAuth+clientAuth.
func (c *CA) sign(pub crypto.PublicKey, id spiffeid.ID, ttl time.Duration, opts []SVIDOption) (*x509.Certificate, error) {
	if !id.MemberOf(c.td) {
		return nil, fmt.Errorf("ca: %q is not in trust domain %q", id, c.td)
	}
	if id.Path() == "" {
		return nil, errors.New("ca: an X.509-SVID needs an ID with a path")
	}
	if ttl <= 0 {
		return nil, errors.New("ca: ttl must be positive")
	}
	now := c.now()
	notAfter := now.Add(ttl)
	if notAfter.After(c.cert.NotAfter) {
		notAfter = c.cert.NotAfter
	}
	if !notAfter.After(now) {
		return nil, errors.New("ca: root certificate has expired")
	}
	serial, err := c.serial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"credbroker"}},
		URIs:                  []*url.URL{id.URL()},
		NotBefore:             now.Add(-backdate),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	for _, o := range opts {
		o(tmpl)
	}
	der, err := x509.CreateCertificate(c.rand, tmpl, c.cert, pub, c.key)
	if err != nil {
		return nil, fmt.Errorf("ca: create certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("ca: parse certificate: %w", err)
	}
	return leaf, nil
}

// MintJWTSVID signs a JWT-SVID for id: header alg ES256, typ JWT and the key
// id; claims sub, aud, iat and exp (now+ttl).
func (c *CA) MintJWTSVID(id spiffeid.ID, audience []string, ttl time.Duration) (string, error) {
	if !id.MemberOf(c.td) {
		return "", fmt.Errorf("ca: %q is not in trust domain %q", id, c.td)
	}
	if len(audience) == 0 {
		return "", errors.New("ca: a JWT-SVID needs an audience")
	}
	for _, a := range audience {
		if a == "" {
			return "", errors.New("ca: empty audience")
		}
	}
	if ttl <= 0 {
		return "", errors.New("ca: ttl must be positive")
	}
	now := c.now()
	tok := jwt.NewWithClaims(jwt.SigningMethodES256, jwt.MapClaims{
		"sub": id.String(),
		"aud": append([]string(nil), audience...), // always an array, whatever jwt.MarshalSingleStringAsArray says
		"iat": now.Unix(),
		"exp": now.Add(ttl).Unix(),
	})
	tok.Header["kid"] = c.jwtKeyID
	s, err := tok.SignedString(c.jwtKey)
	if err != nil {
		return "", fmt.Errorf("ca: sign JWT-SVID: %w", err)
	}
	return s, nil
}
