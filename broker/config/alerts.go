package config

import (
	"fmt"
	"slices"
	"time"

	"github.com/credbroker/credbroker/internal/webhook"
)

// Alert rule names: the value of the rule label of credbroker_alerts_total,
// of a webhook's events list and of an alert's "rule" field. Stable.
const (
	AlertMassIssuance         = "mass_issuance"
	AlertQuotaNearLimit       = "quota_near_limit"
	AlertDenialBurst          = "denial_burst"
	AlertThrottleBurst        = "throttle_burst"
	AlertUnauthenticatedBurst = "unauthenticated_burst"
	AlertAuditVerify          = "audit_verify"
	AlertRevocation           = "revocation"
	AlertApprovalRequested    = "approval_requested"
	AlertApprovalGranted      = "approval_granted"
	AlertApprovalDenied       = "approval_denied"
	AlertNodeEvicted          = "node_evicted"
	AlertKeyRotated           = "key_rotated"
)

// AlertRuleNames lists every alert rule, in the order of the README's
// reference.
var AlertRuleNames = []string{
	AlertMassIssuance, AlertQuotaNearLimit, AlertDenialBurst, AlertThrottleBurst, AlertUnauthenticatedBurst,
	AlertAuditVerify, AlertRevocation, AlertApprovalRequested, AlertApprovalGranted, AlertApprovalDenied, AlertNodeEvicted,
	AlertKeyRotated,
}

// Alerts configures alerting: every alert is a log event and a counter;
// webhooks get the ones they ask for.
type Alerts struct {
	// Webhooks receive alerts as signed JSON POSTs.
	Webhooks []AlertWebhook `yaml:"webhooks"`
	// Rules tune the rules that count or poll; the others fire on their
	// event.
	Rules AlertRules `yaml:"rules"`
	// MaxPerMinute bounds the alerts of one rule, across subjects, so that a
	// flood of events cannot flood a webhook; default 60.
	MaxPerMinute int `yaml:"max_per_minute"`
	// MaxKeys bounds the identities, clusters or addresses each counting
	// rule tracks at once (the least recently seen is forgotten, and
	// counted, beyond it); default 10000.
	MaxKeys int `yaml:"max_keys"`
}

// AlertWebhook is one receiver of alerts.
type AlertWebhook struct {
	// Name labels the webhook in logs and metrics (the URL is never logged).
	Name string `yaml:"name"`
	// URL is the http(s) endpoint alerts are POSTed to.
	URL string `yaml:"url"`
	// SecretEnv or SecretFile (one of them) holds the HMAC-SHA256 key, at
	// least 16 bytes; the key itself never appears in the file.
	SecretEnv  string `yaml:"secret_env"`
	SecretFile string `yaml:"secret_file"`
	// Events are the rule names this webhook receives; empty means all.
	Events []string `yaml:"events"`
	// Timeout bounds each delivery attempt; default 5s.
	Timeout time.Duration `yaml:"timeout"`
}

// AlertRules are the tunable rules.
type AlertRules struct {
	MassIssuance         MassIssuanceRule `yaml:"mass_issuance"`
	QuotaNearLimit       QuotaRule        `yaml:"quota_near_limit"`
	DenialBurst          BurstRule        `yaml:"denial_burst"`
	ThrottleBurst        BurstRule        `yaml:"throttle_burst"`
	UnauthenticatedBurst BurstRule        `yaml:"unauthenticated_burst"`
	AuditVerify          AuditVerifyRule  `yaml:"audit_verify"`
}

// BurstRule fires when more than Threshold events for one subject fall
// within a sliding Window; it fires at most once per Window per subject.
type BurstRule struct {
	Threshold int `yaml:"threshold"`
	// TotalThreshold, when above 0, also fires the rule when more than this
	// many events of all its subjects together fall within Window: a spray
	// that keeps every identity or address under Threshold still adds up.
	// Unset (nil) takes the rule's default (see ApplyDefaults); 0 is off.
	TotalThreshold *int          `yaml:"total_threshold"`
	Window         time.Duration `yaml:"window"`
	Disabled       bool          `yaml:"disabled"`
}

// Total is the fleet-wide threshold in effect; 0: off.
func (b BurstRule) Total() int {
	if b.TotalThreshold == nil {
		return 0
	}
	return *b.TotalThreshold
}

// MassIssuanceRule is a BurstRule over issued credentials, counted per
// identity, per cluster, or both (Per; default both).
type MassIssuanceRule struct {
	BurstRule `yaml:",inline"`
	Per       []string `yaml:"per"`
}

// QuotaRule fires when an issuance leaves a quota window at or above
// Percent of its maximum; at most once per quota window per key.
type QuotaRule struct {
	Percent  int  `yaml:"percent"`
	Disabled bool `yaml:"disabled"`
}

// AuditVerifyRule re-verifies the audit chain every Interval and fires when
// it is broken.
type AuditVerifyRule struct {
	Interval time.Duration `yaml:"interval"`
	Disabled bool          `yaml:"disabled"`
}

// applyDefaults fills in threshold and window, and a total threshold of
// totalFactor times the threshold in effect (0: off), so that an operator
// who raises the threshold raises the total with it.
func (b *BurstRule) applyDefaults(threshold int, window time.Duration, totalFactor int) {
	if b.Threshold == 0 {
		b.Threshold = threshold
	}
	if b.Window == 0 {
		b.Window = window
	}
	if b.TotalThreshold == nil && b.Threshold > 0 { // a bad threshold is reported once, as itself
		total := totalFactor * b.Threshold
		b.TotalThreshold = &total
	}
}

// burstTotalFactor sets the default total_threshold of the refusal bursts:
// ten identities or addresses at their own threshold at once, or a spray of
// many below it adding up to as much. mass_issuance has no default total:
// issuance grows with the fleet, refusals do not.
const burstTotalFactor = 10

// ApplyDefaults fills in the documented defaults.
func (a *Alerts) ApplyDefaults() {
	r := &a.Rules
	r.MassIssuance.applyDefaults(100, 5*time.Minute, 0)
	if len(r.MassIssuance.Per) == 0 {
		r.MassIssuance.Per = []string{"identity", "cluster"}
	}
	if r.QuotaNearLimit.Percent == 0 {
		r.QuotaNearLimit.Percent = 80
	}
	r.DenialBurst.applyDefaults(50, time.Minute, burstTotalFactor)
	r.ThrottleBurst.applyDefaults(100, time.Minute, burstTotalFactor)
	r.UnauthenticatedBurst.applyDefaults(50, time.Minute, burstTotalFactor)
	if r.AuditVerify.Interval == 0 {
		r.AuditVerify.Interval = time.Hour
	}
	if a.MaxPerMinute == 0 {
		a.MaxPerMinute = 60
	}
	if a.MaxKeys == 0 {
		a.MaxKeys = 10000
	}
	for i := range a.Webhooks {
		if a.Webhooks[i].Timeout == 0 {
			a.Webhooks[i].Timeout = 5 * time.Second
		}
	}
}

func (a *Alerts) validate() []error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf("config: alerts."+format, args...)) }
	r := a.Rules
	for key, b := range map[string]BurstRule{"mass_issuance": r.MassIssuance.BurstRule, "denial_burst": r.DenialBurst,
		"throttle_burst": r.ThrottleBurst, "unauthenticated_burst": r.UnauthenticatedBurst} {
		if b.Threshold < 1 || b.Window < time.Second || b.Window > 24*time.Hour {
			bad("rules.%s: threshold must be positive and window between 1s and 24h", key)
		}
		// Below threshold, one subject's burst would always fire the total
		// first: a total that low is a mistake, not a tighter rule.
		if t := b.Total(); t < 0 || (t > 0 && t < b.Threshold) {
			bad("rules.%s.total_threshold must be 0 (off) or at least threshold (%d)", key, b.Threshold)
		}
	}
	for _, p := range r.MassIssuance.Per {
		if p != "identity" && p != "cluster" {
			bad("rules.mass_issuance.per %q: want identity or cluster", p)
		}
	}
	if r.QuotaNearLimit.Percent < 1 || r.QuotaNearLimit.Percent > 100 {
		bad("rules.quota_near_limit.percent must be between 1 and 100")
	}
	if r.AuditVerify.Interval < time.Minute {
		bad("rules.audit_verify.interval must be at least 1m")
	}
	if a.MaxPerMinute < 1 || a.MaxPerMinute > 10000 {
		bad("max_per_minute must be between 1 and 10000")
	}
	if a.MaxKeys < 1 || a.MaxKeys > 1_000_000 {
		bad("max_keys must be between 1 and 1000000")
	}
	names := map[string]bool{}
	for i, w := range a.Webhooks {
		if !nameRE.MatchString(w.Name) {
			bad("webhooks[%d].name %q: use lowercase letters, digits, '.', '_' and '-'", i, w.Name)
		}
		if names[w.Name] {
			bad("webhooks[%d].name %q is used twice", i, w.Name)
		}
		names[w.Name] = true
		if _, err := webhook.CheckURL(w.URL); err != nil {
			bad("webhooks.%s.url: %v", w.Name, err)
		}
		// The secret itself is read when the broker starts.
		if (w.SecretEnv == "") == (w.SecretFile == "") {
			bad("webhooks.%s: set exactly one of secret_env and secret_file", w.Name)
		}
		for _, e := range w.Events {
			if !slices.Contains(AlertRuleNames, e) {
				bad("webhooks.%s.events: unknown rule %q", w.Name, e)
			}
		}
		if w.Timeout < 0 || w.Timeout > time.Minute {
			bad("webhooks.%s.timeout must be between 0 and 1m", w.Name)
		}
	}
	return errs
}
