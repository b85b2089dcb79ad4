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
// log can be written, and its own SVID is present and unexpired. Anything else is NOT_SERVING: a broker
// that cannot audit issues nothing, so a load balancer should send its
// callers elsewhere.
type readiness struct {
	svid       x509svid.Source
	probeAudit func() error
	// probeState, when set, fails while the shared state cannot be relied
	// on (state.etcd: revocations not confirmed current).
	probeState func() error
	now        func() time.Time
	status     servingStatus
	log        *slog.Logger

	last error // the outcome of the previous check, to log changes only
	ran  bool
}

// probeAuditDB commits an empty transaction on the audit chain's database:
// it fails when the file cannot be written or synced (read-only remount,
// I/O errors) or the database is closed.
func probeAuditDB(db *bbolt.DB) func() error {
	return func() error { return db.Update(func(*bbolt.Tx) error { return nil }) }
}

// check decides and reports the status once, logging when it changes.
func (r *readiness) check() {
	err := r.problem()
	r.status.SetServing(err == nil)
	switch {
	case err != nil && (!r.ran || r.last == nil || r.last.Error() != err.Error()):
		r.log.Error("health: NOT_SERVING", slog.String("reason", err.Error()))
	case err == nil && r.ran && r.last != nil:
		r.log.Info("health: SERVING again")
	}
	r.last, r.ran = err, true
}

// problem is why the broker cannot serve, or nil.
func (r *readiness) problem() error {
	svid, err := r.svid.GetX509SVID()
	switch {
	case err != nil:
		return fmt.Errorf("the broker's own SVID is unavailable: %w", err)
	case svid == nil || len(svid.Certificates) == 0:
		return errors.New("the broker has no SVID of its own")
	case !r.now().Before(svid.Certificates[0].NotAfter):
		return fmt.Errorf("the broker's own SVID expired at %s", svid.Certificates[0].NotAfter.UTC().Format(time.RFC3339))
	}
	if err := r.probeAudit(); err != nil {
		return fmt.Errorf("the audit log cannot be written: %w", err)
	}
	if r.probeState != nil {
		if err := r.probeState(); err != nil {
			return fmt.Errorf("the shared state is unavailable: %w", err)
		}
	}
	return nil
}

// run checks at every tick until done closes.
func (r *readiness) run(done <-chan struct{}, tick <-chan time.Time) {
	for {
		select {
		case <-done:
			return
		case <-tick:
			r.check()
		}
	}
}
