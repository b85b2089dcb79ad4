package daemon

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/credbroker/credbroker/broker"
	"github.com/credbroker/credbroker/broker/audit"
	"github.com/credbroker/credbroker/broker/config"
	"github.com/credbroker/credbroker/broker/state"
	"github.com/credbroker/credbroker/broker/state/boltstate"
	"github.com/credbroker/credbroker/internal/backoff"
	"github.com/credbroker/credbroker/issuers/awssts"
	"github.com/credbroker/credbroker/test/fakeclock"
	"github.com/credbroker/credbroker/test/iamfront"
)

const (
	awsApplyRole     = "arn:aws:iam::123456789012:role/capi/capa-controller"
	awsApplyRoleName = "capa-controller"
	awsOtherRole     = "arn:aws:iam::123456789012:role/capi/eks-controller"
	capaController   = "spiffe://example.org/ns/capi-system/sa/capa-controller-manager"
	otherController  = "spiffe://example.org/ns/capi-system/sa/other"
)

// awsApplyConfig has two AWS profiles on two roles: capa (max_ttl 1h, its
// role applies revocations through the IAM front) and eks (12h, applies
// nothing).
func awsApplyConfig(iamURL string) string {
	return fmt.Sprintf(`trust_domain: example.org
tls: {svid_file: x, svid_key_file: y, bundles: {example.org: z}}
issuers:
  aws:
    type: aws_sts
    aws_sts: {region: us-east-1, credentials: default, iam_endpoint: %q}
profiles:
  capa:
    issuer: aws
    max_ttl: 1h
    cluster: none
    aws:
      role_arn: %q
      revocation: {apply: true}
  eks:
    issuer: aws
    max_ttl: 12h
    cluster: none
    aws: {role_arn: %q}
`, iamURL, awsApplyRole, awsOtherRole)
}

// awsApplyHarness is the broker's revocation path as the daemon wires it —
// a real store and audit log, the index and its hook, broker.Revocations,
// the appliers and their reporter — with an injected clock, applying
// through the real SDK to a recording IAM front.
type awsApplyHarness struct {
	clock *fakeclock.Clock
	front *iamfront.Front
	rev   *broker.Revocations
	aws   *awsRevocations
	log   *audit.Log
	reg   *prometheus.Registry
	done  chan awssts.ApplyReport
	// reporter is the daemon's: metrics, log and audit of every outcome.
	reporter *awsApplyReporter
}

func startAWSApply(t *testing.T) *awsApplyHarness {
	t.Helper()
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIDBROKER")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "secret")
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	h := &awsApplyHarness{clock: fakeclock.New(time.Date(2026, 12, 1, 1, 0, 30, 0, time.UTC)), front: iamfront.Start(),
		reg: prometheus.NewRegistry(), done: make(chan awssts.ApplyReport, 1000)}
	t.Cleanup(h.front.Close)
	cfg, err := config.Parse(strings.NewReader(awsApplyConfig(h.front.URL())))
	if err != nil {
		t.Fatal(err)
	}
	db, err := boltstate.OpenDB(filepath.Join(t.TempDir(), "credbroker.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	if h.log, err = audit.Open(db); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.log.Close() })
	st, err := boltstate.New(db)
	if err != nil {
		t.Fatal(err)
	}
	var hooked *awsRevocations
	x, err := state.NewRevocationIndex(context.Background(), st, func(state.RevocationChange) {
		if hooked != nil {
			hooked.sync()
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(x.Close)
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	h.aws = newAWSRevocations(cfg, x, h.clock.Now, logger)
	h.aws.tune = func(c *awssts.ApplierConfig) {
		c.Debounce, c.Backoff = time.Millisecond, backoff.Policy{Min: time.Millisecond, Max: 2 * time.Millisecond}
	}
	var n atomic.Int64 // the reporter takes ids on the applier's goroutine
	newID := func() (string, error) { return fmt.Sprintf("0190f0a0-0000-7000-8000-%012d", n.Add(1)), nil }
	h.reporter = newAWSApplyReporter(h.reg, h.log, "spiffe://example.org/credbroker", newID, logger)
	appliers, err := h.aws.startAppliers(context.Background(), cfg, func(r awssts.ApplyReport) {
		h.reporter.report(r)
		select {
		case h.done <- r:
		default:
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(appliers) != 1 {
		t.Fatalf("%d appliers, want one (only capa's role applies)", len(appliers))
	}
	hooked = h.aws
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	go func() { appliers[0].Run(ctx); close(stopped) }()
	t.Cleanup(func() { cancel(); <-stopped })
	if h.rev, err = broker.NewRevocations(st, x, h.log, h.clock.Now, newID, broker.WithAWSPolicies(h.aws)); err != nil {
		t.Fatal(err)
	}
	return h
}

// applied waits until the role's policy has been brought up to date with
// the current state and returns what the front holds ("" for none).
func (h *awsApplyHarness) applied(t *testing.T) string {
	t.Helper()
	for {
		select {
		case r := <-h.done:
			if r.Err != nil {
				t.Fatalf("apply failed: %+v", r)
			}
			want, err := awssts.CompileDenyPolicy(h.aws.denies(h.aws.index.All(), h.clock.Now(), awsApplyRole), 0)
			if err != nil {
				t.Fatal(err)
			}
			doc, _ := h.front.Policy(awsApplyRoleName, awssts.DefaultRevocationPolicyName)
			if doc == want.Document {
				return doc
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("the role's policy never caught up; calls %+v", h.front.Calls())
		}
	}
}

func (h *awsApplyHarness) issued(t *testing.T, id, caller, profile string, ttl time.Duration) {
	t.Helper()
	_, err := h.log.Append(audit.Record{IssuanceID: id, Caller: caller, Attestation: "x509_svid", Profile: profile, Issuer: "aws",
		Decision: audit.DecisionIssued, ExpiresAt: h.clock.Now().Add(ttl), UpstreamRef: "ASIA" + id[len(id)-6:]})
	if err != nil {
		t.Fatal(err)
	}
}

func sessionFor(t *testing.T, caller, cluster, issuance string, issued time.Time) iamfront.Session {
	t.Helper()
	return iamfront.SessionOf(t, caller, cluster, issuance, issued)
}

func denied(t *testing.T, doc string, s iamfront.Session) bool {
	t.Helper()
	if doc == "" {
		return false
	}
	d, err := iamfront.Denies(doc, s)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// TestAWSRevocationsAppliedAndExpiredThroughTheSDK: an issuance, an
// identity and a cluster revocation each reach the role's inline policy
// credbroker-revocations through the real SDK; the recorded document passes
// the policy checker and denies exactly the covered sessions; a lift takes
// its entry off; once the covered sessions' longest lifetime has passed on
// the broker's clock, housekeeping takes the entries off and finally
// deletes the policy; an issuance of a profile on another role is not put
// on this one; every write is on record and in the metrics.
func TestAWSRevocationsAppliedAndExpiredThroughTheSDK(t *testing.T) {
	h := startAWSApply(t)
	ctx := context.Background()
	t0 := h.clock.Now()
	const (
		capaIssuance = "0190f0a0-0000-7000-8000-0000000000c1"
		eksIssuance  = "0190f0a0-0000-7000-8000-0000000000e1"
	)
	h.issued(t, capaIssuance, otherController, "capa", 30*time.Minute)
	h.issued(t, eksIssuance, otherController, "eks", 30*time.Minute)
	before := t0.Add(-10 * time.Minute)

	if _, err := h.rev.Revoke(ctx, "unix:uid=0", state.RevokeIssuance, capaIssuance, "leaked", time.Time{}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.rev.Revoke(ctx, "unix:uid=0", state.RevokeIssuance, eksIssuance, "leaked", time.Time{}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.rev.Revoke(ctx, "unix:uid=0", state.RevokeIdentity, capaController, "pod compromised", time.Time{}); err != nil {
		t.Fatal(err)
	}
	cl, err := h.rev.Revoke(ctx, "unix:uid=0", state.RevokeCluster, "team-a/prod", "incident", time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	doc := h.applied(t)
	if err := awssts.CheckPolicyDocument(doc); err != nil {
		t.Fatalf("applied document: %v\n%s", err, doc)
	}
	afterBound := awssts.DenyBound(t0, time.Time{})
	for _, c := range []struct {
		name string
		s    iamfront.Session
		want bool
	}{
		{"revoked issuance", sessionFor(t, otherController, "", capaIssuance, before), true},
		{"another issuance", sessionFor(t, otherController, "", "0190f0a0-0000-7000-8000-0000000000c2", before), false},
		{"revoked identity, issued before", sessionFor(t, capaController, "", "i1", before), true},
		{"revoked identity, issued after the bound", sessionFor(t, capaController, "", "i2", afterBound), false},
		{"revoked cluster, issued before", sessionFor(t, otherController, "team-a/prod", "i3", before), true},
		{"another cluster", sessionFor(t, otherController, "team-b/prod", "i4", before), false},
	} {
		if got := denied(t, doc, c.s); got != c.want {
			t.Errorf("%s: denied = %v, want %v\n%s", c.name, got, c.want, doc)
		}
	}
	if strings.Contains(doc, eksIssuance) {
		t.Errorf("an issuance of a profile on another role is on this one:\n%s", doc)
	}

	// A lift takes the cluster's entry off.
	if _, err := h.rev.Lift(ctx, "unix:uid=0", cl.ID); err != nil {
		t.Fatal(err)
	}
	doc = h.applied(t)
	if denied(t, doc, sessionFor(t, otherController, "team-a/prod", "i3", before)) {
		t.Fatalf("lifted cluster still denied:\n%s", doc)
	}

	// Past the issuance's expiry, housekeeping takes it off; the identity's
	// stays until its bound plus capa's max_ttl (1h), not eks's 12h: only
	// capa's sessions are on this role.
	h.clock.Advance(31 * time.Minute)
	h.aws.purge().run(h.clock.Now())
	doc = h.applied(t)
	if denied(t, doc, sessionFor(t, otherController, "", capaIssuance, before)) || !denied(t, doc, sessionFor(t, capaController, "", "i1", before)) {
		t.Fatalf("after the issuance expired:\n%s", doc)
	}
	h.clock.Set(afterBound.Add(time.Hour))
	h.aws.purge().run(h.clock.Now())
	if doc := h.applied(t); doc != "" {
		t.Fatalf("policy still on the role after every covered session expired:\n%s", doc)
	}
	calls := h.front.Calls()
	if last := calls[len(calls)-1]; last.Action != "DeleteRolePolicy" || last.RoleName != awsApplyRoleName || last.PolicyName != "credbroker-revocations" {
		t.Fatalf("last call %+v, want DeleteRolePolicy", last)
	}

	recs, err := h.log.List(audit.Query{Decision: audit.DecisionRevoked})
	if err != nil {
		t.Fatal(err)
	}
	var applied, deleted int
	for _, r := range recs {
		if strings.HasPrefix(r.Reason, "aws_revocation_applied: put credbroker-revocations on role "+awsApplyRole) && r.UpstreamRef == awsApplyRole {
			applied++
		}
		if strings.HasPrefix(r.Reason, "aws_revocation_applied: delete") {
			deleted++
		}
	}
	if applied == 0 || deleted != 1 {
		t.Errorf("%d put and %d delete records on record, want some and one", applied, deleted)
	}
	if got := testutil.ToFloat64(h.reporter.inSync.WithLabelValues(awsApplyRole)); got != 1 {
		t.Errorf("in_sync = %v, want 1", got)
	}
	if got := testutil.ToFloat64(h.reporter.writes.WithLabelValues(awsApplyRole, awssts.ApplyDelete, "ok")); got != 1 {
		t.Errorf("delete writes = %v, want 1", got)
	}
}
