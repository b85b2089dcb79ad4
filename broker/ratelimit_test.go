package broker_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/credbroker/credbroker/attest/jointoken"
	"github.com/credbroker/credbroker/broker"
	"github.com/credbroker/credbroker/broker/audit"
	"github.com/credbroker/credbroker/broker/limits"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// retryDelay returns the RetryInfo delay of a RESOURCE_EXHAUSTED error, and
// fails the test if there is none.
func retryDelay(t *testing.T, err error) time.Duration {
	t.Helper()
	st := wantCode(t, err, codes.ResourceExhausted)
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok && ri.GetRetryDelay().AsDuration() > 0 {
			return ri.GetRetryDelay().AsDuration()
		}
	}
	t.Fatalf("%q carries no RetryInfo", st.Message())
	return 0
}

var summaryRE = regexp.MustCompile(`\((\d+) earlier refusals [^)]* not recorded\)`)

// accounted is how many refusals the records stand for: each record itself,
// plus the earlier refusals it says were not recorded.
func accounted(t *testing.T, recs []audit.Record) int {
	t.Helper()
	n := 0
	for _, r := range recs {
		n++
		for _, m := range summaryRE.FindAllStringSubmatch(r.Reason, -1) {
			k, err := strconv.Atoi(m[1])
			if err != nil {
				t.Fatal(err)
			}
			n += k
		}
	}
	return n
}

// refusalsOf returns the records of refusals (not issuances) by caller.
func refusalsOf(recs []audit.Record, caller string) []audit.Record {
	var out []audit.Record
	for _, r := range recs {
		if r.Caller == caller && (r.Decision == audit.DecisionDenied || r.Decision == audit.DecisionThrottled) {
			out = append(out, r)
		}
	}
	return out
}

// flushAll writes every pending refusal summary, moving the clock so that
// the recording buckets refill.
func (h *harness) flushAll() {
	h.t.Helper()
	for i := 0; i < 1000; i++ {
		before := len(h.records())
		h.clock.Advance(time.Minute)
		if err := h.refusals.Flush(); err != nil {
			h.t.Fatal(err)
		}
		if len(h.records()) == before {
			return
		}
	}
	h.t.Fatal("refusal summaries are still pending after 1000 flushes")
}

// TestPolicyDeniedFloodIsRecordedAtABoundedRate: one authenticated identity
// floods requests that fail validation or policy, faster than its request
// limit. The audit gets at most the recording burst; the callers over the
// limit get RESOURCE_EXHAUSTED with RetryInfo; every refusal is a record or
// counted in one, and the metrics say the same.
func TestPolicyDeniedFloodIsRecordedAtABoundedRate(t *testing.T) {
	const recordBurst, requestBurst, attempts = 5, 50, 120
	h := newHarness(t, func(c *harnessConfig) {
		c.refusals.ByIdentity.PerKey = limits.Spec{Rate: 1, Burst: recordBurst}
		c.requests.Issue = limits.Spec{Rate: 1, Burst: requestBurst}
	})
	conn := h.dial(h.mint(controllerID, time.Hour))
	var denied, throttled int
	for i := 0; i < attempts; i++ {
		req := &credbrokerv1.IssueCredentialRequest{Profile: "capa-token", Cluster: "other/c1"} // not granted
		if i%2 == 1 {
			req = &credbrokerv1.IssueCredentialRequest{Profile: "no-such-profile"}
		}
		_, err := issue(ctxT(t), conn, req)
		switch status.Code(err) {
		case codes.PermissionDenied, codes.InvalidArgument:
			denied++
			if strings.Contains(status.Convert(err).Message(), "(request ") != (denied <= recordBurst) {
				t.Errorf("refusal %d: message %q names a request id iff it was recorded", denied, status.Convert(err).Message())
			}
		case codes.ResourceExhausted:
			throttled++
			retryDelay(t, err)
		default:
			t.Fatalf("attempt %d: %v", i, err)
		}
	}
	if denied != requestBurst || throttled != attempts-requestBurst {
		t.Fatalf("%d refused by policy or validation, %d throttled; want %d and %d", denied, throttled, requestBurst, attempts-requestBurst)
	}
	recs := refusalsOf(h.records(), controllerID.String())
	if len(recs) != recordBurst {
		t.Fatalf("%d records for a flood of %d refusals; want the recording burst, %d", len(recs), attempts, recordBurst)
	}
	// The log says no more than the audit: refusals left out are debug lines.
	if got := strings.Count(h.logs.String(), `level=INFO msg="credential refused"`); got != recordBurst {
		t.Errorf("%d refusals logged at info, want the %d recorded", got, recordBurst)
	}
	if got := metricValue(t, h, "credbroker_refusals_unrecorded_total", "identity"); got != attempts-recordBurst {
		t.Errorf("credbroker_refusals_unrecorded_total{class=identity} = %v, want %d", got, attempts-recordBurst)
	}
	if got := metricValue(t, h, "credbroker_rate_limited_total", "IssueCredential", "key"); got != attempts-requestBurst {
		t.Errorf("credbroker_rate_limited_total = %v, want %d", got, attempts-requestBurst)
	}

	// A second later, the next refusal is recorded and accounts for the rest.
	h.clock.Advance(time.Second)
	_, err := issue(ctxT(t), conn, &credbrokerv1.IssueCredentialRequest{Profile: "no-such-profile"})
	wantCode(t, err, codes.InvalidArgument)
	recs = refusalsOf(h.records(), controllerID.String())
	last := recs[len(recs)-1]
	want := fmt.Sprintf("(%d earlier refusals for this identity were not recorded)", attempts-recordBurst)
	if !strings.Contains(last.Reason, want) || last.Decision != audit.DecisionDenied {
		t.Fatalf("record %+v; want a denial whose reason contains %q", last, want)
	}
	if got := accounted(t, recs); got != attempts+1 {
		t.Fatalf("the records account for %d refusals, want %d", got, attempts+1)
	}
	if v, err := h.audit.Verify(); err != nil || !v.OK {
		t.Fatalf("Verify = %+v, %v", v, err)
	}
}

// TestQuietFloodIsSummarisedByFlush: refusals left out are written by Flush
// once the identity goes quiet, so the audit accounts for all of them without
// another request.
func TestQuietFloodIsSummarisedByFlush(t *testing.T) {
	h := newHarness(t, func(c *harnessConfig) {
		c.refusals.ByIdentity.PerKey = limits.Spec{Rate: 1, Burst: 2}
	})
	conn := h.dial(h.mint(controllerID, time.Hour))
	const attempts = 30
	for i := 0; i < attempts; i++ {
		_, err := issue(ctxT(t), conn, &credbrokerv1.IssueCredentialRequest{Profile: "no-such-profile"})
		wantCode(t, err, codes.InvalidArgument)
	}
	h.flushAll()
	recs := refusalsOf(h.records(), controllerID.String())
	if len(recs) != 3 || !strings.Contains(recs[2].Reason, "(recorded late)") {
		t.Fatalf("records %+v; want the burst of 2 and one late summary", recs)
	}
	if got := accounted(t, recs); got != attempts {
		t.Fatalf("the records account for %d refusals, want %d", got, attempts)
	}
}

// TestIdentityBIsServedWhileAFloods: identity A far past its limit does not
// cost identity B anything.
func TestIdentityBIsServedWhileAFloods(t *testing.T) {
	h := newHarness(t, func(c *harnessConfig) { c.requests.Issue = limits.Spec{Rate: 1, Burst: 10} })
	a := h.dial(h.mint(controllerID, time.Hour))
	nodeB := spiffeid.RequireFromPath(td, "/capi/cluster/capi-prod/w1/node/b")
	b := h.dial(h.mint(nodeB, time.Hour))
	for i := 0; i < 100; i++ {
		_, err := issue(ctxT(t), a, &credbrokerv1.IssueCredentialRequest{Profile: "plain-token"})
		if i >= 10 {
			retryDelay(t, err)
		}
		if i%10 == 0 {
			if _, err := issue(ctxT(t), b, &credbrokerv1.IssueCredentialRequest{Profile: "capa-token"}); err != nil {
				t.Fatalf("identity B while A floods: %v", err)
			}
		}
	}
	if got := len(refusalsOf(h.records(), controllerID.String())); got > broker.DefaultRefusalLimits().ByIdentity.PerKey.Burst {
		t.Fatalf("%d records of A's throttled requests; want at most the recording burst", got)
	}
}

// TestUnauthenticatedRecordingIsBoundedAcrossAddresses: many source
// addresses, each within its own recording rate, are bounded by the total;
// what is left out is summarised per address.
func TestUnauthenticatedRecordingIsBoundedAcrossAddresses(t *testing.T) {
	const addrs, each, total = 40, 4, 20
	h := newHarness(t, func(c *harnessConfig) {
		c.refusals.ByAddress = broker.RecordingLimits{PerKey: limits.Spec{Rate: 1, Burst: each}, Total: limits.Spec{Rate: 1, Burst: total}}
	})
	req := &credbrokerv1.IssueCredentialRequest{Profile: "plain-token"}
	for i := 0; i < addrs; i++ {
		conn := h.dialNoCertFrom(fmt.Sprintf("127.0.0.%d", 10+i))
		for j := 0; j < each; j++ {
			_, err := issue(ctxT(t), conn, req)
			wantCode(t, err, codes.Unauthenticated)
		}
	}
	recs := h.records()
	if len(recs) != total {
		t.Fatalf("%d records from %d addresses; want the total burst, %d", len(recs), addrs, total)
	}
	if got := metricValue(t, h, "credbroker_unauthenticated_unrecorded_total"); got != addrs*each-total {
		t.Errorf("credbroker_unauthenticated_unrecorded_total = %v, want %d", got, addrs*each-total)
	}
	h.flushAll()
	recs = h.records()
	if got := accounted(t, recs); got != addrs*each {
		t.Fatalf("the records account for %d attempts, want %d", got, addrs*each)
	}
	sources := map[string]bool{}
	for _, r := range recs {
		if i := strings.Index(r.Reason, "(from 127.0.0."); i >= 0 {
			sources[r.Reason[i:strings.Index(r.Reason[i:], ")")+i]] = true
		}
	}
	if len(sources) != addrs {
		t.Errorf("records name %d source addresses, want %d", len(sources), addrs)
	}
}

// TestUnauthenticatedCallsAreThrottledPerAddressAndInTotal: past the
// unauthenticated request limit the answer is RESOURCE_EXHAUSTED, per
// address first, then for everyone.
func TestUnauthenticatedCallsAreThrottledPerAddressAndInTotal(t *testing.T) {
	h := newHarness(t, func(c *harnessConfig) {
		c.requests.Unauthenticated = limits.Spec{Rate: 1, Burst: 3}
		c.requests.UnauthenticatedTotal = limits.Spec{Rate: 1, Burst: 7}
	})
	req := &credbrokerv1.IssueCredentialRequest{Profile: "plain-token"}
	first := h.dialNoCertFrom("127.0.0.2")
	for i := 0; i < 3; i++ {
		_, err := issue(ctxT(t), first, req)
		wantCode(t, err, codes.Unauthenticated)
	}
	_, err := issue(ctxT(t), first, req)
	if retryDelay(t, err); !strings.Contains(status.Convert(err).Message(), "from this address") {
		t.Errorf("message %q", status.Convert(err).Message())
	}
	second := h.dialNoCertFrom("127.0.0.3")
	for i := 0; i < 3; i++ {
		_, err := issue(ctxT(t), second, req)
		wantCode(t, err, codes.Unauthenticated)
	}
	_, err = issue(ctxT(t), h.dialNoCertFrom("127.0.0.4"), req)
	wantCode(t, err, codes.Unauthenticated) // the 7th: the last of the total
	_, err = issue(ctxT(t), h.dialNoCertFrom("127.0.0.5"), req)
	if retryDelay(t, err); !strings.Contains(status.Convert(err).Message(), "from all addresses") {
		t.Errorf("message %q", status.Convert(err).Message())
	}
}

// TestAttestNodeIsThrottledPerAddressAndInTotal: attestation attempts are
// limited before the evidence is looked at.
func TestAttestNodeIsThrottledPerAddressAndInTotal(t *testing.T) {
	h := newHarness(t, func(c *harnessConfig) {
		c.nodes = true
		c.requests.Attest = limits.Spec{Rate: 1, Burst: 2}
		c.requests.AttestTotal = limits.Spec{Rate: 1, Burst: 5}
	})
	attestFrom := func(ip string) error {
		_, err := credbrokerv1.NewNodeServiceClient(h.dialNoCertFrom(ip)).AttestNode(ctxT(t), &credbrokerv1.AttestNodeRequest{
			Evidence: &credbrokerv1.AttestNodeRequest_JoinToken{JoinToken: &credbrokerv1.JoinTokenEvidence{Token: "not-a-token"}},
		})
		return err
	}
	for i := 0; i < 2; i++ {
		wantCode(t, attestFrom("127.0.0.2"), codes.Unauthenticated)
	}
	retryDelay(t, attestFrom("127.0.0.2"))
	for _, ip := range []string{"127.0.0.3", "127.0.0.3", "127.0.0.4"} {
		wantCode(t, attestFrom(ip), codes.Unauthenticated)
	}
	err := attestFrom("127.0.0.5")
	if retryDelay(t, err); !strings.Contains(status.Convert(err).Message(), "from all addresses") {
		t.Errorf("message %q", status.Convert(err).Message())
	}
	h.clock.Advance(time.Second)
	wantCode(t, attestFrom("127.0.0.5"), codes.Unauthenticated)
	if got := metricValue(t, h, "credbroker_rate_limited_total", "AttestNode", "total"); got != 1 {
		t.Errorf("credbroker_rate_limited_total{AttestNode,total} = %v, want 1", got)
	}
}

// TestRenewNodeSVIDIsThrottledPerNode: one attested node cannot mint node
// SVIDs faster than the renew limit; other nodes are unaffected.
func TestRenewNodeSVIDIsThrottledPerNode(t *testing.T) {
	h := newHarness(t, func(c *harnessConfig) {
		c.nodes = true
		c.requests.Renew = limits.Spec{Rate: 0.1, Burst: 3}
	})
	a, b := h.attestNode("w1"), h.attestNode("w2")
	for i := 0; i < 3; i++ {
		if err := h.renew(a); err != nil {
			t.Fatalf("renewal %d within the burst: %v", i, err)
		}
	}
	d := retryDelay(t, h.renew(a))
	if d <= 0 || d > 10*time.Second {
		t.Errorf("retry delay %v, want (0, 10s]", d)
	}
	if err := h.renew(b); err != nil {
		t.Fatalf("another node's renewal: %v", err)
	}
	h.clock.Advance(d)
	if err := h.renew(a); err != nil {
		t.Fatalf("after the retry delay: %v", err)
	}
	var issued int
	for _, r := range h.records() {
		if r.Caller == a.ID.String() && r.Decision == audit.DecisionIssued {
			issued++
		}
	}
	if issued != 1+3+1 { // attestation, the burst, the one after the delay
		t.Fatalf("%d node SVIDs issued to one node, want 5", issued)
	}
}

// attestNode admits node NAME of cluster capi-prod/NAME's with a join token and
// returns its SVID.
func (h *harness) attestNode(name string) *x509svid.SVID {
	h.t.Helper()
	return h.attestNodeIn("capi-prod/"+name, name)
}

// attestNodeIn admits node name of cluster (namespace/name) with a join
// token bound to it and returns its SVID.
func (h *harness) attestNodeIn(cluster, name string) *x509svid.SVID {
	h.t.Helper()
	secret, tokKey, tok, err := jointoken.New(rand.Reader, h.clock.Now(), cluster, name, time.Hour)
	if err != nil {
		h.t.Fatal(err)
	}
	if err := h.state.CreateJoinToken(ctxT(h.t), tokKey, tok); err != nil {
		h.t.Fatal(err)
	}
	key, csr := newCSR(h.t)
	resp, err := credbrokerv1.NewNodeServiceClient(h.dialNoCert()).AttestNode(ctxT(h.t), &credbrokerv1.AttestNodeRequest{
		Csr:      csr,
		Evidence: &credbrokerv1.AttestNodeRequest_JoinToken{JoinToken: &credbrokerv1.JoinTokenEvidence{Token: secret}},
	})
	if err != nil {
		h.t.Fatal(err)
	}
	return nodeSVID(h.t, resp.GetSvid(), key)
}

// renew renews svid's node SVID with a fresh key, over mTLS as that node.
func (h *harness) renew(svid *x509svid.SVID) error {
	_, csr := newCSR(h.t)
	_, err := credbrokerv1.NewNodeServiceClient(h.dial(svid)).RenewNodeSVID(ctxT(h.t), &credbrokerv1.RenewNodeSVIDRequest{Csr: csr})
	return err
}

func newCSR(t *testing.T) (*ecdsa.PrivateKey, []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	return key, csr
}

func nodeSVID(t *testing.T, s *credbrokerv1.NodeSVID, key *ecdsa.PrivateKey) *x509svid.SVID {
	t.Helper()
	var certs []*x509.Certificate
	for _, der := range s.GetCertChain() {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		certs = append(certs, c)
	}
	id, err := spiffeid.FromString(s.GetSpiffeId())
	if err != nil {
		t.Fatal(err)
	}
	return &x509svid.SVID{ID: id, Certificates: certs, PrivateKey: key}
}

// TestAdminAPIIsThrottledPerPrincipal: admin calls, unary and streams, on
// the socket and over mTLS, each principal with its own bucket.
func TestAdminAPIIsThrottledPerPrincipal(t *testing.T) {
	h := newHarness(t, func(c *harnessConfig) { c.requests.Admin = limits.Spec{Rate: 1, Burst: 3} })
	for _, conn := range []*grpc.ClientConn{h.dialAdminSocket(), h.dial(h.mint(adminID, time.Hour))} {
		adm := credbrokerv1.NewAdminServiceClient(conn)
		for i := 0; i < 2; i++ {
			if _, err := adm.ListIssuances(ctxT(t), &credbrokerv1.ListIssuancesRequest{}); err != nil {
				t.Fatal(err)
			}
		}
		stream, err := adm.ExportAudit(ctxT(t), &credbrokerv1.ExportAuditRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := stream.Recv(); status.Code(err) != codes.OK && err.Error() != "EOF" {
			t.Fatalf("export within the burst: %v", err)
		}
		stream, err = adm.ExportAudit(ctxT(t), &credbrokerv1.ExportAuditRequest{})
		if err != nil {
			t.Fatal(err)
		}
		_, err = stream.Recv()
		retryDelay(t, err)
		_, err = verifyAudit(ctxT(t), adm)
		retryDelay(t, err)
	}
}

// metricValue returns the value of the counter name whose label values
// include all of values, from the harness's registry (0 when absent).
func metricValue(t *testing.T, h *harness, name string, values ...string) float64 {
	t.Helper()
	families, err := h.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	next:
		for _, m := range f.GetMetric() {
			have := map[string]bool{}
			for _, l := range m.GetLabel() {
				have[l.GetValue()] = true
			}
			for _, v := range values {
				if !have[v] {
					continue next
				}
			}
			return m.GetCounter().GetValue()
		}
	}
	return 0
}
