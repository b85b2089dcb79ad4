package statetest

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/credbroker/credbroker/attest/jointoken"
	"github.com/credbroker/credbroker/broker/state"
)

// testReopen: everything committed is there after the store is released
// and opened again on the same directory.
func testReopen(t *testing.T, h Harness) {
	dir := t.TempDir()
	key, tok := newToken("reopen", "worker-1", 0, time.Hour)
	n := node(t, "team-a/alpha", "worker-1")
	rev := revocation("r1", state.RevokeCluster, revTarget, 0)
	rev.Until = epoch.Add(time.Hour)
	lifted := revocation("r2", state.RevokeIdentity, aliceID, 0)
	t.Run("write", func(t *testing.T) {
		s := h.Open(t, dir)
		mustSpend(t, s, epoch, charge(alice, 3, time.Hour), charge(cluster, 3, time.Hour))
		mustSpend(t, s, epoch, charge(alice, 3, time.Hour))
		mustCreate(t, s, key, tok)
		if _, err := s.RegisterNode(ctx, epoch, n); err != nil {
			t.Fatal(err)
		}
		if _, err := s.EvictNode(ctx, epoch, n.SPIFFEID); err != nil {
			t.Fatal(err)
		}
		mustRevoke(t, s, rev)
		mustRevoke(t, s, lifted)
		if _, err := s.LiftRevocation(ctx, lifted.ID); err != nil {
			t.Fatal(err)
		}
		mustRequest(t, s, pending("a1", "d1", 2, 0), 8, epoch, true)
		mustApprove(t, s, "a1", admin1, epoch, true)
	})
	s := h.Open(t, dir)
	wantUsed(t, s, epoch, alice, 2)
	wantUsed(t, s, epoch, cluster, 1)
	mustSpend(t, s, epoch, charge(alice, 3, time.Hour))
	_, err := s.Spend(ctx, epoch, []state.Charge{charge(alice, 3, time.Hour)})
	exhausted(t, err, alice, time.Hour)
	if _, err := s.ConsumeJoinToken(ctx, key, "worker-1", epoch); err != nil {
		t.Fatalf("token created before reopening: %v", err)
	}
	if got, err := s.GetNode(ctx, n.SPIFFEID); err != nil || !got.Evicted() {
		t.Fatalf("node after reopening: %+v, %v; want it evicted", got, err)
	}
	wantRevocations(t, s, rev)
	// An approval keeps its vote and its place in the requester's index.
	wantFound(t, s, "d1", epoch, "a1")
	mustApprove(t, s, "a1", admin1, epoch, false)
	if a := mustApprove(t, s, "a1", admin2, epoch, true); a.Status != state.ApprovalGranted {
		t.Fatalf("approval after reopening: %+v; want granted by its second admin", a)
	}
}

// The crash test runs a child process (this test binary, re-run with the
// current test's name) that spends from several goroutines and reports each
// spend on stdout only after Spend returned, then kills it with SIGKILL
// mid-stream. What the child reported was committed, so after reopening the
// store must show every reported unit, and no more than were attempted. A
// process kill is the failure the broker meets in practice (OOM killer,
// node drain gone wrong); it leaves the file exactly as the kernel has it,
// including a commit cut off halfway.
const (
	crashEnv        = "CREDBROKER_STATETEST_CRASH_DIR"
	crashWorkers    = 8
	crashKillAfter  = 150
	crashMaxPerWork = 100_000 // the child stops on its own if nobody kills it
	crashLine       = "statetest: spent"
	crashReady      = "statetest: ready"
)

var crashCharge = charge(state.QuotaKey{Kind: state.QuotaCluster, Name: "crash/test"}, 1<<30, time.Hour)

func crashChildDir() (string, bool) { return os.LookupEnv(crashEnv) }

// crashChild is the child's side: a consumed token and an evicted node
// first, then spends until killed.
func crashChild(t *testing.T, h Harness, dir string) {
	s := h.Open(t, dir)
	key, tok := newToken("crash", "", 0, time.Hour)
	mustCreate(t, s, key, tok)
	if _, err := s.ConsumeJoinToken(ctx, key, "worker-1", epoch); err != nil {
		t.Fatal(err)
	}
	n := node(t, "crash/test", "worker-1")
	if _, err := s.RegisterNode(ctx, epoch, n); err != nil {
		t.Fatal(err)
	}
	if _, err := s.EvictNode(ctx, epoch, n.SPIFFEID); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	say := func(line string) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintln(os.Stdout, line)
	}
	say(crashReady)
	var wg sync.WaitGroup
	for range crashWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range crashMaxPerWork {
				if _, err := s.Spend(ctx, epoch, []state.Charge{crashCharge}); err != nil {
					say("statetest: error: " + err.Error())
					return
				}
				say(crashLine)
			}
		}()
	}
	wg.Wait()
}

func testCrash(t *testing.T, h Harness) {
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run="+runPattern(t.Name()), "-test.count=1", "-test.timeout=5m")
	cmd.Env = append(os.Environ(), crashEnv+"="+dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	killed := false
	defer func() {
		if !killed {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	}()
	ready, reported := false, 0
	sc := bufio.NewScanner(out)
	for reported < crashKillAfter && sc.Scan() {
		switch line := sc.Text(); {
		case line == crashReady:
			ready = true
		case line == crashLine:
			reported++
		case strings.HasPrefix(line, "statetest: error"):
			t.Fatalf("child: %s", line)
		}
	}
	if reported < crashKillAfter {
		_ = cmd.Wait()
		killed = true
		t.Fatalf("child stopped after %d spends (ready %v): %v\n%s", reported, ready, sc.Err(), stderr.String())
	}
	if err := cmd.Process.Signal(os.Kill); err != nil {
		t.Fatal(err)
	}
	// Spends the child completed between the kill being sent and landing
	// are read too: each of them was reported only after it committed.
	for sc.Scan() {
		if sc.Text() == crashLine {
			reported++
		}
	}
	werr := cmd.Wait()
	killed = true
	var exit *exec.ExitError
	if !errors.As(werr, &exit) || exit.ExitCode() != -1 {
		t.Fatalf("child was not killed by the signal: %v\n%s", werr, stderr.String())
	}

	s := h.Open(t, dir)
	u := usage(t, s, epoch, crashCharge.Key)
	// Each worker had at most one spend in flight when it was killed.
	if u.Used < reported || u.Used > reported+crashWorkers {
		t.Fatalf("after SIGKILL the store holds %d spends; the child reported %d committed (and had at most %d in flight)", u.Used, reported, crashWorkers)
	}
	t.Logf("child reported %d committed spends before SIGKILL; %d survived", reported, u.Used)
	key, _ := newToken("crash", "", 0, time.Hour)
	if _, err := s.ConsumeJoinToken(ctx, key, "worker-1", epoch); !errors.Is(err, jointoken.ErrUsed) {
		t.Fatalf("token consumed before the crash: err = %v, want ErrUsed", err)
	}
	if n, err := s.GetNode(ctx, node(t, "crash/test", "worker-1").SPIFFEID); err != nil || !n.Evicted() {
		t.Fatalf("node evicted before the crash: %+v, %v", n, err)
	}
	// The store still works after the crash.
	mustSpend(t, s, epoch, crashCharge)
}

// runPattern turns a test name into a -test.run pattern that matches it
// exactly, level by level.
func runPattern(name string) string {
	parts := strings.Split(name, "/")
	for i, p := range parts {
		parts[i] = "^" + regexp.QuoteMeta(p) + "$"
	}
	return strings.Join(parts, "/")
}
