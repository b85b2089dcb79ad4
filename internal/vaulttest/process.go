package vaulttest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const (
	// readyTimeout bounds how long Start waits for a server to answer.
	readyTimeout = 20 * time.Second
	// stopGrace is how long a server may take to exit after SIGTERM before
	// it is killed. Vault usually needs about one second.
	stopGrace = 5 * time.Second
	// probeTimeout bounds one readiness probe.
	probeTimeout = 2 * time.Second
	// startAttempts is how often Start tries again when another process took
	// a picked port (the API port, or the cluster port one above it) before
	// Vault bound it.
	startAttempts = 3
)

// errPortTaken reports that Vault could not bind a port picked for it.
var errPortTaken = errors.New("vaulttest: port taken before vault could bind it")

// unsealKeyLine finds the unseal key in the dev server's banner, which it
// prints when it shuts down.
var unsealKeyLine = regexp.MustCompile(`(?m)^Unseal Key: (\S+)`)

// Start runs a Vault dev server for the rest of the test and returns once
// /v1/sys/health answers 200 (initialised, unsealed, active). It fails the
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
	bin := binary(t)
	s := &Server{RootToken: "root-" + randomHex(t, 20)}
	for attempt := 1; ; attempt++ {
		p, err := launch(t, bin, s, o, pickPort)
		if err == nil {
			s.proc, s.http = p, s.newHTTPClient()
			t.Cleanup(func() {
				p.cleanup(t, s)
				s.http.CloseIdleConnections()
			})
			return s
		}
		if errors.Is(err, errPortTaken) && attempt < startAttempts {
			continue
		}
		t.Fatalf("vaulttest: start %s: %v\nvault output:\n%s", bin, err, s.redact(p.out.String()))
	}
}

// binary returns the Vault binary named by EnvBinary, else `vault` on PATH.
func binary(t testing.TB) string {
	t.Helper()
	const how = "run `make vault`, or set " + EnvBinary + " to a Vault server binary"
	if p := os.Getenv(EnvBinary); p != "" {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("vaulttest: %s=%s: %v; %s", EnvBinary, p, err, how)
		}
		return p
	}
	p, err := exec.LookPath("vault")
	if err != nil {
		t.Fatalf("vaulttest: no Vault server binary (%s is unset and vault is not on PATH); %s", EnvBinary, how)
	}
	return p
}

// process is one running Vault.
type process struct {
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{} // closed when the process has exited
	err  error         // cmd.Wait's result, set before done is closed

	mu      sync.Mutex
	stopped bool // Stop was called: exiting is expected, not a failure
}

// launch starts Vault on a fresh port and HOME and waits for it to be ready.
// On error the process has exited, and the returned process still holds its
// output.
func launch(t testing.TB, bin string, s *Server, o options, pickPort func() (string, error)) (*process, error) {
	p := &process{out: &syncBuffer{}, done: make(chan struct{})}
	addr, err := pickPort()
	if err != nil {
		return p, err
	}
	home := t.TempDir()
	args := []string{"server", "-dev", "-dev-no-store-token", "-dev-listen-address=" + addr}
	scheme, caFile := "http", ""
	if o.tls {
		certDir := filepath.Join(home, "tls")
		if err := os.Mkdir(certDir, 0o700); err != nil {
			return p, err
		}
		args = append(args, "-dev-tls", "-dev-tls-cert-dir="+certDir)
		scheme, caFile = "https", filepath.Join(certDir, "vault-ca.pem")
	}
	s.Addr = scheme + "://" + addr
	s.CACertPEM = nil
	p.cmd = exec.Command(bin, args...)
	p.cmd.Dir = home
	p.cmd.Env = environ(s, home)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		return p, err
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()

	ctx, cancel := context.WithTimeout(t.Context(), readyTimeout)
	defer cancel()
	if err := p.waitReady(ctx, s, caFile); err != nil {
		p.stop()
		// Vault says "listen tcp4 127.0.0.1:PORT: bind: address already in
		// use" for the API and the cluster listener alike, and exits 1.
		if strings.Contains(p.out.String(), "address already in use") {
			return p, fmt.Errorf("%w: %v", errPortTaken, err)
		}
		return p, err
	}
	return p, nil
}

// environ is Vault's environment: the test's own minus every VAULT_ setting
// (VAULT_ADDR, VAULT_TOKEN, VAULT_DEV_*, ... would change the server under
// test), with a private HOME, plus the root token, which is passed here
// rather than as a flag so that it does not show in ps.
func environ(s *Server, home string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "VAULT_") && !strings.HasPrefix(kv, "HOME=") {
			env = append(env, kv)
		}
	}
	return append(env,
		"HOME="+home,
		"VAULT_DEV_ROOT_TOKEN_ID="+s.RootToken,
	)
}

// waitReady polls, with a short backoff, until the server reports itself
// healthy, the process exits, or ctx ends. With TLS the CA file is read
// once Vault has written it.
func (p *process) waitReady(ctx context.Context, s *Server, caFile string) error {
	// A probe must not outlive the process: until Vault binds its port,
	// another listener there may accept and never answer.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-p.done:
			cancel()
		case <-ctx.Done():
		}
	}()
	backoff := 10 * time.Millisecond
	var last error
	for {
		last = p.probe(ctx, s, caFile)
		if last == nil {
			return nil
		}
		timer := time.NewTimer(backoff)
		select {
		case <-p.done:
			timer.Stop()
			return fmt.Errorf("vault exited before it was ready: %v", p.err)
		case <-ctx.Done():
			timer.Stop()
			select {
			case <-p.done:
				return fmt.Errorf("vault exited before it was ready: %v", p.err)
			default:
			}
			return fmt.Errorf("vault not ready after %s: %w", readyTimeout, last)
		case <-timer.C:
		}
		backoff = min(2*backoff, 250*time.Millisecond)
	}
}

// probe returns nil when GET /v1/sys/health answers 200, which Vault does
// only when it is initialised, unsealed and active.
func (p *process) probe(ctx context.Context, s *Server, caFile string) error {
	if caFile != "" && len(s.CACertPEM) == 0 {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return err
		}
		s.CACertPEM = pem
	}
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
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

// stop ends the process: SIGTERM, then SIGKILL after stopGrace. It returns
// once the process has exited.
func (p *process) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	timer := time.NewTimer(stopGrace)
	defer timer.Stop()
	select {
	case <-p.done:
	case <-timer.C:
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// cleanup stops the server at the end of the test, failing the test if the
// server died on its own, and logs its output if the test failed.
func (p *process) cleanup(t testing.TB, s *Server) {
	p.mu.Lock()
	stopped := p.stopped
	p.mu.Unlock()
	select {
	case <-p.done:
		if !stopped {
			t.Errorf("vaulttest: vault exited during the test: %v", p.err)
		}
	default:
		p.stop()
	}
	if t.Failed() {
		t.Logf("vaulttest: vault output:\n%s", s.redact(p.out.String()))
	}
}

// redact removes the root token and the unseal key from Vault's output before
// it is logged.
func (s *Server) redact(out string) string {
	out = strings.ReplaceAll(out, s.RootToken, "REDACTED")
	return unsealKeyLine.ReplaceAllString(out, "Unseal Key: REDACTED")
}

// freePort returns a free loopback address. The listener is closed before
// returning, so another process may take the port before Vault binds it;
// Start retries when that happens.
func freePort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("vaulttest: pick a port: %w", err)
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// syncBuffer is a bytes.Buffer safe for the concurrent writes of a process's
// stdout and stderr copiers.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
