package daemon

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"go.etcd.io/bbolt"
)

// readinessInterval is how often the broker re-checks what its health
// status says. Each check commits one empty bbolt transaction (an fsync),
// so probes, however frequent, cost no disk writes of their own.
const readinessInterval = 5 * time.Second

// servingStatus is what the health service reports (broker.Health).
type servingStatus interface{ SetServing(bool) }

// readiness decides whether the broker is SERVING: its state store is open
// (it is, once Run has built it) and, when shared (etcd), current; the audit
// log can be written, and its own SVID is present and unexpired. Anything
// else is NOT_SERVING: a broker that cannot audit issues nothing, so a load
// balancer should send its callers elsewhere.
//
// Its methods are called from one goroutine at a time.
type readiness struct {
	svid       x509svid.Source
	probeAudit func() error
	// probeState, when set, fails while the shared state cannot be relied
	// on (state.etcd: revocations not confirmed current). It reads memory
	// only, so checkState can run it as often as its answer can change.
	probeState func() error
	now        func() time.Time
	status     servingStatus
	log        *slog.Logger

	own  failure // the outcome of the last SVID and audit checks
	last failure // what was reported last, to log changes only
	ran  bool
}

// failure is why the broker cannot serve: which check failed (what; ""
// for none) and its error. Changes are logged by what, not by the error's
// words, which may change at every check (an age, a time).
type failure struct {
	what string
	err  error
}

// probeAuditDB commits an empty transaction on the audit chain's database:
// it fails when the file cannot be written or synced (read-only remount,
// I/O errors) or the database is closed.
func probeAuditDB(db *bbolt.DB) func() error {
	return func() error { return db.Update(func(*bbolt.Tx) error { return nil }) }
}

// check runs every check and reports the status, logging when it changes.
func (r *readiness) check() {
	r.own = r.ownProblem()
	r.report()
}

// checkState runs the shared state's check again, with the outcome of the
// others from the last check, and reports the status: the status follows
// the state at its own pace without an audit commit each time.
func (r *readiness) checkState() { r.report() }

// report sets the status from r.own and the state's check, and logs a
// change of what stops the broker from serving (once each way, not at
// every check).
func (r *readiness) report() {
	f := r.own
	if f.err == nil && r.probeState != nil {
		if err := r.probeState(); err != nil {
			f = failure{"state", fmt.Errorf("the shared state is unavailable: %w", err)}
		}
	}
	r.status.SetServing(f.err == nil)
	switch {
	case f.err != nil && (!r.ran || r.last.what != f.what):
		r.log.Error("health: NOT_SERVING", slog.String("reason", f.err.Error()))
	case f.err == nil && r.ran && r.last.err != nil:
		r.log.Info("health: SERVING again")
	}
	r.last, r.ran = f, true
}

// ownProblem is why the broker itself cannot serve (its SVID, its audit
// log), or a zero failure.
func (r *readiness) ownProblem() failure {
	svid, err := r.svid.GetX509SVID()
	switch {
	case err != nil:
		return failure{"svid", fmt.Errorf("the broker's own SVID is unavailable: %w", err)}
	case svid == nil || len(svid.Certificates) == 0:
		return failure{"svid", errors.New("the broker has no SVID of its own")}
	case !r.now().Before(svid.Certificates[0].NotAfter):
		return failure{"svid", fmt.Errorf("the broker's own SVID expired at %s", svid.Certificates[0].NotAfter.UTC().Format(time.RFC3339))}
	}
	if err := r.probeAudit(); err != nil {
		return failure{"audit", fmt.Errorf("the audit log cannot be written: %w", err)}
	}
	return failure{}
}

// run runs every check at each tick, and the shared state's at each
// stateTick (nil: none), until done closes.
func (r *readiness) run(done <-chan struct{}, tick, stateTick <-chan time.Time) {
	for {
		select {
		case <-done:
			return
		case <-tick:
			r.check()
		case <-stateTick:
			r.checkState()
		}
	}
}
