// Package testproc is the process machinery shared by the test harnesses
// that run a real server binary (test/miniotest, test/vaulttest):
// finding the binary, picking loopback ports, starting the server with a
// clean environment and captured output, waiting until it is ready, trying
// again when a picked port was taken, stopping it with SIGTERM then SIGKILL,
// and showing its output, secrets redacted, when a test fails.
//
// A harness describes its server once in a Harness and supplies, for each
// attempt, the command and the probe that says it is ready. A missing binary
// or a server that does not come up fails the test; nothing here skips.
package testproc

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// Defaults for the zero values of the corresponding Harness fields.
const (
	// DefaultReadyTimeout bounds how long Start waits for a server to be ready.
	DefaultReadyTimeout = 20 * time.Second
	// DefaultStopGrace is how long a server may take to exit after SIGTERM
	// before it is killed. MinIO and Vault usually need about one second.
	DefaultStopGrace = 5 * time.Second
	// DefaultProbeTimeout bounds one readiness probe.
	DefaultProbeTimeout = 2 * time.Second
	// DefaultAttempts is how often Start tries when another process took a
	// picked port before the server bound it.
	DefaultAttempts = 3
)

// Harness describes a server binary that a test harness runs.
type Harness struct {
	// Package is the harness's package name, which prefixes every failure
	// message: "miniotest".
	Package string
	// Server is the server's name in messages about its binary: "MinIO".
	Server string
	// Command is the binary's name on PATH, the Makefile target that
	// installs it, and the process's name in messages: "minio".
	Command string
	// EnvBinary names the environment variable holding the binary's path.
	EnvBinary string
	// PortTaken is what the server prints when it cannot bind a port,
	// "address already in use"; output holding it makes Start try again.
	PortTaken string
	// Redact removes secrets from the server's output before it is shown.
	// Nil shows the output as it is.
	Redact func(out string) string

	// ReadyTimeout, StopGrace, ProbeTimeout and Attempts default, when
	// zero, to DefaultReadyTimeout, DefaultStopGrace, DefaultProbeTimeout
	// and DefaultAttempts.
	ReadyTimeout time.Duration
	StopGrace    time.Duration
	ProbeTimeout time.Duration
	Attempts     int
}

// Binary returns the binary named by EnvBinary, else Command on PATH. It
// fails the test, saying to run `make Command` or set EnvBinary, when
// neither is there.
func (h Harness) Binary(t testing.TB) string {
	t.Helper()
	how := fmt.Sprintf("run `make %s`, or set %s to a %s server binary", h.Command, h.EnvBinary, h.Server)
	if p := os.Getenv(h.EnvBinary); p != "" {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("%s: %s=%s: %v; %s", h.Package, h.EnvBinary, p, err, how)
		}
		return p
	}
	p, err := exec.LookPath(h.Command)
	if err != nil {
		t.Fatalf("%s: no %s server binary (%s is unset and %s is not on PATH); %s",
			h.Package, h.Server, h.EnvBinary, h.Command, how)
	}
	return p
}

// FreePorts returns n distinct free loopback addresses, 127.0.0.1:PORT. The
// listeners are closed before it returns, so another process may take a
// port before the server binds it; Start tries again when that happens.
func FreePorts(n int) ([]string, error) {
	addrs := make([]string, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("testproc: pick a port: %w", err)
		}
		defer l.Close()
		addrs = append(addrs, l.Addr().String())
	}
	return addrs, nil
}

// Environ returns the test's environment without the variables whose
// NAME=VALUE starts with one of drop (settings that would change the server
// under test), followed by add.
func Environ(drop []string, add ...string) []string {
	var env []string
next:
	for _, kv := range os.Environ() {
		for _, prefix := range drop {
			if strings.HasPrefix(kv, prefix) {
				continue next
			}
		}
		env = append(env, kv)
	}
	return append(env, add...)
}

func (h Harness) redact(out string) string {
	if h.Redact == nil {
		return out
	}
	return h.Redact(out)
}

func orDefault[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}
