package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const auditBase = "trust_domain: example.org\nissuers: {oidc: {type: jwt}}\nprofiles: {p: {issuer: oidc, max_ttl: 36h}}\n"

func TestAuditConfig(t *testing.T) {
	outside := filepath.Join(t.TempDir(), "anchor.json")
	dataDir := t.TempDir()
	c, err := Parse(strings.NewReader(auditBase + "data_dir: " + dataDir + "\naudit: {retention: 2160h, require_export: true, anchor: {file: " + outside + ", webhook: {url: 'https://siem.example/anchor', secret_env: ANCHOR_KEY}}}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Audit.Retention != 2160*time.Hour || !c.Audit.RequireExport || c.Audit.Anchor.File != outside || c.Audit.Anchor.Interval != time.Minute ||
		c.Audit.Anchor.Webhook.URL != "https://siem.example/anchor" || c.Audit.Anchor.Webhook.SecretEnv != "ANCHOR_KEY" {
		t.Fatalf("audit = %+v %+v", c.Audit, c.Audit.Anchor)
	}
	if c, err := Parse(strings.NewReader(auditBase)); err != nil || c.Audit.Retention != 0 || c.Audit.Anchor != nil {
		t.Fatalf("no audit block: %+v, %v; want everything kept, no anchor", c, err)
	}
}

func TestAuditConfigMistakes(t *testing.T) {
	dataDir := t.TempDir()
	// A symlink outside the data dir that leads into it.
	link := filepath.Join(t.TempDir(), "link")
	if err := os.Symlink(dataDir, link); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ audit, want string }{
		{"{retention: 1h}", "audit.retention 1h0m0s is shorter than profiles.p.max_ttl (36h0m0s)"},
		{"{retention: -1h}", "audit.retention must not be negative"},
		{"{require_export: true}", "audit.require_export needs a retention"},
		{"{retention: 48h, keep: 1}", "keep"},
		{"{anchor: {interval: 1m}}", "audit.anchor needs a file or a webhook"},
		{"{anchor: {webhook: {url: 'ftp://x', secret_env: K}}}", "audit.anchor.webhook.url"},
		{"{anchor: {webhook: {url: 'https://siem.example/anchor'}}}", "set exactly one of secret_env and secret_file"},
		{"{anchor: {webhook: {url: 'https://siem.example/anchor', secret: x}}}", "secret"},
		{"{anchor: {file: /tmp/x.json, interval: 10ms}}", "audit.anchor.interval must be between 1s and 24h"},
		{"{anchor: {file: " + filepath.Join(dataDir, "anchor.json") + "}}", "is inside the data directory"},
		{"{anchor: {file: " + filepath.Join(dataDir, "sub", "deeper", "anchor.json") + "}}", "is inside the data directory"},
		{"{anchor: {file: " + filepath.Join(link, "anchor.json") + "}}", "is inside the data directory"},
		{"{anchor: {file: " + dataDir + "}}", "is inside the data directory"},
	} {
		_, err := Parse(strings.NewReader(auditBase + "data_dir: " + dataDir + "\naudit: " + tc.audit + "\n"))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("audit: %s: error %v, want %q", tc.audit, err, tc.want)
		}
	}
	// A node SVID outliving every profile sets the floor.
	_, err := Parse(strings.NewReader("trust_domain: example.org\nissuers: {oidc: {type: jwt}}\nprofiles: {p: {issuer: oidc, max_ttl: 1h}}\n" +
		"node_attestation: {svid_ttl: 24h}\naudit: {retention: 23h}\n"))
	if err == nil || !strings.Contains(err.Error(), "shorter than the minimum (24h0m0s)") {
		t.Errorf("retention under a day: %v", err)
	}
	// A data dir moved by a flag is checked again.
	c, err := Parse(strings.NewReader(auditBase + "data_dir: /var/lib/credbroker\naudit: {anchor: {file: " + filepath.Join(dataDir, "a.json") + "}}\n"))
	if err != nil {
		t.Fatal(err)
	}
	c.DataDir = dataDir
	if err := c.CheckAuditAnchorPath(); err == nil {
		t.Error("anchor inside the data dir set after loading was accepted")
	}
	// A sibling whose name starts like the data dir is outside it.
	if inside, err := within("/srv/data", "/srv/data-anchor/a.json"); err != nil || inside {
		t.Errorf("within(/srv/data, /srv/data-anchor/a.json) = %v, %v", inside, err)
	}
}
