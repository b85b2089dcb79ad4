package daemon

import (
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffegrpc/grpccredentials"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// TestJWTSVIDConfig: jwt_svid_max_lifetime and admin.allow_jwt_svid reach
// the running broker. By default a 2-hour JWT-SVID is refused and an admin's
// JWT-SVID does not open the admin API; configured otherwise, both work.
func TestJWTSVIDConfig(t *testing.T) {
	for _, configured := range []bool{false, true} {
		dir := t.TempDir()
		td, authority, cfg := productionIdentity(t, dir)
		cfg += `
issuers: {oidc: {type: jwt}}
profiles: {tok: {issuer: oidc, max_ttl: 1h}}
policy: [{id: "spiffe://prod.test/ns/capa-system/sa/capa-controller-manager", profiles: [tok]}]
admin: {spiffe_ids: ["spiffe://prod.test/admin"]`
		if configured {
			cfg += `, allow_jwt_svid: true}
jwt_svid_max_lifetime: 3h
`
		} else {
			cfg += "}\n"
		}
		d := startDaemon(t, dir, cfg)
		conn, err := grpc.NewClient(d.grpcAddr, grpc.WithTransportCredentials(
			grpccredentials.TLSClientCredentials(x509bundle.NewSet(authority.X509Bundle()), tlsconfig.AuthorizeMemberOf(td))))
		if err != nil {
			t.Fatal(err)
		}
		bearer := func(path string, ttl time.Duration) metadata.MD {
			tok, err := authority.MintJWTSVID(spiffeid.RequireFromPath(td, path), []string{"credbroker"}, ttl)
			if err != nil {
				t.Fatal(err)
			}
			return metadata.Pairs("authorization", "Bearer "+tok)
		}
		_, err = credbrokerv1.NewBrokerServiceClient(conn).IssueCredential(metadata.NewOutgoingContext(d.ctx, bearer("/ns/capa-system/sa/capa-controller-manager", 2*time.Hour)),
			&credbrokerv1.IssueCredentialRequest{Profile: "tok"})
		if st := status.Convert(err); configured != (err == nil) || (!configured && (st.Code() != codes.Unauthenticated || !strings.Contains(st.Message(), "more than the 1h0m0s"))) {
			t.Errorf("configured %v: 2-hour JWT-SVID: %v", configured, err)
		}
		// VerifyAudit is a stream: the refusal comes with the first message.
		verify, err := credbrokerv1.NewAdminServiceClient(conn).VerifyAudit(metadata.NewOutgoingContext(d.ctx, bearer("/admin", 5*time.Minute)), &credbrokerv1.VerifyAuditRequest{})
		if err == nil {
			_, err = verify.Recv()
		}
		if st := status.Convert(err); configured != (err == nil) || (!configured && (st.Code() != codes.Unauthenticated || !strings.Contains(st.Message(), "X.509-SVID"))) {
			t.Errorf("configured %v: admin JWT-SVID: %v", configured, err)
		}
		conn.Close()
		d.stop(t)
	}
}
