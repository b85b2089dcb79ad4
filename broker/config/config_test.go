package config

import (
	"bytes"
	"math"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/credbroker/credbroker/broker/limits"
)

func TestDevConfigIsValid(t *testing.T) {
	c, err := Parse(bytes.NewReader(DevYAML()))
	if err != nil {
		t.Fatal(err)
	}
	c.DataDir = "/tmp/x"
	c.ResolvePaths()
	if got := c.Admin.Socket; got != "/tmp/x/admin.sock" {
		t.Errorf("admin socket = %q", got)
	}
	p := c.Profiles["dev-token"]
	if p.Audiences[0] != "dev-token" || p.DefaultTTL != 5*time.Minute {
		t.Errorf("dev-token profile defaults = %+v", p)
	}
	if c.Issuers["local"].JWT.IssuerURL != "http://127.0.0.1:8444" {
		t.Errorf("issuer url = %q", c.Issuers["local"].JWT.IssuerURL)
	}
	// Safe defaults: bearer JWT-SVIDs live at most an hour and never reach
	// the admin API.
	if c.JWTSVIDMaxLifetime != time.Hour || c.Admin.AllowJWTSVID {
		t.Errorf("jwt_svid_max_lifetime = %v, admin.allow_jwt_svid = %v", c.JWTSVIDMaxLifetime, c.Admin.AllowJWTSVID)
	}
}

func TestUnknownKeysAreRejectedByName(t *testing.T) {
	for _, tc := range []struct{ yaml, want string }{
		{"trust_domain: a.b\nlisten_addr: x\n", "listen_addr"},
		{"trust_domain: a.b\nprofiles:\n  p:\n    issuer: i\n    max_tll: 5m\n", "max_tll"},
		{"trust_domain: a.b\nlimits:\n  rate: 1\n  brust: 2\n", "brust"},
		{"trust_domain: a.b\npolicy:\n  - id: spiffe://a.b/x\n    profile: [p]\n", "profile"},
		{"trust_domain: a.b\nadmin:\n  allow_jwt_svids: true\n", "allow_jwt_svids"},
		{"trust_domain: a.b\npolicy:\n  - id: spiffe://a.b/x\n    profiles: [p]\n    limits: {rat: 5}\n", "rat"},
		{"trust_domain: a.b\nprofiles:\n  p:\n    limits: {identity_quota: {maximum: 5}}\n", "maximum"},
		{"trust_domain: a.b\nlimits:\n  requests:\n    issues: {rate: 5}\n", "issues"},
		{"trust_domain: a.b\nlimits:\n  refusal_records:\n    address: {total: 5}\n", "total"},
	} {
		_, err := Parse(strings.NewReader(tc.yaml))
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "line") {
			t.Errorf("Parse(%q) error = %v, want one naming %q and its line", tc.yaml, err, tc.want)
		}
	}
}

func TestValidateReportsEveryProblem(t *testing.T) {
	y := `
trust_domain: "Bad Domain"
log_level: loud
replica_id: "bad id"
issuers:
  local: {type: vaultish}
  own: {type: jwt, jwt: {rotation_period: 30m, publish_ahead: 1m}}
profiles:
  p:
    issuer: nope
    max_ttl: 5m
    default_ttl: 10m
    cluster: sometimes
policy:
  - id: spiffe://a.b/x
    profiles: [unknown]
limits:
  rate: 3
jwt_svid_max_lifetime: -5m
housekeeping_interval: 10ms
`
	_, err := Parse(strings.NewReader(y))
	if err == nil {
		t.Fatal("invalid config accepted")
	}
	for _, want := range []string{"trust_domain", "log_level", `type "vaultish"`, `issuer "nope"`, "default_ttl", "cluster \"sometimes\"", `unknown profile "unknown"`, "burst", "jwt_svid_max_lifetime", "housekeeping_interval",
		"replica_id", "issuers.own.jwt.rotation_period", "issuers.own.jwt.publish_ahead"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %q:\n%v", want, err)
		}
	}
}

// TestPerRuleAndProfileLimits: a rule's and a profile's own limits parse,
// resolve rule over profile over the limits block, and are validated as the
// combinations a request can get; request and recording limits take their
// defaults and cannot be switched off.
func TestPerRuleAndProfileLimits(t *testing.T) {
	base := `
trust_domain: a.b
issuers: {i: {type: jwt}}
profiles:
  p: {issuer: i, max_ttl: 1h, limits: {identity_quota: {max: 5, window: 1h}}}
policy:
  - id: spiffe://a.b/capa
    profiles: [p]
    limits: {rate: 50, burst: 100}
  - id: spiffe://a.b/node
    profiles: [p]
limits: {rate: 1, burst: 2, identity_quota: {max: 3, window: 1h}}
`
	c, err := Parse(strings.NewReader(base))
	if err != nil {
		t.Fatal(err)
	}
	tab := c.LimitTable()
	if got := tab.Resolve(0, "p"); got.Rate != 50 || got.Burst != 100 || got.IdentityQuota.Max != 5 || got.Scope != "rule 0" {
		t.Errorf("rule 0 × p = %+v", got)
	}
	if got := tab.Resolve(1, "p"); got.Rate != 1 || got.Burst != 2 || got.IdentityQuota.Max != 5 || got.Scope != "" {
		t.Errorf("rule 1 × p = %+v", got)
	}
	if r := c.Limits.Requests; r.Issue != DefaultIssueRequests || r.Attest != DefaultAttestRequests || r.Watch != DefaultWatchRequests {
		t.Errorf("request limits = %+v, want the defaults", r)
	}
	if w := c.Limits.WatchStreams; w.PerIdentity != DefaultWatchStreamsPerIdentity || w.Total != DefaultWatchStreamsTotal {
		t.Errorf("watch streams = %+v, want the defaults", w)
	}
	if c.Limits.OpenApprovals != DefaultOpenApprovals {
		t.Errorf("open approvals = %d, want the default %d", c.Limits.OpenApprovals, DefaultOpenApprovals)
	}
	if c, err := Parse(strings.NewReader(strings.Replace(base, "limits: {rate: 1, burst: 2,", "limits: {open_approvals: 64, rate: 1, burst: 2,", 1))); err != nil || c.Limits.OpenApprovals != 64 {
		t.Errorf("open_approvals: 64 read as %v, %v", c, err)
	}
	if cn := c.Limits.Connections; cn.PerAddress != DefaultConnectionsPerAddress || cn.Total != DefaultConnectionsTotal || cn.Accept != DefaultConnectionsAccept {
		t.Errorf("connections = %+v, want the defaults", cn)
	}
	nat := strings.Replace(base, "limits: {rate: 1, burst: 2,", "limits: {connections: {per_address: 4096, accept: {rate: 100}}, rate: 1, burst: 2,", 1)
	if c, err := Parse(strings.NewReader(nat)); err != nil || c.Limits.Connections.PerAddress != 4096 || c.Limits.Connections.Total != DefaultConnectionsTotal ||
		c.Limits.Connections.Accept.Rate != 100 || c.Limits.Connections.Accept.Burst != DefaultConnectionsAccept.Burst {
		t.Errorf("connections {per_address: 4096, accept: {rate: 100}} read as %+v, %v", c.Limits.Connections, err)
	}
	var out bytes.Buffer
	if err := c.WriteLimits(&out); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"rule 0 (spiffe://a.b/capa) × p", "50/s", "5 per 1h0m0s", "issue", "100/s burst 500 per identity",
		"8 per identity, 2000 in total", "1024 in total", "512 per address, 8192 in total"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("check-config output lacks %q:\n%s", want, out.String())
		}
	}
	// Every request limit is shown, so a new one cannot be left out.
	_, requests, _ := strings.Cut(out.String(), "request limits")
	requests, _, _ = strings.Cut(requests, "held at once")
	for f := range reflect.TypeFor[Requests]().Fields() {
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if !strings.Contains(requests, "\n  "+name+" ") {
			t.Errorf("check-config output lacks the request limit %s:\n%s", name, out.String())
		}
	}

	for _, bad := range []struct{ from, to, want string }{
		{"limits: {rate: 50, burst: 100}", "limits: {burst: -1}", "rule 0"},
		{"limits: {rate: 50, burst: 100}", "limits: {rate: 50, burst: 0}", "rule 0"},
		{"limits: {identity_quota: {max: 5, window: 1h}}", "limits: {identity_quota: {max: 5}}", "window"},
		{"limits: {rate: 1, burst: 2,", "limits: {requests: {renew: {rate: -1}}, rate: 1, burst: 2,", "limits.requests.renew"},
		{"limits: {rate: 1, burst: 2,", "limits: {requests: {watch: {burst: -1}}, rate: 1, burst: 2,", "limits.requests.watch"},
		{"limits: {rate: 1, burst: 2,", "limits: {watch_streams: {per_identity: -1}, rate: 1, burst: 2,", "limits.watch_streams"},
		{"limits: {rate: 1, burst: 2,", "limits: {watch_streams: {per_identity: 10, total: 5}, rate: 1, burst: 2,", "limits.watch_streams"},
		{"limits: {rate: 1, burst: 2,", "limits: {open_approvals: -1, rate: 1, burst: 2,", "limits.open_approvals"},
		{"limits: {rate: 1, burst: 2,", "limits: {open_approvals: 65537, rate: 1, burst: 2,", "limits.open_approvals"},
		{"limits: {rate: 1, burst: 2,", "limits: {connections: {per_address: -1}, rate: 1, burst: 2,", "limits.connections"},
		{"limits: {rate: 1, burst: 2,", "limits: {connections: {per_address: 100, total: 50}, rate: 1, burst: 2,", "limits.connections"},
		{"limits: {rate: 1, burst: 2,", "limits: {connections: {total: 2000000}, rate: 1, burst: 2,", "limits.connections"},
		{"limits: {rate: 1, burst: 2,", "limits: {connections: {accept: {rate: -1}}, rate: 1, burst: 2,", "limits.connections.accept"},
		{"limits: {rate: 1, burst: 2,", "limits: {connections: {per_adress: 10}, rate: 1, burst: 2,", "per_adress"},
	} {
		y := strings.Replace(base, bad.from, bad.to, 1)
		if _, err := Parse(strings.NewReader(y)); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("with %q: error %v, want one naming %q", bad.to, err, bad.want)
		}
	}
}

// A NaN rate compares false with every bound and would turn the rate limit
// off; an empty audience names no relying party. Both are refused, and both
// were accepted until FuzzParse checked what an accepted file builds.
func TestRefusesNaNRateAndEmptyAudience(t *testing.T) {
	for _, tc := range []struct{ yaml, want string }{
		{"limits: {rate: .nan, burst: 1}\n", "limits: rate NaN is not a non-negative number (defaults)"},
		{"limits: {rate: .NaN, burst: 5}\n", "limits: rate NaN is not a non-negative number (defaults)"},
		{"profiles: {p: {issuer: i, max_ttl: 1h, limits: {rate: .nan}}}\n", "limits: rate NaN is not a non-negative number (profile p)"},
		{"policy: [{id: spiffe://a.b/x, profiles: [p], limits: {rate: .nan, burst: 3}}]\n", "limits: rate NaN is not a non-negative number (rule 0)"},
		{"profiles: {p: {issuer: i, max_ttl: 1h, audiences: [\"\"]}}\n", "profiles.p.audiences: an audience must not be empty"},
		{"profiles: {p: {issuer: i, max_ttl: 1h, audiences: [sts, \"\"]}}\n", "profiles.p.audiences: an audience must not be empty"},
	} {
		y := "trust_domain: a.b\nissuers: {i: {type: jwt}}\n" + tc.yaml
		if !strings.HasPrefix(tc.yaml, "profiles:") {
			y += "profiles: {p: {issuer: i, max_ttl: 1h}}\n"
		}
		_, err := Parse(strings.NewReader(y))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Parse(%q) = %v, want an error saying %q", y, err, tc.want)
		}
	}
}

func TestEmptyAndMultiDocument(t *testing.T) {
	if _, err := Parse(strings.NewReader("")); err == nil {
		t.Error("empty config accepted")
	}
	if _, err := Parse(bytes.NewReader(append(DevYAML(), []byte("\n---\nfoo: 1\n")...))); err == nil {
		t.Error("second YAML document accepted")
	}
}

// FuzzParse: any input is either refused with a "config: " error or is a
// configuration the broker can run on: every profile names a configured
// issuer, has 0 < default_ttl <= max_ttl, a known cluster mode and
// non-empty audiences; every policy rule grants known profiles; the limits
// build the daemon's limiter; and parsing the same input again gives the same result.
func FuzzParse(f *testing.F) {
	f.Add(DevYAML())
	f.Add([]byte("trust_domain: a.b\nprofiles: {p: {issuer: i, max_ttl: 1h}}\n"))
	f.Add([]byte("limits: {rate: -1}\n"))
	f.Add([]byte("trust_domain: a.b\nissuers: {i: {type: jwt}}\nprofiles: {p: {issuer: i, max_ttl: 1h, audiences: [x]}}\nlimits: {rate: 5, burst: 10}\n"))
	f.Add([]byte("trust_domain: a.b\nissuers: {i: {type: jwt}}\nprofiles: {p: {issuer: i, max_ttl: 1h, audiences: [\"\"]}}\nlimits: {rate: .nan, burst: 1}\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := Parse(bytes.NewReader(b))
		if err != nil {
			if !strings.HasPrefix(err.Error(), "config: ") {
				t.Fatalf("refusal %q does not say it is about the configuration", err)
			}
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("Parse accepted a configuration that does not validate: %v", err)
		}
		for name, p := range c.Profiles {
			if _, ok := c.Issuers[p.Issuer]; !ok {
				t.Fatalf("profile %q names unknown issuer %q", name, p.Issuer)
			}
			if p.DefaultTTL <= 0 || p.DefaultTTL > p.MaxTTL {
				t.Fatalf("profile %q: default_ttl %s, max_ttl %s", name, p.DefaultTTL, p.MaxTTL)
			}
			if !slices.Contains([]string{ClusterOptional, ClusterRequired, ClusterNone}, p.Cluster) {
				t.Fatalf("profile %q: cluster mode %q", name, p.Cluster)
			}
			if len(p.Audiences) == 0 || slices.Contains(p.Audiences, "") {
				t.Fatalf("profile %q: audiences %q", name, p.Audiences)
			}
		}
		for i, r := range c.Policy {
			for _, p := range r.Profiles {
				if _, ok := c.Profiles[p]; !ok && p != "*" {
					t.Fatalf("policy rule %d grants unknown profile %q", i, p)
				}
			}
		}
		// The limiter the daemon builds from it.
		table := c.LimitTable()
		if _, err := limits.New(table.Default, limits.WithOverrides(table.Profiles, table.Rules)); err != nil || math.IsNaN(c.Limits.Rate) {
			t.Fatalf("limits %+v were accepted but do not make a limiter: %v", c.Limits, err)
		}
		again, err := Parse(bytes.NewReader(b))
		if err != nil || !reflect.DeepEqual(c, again) {
			t.Fatalf("parsing the same input again gave %v, %v", again, err)
		}
	})
}

// TestApprovalConfig: a profile's approval parses; approvers must be 1 to
// 16 and no more than the admin principals configured, the window between
// 5s and 7 days.
func TestApprovalConfig(t *testing.T) {
	conf := func(approval string) string {
		return `
trust_domain: a.b
admin: {spiffe_ids: [spiffe://a.b/admin/x], unix_uids: [0]}
issuers: {i: {type: jwt}}
profiles:
  p: {issuer: i, max_ttl: 1h, approval: ` + approval + `}
`
	}
	c, err := Parse(strings.NewReader(conf("{approvers: 2, window: 30m}")))
	if err != nil {
		t.Fatal(err)
	}
	if a := c.Profiles["p"].Approval; a == nil || a.Approvers != 2 || a.Window != 30*time.Minute {
		t.Fatalf("approval = %+v", a)
	}
	for approval, want := range map[string]string{
		"{approvers: 0, window: 30m}":  "approvers 0",
		"{approvers: 17, window: 30m}": "approvers 17",
		"{approvers: 3, window: 30m}":  "only 2 admin principals",
		"{approvers: 1, window: 1s}":   "window 1s",
		"{approvers: 1, window: 200h}": "window 200h",
		"{approvers: 1, windw: 1h}":    "windw",
	} {
		_, err := Parse(strings.NewReader(conf(approval)))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("approval %s: err = %v, want it to mention %q", approval, err, want)
		}
	}
}

// TestWriteGrantsSaysWhoMayGetWhat: check-config's summary lists each rule
// in order with each profile it grants, its issuer, clusters, lifetimes and
// the quotas that then apply (the rule's over the profile's).
func TestWriteGrantsSaysWhoMayGetWhat(t *testing.T) {
	c, err := Parse(strings.NewReader(`
trust_domain: a.b
admin: {spiffe_ids: [spiffe://a.b/admin/x], unix_uids: [0]}
issuers: {i: {type: jwt}}
profiles:
  p: {issuer: i, max_ttl: 1h, cluster: required, limits: {identity_quota: {max: 5, window: 1h}}}
  q: {issuer: i, max_ttl: 10m, cluster: none, approval: {approvers: 2, window: 30m}}
policy:
  - id: spiffe://a.b/ns/*/sa/capa
    profiles: ["*"]
    clusters: ["capi-*/*"]
    limits: {cluster_quota: {max: 9, window: 30m}}
  - id: spiffe://a.b/node
    profiles: [p]
`))
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := c.WriteGrants(&out); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(out.String(), "\n")
	fields := func(l string) string { return strings.Join(strings.Fields(l), " ") }
	want := []string{
		"0 spiffe://a.b/ns/*/sa/capa p i (jwt) capi-*/* 15m0s/1h0m0s 5 per 1h0m0s 9 per 30m0s none",
		"0 spiffe://a.b/ns/*/sa/capa q i (jwt) none (not cluster-scoped) 10m0s/10m0s unlimited - 2 admins within 30m0s",
		"1 spiffe://a.b/node p i (jwt) any (required) 15m0s/1h0m0s 5 per 1h0m0s unlimited none",
	}
	if len(lines) < 5 || fields(lines[2]) != want[0] || fields(lines[3]) != want[1] || fields(lines[4]) != want[2] {
		t.Fatalf("grants:\n%s\nwant rows:\n%s", out.String(), strings.Join(want, "\n"))
	}
}
