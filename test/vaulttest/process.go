package vaulttest

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/credbroker/credbroker/test/testproc"
)

// unsealKeyLine finds the unseal key in the dev server's banner.
var unsealKeyLine = regexp.MustCompile(`(?m)^Unseal Key: (\S+)`)

// Start runs a Vault dev server for the rest of the test and returns once
// /v1/sys/health answers 200 (initialised, unsealed, active) and it has
// printed its dev banner, the end of its setup. It fails the
// test when the binary is missing or the server does not come up; it never
// skips. The server is stopped, and its output (root token and unseal key
// redacted) logged if the test failed, when the test ends.
func Start(t testing.TB, opts ...Option) *Server {
	t.Helper()
	return start(t, freePort, opts...)
}

// start is Start with the port picker as a parameter, so that tests can make
// the first pick collide.
func start(t testing.TB, pickPort func() (string, error), opts ...Option) *Server {
	t.Helper()
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	s := &Server{RootToken: "root-" + randomHex(t, 20)}
	h := harness(s)
	bin := h.Binary(t)
	s.proc = h.Start(t, bin, func() (testproc.Attempt, error) {
		return attempt(t, bin, s, o, pickPort)
	})
	s.http = s.newHTTPClient()
	t.Cleanup(s.http.CloseIdleConnections)
	return s
}

// harness describes Vault to testproc.
func harness(s *Server) testproc.Harness {
	return testproc.Harness{
		Package:   "vaulttest",
		Server:    "Vault",
		Command:   "vault",
		EnvBinary: EnvBinary,
		// Vault says "listen tcp4 127.0.0.1:PORT: bind: address already in
		// use" for the API and the cluster listener (one port above) alike,
		// and exits 1.
		PortTaken: "address already in use",
		Redact:    s.redact,
	}
}

// attempt prepares one start of Vault on a fresh port and HOME.
func attempt(t testing.TB, bin string, s *Server, o options, pickPort func() (string, error)) (testproc.Attempt, error) {
	addr, err := pickPort()
	if err != nil {
		return testproc.Attempt{}, err
	}
	home := t.TempDir()
	args := []string{"server", "-dev", "-dev-no-store-token", "-dev-listen-address=" + addr}
	scheme, caFile := "http", ""
	if o.tls {
		certDir := filepath.Join(home, "tls")
		if err := os.Mkdir(certDir, 0o700); err != nil {
			return testproc.Attempt{}, err
		}
		args = append(args, "-dev-tls", "-dev-tls-cert-dir="+certDir)
		scheme, caFile = "https", filepath.Join(certDir, "vault-ca.pem")
	}
	s.Addr = scheme + "://" + addr
	s.CACertPEM = nil
	cmd := exec.Command(bin, args...)
	cmd.Dir = home
	cmd.Env = environ(s, home)
	ready := func(ctx context.Context) error { return s.probe(ctx, caFile) }
	// The dev server prints its banner (unseal key, root token) only once its
	// log has been quiet for 100 ms after setting up, which may be well after
	// sys/health first answers 200 on a loaded machine. Waiting for it means
	// the setup is finished and the redaction always has something to redact.
	return testproc.Attempt{Cmd: cmd, Ready: ready, ReadyOutput: "Root Token: "}, nil
}

// environ is Vault's environment: the test's own minus every VAULT_ setting
// (VAULT_ADDR, VAULT_TOKEN, VAULT_DEV_*, ... would change the server under
// test), with a private HOME, plus the root token, which is passed here
// rather than as a flag so that it does not show in ps.
func environ(s *Server, home string) []string {
	return testproc.Environ([]string{"VAULT_", "HOME="},
		"HOME="+home,
		"VAULT_DEV_ROOT_TOKEN_ID="+s.RootToken,
	)
}

// probe returns nil when GET /v1/sys/health answers 200, which Vault does
// only when it is initialised, unsealed and active.
// With TLS it first reads the CA from caFile, once Vault has written it.
func (s *Server) probe(ctx context.Context, caFile string) error {
	if caFile != "" && len(s.CACertPEM) == 0 {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return err
		}
		s.CACertPEM = pem
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.Addr+"/v1/sys/health", nil)
	if err != nil {
		return err
	}
	c := s.newHTTPClient()
	defer c.CloseIdleConnections()
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("sys/health: %s", resp.Status)
	}
	return nil
}

// redact removes the root token and the unseal key from Vault's output before
// it is logged.
func (s *Server) redact(out string) string {
	out = strings.ReplaceAll(out, s.RootToken, "REDACTED")
	return unsealKeyLine.ReplaceAllString(out, "Unseal Key: REDACTED")
}

// freePort returns a free loopback address. Another process may take the
// port before Vault binds it; Start tries again when that happens.
func freePort() (string, error) {
	addrs, err := testproc.FreePorts(1)
	if err != nil {
		return "", err
	}
	return addrs[0], nil
}
