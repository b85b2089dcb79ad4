package config

import (
	"bytes"
	"strings"
	"testing"
	"time"
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
issuers:
  local: {type: vaultish}
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
`
	_, err := Parse(strings.NewReader(y))
	if err == nil {
		t.Fatal("invalid config accepted")
	}
	for _, want := range []string{"trust_domain", "log_level", `type "vaultish"`, `issuer "nope"`, "default_ttl", "cluster \"sometimes\"", `unknown profile "unknown"`, "burst", "jwt_svid_max_lifetime"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %q:\n%v", want, err)
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

// FuzzParse: any input is either a valid configuration or an error, never a panic.
func FuzzParse(f *testing.F) {
	f.Add(DevYAML())
	f.Add([]byte("trust_domain: a.b\nprofiles: {p: {issuer: i, max_ttl: 1h}}\n"))
	f.Add([]byte("limits: {rate: -1}\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := Parse(bytes.NewReader(b))
		if err == nil && c.Validate() != nil {
			t.Fatal("Parse accepted a configuration that does not validate")
		}
	})
}
