package alerts

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"strconv"
	"time"

	"github.com/credbroker/credbroker/broker/audit"
	"github.com/credbroker/credbroker/broker/config"
	"github.com/credbroker/credbroker/broker/state"
)

// Issuance is one credential or node SVID handed out, as the counting rules
// see it.
type Issuance struct {
	Identity, Cluster, Profile string
	// Charges are the quotas it spent; quota_near_limit checks them.
	Charges []state.Charge
}

// Issued counts an issued credential or node SVID for mass_issuance and
// queues its quota check (node SVIDs spend no quota). It does not block.
func (a *Alerter) Issued(ctx context.Context, is Issuance) {
	r := a.cfg.Rules.MassIssuance
	for _, k := range [...]struct{ kind, key string }{{"identity", is.Identity}, {"cluster", is.Cluster}} {
		a.burst(ctx, burst{rule: MassIssuance, counter: MassIssuance + "/" + k.kind, kind: k.kind, key: k.key,
			what: "credentials issued", cfg: r.BurstRule, fields: map[string]string{"last_profile": is.Profile}})
	}
	if a.usage == nil || a.cfg.Rules.QuotaNearLimit.Disabled || len(is.Charges) == 0 {
		return
	}
	a.mu.RLock()
	defer a.mu.RUnlock()
	if a.closed {
		return
	}
	select {
	case a.checks <- is.Charges:
	default:
		a.checksLost.Inc()
	}
}

// checkQuotas reads the use of each charged quota after an issuance and
// fires quota_near_limit at most once per quota window and key. A key
// already alerted in its window costs no read.
func (a *Alerter) checkQuotas() {
	defer a.wg.Done()
	pct := a.cfg.Rules.QuotaNearLimit.Percent
	ctx := context.Background()
	for charges := range a.checks {
		for _, c := range charges {
			now := a.now()
			key := c.Key.String()
			if a.cool.active(QuotaNearLimit+"\x00"+key, now) {
				continue
			}
			u, err := a.usage(ctx, now, c.Key)
			if err != nil {
				a.log.LogAttrs(ctx, slog.LevelDebug, "quota check failed", slog.String("quota", key), slog.String("error", err.Error()))
				continue
			}
			if u.Used*100 < pct*c.Quota.Max {
				continue
			}
			cooldown := c.Quota.Window
			if !u.ResetAt.IsZero() && u.ResetAt.After(now) {
				cooldown = u.ResetAt.Sub(now) // the rest of this window
			}
			a.fire(ctx, Event{Rule: QuotaNearLimit, Subject: key,
				Summary: fmt.Sprintf("%s quota at %d of %d (%d%%) in its %s window", key, u.Used, c.Quota.Max, u.Used*100/c.Quota.Max, c.Quota.Window),
				Fields: map[string]string{"used": strconv.Itoa(u.Used), "max": strconv.Itoa(c.Quota.Max), "window": c.Quota.Window.String(),
					"percent": strconv.Itoa(pct), "reset_at": u.ResetAt.UTC().Format(time.RFC3339)}},
				cooldown)
		}
	}
}

// Refusal is one refused request, as the burst rules see it: an identified
// caller's denial or throttle, or (Identity empty) an attempt by a caller
// known only by its source address.
type Refusal struct {
	Identity  string
	Address   string
	Throttled bool
}

// Refused counts a refusal for denial_burst, throttle_burst or
// unauthenticated_burst. It does not block.
func (a *Alerter) Refused(ctx context.Context, r Refusal) {
	b := burst{rule: DenialBurst, kind: "identity", key: r.Identity, what: "requests denied", cfg: a.cfg.Rules.DenialBurst}
	switch {
	case r.Identity == "":
		b = burst{rule: UnauthenticatedBurst, kind: "address", key: r.Address,
			what: "unauthenticated or unattested requests refused", cfg: a.cfg.Rules.UnauthenticatedBurst}
	case r.Throttled:
		b.rule, b.what, b.cfg = ThrottleBurst, "requests throttled", a.cfg.Rules.ThrottleBurst
	}
	b.counter = b.rule
	a.burst(ctx, b)
}

// burst is one event of a counting rule.
type burst struct {
	rule    string // the rule it fires
	counter string // the counter it feeds (a.counters)
	// kind and key are the subject it counts for ("identity", "spiffe://…").
	kind, key string
	what      string // the events, plural, for the summary: "requests denied"
	cfg       config.BurstRule
	fields    map[string]string // facts added to the per-subject alert
}

// plurals name every subject of a kind, for the fleet-wide subject.
var plurals = map[string]string{"identity": "identities", "cluster": "clusters", "address": "addresses"}

// burst counts b and fires its rule for its subject past threshold, and
// for all subjects of its kind past total_threshold (subject "all
// identities", ...). Each fires at most once per window.
func (a *Alerter) burst(ctx context.Context, b burst) {
	c := a.counters[b.counter]
	if c == nil || b.key == "" {
		return
	}
	r := b.cfg
	n := c.add(b.key, a.now())
	if n.key > float64(r.Threshold) {
		fields := map[string]string{"threshold": strconv.Itoa(r.Threshold), "window": r.Window.String()}
		maps.Copy(fields, b.fields)
		a.fire(ctx, Event{Rule: b.rule, Subject: b.kind + " " + b.key,
			Summary: fmt.Sprintf("more than %d %s for %s %s within %s", r.Threshold, b.what, b.kind, b.key, r.Window),
			Fields:  fields}, r.Window)
	}
	if total := r.Total(); total > 0 && n.all > float64(total) {
		all := plurals[b.kind]
		a.fire(ctx, Event{Rule: b.rule, Subject: "all " + all,
			Summary: fmt.Sprintf("more than %d %s across all %s within %s (about %d %s)", total, b.what, all, r.Window, int(n.keys), all),
			Fields: map[string]string{"total_threshold": strconv.Itoa(total), "window": r.Window.String(),
				"count": strconv.Itoa(int(n.all)), "keys": strconv.Itoa(int(n.keys))}}, r.Window)
	}
}

// AuditVerifier re-walks the audit chain (audit.Log.VerifyProgress).
type AuditVerifier interface {
	VerifyProgress(progress func(done, total uint64) error) (audit.VerifyResult, error)
}

// maxVerifyPause caps the pause between chunks of a verification.
const maxVerifyPause = time.Second

// RunAuditVerify verifies the audit chain on every tick until ctx ends and
// fires audit_verify when the chain is broken or cannot be read. It is
// bounded in CPU: after each chunk of records it pauses as long as the chunk
// took (at most a second), so a walk of millions of records takes at most
// half of the CPU share the walk uses. The daemon passes a ticker of
// alerts.rules.audit_verify.interval; a disabled rule returns at once.
func (a *Alerter) RunAuditVerify(ctx context.Context, v AuditVerifier, tick <-chan time.Time) {
	if a.cfg.Rules.AuditVerify.Disabled {
		return
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick:
			a.VerifyAudit(ctx, v)
		}
	}
}

// VerifyAudit runs one verification (see RunAuditVerify) and reports
// whether the chain verified.
func (a *Alerter) VerifyAudit(ctx context.Context, v AuditVerifier) bool {
	last := time.Now()
	res, err := v.VerifyProgress(func(done, total uint64) error {
		took := time.Since(last)
		pause := time.NewTimer(min(took, maxVerifyPause))
		defer pause.Stop()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-pause.C:
		}
		last = time.Now()
		return nil
	})
	switch {
	case errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded):
		return false // shutting down: not a finding
	case err != nil:
		a.verifyRuns.WithLabelValues("error").Inc()
		a.fire(ctx, Event{Rule: AuditVerify, Subject: "audit chain", Summary: "the audit chain could not be read for verification",
			Fields: map[string]string{"error": err.Error()}}, 0)
		return false
	case !res.OK:
		a.verifyRuns.WithLabelValues("broken").Inc()
		a.fire(ctx, Event{Rule: AuditVerify, Subject: "audit chain",
			Summary: fmt.Sprintf("audit chain broken at seq %d: %s", res.FirstBadSeq, res.Problem),
			Fields: map[string]string{"first_bad_seq": strconv.FormatUint(res.FirstBadSeq, 10), "first_bad_id": res.FirstBadID,
				"problem": res.Problem, "records": strconv.FormatUint(res.Records, 10)}}, 0)
		return false
	}
	a.verifyRuns.WithLabelValues("ok").Inc()
	a.log.LogAttrs(ctx, slog.LevelDebug, "audit chain verified", slog.Uint64("records", res.Records), slog.String("head_hash", res.HeadHash))
	return true
}
