package alerts_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.etcd.io/bbolt"
	"go.uber.org/goleak"

	"github.com/credbroker/credbroker/broker/alerts"
	"github.com/credbroker/credbroker/broker/audit"
	"github.com/credbroker/credbroker/broker/config"
	"github.com/credbroker/credbroker/broker/state"
	"github.com/credbroker/credbroker/internal/webhook"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const hookKey = "alert-hook-secret-0123456789"

// clock is a settable clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// sink is a webhook receiver on loopback that verifies every delivery.
type sink struct {
	srv  *httptest.Server
	mu   sync.Mutex
	got  []alerts.Payload
	bad  int
	seen chan alerts.Payload
}

func newSink(t *testing.T) *sink {
	s := &sink{seen: make(chan alerts.Payload, 100)}
	s.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if err := webhook.Verify([]byte(hookKey), r.Header.Get(webhook.SignatureHeader), body, time.Now(), 0); err != nil {
			s.mu.Lock()
			s.bad++
			s.mu.Unlock()
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		var p alerts.Payload
		_ = json.Unmarshal(body, &p)
		s.mu.Lock()
		s.got = append(s.got, p)
		s.mu.Unlock()
		s.seen <- p
	}))
	t.Cleanup(s.srv.Close)
	return s
}

// received closes e's alerter, which drains its webhook queue, and checks
// that the receiver verified want alerts and refused none.
func (s *sink) received(t *testing.T, e *env, want int) {
	t.Helper()
	if err := e.a.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.got) != want || s.bad != 0 {
		t.Errorf("receiver got %d verified alerts and %d unverifiable, want %d and 0: %+v", len(s.got), s.bad, want, s.got)
	}
}

type env struct {
	a    *alerts.Alerter
	reg  *prometheus.Registry
	logs *bytes.Buffer
	clk  *clock
}

func newEnv(t *testing.T, cfg config.Alerts, opts alerts.Options) *env {
	t.Helper()
	cfg.ApplyDefaults()
	e := &env{reg: prometheus.NewRegistry(), logs: &bytes.Buffer{}, clk: &clock{t: time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)}}
	opts.Registerer, opts.Now = e.reg, e.clk.now
	opts.Log = slog.New(slog.NewJSONHandler(&lockedWriter{w: e.logs}, nil))
	a, err := alerts.New(cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	e.a = a
	t.Cleanup(func() { _ = a.Close(context.Background()) })
	return e
}

type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func (e *env) count(t *testing.T, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := e.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if v, ok := labels[lp.GetName()]; ok && v != lp.GetValue() {
					continue next
				}
			}
			return m.GetCounter().GetValue()
		}
	}
	return 0
}

func TestMassIssuanceFiresOncePerWindowAndReachesWebhook(t *testing.T) {
	s := newSink(t)
	t.Setenv("HOOK_KEY", hookKey)
	cfg := config.Alerts{
		Webhooks: []config.AlertWebhook{{Name: "ops", URL: s.srv.URL, SecretEnv: "HOOK_KEY", Events: []string{alerts.MassIssuance}}},
		Rules:    config.AlertRules{MassIssuance: config.MassIssuanceRule{BurstRule: config.BurstRule{Threshold: 3, Window: time.Minute}, Per: []string{"cluster"}}},
	}
	e := newEnv(t, cfg, alerts.Options{})
	ctx := context.Background()
	for i := range 3 {
		e.a.Issued(ctx, alerts.Issuance{Identity: fmt.Sprint("spiffe://td/c", i), Cluster: "ns/alpha", Profile: "p"})
	}
	if n := e.count(t, alerts.MetricAlerts, map[string]string{"rule": alerts.MassIssuance}); n != 0 {
		t.Fatalf("fired at the threshold (%v); the rule is 'more than'", n)
	}
	for range 10 { // a burst is one alert
		e.a.Issued(ctx, alerts.Issuance{Identity: "spiffe://td/c", Cluster: "ns/alpha", Profile: "p"})
	}
	p := <-s.seen
	if p.Rule != alerts.MassIssuance || p.Subject != "cluster ns/alpha" || p.Severity != alerts.Warning || p.Version != 1 || p.ID == "" {
		t.Errorf("payload %+v", p)
	}
	if n := e.count(t, alerts.MetricAlerts, map[string]string{"rule": alerts.MassIssuance}); n != 1 {
		t.Errorf("%s{rule=mass_issuance} = %v, want 1", alerts.MetricAlerts, n)
	}
	if n := e.count(t, alerts.MetricSuppressed, map[string]string{"rule": alerts.MassIssuance, "reason": "cooldown"}); n != 9 {
		t.Errorf("suppressed by cooldown = %v, want 9", n)
	}
	// The next window fires again; an event rule the webhook did not ask
	// for is logged and counted but not sent.
	e.clk.add(2 * time.Minute)
	for range 4 {
		e.a.Issued(ctx, alerts.Issuance{Cluster: "ns/alpha"})
	}
	e.a.Emit(ctx, alerts.Event{Rule: alerts.Revocation, Subject: "revocation r1", Summary: "revoked"})
	<-s.seen
	s.received(t, e, 2)
	if n := e.count(t, alerts.MetricAlerts, map[string]string{"rule": alerts.Revocation}); n != 1 {
		t.Errorf("revocation alerts = %v, want 1", n)
	}
	for _, want := range []string{`"msg":"alert"`, `"rule":"mass_issuance"`, `"subject":"cluster ns/alpha"`, `"rule":"revocation"`} {
		if !strings.Contains(e.logs.String(), want) {
			t.Errorf("log lacks %s:\n%s", want, e.logs)
		}
	}
	if strings.Contains(e.logs.String(), hookKey) {
		t.Error("the webhook secret is in the log")
	}
}

// Bursts count per subject; an attacker spraying subjects cannot grow the
// tables past max_keys, and what is forgotten is counted.
func TestBurstRulesBoundedAndKeyed(t *testing.T) {
	cfg := config.Alerts{MaxKeys: 8, Rules: config.AlertRules{
		DenialBurst:          config.BurstRule{Threshold: 2, Window: time.Minute},
		ThrottleBurst:        config.BurstRule{Threshold: 2, Window: time.Minute},
		UnauthenticatedBurst: config.BurstRule{Threshold: 2, Window: time.Minute},
	}}
	e := newEnv(t, cfg, alerts.Options{})
	ctx := context.Background()
	for range 3 {
		e.a.Refused(ctx, alerts.Refusal{Identity: "spiffe://td/a"})
		e.a.Refused(ctx, alerts.Refusal{Identity: "spiffe://td/b", Throttled: true})
		e.a.Refused(ctx, alerts.Refusal{Address: "192.0.2.7"})
	}
	for _, rule := range []string{alerts.DenialBurst, alerts.ThrottleBurst, alerts.UnauthenticatedBurst} {
		if n := e.count(t, alerts.MetricAlerts, map[string]string{"rule": rule}); n != 1 {
			t.Errorf("%s fired %v times, want 1", rule, n)
		}
	}
	// 1000 addresses, two attempts each: never more than max_keys tracked.
	for i := range 1000 {
		for range 2 {
			e.a.Refused(ctx, alerts.Refusal{Address: fmt.Sprintf("198.51.100.%d/%d", i%256, i)})
		}
	}
	if n := e.count(t, alerts.MetricEvicted, map[string]string{"rule": alerts.UnauthenticatedBurst}); n < 990 {
		t.Errorf("%s{rule=unauthenticated_burst} = %v, want at least 990", alerts.MetricEvicted, n)
	}
	// None of them crossed its own threshold; together they crossed the
	// default total (10 × threshold): one alert for all addresses.
	if n := e.count(t, alerts.MetricAlerts, map[string]string{"rule": alerts.UnauthenticatedBurst}); n != 2 {
		t.Errorf("sprayed addresses under the threshold fired %v alerts, want 1 (all addresses)", n-1)
	}
	if !strings.Contains(e.logs.String(), `"subject":"all addresses"`) {
		t.Errorf("no alert for all addresses:\n%s", e.logs)
	}
}

func total(n int) *int { return &n }

// A spray that keeps every identity under the per-identity threshold
// crosses total_threshold: one signed alert for all identities per window,
// with the count and the identities seen; per-identity alerts still fire as
// before, and a spray below the total, or with the total off, fires none.
func TestBurstTotalCatchesSpray(t *testing.T) {
	s := newSink(t)
	t.Setenv("HOOK_KEY", hookKey)
	cfg := config.Alerts{
		Webhooks: []config.AlertWebhook{{Name: "ops", URL: s.srv.URL, SecretEnv: "HOOK_KEY"}},
		Rules:    config.AlertRules{DenialBurst: config.BurstRule{Threshold: 5, TotalThreshold: total(100), Window: time.Minute}},
	}
	e := newEnv(t, cfg, alerts.Options{})
	ctx := context.Background()
	spray := func(rounds int) {
		for range rounds {
			for i := range 50 {
				e.a.Refused(ctx, alerts.Refusal{Identity: fmt.Sprint("spiffe://td/ci/", i)})
			}
		}
	}
	spray(2) // 100 denials, 2 an identity: at the total, not over it
	if n := e.count(t, alerts.MetricAlerts, map[string]string{"rule": alerts.DenialBurst}); n != 0 {
		t.Fatalf("fired %v times at the total; the rule is 'more than'", n)
	}
	// Alerts are counted before delivery: the count, not a hung wait on
	// the receiver, says when one did not fire.
	fired := func(want float64) {
		t.Helper()
		if n := e.count(t, alerts.MetricAlerts, map[string]string{"rule": alerts.DenialBurst}); n != want {
			t.Fatalf("%s{rule=denial_burst} = %v, want %v:\n%s", alerts.MetricAlerts, n, want, e.logs)
		}
	}
	spray(1) // 150, 3 an identity
	fired(1)
	p := <-s.seen
	if p.Rule != alerts.DenialBurst || p.Subject != "all identities" || p.Severity != alerts.Warning ||
		p.Fields["count"] != "101" || p.Fields["keys"] != "50" || p.Fields["total_threshold"] != "100" || p.Fields["window"] != "1m0s" {
		t.Errorf("payload %+v", p)
	}
	if n := e.count(t, alerts.MetricSuppressed, map[string]string{"rule": alerts.DenialBurst, "reason": "cooldown"}); n != 49 {
		t.Errorf("suppressed by cooldown = %v, want 49 (the rest of the spray)", n)
	}
	// One identity over its own threshold still fires for itself.
	for range 3 {
		e.a.Refused(ctx, alerts.Refusal{Identity: "spiffe://td/ci/7"})
	}
	fired(2)
	if p := <-s.seen; p.Subject != "identity spiffe://td/ci/7" || p.Fields["threshold"] != "5" {
		t.Errorf("per-identity payload %+v", p)
	}
	// The next window fires once more.
	e.clk.add(2 * time.Minute)
	spray(3)
	fired(3)
	if p := <-s.seen; p.Subject != "all identities" {
		t.Errorf("second window: payload %+v", p)
	}
	s.received(t, e, 3)
	if !strings.Contains(e.logs.String(), `"subject":"all identities"`) {
		t.Errorf("log lacks the alert for all identities:\n%s", e.logs)
	}
}

// Every counting rule has its total, named for its kind of subject; below
// it, or with it off, nothing fires.
func TestBurstTotalPerRule(t *testing.T) {
	burst := func(total *int) config.BurstRule {
		return config.BurstRule{Threshold: 5, TotalThreshold: total, Window: time.Minute}
	}
	for _, tc := range []struct {
		rule, subject string
		rules         func(b config.BurstRule) config.AlertRules
		feed          func(a *alerts.Alerter, i int)
	}{
		{alerts.DenialBurst, "all identities",
			func(b config.BurstRule) config.AlertRules { return config.AlertRules{DenialBurst: b} },
			func(a *alerts.Alerter, i int) {
				a.Refused(context.Background(), alerts.Refusal{Identity: fmt.Sprint("spiffe://td/", i)})
			}},
		{alerts.ThrottleBurst, "all identities",
			func(b config.BurstRule) config.AlertRules { return config.AlertRules{ThrottleBurst: b} },
			func(a *alerts.Alerter, i int) {
				a.Refused(context.Background(), alerts.Refusal{Identity: fmt.Sprint("spiffe://td/", i), Throttled: true})
			}},
		{alerts.UnauthenticatedBurst, "all addresses",
			func(b config.BurstRule) config.AlertRules { return config.AlertRules{UnauthenticatedBurst: b} },
			func(a *alerts.Alerter, i int) {
				a.Refused(context.Background(), alerts.Refusal{Address: fmt.Sprint("192.0.2.", i)})
			}},
		{alerts.MassIssuance, "all clusters",
			func(b config.BurstRule) config.AlertRules {
				return config.AlertRules{MassIssuance: config.MassIssuanceRule{BurstRule: b, Per: []string{"cluster"}}}
			},
			func(a *alerts.Alerter, i int) {
				a.Issued(context.Background(), alerts.Issuance{Cluster: fmt.Sprint("ns/c", i)})
			}},
	} {
		for _, c := range []struct {
			name  string
			total *int
			want  float64
		}{{"over", total(100), 1}, {"under", total(200), 0}, {"off", total(0), 0}} {
			t.Run(tc.rule+"/"+c.name, func(t *testing.T) {
				e := newEnv(t, config.Alerts{Rules: tc.rules(burst(c.total))}, alerts.Options{})
				for range 3 {
					for i := range 50 {
						tc.feed(e.a, i)
					}
				}
				if n := e.count(t, alerts.MetricAlerts, map[string]string{"rule": tc.rule}); n != c.want {
					t.Errorf("fired %v, want %v:\n%s", n, c.want, e.logs)
				}
				if c.want > 0 && !strings.Contains(e.logs.String(), `"subject":"`+tc.subject+`"`) {
					t.Errorf("log lacks subject %q:\n%s", tc.subject, e.logs)
				}
			})
		}
	}
}

// max_per_minute holds back a flood of distinct subjects.
func TestRuleRateLimit(t *testing.T) {
	e := newEnv(t, config.Alerts{MaxPerMinute: 5}, alerts.Options{})
	for i := range 20 {
		e.a.Emit(context.Background(), alerts.Event{Rule: alerts.ApprovalRequested, Subject: fmt.Sprint("approval ", i)})
	}
	if n := e.count(t, alerts.MetricAlerts, map[string]string{"rule": alerts.ApprovalRequested}); n != 5 {
		t.Errorf("fired %v, want 5", n)
	}
	if n := e.count(t, alerts.MetricSuppressed, map[string]string{"rule": alerts.ApprovalRequested, "reason": "rate"}); n != 15 {
		t.Errorf("suppressed %v, want 15", n)
	}
	e.a.Emit(context.Background(), alerts.Event{Rule: "no_such_rule"})
	if !strings.Contains(e.logs.String(), "unknown rule") {
		t.Error("an unknown rule was not reported")
	}
}

func TestQuotaNearLimit(t *testing.T) {
	var mu sync.Mutex
	used := 0
	reads := 0
	usage := func(_ context.Context, now time.Time, k state.QuotaKey) (state.Usage, error) {
		mu.Lock()
		defer mu.Unlock()
		reads++
		return state.Usage{Key: k, Used: used, WindowStart: now, ResetAt: now.Add(time.Hour)}, nil
	}
	e := newEnv(t, config.Alerts{Rules: config.AlertRules{QuotaNearLimit: config.QuotaRule{Percent: 80}}}, alerts.Options{Usage: usage})
	charge := []state.Charge{{Key: state.QuotaKey{Kind: state.QuotaCluster, Name: "ns/alpha"}, Quota: state.Quota{Max: 10, Window: time.Hour}}}
	for i := 1; i <= 10; i++ {
		mu.Lock()
		used = i
		mu.Unlock()
		e.a.Issued(context.Background(), alerts.Issuance{Charges: charge})
	}
	if err := e.a.Close(context.Background()); err != nil { // drains the checks
		t.Fatal(err)
	}
	if n := e.count(t, alerts.MetricAlerts, map[string]string{"rule": alerts.QuotaNearLimit}); n != 1 {
		t.Errorf("quota_near_limit fired %v times, want 1", n)
	}
	if !strings.Contains(e.logs.String(), `"subject":"cluster ns/alpha"`) {
		t.Errorf("log: %s", e.logs)
	}
	mu.Lock()
	defer mu.Unlock()
	if reads > 10 {
		t.Errorf("%d quota reads for 10 issuances", reads)
	}
}

// The periodic verification alerts on a chain edited in the real bbolt file.
func TestAuditVerifyAlertsOnBrokenChain(t *testing.T) {
	db, err := bbolt.Open(filepath.Join(t.TempDir(), "a.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	log, err := audit.Open(db)
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	for i := range 5 {
		if _, err := log.Append(audit.Record{Caller: fmt.Sprint("spiffe://td/w", i), Decision: audit.DecisionDenied}); err != nil {
			t.Fatal(err)
		}
	}
	e := newEnv(t, config.Alerts{}, alerts.Options{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	tick := make(chan time.Time)
	done := make(chan struct{})
	go func() { e.a.RunAuditVerify(ctx, log, tick); close(done) }()
	tick <- time.Time{}
	tick <- time.Time{} // the first run has finished when the second is taken
	if n := e.count(t, alerts.MetricVerify, map[string]string{"result": "ok"}); n < 1 {
		t.Fatalf("verify ok runs = %v", n)
	}
	if err := db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket([]byte("audit.records"))
		k, v := b.Cursor().First()
		return b.Put(k, bytes.Replace(v, []byte("w0"), []byte("wX"), 1))
	}); err != nil {
		t.Fatal(err)
	}
	tick <- time.Time{}
	tick <- time.Time{}
	cancel()
	<-done
	if n := e.count(t, alerts.MetricAlerts, map[string]string{"rule": alerts.AuditVerify}); n < 1 {
		t.Errorf("no audit_verify alert after the chain was edited; log:\n%s", e.logs)
	}
	if !strings.Contains(e.logs.String(), `"level":"ERROR","msg":"alert"`) {
		t.Errorf("the alert is not logged at error level:\n%s", e.logs)
	}
}

func TestNewRefusesBadWebhookSecret(t *testing.T) {
	cfg := config.Alerts{Webhooks: []config.AlertWebhook{{Name: "ops", URL: "https://example.com/", SecretEnv: "UNSET_HOOK_KEY_X"}}}
	cfg.ApplyDefaults()
	if _, err := alerts.New(cfg, alerts.Options{}); err == nil || !strings.Contains(err.Error(), "UNSET_HOOK_KEY_X") {
		t.Errorf("New = %v, want an error naming the variable", err)
	}
}
