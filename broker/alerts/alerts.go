// Package alerts tells operators what the audit log only records: mass
// issuance, quotas near their limit, bursts of denials, throttles and
// unauthenticated attempts, a broken audit chain, revocations, approvals
// and node evictions.
//
// Every alert is, at once, a structured log event (msg "alert", keys rule,
// severity, subject, summary, alert_id and the group fields), a count
// in credbroker_alerts_total{rule}, and a signed JSON POST to each
// configured webhook that asks for its rule (internal/webhook; the payload
// is Payload).
//
// Two kinds of rules feed it. Counting rules (mass_issuance, the bursts,
// quota_near_limit) are fed every decision through Issued and Refused and
// fire when a threshold is crossed — at most once per rule, subject and
// window, so a burst of ten thousand denials is one alert, not ten
// thousand. Each counting rule also counts all its subjects together and
// fires past its total_threshold with the subject "all identities" (or
// addresses, clusters): a spray that keeps every subject under its own
// threshold still adds up. Event rules (revocation, approval_*, node_evicted, key_rotated,
// audit_verify) fire through Emit on their event. Every rule is also
// limited across subjects (alerts.max_per_minute), so that no flood of
// events or subjects can flood a webhook; what is held back is counted in
// credbroker_alerts_suppressed_total{rule,reason}.
//
// Nothing here blocks the caller on a receiver: webhook delivery is queued
// (and dropped when the queue is full), and quota checks, which read the
// quota store, run on their own goroutine behind a bounded queue.
package alerts

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/credbroker/credbroker/broker/config"
	"github.com/credbroker/credbroker/broker/state"
	"github.com/credbroker/credbroker/internal/webhook"
)

// Rule names, as in the configuration (config.Alert*). Stable.
const (
	MassIssuance         = config.AlertMassIssuance
	QuotaNearLimit       = config.AlertQuotaNearLimit
	DenialBurst          = config.AlertDenialBurst
	ThrottleBurst        = config.AlertThrottleBurst
	UnauthenticatedBurst = config.AlertUnauthenticatedBurst
	AuditVerify          = config.AlertAuditVerify
	Revocation           = config.AlertRevocation
	ApprovalRequested    = config.AlertApprovalRequested
	ApprovalGranted      = config.AlertApprovalGranted
	ApprovalDenied       = config.AlertApprovalDenied
	NodeEvicted          = config.AlertNodeEvicted
	KeyRotated           = config.AlertKeyRotated
)

// Severity ranks an alert; it also sets its log level (info, warn, error).
type Severity string

// Severities.
const (
	Info     Severity = "info"
	Warning  Severity = "warning"
	Critical Severity = "critical"
)

// severities are each rule's default severity.
var severities = map[string]Severity{
	MassIssuance: Warning, QuotaNearLimit: Warning, DenialBurst: Warning, ThrottleBurst: Warning,
	UnauthenticatedBurst: Warning, AuditVerify: Critical, Revocation: Info, ApprovalRequested: Info,
	ApprovalGranted: Info, ApprovalDenied: Info, NodeEvicted: Warning, KeyRotated: Warning,
}

// Event is one alert.
type Event struct {
	// Rule is one of the rule names above.
	Rule string
	// Severity defaults to the rule's.
	Severity Severity
	// Subject is what the alert is about, as "kind value": "identity
	// spiffe://…", "cluster ns/name", "approval <id>", "revocation <id>".
	Subject string
	// Summary is one line for a human.
	Summary string
	// Fields are further facts (at most 16, values clipped to 256 bytes).
	// Never put a secret here: alerts leave the broker.
	Fields map[string]string
}

// Emitter is how broker code raises an event alert. Emit never blocks on
// a receiver and never fails the caller: an alert that cannot be delivered
// is counted, not returned.
type Emitter interface {
	Emit(ctx context.Context, e Event)
}

// Nop discards alerts; for tests of other parts and wiring without alerts.
type Nop struct{}

// Emit does nothing.
func (Nop) Emit(context.Context, Event) {}

// Payload is the JSON body POSTed to webhooks. Version changes only when a
// field changes meaning; fields may be added.
type Payload struct {
	Version  int               `json:"version"`
	ID       string            `json:"id"`
	Time     time.Time         `json:"time"`
	Rule     string            `json:"rule"`
	Severity Severity          `json:"severity"`
	Subject  string            `json:"subject"`
	Summary  string            `json:"summary"`
	Fields   map[string]string `json:"fields,omitempty"`
}

// Metric names; stable.
const (
	MetricAlerts     = "credbroker_alerts_total"
	MetricSuppressed = "credbroker_alerts_suppressed_total"
	MetricEvicted    = "credbroker_alert_keys_evicted_total"
	MetricChecks     = "credbroker_alert_quota_checks_dropped_total"
	MetricVerify     = "credbroker_audit_verify_runs_total"
)

// Options are an Alerter's collaborators; all are optional.
type Options struct {
	// Log receives the alert events; nil discards.
	Log *slog.Logger
	// Registerer receives the metrics (and the webhook sender's); nil: not
	// exported.
	Registerer prometheus.Registerer
	// Now is the clock windows are reckoned by; nil: time.Now.
	Now func() time.Time
	// Usage reads a quota's use (state.Quotas.Usage) for quota_near_limit;
	// nil disables that rule.
	Usage func(ctx context.Context, now time.Time, key state.QuotaKey) (state.Usage, error)
	// Webhook tunes the webhook sender (tests inject its Wait, Backoff,
	// Transport); Registerer and Log are set from above, and each
	// webhook's attempt timeout comes from the configuration.
	Webhook webhook.Options
}

// Alerter applies the configured rules. Safe for concurrent use; Close it
// to stop its goroutines.
type Alerter struct {
	cfg     config.Alerts
	log     *slog.Logger
	now     func() time.Time
	usage   func(ctx context.Context, now time.Time, key state.QuotaKey) (state.Usage, error)
	targets []target
	sender  *webhook.Sender

	limiters map[string]*rate.Limiter
	cool     *cooldowns
	// counters by rule ("mass_issuance/identity", "mass_issuance/cluster",
	// "denial_burst", ...).
	counters map[string]*counter

	alerts     *prometheus.CounterVec
	suppressed *prometheus.CounterVec
	evicted    *prometheus.CounterVec
	checksLost prometheus.Counter
	verifyRuns *prometheus.CounterVec

	checks chan []state.Charge
	mu     sync.RWMutex // guards closed against sends on checks
	closed bool
	wg     sync.WaitGroup
}

type target struct {
	t      *webhook.Target
	events map[string]bool // nil: every rule
}

// quotaCheckQueue bounds issuances waiting for their quota check.
const quotaCheckQueue = 256

// New builds an Alerter from cfg (defaults applied and validated, as
// config.Parse leaves it). It reads each webhook's secret now, so that a
// missing secret stops the broker at start rather than losing alerts later.
func New(cfg config.Alerts, opts Options) (*Alerter, error) {
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	a := &Alerter{cfg: cfg, log: opts.Log, now: opts.Now, usage: opts.Usage,
		limiters: map[string]*rate.Limiter{}, counters: map[string]*counter{},
		checks: make(chan []state.Charge, quotaCheckQueue)}
	a.alerts = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: MetricAlerts, Help: "Alerts fired, by rule.",
	}, []string{"rule"})
	a.suppressed = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: MetricSuppressed, Help: "Alerts held back, by rule and reason (cooldown: the rule already fired for this subject within its window; rate: the rule's max_per_minute).",
	}, []string{"rule", "reason"})
	a.evicted = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: MetricEvicted, Help: "Keys (identities, clusters, addresses) a counting rule forgot because alerts.max_keys were tracked, by rule.",
	}, []string{"rule"})
	a.checksLost = prometheus.NewCounter(prometheus.CounterOpts{
		Name: MetricChecks, Help: "Quota near-limit checks skipped because their queue was full.",
	})
	a.verifyRuns = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: MetricVerify, Help: "Periodic audit chain verifications, by result (ok, broken, error).",
	}, []string{"result"})
	for _, rule := range config.AlertRuleNames {
		a.limiters[rule] = rate.NewLimiter(rate.Limit(float64(cfg.MaxPerMinute)/60), cfg.MaxPerMinute)
		a.alerts.WithLabelValues(rule) // every rule's series exists from the start
	}
	a.cool = newCooldowns(cfg.MaxKeys, func() { a.evicted.WithLabelValues("cooldown").Inc() })
	r := cfg.Rules
	count := func(name, rule string, b config.BurstRule) {
		if !b.Disabled {
			a.counters[name] = newCounter(b.Window, cfg.MaxKeys, func() { a.evicted.WithLabelValues(rule).Inc() })
		}
	}
	for _, per := range r.MassIssuance.Per {
		count(MassIssuance+"/"+per, MassIssuance, r.MassIssuance.BurstRule)
	}
	count(DenialBurst, DenialBurst, r.DenialBurst)
	count(ThrottleBurst, ThrottleBurst, r.ThrottleBurst)
	count(UnauthenticatedBurst, UnauthenticatedBurst, r.UnauthenticatedBurst)

	for _, w := range cfg.Webhooks {
		if _, err := webhook.CheckURL(w.URL); err != nil {
			return nil, fmt.Errorf("alerts: webhook %s: %w", w.Name, err)
		}
		secret, err := webhook.LoadSecret(w.SecretEnv, w.SecretFile)
		if err != nil {
			return nil, fmt.Errorf("alerts: webhook %s: %w", w.Name, err)
		}
		t := target{t: &webhook.Target{Name: w.Name, URL: w.URL, Secret: secret, Timeout: w.Timeout}}
		if len(w.Events) > 0 {
			t.events = map[string]bool{}
			for _, e := range w.Events {
				t.events[e] = true
			}
		}
		a.targets = append(a.targets, t)
	}
	if opts.Registerer != nil {
		for _, c := range []prometheus.Collector{a.alerts, a.suppressed, a.evicted, a.checksLost, a.verifyRuns} {
			if err := opts.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("alerts: metrics: %w", err)
			}
		}
	}
	if len(a.targets) > 0 {
		wo := opts.Webhook
		wo.Registerer, wo.Log = opts.Registerer, opts.Log
		a.sender = webhook.New(wo)
	}
	if a.usage != nil && !r.QuotaNearLimit.Disabled {
		a.wg.Add(1)
		go a.checkQuotas()
	}
	return a, nil
}

// Close stops the quota checks and drains the webhook queue until ctx ends
// (see webhook.Sender.Close). Alerts raised afterwards are logged and
// counted but not delivered.
func (a *Alerter) Close(ctx context.Context) error {
	a.mu.Lock()
	if !a.closed {
		a.closed = true
		close(a.checks)
	}
	a.mu.Unlock()
	a.wg.Wait()
	if a.sender != nil {
		return a.sender.Close(ctx)
	}
	return nil
}

// Emit raises an event alert (revocation, approval_*, node_evicted, or any
// rule). Only the rule's max_per_minute limits it.
func (a *Alerter) Emit(ctx context.Context, e Event) { a.fire(ctx, e, 0) }

// maxFields and maxFieldLen bound what an Event carries out of the broker.
const (
	maxFields   = 16
	maxFieldLen = 256
)

// fire raises e unless its subject is cooling down (cooldown > 0 starts one)
// or its rule is over its rate.
func (a *Alerter) fire(ctx context.Context, e Event, cooldown time.Duration) {
	now := a.now()
	rule := e.Rule
	if _, ok := severities[rule]; !ok {
		// Labels stay bounded; the text of a bad rule is still in the log.
		a.log.LogAttrs(ctx, slog.LevelError, "alert with an unknown rule", slog.String("rule", clipText(rule)))
		return
	}
	e.Subject = clipText(e.Subject)
	if cooldown > 0 && !a.cool.admit(rule+"\x00"+e.Subject, now, cooldown) {
		a.suppressed.WithLabelValues(rule, "cooldown").Inc()
		return
	}
	if !a.limiters[rule].AllowN(now, 1) {
		a.suppressed.WithLabelValues(rule, "rate").Inc()
		return
	}
	if e.Severity == "" {
		e.Severity = severities[rule]
	}
	p := Payload{Version: 1, Time: now.UTC(), Rule: rule, Severity: e.Severity, Subject: e.Subject, Summary: clipText(e.Summary)}
	if id, err := uuid.NewV7(); err == nil {
		p.ID = id.String()
	}
	if len(e.Fields) > 0 {
		p.Fields = map[string]string{}
		for _, k := range slices.Sorted(maps.Keys(e.Fields)) {
			if len(p.Fields) == maxFields {
				break
			}
			p.Fields[clipText(k)] = clipText(e.Fields[k])
		}
	}
	a.alerts.WithLabelValues(rule).Inc()
	a.logAlert(ctx, p)
	if a.sender == nil {
		return
	}
	for _, t := range a.targets {
		if t.events != nil && !t.events[rule] {
			continue
		}
		// A full queue is counted by the sender (credbroker_webhook_dropped_total).
		_ = a.sender.Send(t.t, p)
	}
}

func (a *Alerter) logAlert(ctx context.Context, p Payload) {
	level := slog.LevelInfo
	switch p.Severity {
	case Warning:
		level = slog.LevelWarn
	case Critical:
		level = slog.LevelError
	}
	attrs := []slog.Attr{slog.String("rule", p.Rule), slog.String("severity", string(p.Severity)),
		slog.String("subject", p.Subject), slog.String("summary", p.Summary), slog.String("alert_id", p.ID)}
	if len(p.Fields) > 0 {
		var fs []any
		for _, k := range slices.Sorted(maps.Keys(p.Fields)) {
			fs = append(fs, slog.String(k, p.Fields[k]))
		}
		attrs = append(attrs, slog.Group("fields", fs...))
	}
	a.log.LogAttrs(ctx, level, "alert", attrs...)
}

// clipText bounds caller-influenced text in alerts, on a rune boundary.
func clipText(s string) string {
	if len(s) <= maxFieldLen {
		return s
	}
	cut := maxFieldLen - len("...")
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "..."
}
