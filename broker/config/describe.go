package config

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/credbroker/credbroker/broker/limits"
)

// WriteGrants prints who may get what: each policy rule, in order (the
// first that grants a request is the one that governs it), with each
// profile it grants — its issuer, the clusters, the lifetimes, the quotas
// that then apply and whether approval is needed. `credbroker check-config`
// shows it before the limits.
func (c *Config) WriteGrants(w io.Writer) error {
	t := c.LimitTable()
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "who may get what (rules in order; a request no rule grants is denied):")
	fmt.Fprintln(tw, "  rule\tcallers\tprofile\tissuer\tclusters\tttl default/max\tidentity quota\tcluster quota\tapproval")
	profiles := sortedKeys(c.Profiles)
	for i, r := range c.Policy {
		granted := 0
		for _, name := range profiles {
			if !slices.Contains(r.Profiles, name) && !slices.Contains(r.Profiles, "*") {
				continue
			}
			granted++
			p := c.Profiles[name]
			issuer := p.Issuer
			if is, ok := c.Issuers[p.Issuer]; ok {
				issuer += " (" + is.Type + ")"
			}
			l := t.Resolve(i, name)
			clusterQuota := quota(l.ClusterQuota)
			if p.Cluster == ClusterNone {
				clusterQuota = "-"
			}
			fmt.Fprintf(tw, "  %d\t%s\t%s\t%s\t%s\t%s/%s\t%s\t%s\t%s\n", i, r.ID, name, issuer, clustersOf(r.Clusters, p.Cluster),
				p.DefaultTTL, p.MaxTTL, quota(l.IdentityQuota), clusterQuota, approvalOf(p))
		}
		if granted == 0 {
			fmt.Fprintf(tw, "  %d\t%s\t(no configured profile)\t\t\t\t\t\t\n", i, r.ID)
		}
	}
	return tw.Flush()
}

// clustersOf says for which clusters a rule grants a profile.
func clustersOf(patterns []string, mode string) string {
	switch {
	case mode == ClusterNone:
		return "none (not cluster-scoped)"
	case len(patterns) == 0 && mode == ClusterRequired:
		return "any (required)"
	case len(patterns) == 0:
		return "any, or none"
	}
	return strings.Join(patterns, ",")
}

// approvalOf says whether a profile needs two-person approval.
func approvalOf(p Profile) string {
	if p.Approval == nil {
		return "none"
	}
	return fmt.Sprintf("%d admins within %s", p.Approval.Approvers, p.Approval.Window)
}

// WriteLimits prints the limits in effect: the issuance limits of every
// profile and of every policy rule with each profile it grants (rule over
// profile over the limits block), then the request limits (every key of
// limits.requests), the streams, approvals and connections held at once, and the recording
// bounds. `credbroker check-config` shows it.
func (c *Config) WriteLimits(w io.Writer) error {
	t := c.LimitTable()
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "issuance limits (per identity; rule over profile over the limits block):")
	fmt.Fprintln(tw, "  applies to\trate\tburst\tidentity quota\tcluster quota\trate bucket")
	row := func(what string, l limits.Config) {
		r, b := "unlimited", "-"
		if l.Rate > 0 {
			r, b = fmt.Sprintf("%g/s", float64(l.Rate)), fmt.Sprint(l.Burst)
		}
		scope := l.Scope
		if scope == "" {
			scope = "default"
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\n", what, r, b, quota(l.IdentityQuota), quota(l.ClusterQuota), scope)
	}
	row("default", t.Default)
	profiles := sortedKeys(c.Profiles)
	for _, p := range profiles {
		row("profile "+p, t.Resolve(-1, p))
	}
	for i, r := range c.Policy {
		for _, p := range profiles {
			if slices.Contains(r.Profiles, p) || slices.Contains(r.Profiles, "*") {
				row(fmt.Sprintf("rule %d (%s) × %s", i, r.ID, p), t.Resolve(i, p))
			}
		}
	}
	q := c.Limits.Requests
	fmt.Fprintln(tw, "request limits (every call, before anything is read or written):")
	fmt.Fprintf(tw, "  issue\t%s per identity\n", bucket(q.Issue.Rate, q.Issue.Burst))
	fmt.Fprintf(tw, "  renew\t%s per node\n", bucket(q.Renew.Rate, q.Renew.Burst))
	fmt.Fprintf(tw, "  admin\t%s per admin principal\n", bucket(q.Admin.Rate, q.Admin.Burst))
	fmt.Fprintf(tw, "  attest\t%s\n", shared(q.Attest, "address"))
	fmt.Fprintf(tw, "  unauthenticated\t%s\n", shared(q.Unauthenticated, "address"))
	fmt.Fprintf(tw, "  watch\t%s per identity\n", bucket(q.Watch.Rate, q.Watch.Burst))
	fmt.Fprintf(tw, "  health\t%s\n", shared(q.Health, "address"))
	fmt.Fprintf(tw, "  reflection\t%s per identity\n", bucket(q.Reflection.Rate, q.Reflection.Burst))
	fmt.Fprintln(tw, "held at once:")
	fmt.Fprintf(tw, "  watch streams\t%d per identity, %d in total\n", c.Limits.WatchStreams.PerIdentity, c.Limits.WatchStreams.Total)
	fmt.Fprintf(tw, "  open approvals\t%d in total\n", c.Limits.OpenApprovals)
	cn := c.Limits.Connections
	fmt.Fprintf(tw, "  gRPC connections\t%d per address, %d in total; accepted %s\n", cn.PerAddress, cn.Total, shared(cn.Accept, "address"))
	rr := c.Limits.RefusalRecords
	fmt.Fprintln(tw, "refusal records (the rest counted in the next record):")
	fmt.Fprintf(tw, "  identity\t%s\n", shared(rr.Identity, "identity"))
	fmt.Fprintf(tw, "  address\t%s\n", shared(rr.Address, "address"))
	if lim := q.Issue.Rate; slices.ContainsFunc(c.allResolved(t), func(l limits.Config) bool { return float64(l.Rate) > lim }) {
		fmt.Fprintf(tw, "note: an issuance rate above limits.requests.issue (%g/s) is bounded by it\n", lim)
	}
	return tw.Flush()
}

func (c *Config) allResolved(t limits.Table) []limits.Config {
	out := []limits.Config{t.Default}
	for _, p := range sortedKeys(c.Profiles) {
		out = append(out, t.Resolve(-1, p))
		for i := range c.Policy {
			out = append(out, t.Resolve(i, p))
		}
	}
	return out
}

func quota(q limits.Quota) string {
	if q.Max == 0 {
		return "unlimited"
	}
	return fmt.Sprintf("%d per %s", q.Max, q.Window)
}

func bucket(rate float64, burst int) string { return fmt.Sprintf("%g/s burst %d", rate, burst) }

func shared(b SharedBucket, per string) string {
	return fmt.Sprintf("%s per %s, %s in total", bucket(b.Rate, b.Burst), per, bucket(b.TotalRate, b.TotalBurst))
}
