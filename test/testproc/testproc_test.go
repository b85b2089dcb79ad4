package testproc

import (
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

const secret = "s3cr3t-value"

// helperHarness describes the helper server, redacting its secret.
func helperHarness() Harness {
	return Harness{
		Package:   "testproctest",
		Server:    "Helper",
		Command:   "helper",
		EnvBinary: "TESTPROC_TEST_BINARY",
		PortTaken: "address already in use",
		Redact:    func(out string) string { return strings.ReplaceAll(out, secret, "REDACTED") },
	}
}

// helperAttempt prepares the helper in mode on addr, probing GET /ready.
func helperAttempt(mode, addr string) Attempt {
	cmd := exec.Command(os.Args[0])
	cmd.Env = Environ([]string{"TESTPROC_"}, envMode+"="+mode, envAddr+"="+addr, envSecret+"="+secret)
	return Attempt{Cmd: cmd, Ready: func(ctx context.Context) error { return get(ctx, addr, "/ready") }}
}

// get fails unless GET http://addr/path answers 200.
func get(ctx context.Context, addr, path string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+path, nil)
	if err != nil {
		return err
	}
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return errors.New(resp.Status)
	}
	return nil
}

// freePort returns one free loopback address.
func freePort(t testing.TB) string {
	t.Helper()
	addrs, err := FreePorts(1)
	if err != nil {
		t.Fatal(err)
	}
	return addrs[0]
}

// takenPort returns an address that a listener holds until the test ends.
func takenPort(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l.Addr().String()
}

func isConnRefused(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

func TestBinaryPrefersEnvThenPATHAndFailsSayingHowToGetIt(t *testing.T) {
	h := helperHarness()
	dir := t.TempDir()
	onPath := filepath.Join(dir, "helper")
	if err := os.WriteFile(onPath, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	explicit := filepath.Join(t.TempDir(), "my-helper")
	if err := os.WriteFile(explicit, nil, 0o600); err != nil {
		t.Fatal(err)
	}

	t.Run("env set", func(t *testing.T) {
		t.Setenv(h.EnvBinary, explicit)
		t.Setenv("PATH", dir)
		if got := h.Binary(t); got != explicit {
			t.Errorf("Binary = %q, want %q from %s", got, explicit, h.EnvBinary)
		}
	})
	t.Run("on PATH", func(t *testing.T) {
		t.Setenv(h.EnvBinary, "")
		t.Setenv("PATH", dir)
		if got := h.Binary(t); got != onPath {
			t.Errorf("Binary = %q, want %q from PATH", got, onPath)
		}
	})
	t.Run("missing", func(t *testing.T) {
		CheckFailsWithoutBinary(t, h.EnvBinary, func(tb testing.TB) { h.Binary(tb) },
			"testproctest: ", "make helper", "Helper server binary")
	})
}

func TestStartWaitsForReadyOutput(t *testing.T) {
	for _, want := range []string{"", "setup done"} {
		addr := freePort(t)
		var out string
		r := RunFatal(t, func(tb testing.TB) {
			p := helperHarness().Start(tb, "helper-bin", func() (Attempt, error) {
				a := helperAttempt("late", addr)
				a.ReadyOutput = want
				return a, nil
			})
			out = p.Output()
		})
		if r.Failed() {
			t.Fatalf("Start(ReadyOutput %q) failed: %q %q", want, r.FatalMessage(), r.Errors())
		}
		// Without ReadyOutput the first answer to the probe is enough, so the
		// check below would fail if Start ignored it.
		if got := strings.Contains(out, "setup done"); got != (want != "") {
			t.Errorf("ReadyOutput %q: output at return %q; holds \"setup done\" = %v", want, out, got)
		}
	}
}

func TestStartReturnsOnceReadyAndStopsTheServerWhenTheTestEnds(t *testing.T) {
	addr := freePort(t)
	var p *Process
	r := RunFatal(t, func(tb testing.TB) {
		p = helperHarness().Start(tb, "helper-bin", func() (Attempt, error) { return helperAttempt("serve", addr), nil })
		if err := get(t.Context(), addr, "/ready"); err != nil {
			tb.Errorf("GET /ready after Start: %v", err)
		}
		if !strings.Contains(p.Output(), "secret="+secret) {
			tb.Errorf("Output %q lacks the helper's banner", p.Output())
		}
	})
	if r.Failed() {
		t.Fatalf("Start failed: %q %q", r.FatalMessage(), r.Errors())
	}
	select {
	case <-p.done:
	default:
		t.Fatal("the server still runs after the test's cleanups")
	}
	if err := get(t.Context(), addr, "/ready"); !isConnRefused(err) {
		t.Errorf("GET /ready after the cleanups: %v, want connection refused", err)
	}
	if len(r.Logs()) != 0 {
		t.Errorf("a passing test logged the server output: %q", r.Logs())
	}
}

func TestStartTriesAgainWhenAPortWasTaken(t *testing.T) {
	taken, free := takenPort(t), freePort(t)
	var picks []string
	r := RunFatal(t, func(tb testing.TB) {
		helperHarness().Start(tb, "helper-bin", func() (Attempt, error) {
			addr := free
			if len(picks) == 0 {
				addr = taken // as if another process bound it after the pick
			}
			picks = append(picks, addr)
			return helperAttempt("serve", addr), nil
		})
	})
	if r.Failed() {
		t.Fatalf("Start failed: %q %q", r.FatalMessage(), r.Errors())
	}
	if !slices.Equal(picks, []string{taken, free}) {
		t.Errorf("attempts on %v, want the taken port then the free one", picks)
	}
}

func TestStartGivesUpAfterAttemptsWithRedactedOutput(t *testing.T) {
	taken := takenPort(t)
	attempts := 0
	r := RunFatal(t, func(tb testing.TB) {
		helperHarness().Start(tb, "helper-bin", func() (Attempt, error) {
			attempts++
			return helperAttempt("serve", taken), nil
		})
	})
	if attempts != DefaultAttempts {
		t.Errorf("%d attempts, want %d", attempts, DefaultAttempts)
	}
	msg := r.FatalMessage()
	for _, want := range []string{"testproctest: start helper-bin: ", "address already in use", "helper output:\n", "secret=REDACTED"} {
		if !strings.Contains(msg, want) {
			t.Errorf("Start failed with %q, want it to hold %q", msg, want)
		}
	}
	if strings.Contains(msg, secret) {
		t.Errorf("failure message holds the secret: %q", msg)
	}
}

func TestStartFailsAtOnceWhenTheServerExits(t *testing.T) {
	attempts := 0
	r := RunFatal(t, func(tb testing.TB) {
		helperHarness().Start(tb, "helper-bin", func() (Attempt, error) {
			attempts++
			return helperAttempt("fail", freePort(t)), nil
		})
	})
	if attempts != 1 {
		t.Errorf("%d attempts, want 1: only a taken port is worth another", attempts)
	}
	msg := r.FatalMessage()
	for _, want := range []string{"helper exited before it was ready: exit status 2", "helper: giving up", "secret=REDACTED"} {
		if !strings.Contains(msg, want) {
			t.Errorf("Start failed with %q, want it to hold %q", msg, want)
		}
	}
}

func TestStartFailsWhenPrepareFails(t *testing.T) {
	r := RunFatal(t, func(tb testing.TB) {
		helperHarness().Start(tb, "helper-bin", func() (Attempt, error) { return Attempt{}, errors.New("no ports today") })
	})
	if want := "testproctest: start helper-bin: no ports today\nhelper output:\n"; r.FatalMessage() != want {
		t.Errorf("Start failed with %q, want %q", r.FatalMessage(), want)
	}
}

func TestStartFailsAndKillsAServerThatIsNeverReady(t *testing.T) {
	h := helperHarness()
	h.ReadyTimeout = 300 * time.Millisecond
	var cmd *exec.Cmd
	r := RunFatal(t, func(tb testing.TB) {
		h.Start(tb, "helper-bin", func() (Attempt, error) {
			a := helperAttempt("hang", freePort(t))
			cmd = a.Cmd
			return a, nil
		})
	})
	msg := r.FatalMessage()
	if !strings.Contains(msg, "helper not ready after 300ms: ") || !strings.Contains(msg, "secret=REDACTED") {
		t.Errorf("Start failed with %q, want not ready after 300ms, with the redacted output", msg)
	}
	if cmd.ProcessState == nil {
		t.Error("the server that never got ready was not waited for")
	}
}

func TestProbeIsCancelledWhenTheServerExits(t *testing.T) {
	h := helperHarness()
	h.ReadyTimeout, h.ProbeTimeout = time.Hour, time.Hour
	probeErr := make(chan error, 1)
	done := make(chan *Recorder, 1)
	go func() {
		done <- RunFatal(t, func(tb testing.TB) {
			h.Start(tb, "helper-bin", func() (Attempt, error) {
				a := helperAttempt("fail", freePort(t))
				a.Ready = func(ctx context.Context) error {
					<-ctx.Done() // like a probe stuck on another listener
					probeErr <- ctx.Err()
					return ctx.Err()
				}
				return a, nil
			})
		})
	}()
	watchdog := time.NewTimer(time.Minute)
	defer watchdog.Stop()
	select {
	case r := <-done:
		if !strings.Contains(r.FatalMessage(), "helper exited before it was ready") {
			t.Errorf("Start failed with %q, want the exit", r.FatalMessage())
		}
		if err := <-probeErr; !errors.Is(err, context.Canceled) {
			t.Errorf("probe ended with %v, want context.Canceled", err)
		}
	case <-watchdog.C:
		t.Fatal("a probe blocked on its context outlived the exited server")
	}
}

func TestStopSendsSIGTERMThenKills(t *testing.T) {
	h := helperHarness()
	h.StopGrace = 200 * time.Millisecond
	addr := freePort(t)
	r := RunFatal(t, func(tb testing.TB) {
		p := h.Start(tb, "helper-bin", func() (Attempt, error) { return helperAttempt("stubborn", addr), nil })
		p.Stop()
		if !strings.Contains(p.Output(), "got SIGTERM") {
			tb.Errorf("output %q: the server was not sent SIGTERM first", p.Output())
		}
		if err := get(t.Context(), addr, "/ready"); !isConnRefused(err) {
			tb.Errorf("GET /ready after Stop: %v, want connection refused", err)
		}
	})
	if r.Failed() {
		t.Fatalf("failed: %q %q; a deliberate Stop must not fail the test", r.FatalMessage(), r.Errors())
	}
}

func TestKillEndsTheServerWithoutSIGTERMAndWithoutFailingTheTest(t *testing.T) {
	addr := freePort(t)
	r := RunFatal(t, func(tb testing.TB) {
		// The stubborn helper survives SIGTERM: only a real SIGKILL ends it
		// at once, and Kill returns only once it has.
		p := helperHarness().Start(tb, "helper-bin", func() (Attempt, error) { return helperAttempt("stubborn", addr), nil })
		p.Kill()
		select {
		case <-p.Exited():
		default:
			tb.Errorf("Kill returned before the server exited")
		}
		if strings.Contains(p.Output(), "got SIGTERM") {
			tb.Errorf("output %q: Kill sent SIGTERM", p.Output())
		}
		if err := get(t.Context(), addr, "/ready"); !isConnRefused(err) {
			tb.Errorf("GET /ready after Kill: %v, want connection refused", err)
		}
		p.Kill() // a second Kill of an exited server returns at once
	})
	if r.Failed() {
		t.Fatalf("failed: %q %q; a deliberate Kill must not fail the test", r.FatalMessage(), r.Errors())
	}
}

func TestCleanupFailsTheTestWhenTheServerExitedOnItsOwn(t *testing.T) {
	addr := freePort(t)
	r := RunFatal(t, func(tb testing.TB) {
		p := helperHarness().Start(tb, "helper-bin", func() (Attempt, error) { return helperAttempt("serve", addr), nil })
		_ = get(t.Context(), addr, "/exit") // the server dies mid-request
		<-p.done
	})
	if errs := r.Errors(); len(errs) != 1 || errs[0] != "testproctest: helper exited during the test: exit status 3" {
		t.Errorf("errors %q, want one saying the server exited", errs)
	}
	logs := strings.Join(r.Logs(), "\n")
	if !strings.Contains(logs, "testproctest: helper output:\n") || !strings.Contains(logs, "secret=REDACTED") {
		t.Errorf("the failed test logged %q, want the redacted server output", logs)
	}
	if strings.Contains(logs, secret) {
		t.Errorf("the log holds the secret: %q", logs)
	}
}

func TestFreePortsAreDistinctAndBindable(t *testing.T) {
	addrs, err := FreePorts(3)
	if err != nil {
		t.Fatal(err)
	}
	if len(addrs) != 3 || addrs[0] == addrs[1] || addrs[1] == addrs[2] || addrs[0] == addrs[2] {
		t.Fatalf("FreePorts(3) = %v, want three distinct addresses", addrs)
	}
	for _, a := range addrs {
		if !strings.HasPrefix(a, "127.0.0.1:") {
			t.Errorf("%s is not a loopback address", a)
		}
		l, err := net.Listen("tcp", a)
		if err != nil {
			t.Errorf("%s is not free: %v", a, err)
			continue
		}
		l.Close()
	}
}

func TestEnvironDropsPrefixesAndAppends(t *testing.T) {
	t.Setenv("TESTPROC_DROPPED", "x")
	t.Setenv("HOME", "/home/someone")
	t.Setenv("TESTPROC_KEPT_ELSEWHERE", "y")
	env := Environ([]string{"TESTPROC_DROP", "HOME="}, "HOME=/private", "A=b")
	for _, kv := range env {
		if strings.HasPrefix(kv, "TESTPROC_DROPPED=") || kv == "HOME=/home/someone" {
			t.Errorf("Environ kept %q", kv)
		}
	}
	if !slices.Contains(env, "TESTPROC_KEPT_ELSEWHERE=y") {
		t.Error("Environ dropped a variable no prefix matches")
	}
	if n := len(env); n < 2 || env[n-2] != "HOME=/private" || env[n-1] != "A=b" {
		t.Errorf("Environ ends %q, want the added variables last", env[max(0, len(env)-2):])
	}
}

func TestRunFatalRecordsSkipsAndRunsCleanupsLastFirst(t *testing.T) {
	var order []int
	r := RunFatal(t, func(tb testing.TB) {
		tb.Cleanup(func() { order = append(order, 1) })
		tb.Cleanup(func() { order = append(order, 2) })
		tb.Skip("no")
	})
	if !r.Skipped() || r.Failed() {
		t.Errorf("Skipped %v, Failed %v; want a skip and no failure", r.Skipped(), r.Failed())
	}
	if !slices.Equal(order, []int{2, 1}) {
		t.Errorf("cleanups ran in order %v, want [2 1]", order)
	}
}
