package testproc

import (
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
)

// Recorder is the testing.TB that RunFatal hands to the code under test. It
// records Fatal, Error, Log and Skip calls instead of failing or skipping
// the test, and runs the cleanups registered on it when RunFatal returns.
// Other methods (TempDir, Context, Setenv, ...) are the wrapped test's.
type Recorder struct {
	testing.TB

	mu       sync.Mutex
	fatal    string
	errors   []string
	logs     []string
	skipped  bool
	cleanups []func()
}

// RunFatal runs f on its own goroutine with a Recorder wrapping t, then the
// cleanups f registered, and returns the Recorder. It proves that a harness
// fails a test, and with what message, rather than skipping it.
func RunFatal(t testing.TB, f func(testing.TB)) *Recorder {
	r := &Recorder{TB: t}
	run := func(f func()) {
		done := make(chan struct{})
		go func() {
			defer close(done)
			f()
		}()
		<-done
	}
	run(func() { f(r) })
	for {
		r.mu.Lock()
		n := len(r.cleanups)
		if n == 0 {
			r.mu.Unlock()
			return r
		}
		c := r.cleanups[n-1]
		r.cleanups = r.cleanups[:n-1]
		r.mu.Unlock()
		run(c)
	}
}

// FatalMessage returns the message of the first Fatal or Fatalf call, or ""
// if there was none.
func (r *Recorder) FatalMessage() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.fatal
}

// Errors returns the messages of the Error and Errorf calls.
func (r *Recorder) Errors() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.errors...)
}

// Skipped reports whether the code under test tried to skip the test.
func (r *Recorder) Skipped() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.skipped
}

// Logs returns the messages of the Log and Logf calls, which also go to the
// wrapped test's log.
func (r *Recorder) Logs() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.logs...)
}

// Logf records a message and logs it to the wrapped test.
func (r *Recorder) Logf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	r.mu.Lock()
	r.logs = append(r.logs, msg)
	r.mu.Unlock()
	r.TB.Log(msg)
}

// Log is Logf with Sprint's formatting.
func (r *Recorder) Log(args ...any) { r.Logf("%s", fmt.Sprint(args...)) }

// Helper does nothing: the recorder's callers are not the test's.
func (r *Recorder) Helper() {}

// Cleanup registers f to run, last registered first, before RunFatal
// returns.
func (r *Recorder) Cleanup(f func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cleanups = append(r.cleanups, f)
}

// Failed reports whether Fatal or Error was called.
func (r *Recorder) Failed() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.fatal != "" || len(r.errors) > 0
}

// Errorf records a failure and lets the code under test go on.
func (r *Recorder) Errorf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errors = append(r.errors, fmt.Sprintf(format, args...))
}

// Error is Errorf with Sprint's formatting.
func (r *Recorder) Error(args ...any) { r.Errorf("%s", fmt.Sprint(args...)) }

// Fatalf records a failure and ends the calling goroutine, as the real one
// does.
func (r *Recorder) Fatalf(format string, args ...any) {
	r.mu.Lock()
	if r.fatal == "" {
		r.fatal = fmt.Sprintf(format, args...)
	}
	r.mu.Unlock()
	runtime.Goexit()
}

// Fatal is Fatalf with Sprint's formatting.
func (r *Recorder) Fatal(args ...any) { r.Fatalf("%s", fmt.Sprint(args...)) }

// FailNow ends the calling goroutine as a failure.
func (r *Recorder) FailNow() { r.Fatalf("FailNow") }

// Skip records an attempt to skip and ends the calling goroutine.
func (r *Recorder) Skip(...any) { r.SkipNow() }

// Skipf records an attempt to skip and ends the calling goroutine.
func (r *Recorder) Skipf(string, ...any) { r.SkipNow() }

// SkipNow records an attempt to skip and ends the calling goroutine.
func (r *Recorder) SkipNow() {
	r.mu.Lock()
	r.skipped = true
	r.mu.Unlock()
	runtime.Goexit()
}

// Fail records a failure without a message and lets the code go on.
func (r *Recorder) Fail() { r.Errorf("Fail") }

// CheckFailsWithoutBinary checks that start fails, and does not skip, the
// test when the binary is missing, both with envBinary unset and nothing on
// PATH and with envBinary naming a missing file, and that the failure
// message names envBinary and each of wants (such as "make minio").
func CheckFailsWithoutBinary(t *testing.T, envBinary string, start func(testing.TB), wants ...string) {
	t.Helper()
	for name, env := range map[string]string{
		"unset, not on PATH":    "",
		"set to a missing file": t.TempDir() + "/no-such-binary",
	} {
		t.Run(name, func(t *testing.T) {
			t.Setenv(envBinary, env)
			t.Setenv("PATH", t.TempDir())
			r := RunFatal(t, start)
			if r.Skipped() {
				t.Fatal("start skipped the test; a missing binary must fail it")
			}
			for _, want := range append([]string{envBinary}, wants...) {
				if !strings.Contains(r.FatalMessage(), want) {
					t.Errorf("start failed with %q, want a message mentioning %q", r.FatalMessage(), want)
				}
			}
		})
	}
}
