// Package vaulttest is the tests' real HashiCorp Vault: a `vault server -dev`
// (in-memory storage, initialised and unsealed, kv-v2 at secret/) that the
// Vault issuer is proved against, instead of a mock of Vault's API.
//
// Start runs the pinned Vault binary (`make vault` builds it and `make test`
// passes its path in CREDBROKER_VAULT) on a free loopback port with a random
// root token, a fresh HOME and none of the caller's VAULT_* settings, waits
// until /v1/sys/health answers 200, and stops it when the test ends. A
// missing binary fails the test; it is never skipped.
//
// The helpers (EnableJWTAuth, WritePolicy, EnableAWSEngine, ...) configure
// the server as root through Vault's HTTP API and fail the test on error.
package vaulttest

import (
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"net/http"
	"testing"
	"time"

	vaultapi "github.com/hashicorp/vault/api"

	"github.com/credbroker/credbroker/test/testproc"
)

// EnvBinary names the environment variable holding the path of the Vault
// binary. When it is unset, Start looks for `vault` on PATH.
const EnvBinary = "CREDBROKER_VAULT"

// clientTimeout bounds one request of a Client or of the readiness probe.
const clientTimeout = 10 * time.Second

// Server is a running Vault dev server owned by one test.
type Server struct {
	// Addr is the server's base URL: http://127.0.0.1:PORT, or
	// https://127.0.0.1:PORT with WithTLS.
	Addr string
	// RootToken is the server's random root token.
	RootToken string
	// CACertPEM is the CA that signed the server's certificate with WithTLS,
	// and empty without it.
	CACertPEM []byte

	proc *testproc.Process
	http *http.Client // shared by HTTPClient and every Client
}

// Option configures Start.
type Option func(*options)

type options struct {
	tls bool
}

// WithTLS serves Vault's API over HTTPS (`-dev-tls`) with a certificate for
// 127.0.0.1 signed by a fresh CA, which Server.CACertPEM holds.
func WithTLS() Option {
	return func(o *options) { o.tls = true }
}

// HTTPClient returns the HTTP client that every Client uses: it trusts the
// server's certificate (with WithTLS), never follows redirects, as Vault's
// API client expects, and has its idle connections closed when the test
// ends.
func (s *Server) HTTPClient() *http.Client { return s.http }

// newHTTPClient returns a client for HTTPClient, or for one readiness probe.
func (s *Server) newHTTPClient() *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if len(s.CACertPEM) > 0 {
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(s.CACertPEM)
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	return &http.Client{
		Transport:     tr,
		Timeout:       clientTimeout,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// Client returns a Vault API client for the server, authenticated with the
// root token, that never retries (MaxRetries 0) so that a test sees each
// 429, 503 or connection error itself. It ignores the process's VAULT_TOKEN,
// VAULT_NAMESPACE and VAULT_HEADERS.
func (s *Server) Client(t testing.TB) *vaultapi.Client {
	t.Helper()
	c, err := vaultapi.NewClient(&vaultapi.Config{
		Address:    s.Addr,
		HttpClient: s.HTTPClient(),
		Timeout:    clientTimeout,
		MaxRetries: 0,
	})
	if err != nil {
		t.Fatalf("vaulttest: client: %v", err)
	}
	c.SetToken(s.RootToken)
	c.ClearNamespace()
	c.SetHeaders(http.Header{vaultapi.RequestHeaderName: {"true"}})
	return c
}

// randomHex returns n random bytes, hex encoded.
func randomHex(t testing.TB, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatalf("vaulttest: random token: %v", err)
	}
	return hex.EncodeToString(b)
}
