package miniotest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
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
	// it is killed. MinIO usually needs about one second.
	stopGrace = 5 * time.Second
	// probeTimeout bounds one readiness probe.
	probeTimeout = 2 * time.Second
	// startAttempts is how often Start tries again when another process took
	// a picked port before MinIO bound it.
	startAttempts = 3
)

// errPortTaken reports that MinIO could not bind a port picked for it.
var errPortTaken = errors.New("miniotest: port taken before minio could bind it")

// Start runs a MinIO server for the rest of the test and returns once its STS
// and S3 APIs serve requests. It fails the test when the binary is missing or
// the server does not come up; it never skips. The server is stopped, and its
// output logged if the test failed, when the test ends.
func Start(t testing.TB, opts ...Option) *Server {
	t.Helper()
	return start(t, freePorts, opts...)
}

// start is Start with the port picker as a parameter, so that tests can make
// the first pick collide.
func start(t testing.TB, pickPorts func(n int) ([]string, error), opts ...Option) *Server {
	t.Helper()
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	bin := binary(t)
	s := &Server{
		Region:       Region,
		RootUser:     "root-" + randomHex(t, 6),
		RootPassword: randomHex(t, 20),
	}
	if o.openID != nil {
		// MinIO would retry an unreachable issuer forever with IAM, and so
		// STS, unavailable; fail now with the reason instead.
		if err := checkDiscovery(t.Context(), o.openID.configURL); err != nil {
			t.Fatalf("miniotest: WithOpenID: %v (the issuer must be serving before Start)", err)
		}
		s.roleARN = openIDRoleARN(o.openID.clientID, Region)
		o.openID.clientSecret = randomHex(t, 20)
	}
	for attempt := 1; ; attempt++ {
		p, err := launch(t, bin, s, o, pickPorts)
		if err == nil {
			t.Cleanup(func() { p.cleanup(t, s) })
			return s
		}
		if errors.Is(err, errPortTaken) && attempt < startAttempts {
			continue
		}
		t.Fatalf("miniotest: start %s: %v\nminio output:\n%s", bin, err, s.redact(p.out.String()))
	}
}

// binary returns the MinIO binary named by EnvBinary, else `minio` on PATH.
func binary(t testing.TB) string {
	t.Helper()
	const how = "run `make minio`, or set " + EnvBinary + " to a MinIO server binary"
	if p := os.Getenv(EnvBinary); p != "" {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("miniotest: %s=%s: %v; %s", EnvBinary, p, err, how)
		}
		return p
	}
	p, err := exec.LookPath("minio")
	if err != nil {
		t.Fatalf("miniotest: no MinIO server binary (%s is unset and minio is not on PATH); %s", EnvBinary, how)
	}
	return p
}

// process is one running MinIO.
type process struct {
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{} // closed when the process has exited
	err  error         // cmd.Wait's result, set before done is closed
}

// launch starts MinIO on fresh ports and a fresh data directory and waits for
// it to be ready. On error the process has exited, and the returned process
// still holds its output.
func launch(t testing.TB, bin string, s *Server, o options, pickPorts func(int) ([]string, error)) (*process, error) {
	p := &process{out: &syncBuffer{}, done: make(chan struct{})}
	ports, err := pickPorts(2)
	if err != nil {
		return p, err
	}
	s.Endpoint = "http://" + ports[0]
	root := t.TempDir()
	data, certs := root+"/data", root+"/certs"
	p.cmd = exec.Command(bin, "server", "--quiet",
		"--address", ports[0], "--console-address", ports[1],
		"--certs-dir", certs, data)
	p.cmd.Env = environ(s, o)
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
	if err := p.waitReady(ctx, s); err != nil {
		p.stop()
		// MinIO says "Specified port is already in use" and exits 1.
		if strings.Contains(p.out.String(), "already in use") {
			return p, fmt.Errorf("%w: %v", errPortTaken, err)
		}
		return p, err
	}
	return p, nil
}

// environ is MinIO's environment: the test's own, minus any MINIO_ settings
// that would change the server under test, plus the harness's.
func environ(s *Server, o options) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "MINIO_") {
			env = append(env, kv)
		}
	}
	env = append(env,
		"MINIO_ROOT_USER="+s.RootUser,
		"MINIO_ROOT_PASSWORD="+s.RootPassword,
		"MINIO_SITE_REGION="+Region,
		"MINIO_BROWSER=off", // no console server, so the console port stays unused
		"MINIO_UPDATE=off",  // no release check against dl.min.io
		// CI mode: a 256 MiB buffer pool instead of half of RAM, and no
		// refusal to write to a data directory on the root drive.
		"MINIO_CI_CD=on",
	)
	if c := o.openID; c != nil {
		env = append(env,
			"MINIO_IDENTITY_OPENID_CONFIG_URL="+c.configURL,
			"MINIO_IDENTITY_OPENID_CLIENT_ID="+c.clientID,
			"MINIO_IDENTITY_OPENID_ROLE_POLICY="+c.rolePolicy,
			// MinIO also accepts HS256 tokens whose kid is the client id,
			// keyed with the client secret; left empty, anyone can forge
			// them with an empty key. A random secret closes that.
			"MINIO_IDENTITY_OPENID_CLIENT_SECRET="+c.clientSecret,
		)
	}
	return env
}

// waitReady polls, with a short backoff, until the server is live and its IAM
// subsystem (loaded after the HTTP server starts) issues and honours STS
// credentials, the process exits, or ctx ends.
func (p *process) waitReady(ctx context.Context, s *Server) error {
	// A probe must not outlive the process: until MinIO binds its port,
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
		last = p.probe(ctx, s)
		if last == nil {
			return nil
		}
		timer := time.NewTimer(backoff)
		select {
		case <-p.done:
			timer.Stop()
			return fmt.Errorf("minio exited before it was ready: %v", p.err)
		case <-ctx.Done():
			timer.Stop()
			select {
			case <-p.done:
				return fmt.Errorf("minio exited before it was ready: %v", p.err)
			default:
			}
			return fmt.Errorf("minio not ready after %s: %w", readyTimeout, last)
		case <-timer.C:
		}
		backoff = min(2*backoff, 250*time.Millisecond)
	}
}

// probe returns nil when the server is ready for tests.
func (p *process) probe(ctx context.Context, s *Server) error {
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.Endpoint+"/minio/health/live", nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	_ = resp.Body.Close()
	// Liveness answers 200 before the object layer exists, and says so in
	// this header.
	if resp.StatusCode != http.StatusOK || resp.Header.Get("X-Minio-Server-Status") == "offline" {
		return fmt.Errorf("health/live: %s, server status %q", resp.Status, resp.Header.Get("X-Minio-Server-Status"))
	}
	return s.probeIAM(ctx)
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
// server had already died, and logs its output if the test failed.
func (p *process) cleanup(t testing.TB, s *Server) {
	select {
	case <-p.done:
		t.Errorf("miniotest: minio exited during the test: %v", p.err)
	default:
		p.stop()
	}
	if t.Failed() {
		t.Logf("miniotest: minio output:\n%s", s.redact(p.out.String()))
	}
}

// redact removes the root password from MinIO output before it is logged.
func (s *Server) redact(out string) string {
	return strings.ReplaceAll(out, s.RootPassword, "REDACTED")
}

// freePorts returns n distinct free loopback addresses. The listeners are
// closed before returning, so another process may take a port before MinIO
// binds it; Start retries when that happens.
func freePorts(n int) ([]string, error) {
	addrs := make([]string, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("miniotest: pick a port: %w", err)
		}
		defer l.Close()
		addrs = append(addrs, l.Addr().String())
	}
	return addrs, nil
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
