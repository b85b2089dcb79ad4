// Package statetest is the conformance suite of the state seam: every
// implementation of state.Store runs Run from a test of its own and passes
// it unchanged. The suite checks the contracts the broker relies on:
// all-or-nothing quota spends that are never over-spent however many
// goroutines race, expiry of windows and tokens by the time passed in (no
// sleeping), join tokens consumed exactly once and never burnt by a wrong
// attempt, the node registry, and that committed state survives reopening,
// including after the process holding the store is killed with SIGKILL;
// and revocations: made, lifted and expired by the time passed in, seen by
// an in-memory index before each change returns, under concurrency; and
// two-person approvals: found again by an identical request, bounded per
// requester, distinct admins counted exactly (never the requester) under
// concurrency, consumed at most once, denied and expired by the time passed
// in; upstream budgets: token buckets that grant exactly what their rate
// and burst allow, however many goroutines (and replicas) take at once;
// and the replicas' published public signing keys.
package statetest

import (
	"context"
	"testing"
	"time"

	"github.com/credbroker/credbroker/broker/state"
)

// Harness tells the suite how to reach the implementation under test.
type Harness struct {
	// Open returns the store kept in dir (empty when dir is new). The suite
	// calls it again with the same dir to see what survived: after the
	// previous store was released by the cleanups of the subtest that
	// opened it, and in a child process that is then killed with SIGKILL
	// (the crash test). Open registers whatever must be closed with
	// t.Cleanup. A harness whose state lives elsewhere than dir (a server)
	// keeps in dir what it needs to find it again, also from a child
	// process.
	Open func(t testing.TB, dir string) state.Store
	// Replicas, when set, opens n more stores over the state that Open
	// keeps in dir, as n more replicas of one fleet would (each with its
	// own connection, to another server where there are several). The race
	// tests then spread their goroutines over all of them, so that they
	// race across replicas as well as within one. Nil for a store that
	// only one process opens at a time.
	Replicas func(t testing.TB, dir string, n int) []state.Store
}

// epoch is the suite's clock origin; the suite passes every time in.
var epoch = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// Run runs the conformance suite against h, as subtests of t. A test that
// calls it must do nothing else: the crash test re-runs the test binary
// with the current test's name to start its child process.
func Run(t *testing.T, h Harness) {
	if dir, ok := crashChildDir(); ok {
		// In the crash test's child: only the crash subtest runs.
		t.Run("crash", func(t *testing.T) { crashChild(t, h, dir) })
		return
	}
	t.Run("quota", func(t *testing.T) { testQuota(t, h) })
	t.Run("quota-all-or-nothing", func(t *testing.T) { testQuotaAtomic(t, h) })
	t.Run("quota-concurrent", func(t *testing.T) { testQuotaConcurrent(t, h) })
	t.Run("quota-refund", func(t *testing.T) { testQuotaRefund(t, h) })
	t.Run("quota-reset-purge", func(t *testing.T) { testQuotaResetPurge(t, h) })
	t.Run("quota-invalid", func(t *testing.T) { testQuotaInvalid(t, h) })
	t.Run("jointoken", func(t *testing.T) { testJoinToken(t, h) })
	t.Run("jointoken-binding", func(t *testing.T) { testJoinTokenBinding(t, h) })
	t.Run("jointoken-concurrent", func(t *testing.T) { testJoinTokenConcurrent(t, h) })
	t.Run("jointoken-purge", func(t *testing.T) { testJoinTokenPurge(t, h) })
	t.Run("nodes", func(t *testing.T) { testNodes(t, h) })
	t.Run("nodes-list", func(t *testing.T) { testNodesList(t, h) })
	t.Run("jointoken-void", func(t *testing.T) { testVoidJoinTokens(t, h) })
	t.Run("nodes-purge", func(t *testing.T) { testNodesPurge(t, h) })
	t.Run("clusters", func(t *testing.T) { testClusters(t, h) })
	t.Run("revocations", func(t *testing.T) { testRevocations(t, h) })
	t.Run("revocations-expiry", func(t *testing.T) { testRevocationsExpiry(t, h) })
	t.Run("revocations-index", func(t *testing.T) { testRevocationIndex(t, h) })
	t.Run("revocations-concurrent", func(t *testing.T) { testRevocationsConcurrent(t, h) })
	t.Run("approvals", func(t *testing.T) { testApprovals(t, h) })
	t.Run("approvals-deny-expire", func(t *testing.T) { testApprovalsDenyExpire(t, h) })
	t.Run("approvals-bound", func(t *testing.T) { testApprovalsBound(t, h) })
	t.Run("approvals-concurrent", func(t *testing.T) { testApprovalsConcurrent(t, h) })
	t.Run("approvals-total", func(t *testing.T) { testApprovalsTotal(t, h) })
	t.Run("approvals-total-concurrent", func(t *testing.T) { testApprovalsTotalConcurrent(t, h) })
	t.Run("budget", func(t *testing.T) { testBudget(t, h) })
	t.Run("budget-concurrent", func(t *testing.T) { testBudgetConcurrent(t, h) })
	t.Run("signing-keys", func(t *testing.T) { testSigningKeys(t, h) })
	t.Run("reopen", func(t *testing.T) { testReopen(t, h) })
	t.Run("crash", func(t *testing.T) { testCrash(t, h) })
}

// RunRaces runs only the suite's races (quota spends, join token consumes,
// approval votes, consumptions and requests), as subtests of t: for a
// second deployment of a store, such as a cluster of servers behind
// Replicas, where the rest of the suite would prove nothing new.
func RunRaces(t *testing.T, h Harness) {
	t.Run("quota-concurrent", func(t *testing.T) { testQuotaConcurrent(t, h) })
	t.Run("jointoken-concurrent", func(t *testing.T) { testJoinTokenConcurrent(t, h) })
	t.Run("approvals-concurrent", func(t *testing.T) { testApprovalsConcurrent(t, h) })
	t.Run("approvals-total-concurrent", func(t *testing.T) { testApprovalsTotalConcurrent(t, h) })
	t.Run("budget-concurrent", func(t *testing.T) { testBudgetConcurrent(t, h) })
}

// racers opens a fresh store in a new directory and returns it with the
// replicas the harness opens beside it (none without Replicas).
func racers(t *testing.T, h Harness) []state.Store {
	t.Helper()
	dir := t.TempDir()
	stores := []state.Store{h.Open(t, dir)}
	if h.Replicas != nil {
		stores = append(stores, h.Replicas(t, dir, 2)...)
	}
	return stores
}

// open opens a fresh store in a new directory.
func open(t *testing.T, h Harness) state.Store {
	t.Helper()
	return h.Open(t, t.TempDir())
}

var ctx = context.Background()
