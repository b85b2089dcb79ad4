package broker_test

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/credbroker/credbroker/broker/alerts"
	"github.com/credbroker/credbroker/broker/config"
	"github.com/credbroker/credbroker/broker/limits"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// TestAdminRefusalsAreBoundedCountedAndAlerted: callers that are not admins
// — a workload SVID over mTLS, a socket peer whose uid is not listed, a
// caller with no identity — are refused on the admin API; every refusal is
// counted in the metrics and feeds the burst alerts (a signed webhook names
// the caller), the audit gets at most the recording burst of each (the rest
// summarised in a later record), and past the unauthenticated request limit
// the answer is RESOURCE_EXHAUSTED.
func TestAdminRefusalsAreBoundedCountedAndAlerted(t *testing.T) {
	const recordBurst, requestBurst, attempts = 2, 5, 12
	sink := newAlertSink(t, false)
	h := newHarness(t, func(c *harnessConfig) {
		c.uids = []uint32{uint32(os.Getuid()) + 4242} // this process is not an admin on the socket
		c.refusals.ByIdentity.PerKey = limits.Spec{Rate: 1, Burst: recordBurst}
		c.refusals.ByAddress.PerKey = limits.Spec{Rate: 1, Burst: recordBurst}
		c.requests.Unauthenticated = limits.Spec{Rate: 0.001, Burst: requestBurst}
		c.alerts = alertConfig(t, sink.srv.URL, config.AlertRules{
			DenialBurst:          config.BurstRule{Threshold: 3, Window: time.Minute},
			UnauthenticatedBurst: config.BurstRule{Threshold: 3, Window: time.Minute},
		})
	})
	ask := func(c credbrokerv1.AdminServiceClient) error {
		_, err := c.ListIssuances(ctxT(t), &credbrokerv1.ListIssuancesRequest{})
		return err
	}

	workload := credbrokerv1.NewAdminServiceClient(h.dial(h.mint(controllerID, time.Hour)))
	var denied, throttled int
	for i := range attempts {
		err := ask(workload)
		switch status.Code(err) {
		case codes.PermissionDenied:
			wantReason(t, err, credbrokerv1.ErrorReason_ADMIN_ONLY)
			denied++
		case codes.ResourceExhausted:
			retryDelay(t, err)
			throttled++
		default:
			t.Fatalf("attempt %d by a workload: %v", i, err)
		}
	}
	if denied != requestBurst || throttled != attempts-requestBurst {
		t.Fatalf("%d ADMIN_ONLY, %d throttled; want %d and %d", denied, throttled, requestBurst, attempts-requestBurst)
	}
	if p := sink.waitRule(t, alerts.DenialBurst); p.Subject != "identity "+controllerID.String() {
		t.Errorf("denial_burst alert %+v", p)
	}
	if got := metricValue(t, h, "credbroker_admin_refusals_total", "mtls", "not_admin"); got != attempts {
		t.Errorf("credbroker_admin_refusals_total{mtls,not_admin} = %v, want %d", got, attempts)
	}
	recs := refusalsOf(h.records(), controllerID.String())
	if len(recs) != recordBurst {
		t.Fatalf("%d records of %d refused admin calls; want the recording burst, %d", len(recs), attempts, recordBurst)
	}
	if !strings.Contains(recs[0].Reason, "is not an admin identity (ListIssuances)") {
		t.Errorf("record reason %q", recs[0].Reason)
	}

	socket := credbrokerv1.NewAdminServiceClient(h.dialAdminSocket())
	for range 4 {
		wantReason(t, ask(socket), credbrokerv1.ErrorReason_ADMIN_ONLY)
	}
	uid := fmt.Sprintf("unix:uid=%d", os.Getuid())
	if p := sink.waitRule(t, alerts.DenialBurst); p.Subject != "identity "+uid {
		t.Errorf("denial_burst alert %+v", p)
	}
	if got := metricValue(t, h, "credbroker_admin_refusals_total", "socket", "not_admin"); got != 4 {
		t.Errorf("credbroker_admin_refusals_total{socket,not_admin} = %v, want 4", got)
	}
	if recs := refusalsOf(h.records(), uid); len(recs) != recordBurst || !strings.Contains(recs[0].Reason, "uid") {
		t.Fatalf("records of the socket peer: %+v; want %d naming its uid", recs, recordBurst)
	}

	anon := credbrokerv1.NewAdminServiceClient(h.dialNoCertFrom("127.0.0.9"))
	for range 4 {
		wantReason(t, ask(anon), credbrokerv1.ErrorReason_UNAUTHENTICATED)
	}
	if p := sink.waitRule(t, alerts.UnauthenticatedBurst); p.Subject != "address 127.0.0.9" {
		t.Errorf("unauthenticated_burst alert %+v", p)
	}
	if got := metricValue(t, h, "credbroker_authentication_failures_total", "admin"); got != 4 {
		t.Errorf("credbroker_authentication_failures_total{admin} = %v, want 4", got)
	}
	if got := metricValue(t, h, "credbroker_refusals_unrecorded_total", "address"); got != 4-recordBurst {
		t.Errorf("credbroker_refusals_unrecorded_total{address} = %v, want %d", got, 4-recordBurst)
	}

	// Every refusal is a record or counted in one once the summaries are out.
	h.flushAll()
	for caller, want := range map[string]int{controllerID.String(): attempts, uid: 4} {
		if got := accounted(t, refusalsOf(h.records(), caller)); got != want {
			t.Errorf("the records of %s account for %d refusals, want %d", caller, got, want)
		}
	}
	sink.mu.Lock()
	defer sink.mu.Unlock()
	if sink.unverified != 0 {
		t.Errorf("%d deliveries failed verification", sink.unverified)
	}
}
