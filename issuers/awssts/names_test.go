package awssts

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"regexp"
	"strings"
	"testing"
)

var sessionNameRE = regexp.MustCompile(`^[A-Za-z0-9_+=,.@-]{2,64}$`)

// hashOf is the hashed form's prefix, computed independently of names.go.
func hashOf(id string) string {
	sum := sha256.Sum256([]byte(id))
	return hex.EncodeToString(sum[:])[:8] + "."
}

var (
	longA = "spiffe://example.org/ns/" + strings.Repeat("a", 60) + "/sa/capa-controller-manager-with-a-rather-long-service-account-name"
	longB = "spiffe://example.org/ns/" + strings.Repeat("b", 60) + "/sa/capa-controller-manager-with-a-rather-long-service-account-name"
)

func TestSourceIdentity(t *testing.T) {
	t.Parallel()
	tests := []struct{ id, want string }{
		{"spiffe://example.org/ns/capi-system/sa/capa-controller-manager", "ns.capi-system.sa.capa-controller-manager@example.org"},
		{"spiffe://td/capi/cluster/team-a/prod-1/node/ip-10-0-0-1", "capi.cluster.team-a.prod-1.node.ip-10-0-0-1@td"},
		{"spiffe://example.org", "@example.org"},
		{"spiffe://example.org/", "@example.org"},
		{"spiffe://a", "@a"},
		// Ambiguous or lossy mappings take the hashed form even when short.
		{"spiffe://td/a.b/c", hashOf("spiffe://td/a.b/c") + "a.b.c@td"},
		{"spiffe://td/a/b.c", hashOf("spiffe://td/a/b.c") + "a.b.c@td"},
		{"spiffe://td/ns/a b/sa/x%y", hashOf("spiffe://td/ns/a b/sa/x%y") + "ns.a-b.sa.x-y@td"},
		{"spiffe://td/ns/x@evil", hashOf("spiffe://td/ns/x@evil") + "ns.x@evil@td"},
		{"spiffe://td/ns/ünïcode", hashOf("spiffe://td/ns/ünïcode") + "ns.-n-code@td"},
		{"spiffe://", hashOf("spiffe://") + "@"},
		{"not-a-spiffe-id", hashOf("not-a-spiffe-id") + "not-a-spiffe-id@"},
		// Long: hash of the full ID, then the last 55 characters.
		{longA, hashOf(longA) + "anager-with-a-rather-long-service-account-name@example.org"[3:]},
	}
	for _, tt := range tests {
		t.Run(tt.id, func(t *testing.T) {
			if got := SourceIdentity(tt.id); got != tt.want {
				t.Errorf("SourceIdentity(%q) = %q, want %q", tt.id, got, tt.want)
			}
		})
	}
}

func TestRoleSessionName(t *testing.T) {
	t.Parallel()
	tests := []struct{ id, want string }{
		{"spiffe://example.org/ns/capi-system/sa/capa-controller-manager", "ns.capi-system.sa.capa-controller-manager"},
		{"spiffe://example.org", "@example.org"},
		{"spiffe://td/a", hashOf("spiffe://td/a") + "a"}, // too short
		{"spiffe://td/ab", "ab"},
		{"spiffe://td/a.b/c", hashOf("spiffe://td/a.b/c") + "a.b.c"},
		{"spiffe://td/" + strings.Repeat("p/", 30) + "sa/x", strings.Repeat("p.", 30) + "sa.x"}, // exactly 64
		{"spiffe://td/" + strings.Repeat("p/", 31) + "sa/x", hashOf("spiffe://td/"+strings.Repeat("p/", 31)+"sa/x") + (strings.Repeat("p.", 31) + "sa.x")[11:]},
	}
	for _, tt := range tests {
		t.Run(tt.id, func(t *testing.T) {
			if got := RoleSessionName(tt.id); got != tt.want {
				t.Errorf("RoleSessionName(%q) = %q, want %q", tt.id, got, tt.want)
			}
		})
	}
}

// TestSessionNameProperties checks bounds, character set, stability and
// distinctness over a mix of IDs, including exactly-at-the-limit lengths.
func TestSessionNameProperties(t *testing.T) {
	t.Parallel()
	ids := []string{
		"spiffe://example.org/ns/capi-system/sa/capa-controller-manager",
		"spiffe://example.org/ns/capi-system/sa/capi-controller-manager",
		"spiffe://example.org", "spiffe://a", "spiffe://", "", "x", "spiffe://td/a",
		"spiffe://td/a.b/c", "spiffe://td/a/b.c", "spiffe://td/a/b/c", "spiffe://t.d/a/b/c",
		"spiffe://td/" + strings.Repeat("x", 61),  // 64 with "@td"
		"spiffe://td/" + strings.Repeat("x", 62),  // 65 with "@td"
		"spiffe://td/" + strings.Repeat("y", 64),  // 64 as a session name
		"spiffe://td/" + strings.Repeat("y", 65),  // 65 as a session name
		"spiffe://td/" + strings.Repeat("z", 300), // far too long
		"spiffe://td/\x00\xff/\"'<>", longA, longB,
	}
	// RoleSessionName leaves out the trust domain, so only SourceIdentity
	// is distinct across trust domains.
	for _, f := range []struct {
		name     string
		fn       func(string) string
		distinct bool
	}{{"SourceIdentity", SourceIdentity, true}, {"RoleSessionName", RoleSessionName, false}} {
		seen := map[string]string{}
		for _, id := range ids {
			got := f.fn(id)
			if !sessionNameRE.MatchString(got) {
				t.Errorf("%s(%q) = %q: not 2–64 characters of [A-Za-z0-9_+=,.@-]", f.name, id, got)
			}
			if again := f.fn(id); again != got {
				t.Errorf("%s(%q) not stable: %q then %q", f.name, id, got, again)
			}
			if other, dup := seen[got]; dup && f.distinct {
				t.Errorf("%s maps both %q and %q to %q", f.name, other, id, got)
			}
			seen[got] = id
		}
	}
	if RoleSessionName("spiffe://td/a/b/c") == RoleSessionName("spiffe://td/a.b/c") {
		t.Error("RoleSessionName maps a/b/c and a.b/c alike")
	}
	if got := SourceIdentity("spiffe://td/" + strings.Repeat("x", 61)); got != strings.Repeat("x", 61)+"@td" {
		t.Errorf("a 64-character identity was hashed: %q", got)
	}
	if got := RoleSessionName("spiffe://td/" + strings.Repeat("y", 64)); got != strings.Repeat("y", 64) {
		t.Errorf("a 64-character session name was hashed: %q", got)
	}
}

func TestHashPrefixDistinguishesSharedTail(t *testing.T) {
	t.Parallel()
	for _, f := range []func(string) string{SourceIdentity, RoleSessionName} {
		a, b := f(longA), f(longB)
		if a == b {
			t.Fatalf("two long IDs map to the same name %q", a)
		}
		if a[9:] != b[9:] {
			t.Errorf("tails differ: %q vs %q (want the same last 55 characters)", a, b)
		}
		if !strings.Contains(a, "service-account-name") {
			t.Errorf("%q lost the service account", a)
		}
	}
}

func TestSessionTags(t *testing.T) {
	t.Parallel()
	const id = "spiffe://example.org/ns/capi-system/sa/capa-controller-manager"
	const iid = "0192f1e4-7b7c-7cc5-9a3e-8b1f2d3c4e5f"
	long := "spiffe://example.org/" + strings.Repeat("s", 300)
	tests := []struct {
		name    string
		in      TagValues
		want    []Tag
		wantErr string
	}{
		{"with cluster", TagValues{SPIFFEID: id, Profile: "capa", ClusterNamespace: "team-a", ClusterName: "prod-1", IssuanceID: iid},
			[]Tag{{TagSPIFFEID, id}, {TagProfile, "capa"}, {TagClusterNamespace, "team-a"}, {TagClusterName, "prod-1"}, {TagIssuanceID, iid}}, ""},
		{"without cluster", TagValues{SPIFFEID: id, Profile: "capa", IssuanceID: iid},
			[]Tag{{TagSPIFFEID, id}, {TagProfile, "capa"}, {TagIssuanceID, iid}}, ""},
		{"long SPIFFE ID omitted", TagValues{SPIFFEID: long, Profile: "capa", IssuanceID: iid},
			[]Tag{{TagProfile, "capa"}, {TagIssuanceID, iid}}, ""},
		{"256-character SPIFFE ID kept", TagValues{SPIFFEID: long[:256], Profile: "capa", IssuanceID: iid},
			[]Tag{{TagSPIFFEID, long[:256]}, {TagProfile, "capa"}, {TagIssuanceID, iid}}, ""},
		{"unicode letters and spaces", TagValues{SPIFFEID: id, Profile: "prödukt 1", IssuanceID: iid},
			[]Tag{{TagSPIFFEID, id}, {TagProfile, "prödukt 1"}, {TagIssuanceID, iid}}, ""},
		{"bad character in profile", TagValues{SPIFFEID: id, Profile: "a*b", IssuanceID: iid}, nil,
			"awssts: session tag credbroker:profile: value has the character '*'"},
		{"quote in SPIFFE ID", TagValues{SPIFFEID: id + `"`, Profile: "capa", IssuanceID: iid}, nil,
			"awssts: session tag credbroker:spiffe-id: value has the character '\"'"},
		{"invalid UTF-8", TagValues{SPIFFEID: id, Profile: "a\xff", IssuanceID: iid}, nil,
			"awssts: session tag credbroker:profile: value has the character"},
		{"long value", TagValues{SPIFFEID: id, Profile: "capa", IssuanceID: strings.Repeat("1", 257)}, nil,
			"awssts: session tag credbroker:issuance-id: value is 257 characters, more than 256"},
		{"half a cluster", TagValues{SPIFFEID: id, Profile: "capa", ClusterName: "prod-1", IssuanceID: iid}, nil,
			"awssts: session tag credbroker:cluster-name: a cluster needs both"},
		{"no profile", TagValues{SPIFFEID: id, IssuanceID: iid}, nil, "awssts: session tag credbroker:profile: empty"},
		{"no issuance ID", TagValues{SPIFFEID: id, Profile: "capa"}, nil, "awssts: session tag credbroker:issuance-id: empty"},
		{"no SPIFFE ID", TagValues{Profile: "capa", IssuanceID: iid}, nil, "awssts: session tag credbroker:spiffe-id: empty"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := SessionTags(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.HasPrefix(err.Error(), tt.wantErr) {
					t.Fatalf("SessionTags = %v, %v; want error %q", got, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("SessionTags: %v", err)
			}
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Errorf("SessionTags = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestCheckTagsLimits(t *testing.T) {
	t.Parallel()
	many := make([]Tag, 51)
	for i := range many {
		many[i] = Tag{fmt.Sprintf("k%d", i), "v"}
	}
	tests := []struct {
		name    string
		tags    []Tag
		wantErr string
	}{
		{"fifty", many[:50], ""},
		{"fifty-one", many, "awssts: session tags: 51 tags, more than the 50"},
		{"key at 128", []Tag{{strings.Repeat("k", 128), "v"}}, ""},
		{"key over 128", []Tag{{strings.Repeat("k", 129), "v"}}, "key is 129 characters"},
		{"aws prefix", []Tag{{"AWS:foo", "v"}}, "keys starting with aws: are reserved"},
		{"empty key", []Tag{{"", "v"}}, "empty key"},
		{"bad key char", []Tag{{"a#b", "v"}}, "key has the character '#'"},
		{"repeated in another case", []Tag{{"Team", "a"}, {"team", "b"}}, "awssts: session tag team: repeated"},
		{"empty value", []Tag{{"k", ""}}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := checkTags(tt.tags)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("checkTags: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("checkTags = %v, want %q", err, tt.wantErr)
			}
		})
	}
}
