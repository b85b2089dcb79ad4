package testproc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/credbroker/credbroker/internal/backoff"
)

// Attempt is one try at starting the server: its command, not yet started,
// and the probe that says it is ready.
type Attempt struct {
	// Cmd runs the server. Start sets its Stdout and Stderr; the harness sets
	// the rest, an environment from Environ included.
	Cmd *exec.Cmd
	// Ready returns nil once the server serves what tests need. Each call
	// gets a context bounded by ProbeTimeout and cancelled if the process
	// exits, so a probe cannot hang on a listener that took the port.
	Ready func(ctx context.Context) error
	// ReadyOutput, when set, is text the server writes once it has finished
	// starting; it counts as ready only when Ready passes and its output
	// holds this text.
	ReadyOutput string
}

// errPortTaken reports that the server could not bind a port picked for it.
var errPortTaken = errors.New("port taken before the server could bind it")

// Start runs the server for the rest of the test and returns once it is
// ready. For each attempt it calls prepare, which picks fresh ports and
// builds the command for bin; when the server says a port was taken
// (PortTaken) it tries again, up to Attempts times. Any other failure, or
// the last, fails the test with the server's redacted output. When the test
// ends the server is stopped, the test fails if the server had exited
// without Process.Stop, and the output is logged if the test failed.
func (h Harness) Start(t testing.TB, bin string, prepare func() (Attempt, error)) *Process {
	t.Helper()
	attempts := orDefault(h.Attempts, DefaultAttempts)
	for attempt := 1; ; attempt++ {
		p, err := h.launch(t, prepare)
		if err == nil {
			t.Cleanup(func() { h.cleanup(t, p) })
			return p
		}
		if errors.Is(err, errPortTaken) && attempt < attempts {
			continue
		}
		t.Fatalf("%s: start %s: %v\n%s output:\n%s", h.Package, bin, err, h.Command, h.redact(p.Output()))
	}
}

// launch makes one attempt. On error the process has exited, and the
// returned process still holds its output.
func (h Harness) launch(t testing.TB, prepare func() (Attempt, error)) (*Process, error) {
	p := &Process{
		out:   &syncBuffer{},
		done:  make(chan struct{}),
		grace: orDefault(h.StopGrace, DefaultStopGrace),
	}
	a, err := prepare()
	if err != nil {
		return p, err
	}
	p.cmd = a.Cmd
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		return p, err
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()

	ctx, cancel := context.WithTimeout(t.Context(), orDefault(h.ReadyTimeout, DefaultReadyTimeout))
	defer cancel()
	ready := a.Ready
	if a.ReadyOutput != "" {
		ready = func(ctx context.Context) error {
			if err := a.Ready(ctx); err != nil {
				return err
			}
			if !strings.Contains(p.Output(), a.ReadyOutput) {
				return fmt.Errorf("serving, but has not yet written %q", a.ReadyOutput)
			}
			return nil
		}
	}
	if err := h.waitReady(ctx, p, ready); err != nil {
		p.stop()
		if h.PortTaken != "" && strings.Contains(p.Output(), h.PortTaken) {
			return p, fmt.Errorf("%w: %v", errPortTaken, err)
		}
		return p, err
	}
	return p, nil
}

// waitReady polls ready, with a short backoff, until it succeeds, the
// process exits, or ctx ends.
func (h Harness) waitReady(ctx context.Context, p *Process, ready func(context.Context) error) error {
	// A probe must not outlive the process: until the server binds its
	// port, another listener there may accept and never answer.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-p.done:
			cancel()
		case <-ctx.Done():
		}
	}()
	exited := func() error { return fmt.Errorf("%s exited before it was ready: %v", h.Command, p.err) }
	probeTimeout := orDefault(h.ProbeTimeout, DefaultProbeTimeout)
	retry := backoff.Policy{Min: 10 * time.Millisecond, Max: 250 * time.Millisecond}
	for attempt := 1; ; attempt++ {
		last := probe(ctx, probeTimeout, ready)
		if last == nil {
			return nil
		}
		timer := time.NewTimer(retry.Delay(attempt))
		select {
		case <-p.done:
			timer.Stop()
			return exited()
		case <-ctx.Done():
			timer.Stop()
			select {
			case <-p.done:
				return exited()
			default:
			}
			return fmt.Errorf("%s not ready after %s: %w", h.Command, orDefault(h.ReadyTimeout, DefaultReadyTimeout), last)
		case <-timer.C:
		}
	}
}

// probe calls ready with its own timeout.
func probe(ctx context.Context, timeout time.Duration, ready func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return ready(ctx)
}

// cleanup stops the server at the end of the test, failing the test if the
// server exited on its own, and logs its output if the test failed.
func (h Harness) cleanup(t testing.TB, p *Process) {
	p.mu.Lock()
	stopped := p.stopped
	p.mu.Unlock()
	select {
	case <-p.done:
		if !stopped {
			t.Errorf("%s: %s exited during the test: %v", h.Package, h.Command, p.err)
		}
	default:
		p.stop()
	}
	if t.Failed() {
		t.Logf("%s: %s output:\n%s", h.Package, h.Command, h.redact(p.Output()))
	}
}

// Process is one running server started by Harness.Start.
type Process struct {
	cmd   *exec.Cmd
	out   *syncBuffer
	grace time.Duration
	done  chan struct{} // closed when the process has exited
	err   error         // cmd.Wait's result, set before done is closed

	mu      sync.Mutex
	stopped bool // Stop was called: exiting is expected, not a failure
}

// Output returns everything the server has written to stdout and stderr so
// far, unredacted: it may hold secrets, so never log it as it is.
func (p *Process) Output() string { return p.out.String() }

// Stop stops the server now, with SIGTERM and, after the harness's
// StopGrace, SIGKILL, and returns once it has exited. The end of the test
// then does not count the exit as a failure.
func (p *Process) Stop() {
	p.mu.Lock()
	p.stopped = true
	p.mu.Unlock()
	p.stop()
}

// Kill ends the server now with SIGKILL, as a crash would, and returns once
// it has exited. Like Stop, the end of the test then does not count the exit
// as a failure. Crash tests use it; everything else should Stop.
func (p *Process) Kill() {
	p.mu.Lock()
	p.stopped = true
	p.mu.Unlock()
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Kill()
	<-p.done
}

// Exited is closed when the server's process has exited, for whatever reason.
func (p *Process) Exited() <-chan struct{} { return p.done }

// stop ends the process: SIGTERM, then SIGKILL after the grace period. It
// returns once the process has exited.
func (p *Process) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	timer := time.NewTimer(p.grace)
	defer timer.Stop()
	select {
	case <-p.done:
	case <-timer.C:
		_ = p.cmd.Process.Kill()
		<-p.done
	}
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
