package broker_test

import (
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/credbroker/credbroker/broker/audit"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// TestOverlongCallerIDIsRefusedAndRecordedClipped: SPIFFE allows IDs of
// 2048 bytes, the audit record's caller field holds 1024. A verified caller
// with a longer ID is refused as unauthenticated (the broker cannot serve an
// identity it cannot record) and the refusal is on record with the ID
// clipped, instead of UNAVAILABLE and no record.
func TestOverlongCallerIDIsRefusedAndRecordedClipped(t *testing.T) {
	h := newHarness(t)
	long := spiffeid.RequireFromPath(td, "/ns/"+strings.Repeat("a", 1500))
	tok, err := h.ca.MintJWTSVID(long, []string{"credbroker"}, 5*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	req := &credbrokerv1.IssueCredentialRequest{Profile: "plain-token"}
	for name, call := range map[string]func() error{
		"X.509-SVID": func() error { _, err := issue(ctxT(t), h.dial(h.mint(long, time.Hour)), req); return err },
		"JWT-SVID":   func() error { return h.issueWithJWT(tok, req) },
	} {
		t.Run(name, func(t *testing.T) {
			before := len(h.records())
			st := wantCode(t, call(), codes.Unauthenticated)
			if !strings.Contains(st.Message(), "longer than the 1024 the broker accepts") {
				t.Errorf("message = %q", st.Message())
			}
			recs := h.records()
			if len(recs) != before+1 {
				t.Fatalf("%d new records, want 1", len(recs)-before)
			}
			r := recs[len(recs)-1]
			if r.Decision != audit.DecisionDenied || r.Caller != "" || !strings.Contains(r.Reason, "spiffe://example.test/ns/aaaa") ||
				!strings.Contains(r.Reason, "...") || len(r.Reason) > audit.MaxFieldLen {
				t.Errorf("record = %+v", r)
			}
		})
	}
	// An ID at the limit is served.
	atLimit := spiffeid.RequireFromPath(td, "/ns/"+strings.Repeat("b", 1024-len("spiffe://example.test/ns/")))
	if _, err := issue(ctxT(t), h.dial(h.mint(atLimit, time.Hour)), req); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("ID of exactly 1024 bytes: %v, want PermissionDenied from policy", err)
	}
}

// TestAdminAPIRequiresX509SVID: a bearer JWT-SVID for an admin identity is
// refused on the admin API unless admin.allow_jwt_svid is set.
func TestAdminAPIRequiresX509SVID(t *testing.T) {
	for _, allow := range []bool{false, true} {
		h := newHarness(t, func(c *harnessConfig) { c.adminJWT = allow })
		tok, err := h.ca.MintJWTSVID(adminID, []string{"credbroker"}, 5*time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		ctx := metadata.AppendToOutgoingContext(ctxT(t), "authorization", "Bearer "+tok)
		_, err = verifyAudit(ctx, credbrokerv1.NewAdminServiceClient(h.dialNoCert()))
		if !allow {
			st := wantCode(t, err, codes.Unauthenticated)
			if !strings.Contains(st.Message(), "X.509-SVID") {
				t.Errorf("message = %q", st.Message())
			}
			// The stream is guarded alike.
			stream, err := credbrokerv1.NewAdminServiceClient(h.dialNoCert()).ExportAudit(ctx, &credbrokerv1.ExportAuditRequest{})
			if err == nil {
				_, err = stream.Recv()
			}
			wantCode(t, err, codes.Unauthenticated)
			// Both refusals are counted and on record under the identity.
			if got := metricValue(t, h, "credbroker_admin_refusals_total", "mtls", "jwt_svid"); got != 2 {
				t.Errorf("credbroker_admin_refusals_total{mtls,jwt_svid} = %v, want 2", got)
			}
			if recs := refusalsOf(h.records(), adminID.String()); len(recs) != 2 || recs[0].Attestation != "jwt-svid" || !strings.Contains(recs[0].Reason, "X.509-SVID") {
				t.Errorf("refusal records %+v, want 2 naming the bearer token", recs)
			}
		} else if err != nil {
			t.Fatalf("admin.allow_jwt_svid: %v", err)
		}
		// The X.509-SVID works either way.
		if _, err := verifyAudit(ctxT(t), credbrokerv1.NewAdminServiceClient(h.dial(h.mint(adminID, time.Hour)))); err != nil {
			t.Fatalf("admin X.509-SVID refused: %v", err)
		}
	}
}

// TestTwoIdentitiesAreRefused: a request with a client certificate and a
// bearer token is served only when both verify and name the same SPIFFE ID;
// the caller is then the certificate's. A bearer token never overrides a
// verified certificate (nor the reverse), and invalid evidence of either
// kind is never skipped.
func TestTwoIdentitiesAreRefused(t *testing.T) {
	h := newHarness(t)
	controllerCert := h.dial(h.mint(controllerID, time.Hour))
	withToken := func(id spiffeid.ID, aud string) metadata.MD {
		tok, err := h.ca.MintJWTSVID(id, []string{aud}, 5*time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		return metadata.Pairs("authorization", "Bearer "+tok)
	}

	// Admin token on a controller's connection: the admin API must not open.
	ctx := metadata.NewOutgoingContext(ctxT(t), withToken(adminID, "credbroker"))
	_, err := verifyAudit(ctx, credbrokerv1.NewAdminServiceClient(controllerCert))
	if st := wantCode(t, err, codes.Unauthenticated); !strings.Contains(st.Message(), "two identities") {
		t.Errorf("message = %q", st.Message())
	}

	req := &credbrokerv1.IssueCredentialRequest{Profile: "plain-token"}
	for name, tc := range map[string]struct {
		md   metadata.MD
		want codes.Code
	}{
		"other identity's token": {withToken(spiffeid.RequireFromPath(td, "/ns/other/sa/x"), "credbroker"), codes.Unauthenticated},
		"invalid token":          {withToken(controllerID, "someone-else"), codes.Unauthenticated},
		"same identity":          {withToken(controllerID, "credbroker"), codes.OK},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := issue(metadata.NewOutgoingContext(ctxT(t), tc.md), controllerCert, req)
			if status.Code(err) != tc.want {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			if r := h.lastRecord(); tc.want == codes.OK && (r.Caller != controllerID.String() || r.Attestation != "x509-svid") {
				t.Errorf("record = %+v; want the certificate's identity", r)
			}
		})
	}
}
