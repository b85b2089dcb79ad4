package config

import (
	"bytes"
	"slices"
	"strings"
	"testing"
	"time"
)

func withAlerts(t *testing.T, alerts string) (*Config, error) {
	t.Helper()
	return Parse(strings.NewReader(string(DevYAML()) + "\nalerts:\n" + alerts))
}

func TestAlertsConfig(t *testing.T) {
	c, err := Parse(bytes.NewReader(DevYAML()))
	if err != nil {
		t.Fatal(err)
	}
	r := c.Alerts.Rules
	if r.MassIssuance.Threshold != 100 || r.MassIssuance.Window != 5*time.Minute || !slices.Equal(r.MassIssuance.Per, []string{"identity", "cluster"}) ||
		r.QuotaNearLimit.Percent != 80 || r.AuditVerify.Interval != time.Hour || c.Alerts.MaxPerMinute != 60 || c.Alerts.MaxKeys != 10000 {
		t.Errorf("defaults: %+v", c.Alerts)
	}
	// Totals: ten times the threshold for the refusal bursts, none for
	// issuance (it grows with the fleet).
	if r.DenialBurst.Total() != 500 || r.ThrottleBurst.Total() != 1000 || r.UnauthenticatedBurst.Total() != 500 || r.MassIssuance.Total() != 0 {
		t.Errorf("default totals: denial %d, throttle %d, unauthenticated %d, mass_issuance %d",
			r.DenialBurst.Total(), r.ThrottleBurst.Total(), r.UnauthenticatedBurst.Total(), r.MassIssuance.Total())
	}
	c, err = withAlerts(t, `  rules:
    denial_burst: {threshold: 20}
    throttle_burst: {total_threshold: 0}
    unauthenticated_burst: {threshold: 5, total_threshold: 5}
    mass_issuance: {total_threshold: 2000}
`)
	if err != nil {
		t.Fatal(err)
	}
	if r := c.Alerts.Rules; r.DenialBurst.Total() != 200 || r.ThrottleBurst.Total() != 0 || r.UnauthenticatedBurst.Total() != 5 || r.MassIssuance.Total() != 2000 {
		t.Errorf("totals set: denial %d (want 10 × threshold), throttle %d (off), unauthenticated %d, mass_issuance %d",
			r.DenialBurst.Total(), r.ThrottleBurst.Total(), r.UnauthenticatedBurst.Total(), r.MassIssuance.Total())
	}

	c, err = withAlerts(t, `  webhooks:
    - {name: ops, url: "https://hooks.example.com/a", secret_env: HOOK_KEY, events: [mass_issuance, revocation]}
  rules:
    mass_issuance: {threshold: 20, window: 1m, per: [cluster]}
    denial_burst: {disabled: true}
    audit_verify: {interval: 10m}
`)
	if err != nil {
		t.Fatal(err)
	}
	if w := c.Alerts.Webhooks[0]; w.Name != "ops" || w.Timeout != 5*time.Second || len(w.Events) != 2 {
		t.Errorf("webhook: %+v", w)
	}
	if m := c.Alerts.Rules.MassIssuance; m.Threshold != 20 || m.Window != time.Minute || !slices.Equal(m.Per, []string{"cluster"}) {
		t.Errorf("mass_issuance: %+v", m)
	}
	if !c.Alerts.Rules.DenialBurst.Disabled || c.Alerts.Rules.DenialBurst.Threshold != 50 {
		t.Errorf("denial_burst: %+v", c.Alerts.Rules.DenialBurst)
	}

	for _, tc := range []struct{ yaml, want string }{
		{"  rules:\n    mass_issuance: {treshold: 5}\n", "treshold"},
		{"  webhook: []\n", "webhook"},
		{"  webhooks:\n    - {name: ops, url: 'https://x/', secret_env: K, secret: abc}\n", "secret"},
		{"  webhooks:\n    - {name: ops, url: 'ftp://x/', secret_env: K}\n", "scheme"},
		{"  webhooks:\n    - {name: ops, url: 'https://u:p@x/', secret_env: K}\n", "user info"},
		{"  webhooks:\n    - {name: ops, url: 'https://x/'}\n", "exactly one of secret_env and secret_file"},
		{"  webhooks:\n    - {name: ops, url: 'https://x/', secret_env: K, secret_file: /f}\n", "exactly one"},
		{"  webhooks:\n    - {name: ops, url: 'https://x/', secret_env: K, events: [mass_issuanse]}\n", `unknown rule "mass_issuanse"`},
		{"  webhooks:\n    - {name: ops, url: 'https://x/', secret_env: K}\n    - {name: ops, url: 'https://y/', secret_env: K}\n", "used twice"},
		{"  rules:\n    mass_issuance: {per: [profile]}\n", `per "profile"`},
		{"  rules:\n    quota_near_limit: {percent: 120}\n", "percent"},
		{"  rules:\n    denial_burst: {threshold: -1}\n", "denial_burst"},
		{"  rules:\n    audit_verify: {interval: 1s}\n", "interval"},
		{"  rules:\n    denial_burst: {total_threshold: -1}\n", "denial_burst.total_threshold"},
		{"  rules:\n    throttle_burst: {total_threshold: 99}\n", "throttle_burst.total_threshold must be 0 (off) or at least threshold (100)"},
		{"  rules:\n    mass_issuance: {threshold: 10, total_threshold: 9}\n", "mass_issuance.total_threshold"},
		{"  rules:\n    unauthenticated_burst: {total_threshold: lots}\n", "lots"},
		{"  rules:\n    unauthenticated_burst: {total_treshold: 900}\n", "total_treshold"},
		{"  max_keys: 10000000\n", "max_keys"},
	} {
		if _, err := withAlerts(t, tc.yaml); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("alerts %q: error %v, want one naming %q", tc.yaml, err, tc.want)
		}
	}
}
