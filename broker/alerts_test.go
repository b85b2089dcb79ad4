package broker_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/codes"

	"github.com/credbroker/credbroker/broker/alerts"
	"github.com/credbroker/credbroker/broker/config"
	"github.com/credbroker/credbroker/broker/limits"
	"github.com/credbroker/credbroker/broker/nodeauth"
	"github.com/credbroker/credbroker/internal/webhook"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

const alertKey = "webhook-hmac-key-never-logged-7f3a9c"

// alertSink is a webhook receiver on loopback: it verifies each delivery's
// signature with the exported verifier before accepting it.
type alertSink struct {
	srv *httptest.Server
	mu  sync.Mutex
	got []alerts.Payload
	// unverified counts deliveries whose signature did not verify.
	unverified int
	seen       chan alerts.Payload
	// hold, when set, makes every request wait until it is closed.
	hold    chan struct{}
	arrived chan struct{}
}

func newAlertSink(t *testing.T, hang bool) *alertSink {
	s := &alertSink{seen: make(chan alerts.Payload, 1000), arrived: make(chan struct{}, 1000)}
	if hang {
		s.hold = make(chan struct{})
	}
	s.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.arrived <- struct{}{}
		if s.hold != nil {
			select {
			case <-s.hold:
			case <-r.Context().Done():
			}
			return
		}
		body, _ := io.ReadAll(r.Body)
		if err := webhook.Verify([]byte(alertKey), r.Header.Get(webhook.SignatureHeader), body, time.Now(), 0); err != nil {
			s.mu.Lock()
			s.unverified++
			s.mu.Unlock()
			http.Error(w, "bad signature", http.StatusUnauthorized)
			return
		}
		var p alerts.Payload
		if err := json.Unmarshal(body, &p); err != nil {
			http.Error(w, "bad json", http.StatusBadRequest)
			return
		}
		s.mu.Lock()
		s.got = append(s.got, p)
		s.mu.Unlock()
		s.seen <- p
	}))
	t.Cleanup(func() {
		if s.hold != nil {
			close(s.hold)
		}
		s.srv.Close()
	})
	return s
}

// waitRule returns the next alert of rule the sink verified, skipping others.
func (s *alertSink) waitRule(t *testing.T, rule string) alerts.Payload {
	t.Helper()
	ctx := ctxT(t)
	for {
		select {
		case p := <-s.seen:
			if p.Rule == rule {
				return p
			}
		case <-ctx.Done():
			t.Fatalf("no %s alert arrived", rule)
		}
	}
}

func alertConfig(t *testing.T, url string, rules config.AlertRules) *config.Alerts {
	secret := filepath.Join(t.TempDir(), "hook.key")
	if err := os.WriteFile(secret, []byte(alertKey+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return &config.Alerts{
		Webhooks: []config.AlertWebhook{{Name: "ops", URL: url, SecretFile: secret}},
		Rules:    rules,
	}
}

func gathered(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
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
			sum += m.GetCounter().GetValue()
		}
	}
	return sum
}

// A real broker sends signed mass-issuance, denial-burst and revocation
// alerts to a webhook; the receiver verifies them; the HMAC key is in
// neither the logs nor the database.
func TestAlertsReachSignedWebhook(t *testing.T) {
	sink := newAlertSink(t, false)
	h := newHarness(t, func(c *harnessConfig) {
		c.alerts = alertConfig(t, sink.srv.URL, config.AlertRules{
			MassIssuance: config.MassIssuanceRule{BurstRule: config.BurstRule{Threshold: 3, Window: time.Minute}, Per: []string{"cluster"}},
			DenialBurst:  config.BurstRule{Threshold: 2, Window: time.Minute},
		})
	})
	conn := h.dial(h.mint(controllerID, time.Hour))
	var issued []string
	for range 5 {
		cred, err := issue(ctxT(t), conn, &credbrokerv1.IssueCredentialRequest{Profile: "capa-token", Cluster: "capi-prod/alpha"})
		if err != nil {
			t.Fatal(err)
		}
		issued = append(issued, cred.GetIssuanceId())
	}
	p := sink.waitRule(t, alerts.MassIssuance)
	if p.Subject != "cluster capi-prod/alpha" || p.Severity != alerts.Warning || !strings.Contains(p.Summary, "more than 3") {
		t.Errorf("mass_issuance alert %+v", p)
	}

	// Denials: the policy grants capa-token only for capi-* clusters.
	for range 3 {
		_, err := issue(ctxT(t), conn, &credbrokerv1.IssueCredentialRequest{Profile: "capa-token", Cluster: "other/beta"})
		wantReason(t, err, credbrokerv1.ErrorReason_POLICY_DENIED)
	}
	if p := sink.waitRule(t, alerts.DenialBurst); p.Subject != "identity "+controllerID.String() {
		t.Errorf("denial_burst alert %+v", p)
	}

	admin := credbrokerv1.NewAdminServiceClient(h.dialAdminSocket())
	resp, err := admin.Revoke(ctxT(t), &credbrokerv1.RevokeRequest{
		Target: &credbrokerv1.RevokeRequest_IssuanceId{IssuanceId: issued[0]}, Reason: "leaked in CI logs",
	})
	if err != nil {
		t.Fatal(err)
	}
	p = sink.waitRule(t, alerts.Revocation)
	rid := resp.GetRevocation().GetRevocationId()
	if p.Subject != "revocation "+rid || p.Fields["target"] != issued[0] || p.Fields["reason"] != "leaked in CI logs" || p.Fields["kind"] != "issuance" {
		t.Errorf("revocation alert %+v", p)
	}

	for rule, want := range map[string]float64{alerts.MassIssuance: 1, alerts.DenialBurst: 1, alerts.Revocation: 1} {
		if n := gathered(t, h.reg, alerts.MetricAlerts, map[string]string{"rule": rule}); n != want {
			t.Errorf("%s{rule=%q} = %v, want %v", alerts.MetricAlerts, rule, n, want)
		}
	}
	if n := gathered(t, h.reg, webhook.MetricDelivered, map[string]string{"webhook": "ops"}); n != 3 {
		t.Errorf("%s = %v, want 3", webhook.MetricDelivered, n)
	}
	sink.mu.Lock()
	if sink.unverified != 0 {
		t.Errorf("%d deliveries failed verification", sink.unverified)
	}
	sink.mu.Unlock()

	logs := h.logs.String()
	for _, want := range []string{`msg=alert`, `rule=mass_issuance`, `rule=revocation`, `rule=denial_burst`} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %s", want)
		}
	}
	h.audit.Close()
	h.db.Close()
	db, err := os.ReadFile(h.dbPath)
	if err != nil {
		t.Fatal(err)
	}
	for what, hay := range map[string]string{"logs": logs, "database": string(db)} {
		if strings.Contains(hay, alertKey) {
			t.Errorf("the webhook key is in the %s", what)
		}
	}
}

// A webhook receiver that never answers stops no issuance: every request
// completes while the receiver holds the one delivery it got, and the
// alerts behind it are dropped from the full queue and counted.
func TestHangingWebhookDoesNotStopIssuance(t *testing.T) {
	sink := newAlertSink(t, true)
	h := newHarness(t, func(c *harnessConfig) {
		c.alerts = alertConfig(t, sink.srv.URL, config.AlertRules{
			MassIssuance: config.MassIssuanceRule{BurstRule: config.BurstRule{Threshold: 1, Window: time.Minute}, Per: []string{"cluster"}},
		})
		// One worker, one queued delivery, and an attempt timeout (the
		// longest the configuration allows) far beyond the test: only the
		// queue bound can keep the sender from growing.
		c.alerts.Webhooks[0].Timeout = time.Minute
		c.webhook = webhook.Options{Workers: 1, QueueSize: 1, Attempts: 1}
	})
	conn := h.dial(h.mint(controllerID, time.Hour))
	const clusters = 20
	for i := range clusters {
		for range 2 { // the second issuance for a cluster crosses the threshold
			if _, err := issue(ctxT(t), conn, &credbrokerv1.IssueCredentialRequest{Profile: "capa-token", Cluster: fmt.Sprintf("capi-prod/c%d", i)}); err != nil {
				t.Fatalf("issuance for cluster %d while the webhook hangs: %v", i, err)
			}
		}
	}
	<-sink.arrived // the worker is stuck in the receiver
	if n := gathered(t, h.reg, alerts.MetricAlerts, map[string]string{"rule": alerts.MassIssuance}); n != clusters {
		t.Errorf("%s{rule=mass_issuance} = %v, want %d", alerts.MetricAlerts, n, clusters)
	}
	// 20 alerts: one in the receiver, at most one queued, the rest dropped.
	if n := gathered(t, h.reg, webhook.MetricDropped, map[string]string{"webhook": "ops", "reason": webhook.DropQueueFull}); n < clusters-2 {
		t.Errorf("%s{reason=queue_full} = %v, want at least %d", webhook.MetricDropped, n, clusters-2)
	}
	var issuedRecs int
	for _, r := range h.records() {
		if r.Decision == "issued" {
			issuedRecs++
		}
	}
	if issuedRecs != 2*clusters {
		t.Errorf("%d issued records, want %d", issuedRecs, 2*clusters)
	}
}

// quota_near_limit reads the real quota store after each issuance;
// throttle_burst counts quota refusals; unauthenticated_burst counts callers
// without an identity by address.
func TestQuotaThrottleAndUnauthenticatedAlerts(t *testing.T) {
	sink := newAlertSink(t, false)
	h := newHarness(t, func(c *harnessConfig) {
		c.limits.ClusterQuota = limits.Quota{Max: 5, Window: time.Hour}
		c.alerts = alertConfig(t, sink.srv.URL, config.AlertRules{
			QuotaNearLimit:       config.QuotaRule{Percent: 80},
			ThrottleBurst:        config.BurstRule{Threshold: 2, Window: time.Minute},
			UnauthenticatedBurst: config.BurstRule{Threshold: 3, Window: time.Minute},
		})
	})
	conn := h.dial(h.mint(controllerID, time.Hour))
	req := &credbrokerv1.IssueCredentialRequest{Profile: "capa-token", Cluster: "capi-prod/alpha"}
	for range 4 { // 4 of 5: 80%
		if _, err := issue(ctxT(t), conn, req); err != nil {
			t.Fatal(err)
		}
	}
	p := sink.waitRule(t, alerts.QuotaNearLimit)
	if p.Subject != "cluster capi-prod/alpha" || p.Fields["used"] != "4" || p.Fields["max"] != "5" {
		t.Errorf("quota_near_limit alert %+v", p)
	}
	if _, err := issue(ctxT(t), conn, req); err != nil {
		t.Fatal(err)
	}
	for range 3 { // over the quota: throttled
		_, err := issue(ctxT(t), conn, req)
		wantReason(t, err, credbrokerv1.ErrorReason_QUOTA_EXHAUSTED)
	}
	if p := sink.waitRule(t, alerts.ThrottleBurst); p.Subject != "identity "+controllerID.String() {
		t.Errorf("throttle_burst alert %+v", p)
	}

	anon := h.dialNoCertFrom("127.0.0.9")
	for range 4 {
		_, err := issue(ctxT(t), anon, &credbrokerv1.IssueCredentialRequest{Profile: "plain-token"})
		wantCode(t, err, codes.Unauthenticated)
	}
	if p := sink.waitRule(t, alerts.UnauthenticatedBurst); p.Subject != "address 127.0.0.9" {
		t.Errorf("unauthenticated_burst alert %+v", p)
	}
	if n := gathered(t, h.reg, alerts.MetricAlerts, map[string]string{"rule": alerts.QuotaNearLimit}); n != 1 {
		t.Errorf("quota_near_limit fired %v times, want 1 (once per window)", n)
	}
}

// Node SVIDs issued by attestation count toward mass_issuance like
// credentials: join-token attestations past the threshold for one cluster
// send a signed alert naming the cluster; at the threshold none, and
// renewals of admitted nodes do not count.
func TestNodeSVIDsFeedMassIssuance(t *testing.T) {
	sink := newAlertSink(t, false)
	h := newHarness(t, func(c *harnessConfig) {
		c.nodes = true
		c.alerts = alertConfig(t, sink.srv.URL, config.AlertRules{
			MassIssuance: config.MassIssuanceRule{BurstRule: config.BurstRule{Threshold: 3, Window: time.Minute}, Per: []string{"cluster"}},
		})
	})
	const cluster = "capi-prod/fleet"
	var nodes []*x509svid.SVID
	for i := range 3 {
		nodes = append(nodes, h.attestNodeIn(cluster, fmt.Sprintf("w%d", i)))
	}
	if n := gathered(t, h.reg, alerts.MetricAlerts, map[string]string{"rule": alerts.MassIssuance}); n != 0 {
		t.Fatalf("mass_issuance fired %v times at the threshold, want 0", n)
	}
	for _, node := range nodes { // routine renewals: not admissions
		if err := h.renew(node); err != nil {
			t.Fatal(err)
		}
	}
	if n := gathered(t, h.reg, alerts.MetricAlerts, map[string]string{"rule": alerts.MassIssuance}); n != 0 {
		t.Fatalf("mass_issuance fired %v times after renewals, want 0", n)
	}
	h.attestNodeIn(cluster, "w3") // the fourth admission for the cluster
	p := sink.waitRule(t, alerts.MassIssuance)
	if p.Subject != "cluster "+cluster || p.Fields["last_profile"] != nodeauth.NodeSVIDProfile || !strings.Contains(p.Summary, "more than 3") {
		t.Errorf("mass_issuance alert %+v", p)
	}
	sink.mu.Lock()
	defer sink.mu.Unlock()
	if sink.unverified != 0 {
		t.Errorf("%d deliveries failed verification", sink.unverified)
	}
}
