package daemon

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/credbroker/credbroker/internal/ca"
	"github.com/credbroker/credbroker/test/fakeclock"
)

// TestExpiryWarningScalesWithLifetime: the "expires soon" warning fires
// when less than a sixth of the SVID's lifetime is left and it has not been
// rotated, once per SVID. Two-minute SVIDs that rotate at half-life never
// trigger it, checked every 10s for an hour; the same SVIDs left unrotated
// trigger it once; a day-long SVID warns once, four hours before expiry.
func TestExpiryWarningScalesWithLifetime(t *testing.T) {
	t0 := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
	td := spiffeid.RequireTrustDomainFromString("expiry.test")
	brokerID := spiffeid.RequireFromPath(td, "/credbroker")

	run := func(t *testing.T, lifetime, rotateEvery, step, duration time.Duration) (warnings []string) {
		t.Helper()
		clk := fakeclock.New(t0)
		authority, err := ca.New(td, ca.WithClock(clk.Now))
		if err != nil {
			t.Fatal(err)
		}
		tr := &trust{}
		tr.svidSource = tr
		mint := func() {
			svid, err := authority.With(ca.WithClock(clk.Now)).MintX509SVID(brokerID, lifetime)
			if err != nil {
				t.Fatal(err)
			}
			tr.svid.Store(svid)
		}
		var logs bytes.Buffer
		log := slog.New(slog.NewTextHandler(&logs, nil))
		mint()
		var w expiryWarning
		lastRotation := clk.Now()
		for clk.Now().Before(t0.Add(duration)) {
			clk.Advance(step)
			if rotateEvery > 0 && clk.Now().Sub(lastRotation) >= rotateEvery {
				mint()
				lastRotation = clk.Now()
			}
			tr.warnUnrotated(&w, clk.Now(), log, "expires soon")
		}
		for _, l := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
			if l != "" {
				warnings = append(warnings, l)
			}
		}
		return warnings
	}

	if w := run(t, 2*time.Minute, time.Minute, 10*time.Second, time.Hour); len(w) != 0 {
		t.Errorf("2-minute SVIDs rotating at half-life: %d warnings, want none:\n%s", len(w), strings.Join(w, "\n"))
	}
	w := run(t, 2*time.Minute, 0, 10*time.Second, 5*time.Minute)
	if len(w) != 1 || !strings.Contains(w[0], "expires_in=20s") {
		t.Errorf("an unrotated 2-minute SVID: %q, want one warning with 20s left", w)
	}
	w = run(t, 24*time.Hour, 0, 10*time.Minute, 30*time.Hour)
	if len(w) != 1 || !strings.Contains(w[0], "expires_in=4h0m0s") {
		t.Errorf("an unrotated day-long SVID: %q, want one warning in its last 4h", w)
	}
	// Rotated just in time: the replacement is not warned about, the next
	// unrotated one is.
	if w := run(t, time.Hour, 55*time.Minute, time.Minute, 2*time.Hour); len(w) != 2 {
		t.Errorf("hour-long SVIDs rotated with 5m left: %d warnings, want 2 (one per SVID past 50m):\n%s", len(w), strings.Join(w, "\n"))
	}
}
