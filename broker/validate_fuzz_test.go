package broker

import (
	"errors"
	"slices"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/credbroker/credbroker/attest"
	"github.com/credbroker/credbroker/broker/config"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// fuzzProfiles cover the three cluster modes, an issuer minimum TTL and a
// profile with more than one audience.
var fuzzProfiles = map[string]Profile{
	"token": {Name: "token", IssuerName: "local", DefaultTTL: 5 * time.Minute, MaxTTL: 15 * time.Minute,
		Audiences: []string{"token", "vault"}, ClusterMode: config.ClusterOptional},
	"capa": {Name: "capa", IssuerName: "aws", DefaultTTL: 15 * time.Minute, MaxTTL: time.Hour, MinTTL: 15 * time.Minute,
		Audiences: []string{"capa"}, ClusterMode: config.ClusterRequired},
	"global": {Name: "global", IssuerName: "local", DefaultTTL: time.Minute, MaxTTL: time.Minute,
		Audiences: []string{"global"}, ClusterMode: config.ClusterNone},
}

// FuzzValidate: whatever a caller sends, the request is refused with a
// clean InvalidArgument (or PermissionDenied for a cluster-bound caller
// asking for another cluster) whose message is valid UTF-8 and bounded, or
// accepted with a grant that keeps every rule: a configured profile, a
// well-formed cluster the profile's mode and the caller's binding allow, a
// TTL within the profile's bounds and an allowed audience.
func FuzzValidate(f *testing.F) {
	for _, s := range []struct {
		profile, cluster string
		hasTTL           bool
		secs             int64
		nanos            int32
		audience, bound  string
	}{
		{"token", "", false, 0, 0, "", ""},
		{"token", "team-a/alpha", true, 600, 0, "vault", ""},
		{"capa", "team-a/alpha", true, 900, 0, "", "team-a/alpha"},
		{"capa", "", false, 0, 0, "", "team-a/alpha"},
		{"capa", "team-b/beta", false, 0, 0, "", "team-a/alpha"},
		{"capa", "team-a/alpha", true, 899, 999999999, "", ""},
		{"global", "team-a/alpha", false, 0, 0, "", ""},
		{"global", "", true, 0, -1, "global", ""},
		{"token", "Team-A/alpha", true, -5, 0, "", ""},
		{"token", "a/b", true, 315576000000, 0, "tokenx", ""},
		{"unknown", "a/b", false, 0, 0, "", ""},
		{"", "", false, 0, 0, "", ""},
		{"tok\xffen", "a/\xff", false, 0, 0, "\xfe", ""},
	} {
		f.Add(s.profile, s.cluster, s.hasTTL, s.secs, s.nanos, s.audience, s.bound)
	}
	s := &Service{profiles: fuzzProfiles}
	caller := attest.Caller{ID: spiffeid.RequireFromString("spiffe://example.org/ns/capi-system/sa/capa"), Method: attest.MethodX509SVID}
	f.Fuzz(func(t *testing.T, profile, cluster string, hasTTL bool, secs int64, nanos int32, audience, bound string) {
		if bound != "" && !attest.ValidCluster(bound) {
			return // attestation only ever binds a caller to a well-formed cluster
		}
		c := caller
		c.Constraints.Cluster = bound
		req := &credbrokerv1.IssueCredentialRequest{Profile: profile, Cluster: cluster, Audience: audience}
		if hasTTL {
			req.Ttl = &durationpb.Duration{Seconds: secs, Nanos: nanos}
		}
		prof, g, err := s.validate(c, req)
		if err != nil {
			var ae *apiError
			if !errors.As(err, &ae) {
				t.Fatalf("refusal is not an API error: %v", err)
			}
			switch code := ReasonCode(ae.reason); {
			case code == codes.InvalidArgument:
			case ae.reason == credbrokerv1.ErrorReason_POLICY_DENIED && bound != "":
			default:
				t.Fatalf("refusal has reason %v (code %v): %v", ae.reason, code, ae)
			}
			if !utf8.ValidString(ae.msg) || len(ae.msg) > 512 {
				t.Fatalf("refusal message is not valid UTF-8 or longer than 512 bytes: %q", ae.msg)
			}
			return
		}
		want, ok := fuzzProfiles[profile]
		if !ok || prof.Name != want.Name {
			t.Fatalf("accepted profile %q as %q", profile, prof.Name)
		}
		if g.cluster != "" && !attest.ValidCluster(g.cluster) {
			t.Fatalf("accepted malformed cluster %q", g.cluster)
		}
		if bound != "" && g.cluster != bound {
			t.Fatalf("a caller bound to %q was granted cluster %q", bound, g.cluster)
		}
		if bound == "" && g.cluster != cluster {
			t.Fatalf("requested cluster %q, granted %q", cluster, g.cluster)
		}
		switch prof.ClusterMode {
		case config.ClusterRequired:
			if g.cluster == "" {
				t.Fatalf("profile %q requires a cluster; granted none", profile)
			}
		case config.ClusterNone:
			if g.cluster != "" {
				t.Fatalf("profile %q takes no cluster; granted %q", profile, g.cluster)
			}
		}
		if lo := max(minTTL, prof.MinTTL); g.ttl < lo || g.ttl > prof.MaxTTL {
			t.Fatalf("granted ttl %s outside [%s, %s]", g.ttl, lo, prof.MaxTTL)
		}
		if asked := req.GetTtl().AsDuration(); hasTTL && asked != 0 && g.ttl != asked {
			t.Fatalf("asked for ttl %s, granted %s", asked, g.ttl)
		}
		if !slices.Contains(prof.Audiences, g.audience) || (audience != "" && g.audience != audience) {
			t.Fatalf("asked for audience %q, granted %q (allowed %v)", audience, g.audience, prof.Audiences)
		}
	})
}
