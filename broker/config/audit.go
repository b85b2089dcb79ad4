package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/credbroker/credbroker/internal/webhook"
)

// Audit configures the audit log's housekeeping and its external anchor.
type Audit struct {
	// Retention is how long audit records are kept; housekeeping prunes
	// older ones behind a checkpoint record. 0 keeps every record.
	Retention time.Duration `yaml:"retention"`
	// RequireExport lets housekeeping prune only records an admin has
	// marked exported (credbrokerctl audit export --mark-exported).
	RequireExport bool `yaml:"require_export"`
	// Anchor, when present, publishes the chain's head periodically outside
	// the broker host.
	Anchor *AuditAnchor `yaml:"anchor"`
}

// AuditAnchor says where and how often the chain's head is published.
type AuditAnchor struct {
	// File is written atomically with the head (JSON); it must lie outside
	// the data directory, where whoever can rewrite the database cannot.
	File string `yaml:"file"`
	// Webhook receives the head as a signed JSON POST.
	Webhook *AnchorWebhook `yaml:"webhook"`
	// Interval is how often the head is published; default 1m.
	Interval time.Duration `yaml:"interval"`
}

// AnchorWebhook is an HTTP receiver of published heads.
type AnchorWebhook struct {
	// URL is the http(s) endpoint heads are POSTed to.
	URL string `yaml:"url"`
	// SecretEnv or SecretFile (one of them) holds the HMAC-SHA256 key, at
	// least 16 bytes; the key itself never appears in the file.
	SecretEnv  string `yaml:"secret_env"`
	SecretFile string `yaml:"secret_file"`
}

// MinAuditRetention is the shortest audit retention: a day, so that the
// records of every join token (at most 24h) outlive it and an operator has
// time to export before anything goes.
const MinAuditRetention = 24 * time.Hour

func (a *Audit) applyDefaults() {
	if a.Anchor != nil && a.Anchor.Interval == 0 {
		a.Anchor.Interval = time.Minute
	}
}

// validateAudit checks the audit block against the rest of the file: the
// broker reads the issued records of unexpired credentials (revocations
// find them by issuance, identity and cluster), so the retention must
// outlast the longest credential it can issue.
func (c *Config) validateAudit() []error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf("config: audit."+format, a...)) }
	a := c.Audit
	if a.Retention < 0 {
		bad("retention must not be negative")
	}
	if a.Retention > 0 {
		need, what := MinAuditRetention, "the minimum"
		for _, name := range sortedKeys(c.Profiles) {
			if p := c.Profiles[name]; p.MaxTTL > need {
				need, what = p.MaxTTL, "profiles."+name+".max_ttl"
			}
		}
		if na := c.NodeAttestation; na != nil && na.SVIDTTL > need {
			need, what = na.SVIDTTL, "node_attestation.svid_ttl"
		}
		if a.Retention < need {
			bad("retention %s is shorter than %s (%s): records of credentials that may still be valid would be pruned", a.Retention, what, need)
		}
	}
	if a.RequireExport && a.Retention == 0 {
		bad("require_export needs a retention: without one nothing is pruned")
	}
	if an := a.Anchor; an != nil {
		if an.File == "" && an.Webhook == nil {
			bad("anchor needs a file or a webhook")
		}
		if w := an.Webhook; w != nil {
			if _, err := webhook.CheckURL(w.URL); err != nil {
				bad("anchor.webhook.url: %v", err)
			}
			if (w.SecretEnv == "") == (w.SecretFile == "") {
				bad("anchor.webhook: set exactly one of secret_env and secret_file")
			}
		}
		if an.Interval < time.Second || an.Interval > 24*time.Hour {
			bad("anchor.interval must be between 1s and 24h")
		}
		if err := c.CheckAuditAnchorPath(); err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

// CheckAuditAnchorPath refuses an anchor file inside the data directory
// (after symlinks): an attacker who can rewrite the database could rewrite
// the anchor too. Call it again once flags have overridden DataDir.
func (c *Config) CheckAuditAnchorPath() error {
	an := c.Audit.Anchor
	if an == nil || an.File == "" {
		return nil
	}
	inside, err := within(c.DataDir, an.File)
	if err != nil {
		return fmt.Errorf("config: audit.anchor.file: %w", err)
	}
	if inside {
		return fmt.Errorf("config: audit.anchor.file %s is inside the data directory %s: put it where whoever can rewrite the database cannot", an.File, c.DataDir)
	}
	return nil
}

// within reports whether path is dir or lies under it, comparing absolute
// paths with the symlinks of their existing parts resolved.
func within(dir, path string) (bool, error) {
	d, err := resolve(dir)
	if err != nil {
		return false, err
	}
	p, err := resolve(path)
	if err != nil {
		return false, err
	}
	rel, err := filepath.Rel(d, p)
	if err != nil {
		return false, nil
	}
	return rel == "." || (rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator))), nil
}

// resolve makes path absolute and resolves the symlinks of its longest
// existing prefix (the rest may not exist yet).
func resolve(path string) (string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", err
	}
	var rest []string
	for p := abs; ; p = filepath.Dir(p) {
		real, err := filepath.EvalSymlinks(p)
		if err == nil {
			return filepath.Join(append([]string{real}, rest...)...), nil
		}
		if !errors.Is(err, os.ErrNotExist) || filepath.Dir(p) == p {
			return "", err
		}
		rest = append([]string{filepath.Base(p)}, rest...)
	}
}
