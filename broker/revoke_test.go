package broker_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/credbroker/credbroker/broker"
	"github.com/credbroker/credbroker/broker/audit"
	"github.com/credbroker/credbroker/broker/state"
	"github.com/credbroker/credbroker/issuers"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

const adminPrincipal = "spiffe://example.test/credbroker/admin"

// TestRevocationWhileInFlightIsNotHandedOut: an identity revoked while its
// request waits on the upstream issuer does not get the credential; the
// refusal names the revocation and is on record after the intent.
func TestRevocationWhileInFlightIsNotHandedOut(t *testing.T) {
	h := newHarness(t)
	var rev state.Revocation
	h.upstream.answer = func(_ int, r issuers.Request) (issuers.Credential, error) {
		var err error
		rev, err = h.revoke.Revoke(context.Background(), adminPrincipal, state.RevokeIdentity, r.Subject, "pod compromised", time.Time{})
		if err != nil {
			t.Error(err)
		}
		return issuers.Credential{Kind: issuers.KindToken, Token: "upstream-token", ExpiresAt: h.clock.Now().Add(time.Hour), OriginIssuanceID: r.IssuanceID}, nil
	}
	conn := h.dial(h.mint(controllerID, time.Hour))
	_, err := issue(ctxT(t), conn, &credbrokerv1.IssueCredentialRequest{Profile: "upstream"})
	st, info := wantReason(t, err, credbrokerv1.ErrorReason_REVOKED)
	if info.GetMetadata()["revocation_id"] != rev.ID || info.GetMetadata()["revoked_by"] != adminPrincipal || !strings.Contains(st.Message(), "pod compromised") {
		t.Fatalf("refusal %q %v; want it to name revocation %s, its admin and reason", st.Message(), info, rev.ID)
	}
	var decisions []audit.Decision
	for _, r := range h.records() {
		decisions = append(decisions, r.Decision)
	}
	if want := "intent revoked denied"; strings.Join(strs(decisions), " ") != want {
		t.Fatalf("records %v, want %s (the intent, the revocation, the refusal)", decisions, want)
	}
	// The next request is refused before the issuer is called.
	_, err = issue(ctxT(t), conn, &credbrokerv1.IssueCredentialRequest{Profile: "upstream"})
	wantReason(t, err, credbrokerv1.ErrorReason_REVOKED)
	if n := h.upstream.callCount(); n != 1 {
		t.Fatalf("%d issuer calls, want 1", n)
	}
}

func strs(ds []audit.Decision) []string {
	out := make([]string, len(ds))
	for i, d := range ds {
		out[i] = string(d)
	}
	return out
}

// TestRevokedIssuanceIsNotReused: an issuer that hands out again a
// credential whose issuance was revoked (a reuse cache that did not hear of
// it) is asked once more, and the caller gets the fresh credential.
func TestRevokedIssuanceIsNotReused(t *testing.T) {
	h := newHarness(t)
	var first string
	h.upstream.answer = func(call int, r issuers.Request) (issuers.Credential, error) {
		cred := issuers.Credential{Kind: issuers.KindToken, Token: "t", ExpiresAt: h.clock.Now().Add(time.Hour), OriginIssuanceID: r.IssuanceID}
		switch call {
		case 1:
			first = r.IssuanceID
			cred.UpstreamRef = "first"
		case 2: // the stale cache
			cred.UpstreamRef, cred.OriginIssuanceID, cred.Reused = "first", first, true
		default:
			cred.UpstreamRef = "fresh"
		}
		return cred, nil
	}
	conn := h.dial(h.mint(controllerID, time.Hour))
	c1, err := issue(ctxT(t), conn, &credbrokerv1.IssueCredentialRequest{Profile: "upstream"})
	if err != nil {
		t.Fatal(err)
	}
	r, err := h.revoke.Revoke(context.Background(), adminPrincipal, state.RevokeIssuance, c1.GetIssuanceId(), "leaked", time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	// The issuer is recorded, so the local JWT issuer publishes only its own.
	if r.Issuer != "aws" || r.UpstreamRef != "first" {
		t.Fatalf("revocation %+v; want issuer aws, upstream ref first", r)
	}
	c2, err := issue(ctxT(t), conn, &credbrokerv1.IssueCredentialRequest{Profile: "upstream"})
	if err != nil {
		t.Fatalf("the request after the revocation: %v", err)
	}
	last := h.lastRecord()
	if last.IssuanceID != c2.GetIssuanceId() || last.UpstreamRef != "fresh" || last.Reused {
		t.Fatalf("issued %+v; want the fresh credential, not reused", last)
	}
	if n := h.upstream.callCount(); n != 3 {
		t.Fatalf("%d issuer calls, want 3", n)
	}
}

// TestRevokedReusedIssuanceNamesItsOrigin: revoking an issuance that was
// handed a credential minted for an earlier one records that earlier
// issuance (the upstream session carries its id) and the profile.
func TestRevokedReusedIssuanceNamesItsOrigin(t *testing.T) {
	h := newHarness(t)
	var first string
	h.upstream.answer = func(call int, r issuers.Request) (issuers.Credential, error) {
		cred := issuers.Credential{Kind: issuers.KindToken, Token: "t", ExpiresAt: h.clock.Now().Add(time.Hour), UpstreamRef: "first"}
		if call == 1 {
			first = r.IssuanceID
		} else {
			cred.OriginIssuanceID, cred.Reused = first, true
		}
		return cred, nil
	}
	conn := h.dial(h.mint(controllerID, time.Hour))
	c1, err := issue(ctxT(t), conn, &credbrokerv1.IssueCredentialRequest{Profile: "upstream"})
	if err != nil {
		t.Fatal(err)
	}
	c2, err := issue(ctxT(t), conn, &credbrokerv1.IssueCredentialRequest{Profile: "upstream"})
	if err != nil {
		t.Fatal(err)
	}
	r, err := h.revoke.Revoke(context.Background(), adminPrincipal, state.RevokeIssuance, c2.GetIssuanceId(), "leaked", time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	if r.Origin != c1.GetIssuanceId() || r.Profile != "upstream" {
		t.Fatalf("revocation %+v; want origin %s, profile upstream", r, c1.GetIssuanceId())
	}
	r, err = h.revoke.Revoke(context.Background(), adminPrincipal, state.RevokeIssuance, c1.GetIssuanceId(), "leaked", time.Time{})
	if err != nil || r.Origin != "" {
		t.Fatalf("revoking the credential's own issuance: %+v, %v; want no origin", r, err)
	}
}

// TestRevocationUntilAndAdminErrors: a revocation with an end stops
// refusing at that time on the broker's clock; malformed revocations and
// unknown ids are refused with reasons an operator can act on.
func TestRevocationUntilAndAdminErrors(t *testing.T) {
	h := newHarness(t)
	admin := credbrokerv1.NewAdminServiceClient(h.dialAdminSocket())
	resp, err := admin.Revoke(ctxT(t), &credbrokerv1.RevokeRequest{
		Target: &credbrokerv1.RevokeRequest_SpiffeId{SpiffeId: controllerID.String()},
		Reason: "maintenance", Until: timestamppb.New(h.clock.Now().Add(time.Hour)),
	})
	if err != nil {
		t.Fatal(err)
	}
	conn := h.dial(h.mint(controllerID, 2*time.Hour))
	_, err = issue(ctxT(t), conn, &credbrokerv1.IssueCredentialRequest{Profile: "plain-token"})
	_, info := wantReason(t, err, credbrokerv1.ErrorReason_REVOKED)
	if info.GetMetadata()["revocation_id"] != resp.GetRevocation().GetRevocationId() {
		t.Fatalf("refusal metadata %v", info.GetMetadata())
	}
	h.clock.Advance(time.Hour)
	if _, err := issue(ctxT(t), conn, &credbrokerv1.IssueCredentialRequest{Profile: "plain-token"}); err != nil {
		t.Fatalf("after the revocation's end: %v", err)
	}

	for name, req := range map[string]*credbrokerv1.RevokeRequest{
		"no target":          {},
		"not a SPIFFE ID":    {Target: &credbrokerv1.RevokeRequest_SpiffeId{SpiffeId: "capa"}},
		"not a cluster":      {Target: &credbrokerv1.RevokeRequest_Cluster{Cluster: "alpha"}},
		"until in the past":  {Target: &credbrokerv1.RevokeRequest_Cluster{Cluster: "team-a/alpha"}, Until: timestamppb.New(h.clock.Now().Add(-time.Second))},
		"reason too long":    {Target: &credbrokerv1.RevokeRequest_Cluster{Cluster: "team-a/alpha"}, Reason: strings.Repeat("x", 513)},
		"issuance not found": {Target: &credbrokerv1.RevokeRequest_IssuanceId{IssuanceId: "0190f0a0-0000-7000-8000-000000000001"}},
	} {
		_, err := admin.Revoke(ctxT(t), req)
		want := credbrokerv1.ErrorReason_INVALID_REQUEST
		if name == "issuance not found" {
			want = credbrokerv1.ErrorReason_NOT_FOUND
		}
		t.Run(name, func(t *testing.T) { wantReason(t, err, want) })
	}
	_, err = admin.LiftRevocation(ctxT(t), &credbrokerv1.LiftRevocationRequest{RevocationId: "nope"})
	wantReason(t, err, credbrokerv1.ErrorReason_NOT_FOUND)
	_, err = admin.ListRevocations(ctxT(t), &credbrokerv1.ListRevocationsRequest{PageToken: "garbage"})
	wantReason(t, err, credbrokerv1.ErrorReason_INVALID_REQUEST)
}

// TestListRevocationsPages: revocations page by id with tokens.
func TestListRevocationsPages(t *testing.T) {
	h := newHarness(t)
	admin := credbrokerv1.NewAdminServiceClient(h.dialAdminSocket())
	for _, c := range []string{"team-a/a1", "team-a/a2", "team-a/a3"} {
		if _, err := admin.Revoke(ctxT(t), &credbrokerv1.RevokeRequest{Target: &credbrokerv1.RevokeRequest_Cluster{Cluster: c}}); err != nil {
			t.Fatal(err)
		}
	}
	var got []string
	token := ""
	for pages := 0; ; pages++ {
		resp, err := admin.ListRevocations(ctxT(t), &credbrokerv1.ListRevocationsRequest{PageSize: 2, PageToken: token})
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range resp.GetRevocations() {
			got = append(got, r.GetTarget())
		}
		if token = resp.GetNextPageToken(); token == "" {
			if pages != 1 {
				t.Fatalf("%d pages of 2 for 3 revocations", pages+1)
			}
			break
		}
	}
	if strings.Join(got, ",") != "team-a/a1,team-a/a2,team-a/a3" {
		t.Fatalf("listed %v", got)
	}
}

// recordingRevoker stands for an issuer that revokes upstream: it records
// what it was asked to revoke and fails every call when err is set.
type recordingRevoker struct {
	mu   sync.Mutex
	refs []string
	err  error
}

func (r *recordingRevoker) Revoke(_ context.Context, ref string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.refs = append(r.refs, ref)
	return r.err
}

// TestUpstreamRevocationIsCappedAndReportedPerIssuer: a cluster revocation
// revokes upstream each distinct unexpired credential it covers, newest
// first, at most 100 per call, and the response says per issuer how many
// were covered, revoked, failed (with a safe code) and left over the cap.
func TestUpstreamRevocationIsCappedAndReportedPerIssuer(t *testing.T) {
	vault := &recordingRevoker{}
	flaky := &recordingRevoker{err: &issuers.Error{Kind: issuers.ErrUnavailable, Code: "HTTP 503", Err: errors.New("secret upstream text")}}
	h := newHarness(t, func(c *harnessConfig) {
		c.upstreamRevokers = map[string]issuers.UpstreamRevoker{"vault": vault, "flaky": flaky}
	})
	const cluster = "capi-a/one"
	issued := func(issuer, ref string, expires time.Time) {
		t.Helper()
		id, _ := newID()
		if _, err := h.audit.Append(audit.Record{IssuanceID: id, Caller: controllerID.String(), Profile: "p", Cluster: cluster, Issuer: issuer,
			Decision: audit.DecisionIssued, UpstreamRef: ref, ExpiresAt: expires}); err != nil {
			t.Fatal(err)
		}
	}
	later := h.clock.Now().Add(time.Hour)
	issued("vault", "expired", h.clock.Now().Add(-time.Second))
	for i := range 101 {
		issued("vault", fmt.Sprintf("lease-%03d", i), later)
	}
	issued("vault", "lease-100", later) // the same lease handed out again (reuse)
	issued("local", "jti-1", later)     // an issuer that does not revoke upstream
	issued("flaky", "f-0", later)
	issued("flaky", "f-1", later)

	admin := credbrokerv1.NewAdminServiceClient(h.dialAdminSocket())
	resp, err := admin.Revoke(ctxT(t), &credbrokerv1.RevokeRequest{Target: &credbrokerv1.RevokeRequest_Cluster{Cluster: cluster}})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, u := range resp.GetUpstream() {
		got[u.GetIssuer()] = fmt.Sprintf("covered %d revoked %d failed %d over %d error %q scan-limited %t",
			u.GetCovered(), u.GetRevoked(), u.GetFailed(), u.GetOverCap(), u.GetFirstError(), u.GetScanLimited())
	}
	// Newest first: f-1, f-0, lease-100 … lease-003 fill the cap of 100;
	// lease-002 … lease-000 are over it.
	want := map[string]string{
		"flaky": `covered 2 revoked 0 failed 2 over 0 error "issuers: upstream unavailable (HTTP 503)" scan-limited false`,
		"vault": `covered 101 revoked 98 failed 0 over 3 error "" scan-limited false`,
	}
	if len(got) != len(want) || got["flaky"] != want["flaky"] || got["vault"] != want["vault"] {
		t.Fatalf("upstream outcome\n got %v\nwant %v", got, want)
	}
	if len(vault.refs) != 98 || vault.refs[0] != "lease-100" || vault.refs[97] != "lease-003" || slices.Contains(vault.refs, "expired") {
		t.Fatalf("revoked at vault: %d refs, %v ... %v", len(vault.refs), vault.refs[:1], vault.refs[len(vault.refs)-1:])
	}
	if last := h.lastRecord(); !strings.Contains(last.Reason, "98 of 103 covered credentials revoked, 2 failed, 3 over the cap of 100") ||
		strings.Contains(last.Reason, "secret upstream text") {
		t.Fatalf("upstream outcome on record: %q", last.Reason)
	}
}

// pageSpy records the cluster pages the admin API asks the state for.
type pageSpy struct {
	broker.AdminState
	mu    sync.Mutex
	pages []state.ClusterFilter
}

func (p *pageSpy) ListClusters(ctx context.Context, f state.ClusterFilter) ([]state.ClusterSummary, error) {
	p.mu.Lock()
	p.pages = append(p.pages, f)
	p.mu.Unlock()
	return p.AdminState.ListClusters(ctx, f)
}

// TestListClustersIsOnePageOfTheIndexPerCall: each call reads one page (one
// more than asked, to know whether another follows) of the state's
// cluster index, and pages follow by name with the revocation in effect.
func TestListClustersIsOnePageOfTheIndexPerCall(t *testing.T) {
	spy := &pageSpy{}
	h := newHarness(t, func(c *harnessConfig) {
		c.adminState = func(st broker.AdminState) broker.AdminState { spy.AdminState = st; return spy }
	})
	admin := credbrokerv1.NewAdminServiceClient(h.dialAdminSocket())
	names := []string{"team-a/a1", "team-a/a2", "team-b/b1", "team-c/c1", "team-c/c2"}
	for _, c := range names {
		if _, err := admin.Revoke(ctxT(t), &credbrokerv1.RevokeRequest{Target: &credbrokerv1.RevokeRequest_Cluster{Cluster: c}}); err != nil {
			t.Fatal(err)
		}
	}
	var got []string
	token := ""
	for {
		resp, err := admin.ListClusters(ctxT(t), &credbrokerv1.ListClustersRequest{PageSize: 2, PageToken: token})
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range resp.GetClusters() {
			if c.GetRevocation().GetTarget() != c.GetCluster() {
				t.Errorf("cluster %s without its revocation: %v", c.GetCluster(), c.GetRevocation())
			}
			got = append(got, c.GetCluster())
		}
		if token = resp.GetNextPageToken(); token == "" {
			break
		}
	}
	if !slices.Equal(got, names) {
		t.Fatalf("listed %v, want %v", got, names)
	}
	want := []state.ClusterFilter{{Limit: 3}, {After: "team-a/a2", Limit: 3}, {After: "team-c/c1", Limit: 3}}
	if !slices.Equal(spy.pages, want) {
		t.Fatalf("pages read from the state %+v, want %+v", spy.pages, want)
	}
}
