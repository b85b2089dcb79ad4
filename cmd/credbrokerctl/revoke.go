package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/credbroker/credbroker/attest"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

func newRevokeCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "revoke",
		Short: "Revoke an issuance, an identity or a workload cluster at the broker",
		Long: `Revoke at the broker: a revoked identity or cluster is refused on its next
request (FAILED_PRECONDITION, reason REVOKED, naming the revocation), and no
credential a revocation covers is handed out again, not even as a reused one.
Node SVIDs of a revoked cluster are not renewed. Each revocation and lift is
on record in the audit log with the admin who made it and the reason.

Vault leases and tokens the revocation covers are revoked in Vault too (at
most 100 per call); the output says, per issuer, how many were revoked,
failed or left over the cap, so you know whether to act again. An AWS STS
session cannot be revoked by itself; -o aws-policy prints the IAM deny
document that takes back at AWS the sessions a revocation covers (for revoke
list: every revocation in effect), to attach to the role as an inline policy
— or the broker keeps it on the role itself for profiles with
aws.revocation.apply (revoke list -o aws-policy shows how that stands).
Local JWTs stay valid at relying parties that ignore the revoked-token list
until they expire (see the README's revocation procedure).`,
		Example: `  credbrokerctl revoke identity spiffe://example.org/ns/capi-system/sa/capa-controller-manager --reason "pod compromised"
  credbrokerctl revoke cluster capi-team-a/prod --reason "incident 42" --until 4h
  credbrokerctl revoke issuance 0190f0a0-0000-7000-8000-000000000001
  credbrokerctl revoke list -o json
  credbrokerctl revoke identity spiffe://example.org/ns/capi-system/sa/capa-controller-manager -o aws-policy > deny.json
  credbrokerctl revoke list -o aws-policy
  credbrokerctl revoke lift 0190f0a0-0000-7000-8000-00000000abcd`,
	}
	groupCommand(cmd)
	cmd.AddCommand(
		newRevokeTargetCmd(a, "issuance ISSUANCE_ID", "Revoke one issued credential",
			"  credbrokerctl revoke issuance 0190f0a0-0000-7000-8000-000000000001 --reason \"leaked in a CI log\"", func(s string) (*credbrokerv1.RevokeRequest, error) {
				return &credbrokerv1.RevokeRequest{Target: &credbrokerv1.RevokeRequest_IssuanceId{IssuanceId: s}}, nil
			}),
		newRevokeTargetCmd(a, "identity SPIFFE_ID", "Revoke a caller identity: all its requests are refused",
			"  credbrokerctl revoke identity spiffe://example.org/ns/capi-system/sa/capa-controller-manager --reason \"pod compromised\" --until 24h", func(s string) (*credbrokerv1.RevokeRequest, error) {
				if !strings.HasPrefix(s, "spiffe://") {
					return nil, usagef("%q is not a SPIFFE ID", s)
				}
				return &credbrokerv1.RevokeRequest{Target: &credbrokerv1.RevokeRequest_SpiffeId{SpiffeId: s}}, nil
			}),
		newRevokeTargetCmd(a, "cluster NAMESPACE/NAME", "Revoke a workload cluster: requests for it and from its nodes are refused",
			"  credbrokerctl revoke cluster capi-team-a/prod --reason \"incident 42\" --until 2026-12-01T09:00:00Z", func(s string) (*credbrokerv1.RevokeRequest, error) {
				if _, err := attest.ParseClusterRef(s); err != nil {
					return nil, usagef("%v", err)
				}
				return &credbrokerv1.RevokeRequest{Target: &credbrokerv1.RevokeRequest_Cluster{Cluster: s}}, nil
			}),
		newRevokeListCmd(a),
		newRevokeLiftCmd(a),
	)
	return cmd
}

func newRevokeTargetCmd(a *app, use, short, example string, build func(string) (*credbrokerv1.RevokeRequest, error)) *cobra.Command {
	var reason, until string
	cmd := &cobra.Command{
		Use:     use + " [--reason TEXT] [--until T]",
		Short:   short,
		Example: example,
		Args:    exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req, err := build(args[0])
			if err != nil {
				return err
			}
			req.Reason = reason
			if until != "" {
				t, err := parseUntil(until, a.now())
				if err != nil {
					return usageError{err}
				}
				req.Until = timestamppb.New(t)
			}
			resp, err := call(cmd.Context(), a, func(ctx context.Context, c credbrokerv1.AdminServiceClient) (*credbrokerv1.RevokeResponse, error) {
				return c.Revoke(ctx, req)
			})
			if err != nil {
				return err
			}
			switch {
			case a.output == outputAWSPolicy:
				fmt.Fprintf(a.stderr, "revoked %s %s (revocation %s)\n", kindName(resp.GetRevocation().GetKind()), clean(resp.GetRevocation().GetTarget()), resp.GetRevocation().GetRevocationId())
				return a.printAWSPolicy(resp.GetAwsPolicy())
			case a.jsonOutput():
				return a.writeProto(resp)
			}
			if err := a.printRevocations("revoked", resp.GetRevocation()); err != nil {
				return err
			}
			a.printUpstream(resp.GetUpstream())
			a.printAWSNote(resp.GetAwsPolicy())
			return nil
		},
		Annotations: map[string]string{annotationAWSPolicy: "yes"},
	}
	f := cmd.Flags()
	f.StringVar(&reason, "reason", "", "why, in words a refused caller will see")
	f.StringVar(&until, "until", "", "end the revocation by itself at this RFC 3339 time or after this duration (e.g. 4h); default: until lifted")
	return cmd
}

// parseUntil accepts an RFC 3339 time, or a positive duration after now.
func parseUntil(s string, now time.Time) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return time.Time{}, fmt.Errorf("--until %q: want an RFC 3339 time or a positive duration like 4h", s)
	}
	return now.Add(d), nil
}

func newRevokeListCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List revocations in effect (and ended ones not purged yet)",
		Example: `  credbrokerctl revoke list -o json
  credbrokerctl revoke list -o aws-policy`,
		Args:        noArgs,
		Annotations: map[string]string{annotationAWSPolicy: "yes"},
		RunE: func(cmd *cobra.Command, _ []string) error {
			if a.output == outputAWSPolicy {
				resp, err := call(cmd.Context(), a, func(ctx context.Context, c credbrokerv1.AdminServiceClient) (*credbrokerv1.GetAWSRevocationPolicyResponse, error) {
					return c.GetAWSRevocationPolicy(ctx, &credbrokerv1.GetAWSRevocationPolicyRequest{})
				})
				if err != nil {
					return err
				}
				return a.printAWSPolicy(resp.GetPolicy())
			}
			all, err := listAll(cmd.Context(), a, 0, func(ctx context.Context, c credbrokerv1.AdminServiceClient, size int32, token string) ([]*credbrokerv1.Revocation, string, error) {
				resp, err := c.ListRevocations(ctx, &credbrokerv1.ListRevocationsRequest{PageSize: size, PageToken: token})
				return resp.GetRevocations(), resp.GetNextPageToken(), err
			})
			if err != nil {
				return err
			}
			if a.jsonOutput() {
				return writeProtoList(a, all)
			}
			return a.printRevocations("", all...)
		},
	}
}

func newRevokeLiftCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:     "lift REVOCATION_ID",
		Short:   "Lift a revocation",
		Example: "  credbrokerctl revoke lift 0190f0a0-0000-7000-8000-00000000abcd",
		Args:    exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			resp, err := call(cmd.Context(), a, func(ctx context.Context, c credbrokerv1.AdminServiceClient) (*credbrokerv1.LiftRevocationResponse, error) {
				return c.LiftRevocation(ctx, &credbrokerv1.LiftRevocationRequest{RevocationId: args[0]})
			})
			if err != nil {
				return err
			}
			if a.jsonOutput() {
				return a.writeProto(resp)
			}
			return a.printRevocations("lifted", resp.GetRevocation())
		},
	}
}

// printRevocations prints revocations as a table, after a line saying what
// happened to them when verb is set.
func (a *app) printRevocations(verb string, rs ...*credbrokerv1.Revocation) error {
	if verb != "" {
		for _, r := range rs {
			a.printf("%s %s %s (revocation %s)\n", verb, kindName(r.GetKind()), clean(r.GetTarget()), r.GetRevocationId())
		}
		a.printf("\n")
	}
	t := newTable(a.stdout, "ID", "KIND", "TARGET", "CREATED", "UNTIL", "ADMIN", "REASON")
	for _, r := range rs {
		until := formatTime(r.GetUntil())
		if until == "" {
			until = formatTime(r.GetCoveredUntil())
		}
		t.row(r.GetRevocationId(), kindName(r.GetKind()), r.GetTarget(), formatTime(r.GetCreatedAt()), until, r.GetAdmin(), r.GetReason())
	}
	return t.flush()
}

// printUpstream says what a revocation took back at the issuers that
// revoke upstream, and what the admin should do about what it did not.
func (a *app) printUpstream(up []*credbrokerv1.UpstreamRevocation) {
	if len(up) == 0 {
		a.printf("\nupstream: no unexpired credential covered at an issuer that revokes upstream (Vault)\n")
		return
	}
	a.printf("\n")
	for _, u := range up {
		a.printf("upstream %s: %d of %d covered credentials revoked, %d failed, %d over the cap\n",
			clean(u.GetIssuer()), u.GetRevoked(), u.GetCovered(), u.GetFailed(), u.GetOverCap())
		if u.GetFailed() > 0 {
			a.printf("  first failure: %s; revoke the same target again to retry\n", clean(u.GetFirstError()))
		}
		if u.GetOverCap() > 0 {
			a.printf("  %d not revoked upstream (over the cap per call): revoke them by issuance (credbrokerctl issuances list)\n", u.GetOverCap())
		}
		if u.GetScanLimited() {
			a.printf("  only the newest issuances were scanned: older unexpired ones may remain; revoke them by issuance\n")
		}
	}
}

// printAWSPolicy prints an AWS deny document, indented, alone on stdout (so
// that it can go straight to a file or to aws iam put-role-policy), and on
// stderr what it leaves out and how the broker's own application of it
// stands.
func (a *app) printAWSPolicy(p *credbrokerv1.AWSRevocationPolicy) error {
	if p.GetDocument() == "" {
		fmt.Fprintf(a.stderr, "no AWS deny policy: no revocation in effect covers an AWS STS session still alive\n")
	} else {
		var doc bytes.Buffer
		if err := json.Indent(&doc, []byte(p.GetDocument()), "", "  "); err != nil {
			return fmt.Errorf("the broker's AWS deny policy is not JSON: %w", err)
		}
		doc.WriteByte('\n')
		if _, err := doc.WriteTo(a.stdout); err != nil {
			return err
		}
		fmt.Fprintf(a.stderr, "AWS deny policy: %d revocations, %d characters (IAM allows %d for all of a role's inline policies)\n", p.GetEntries(), p.GetChars(), maxRolePolicyChars)
	}
	if n := len(p.GetOmitted()); n > 0 {
		fmt.Fprintf(a.stderr, "WARNING: %d revocations do not fit and are NOT enforced at AWS: %s\n", n, clean(strings.Join(p.GetOmitted(), ", ")))
	}
	for _, r := range p.GetRoles() {
		state := "in sync"
		if !r.GetInSync() {
			state = "NOT in sync"
		}
		if r.GetError() != "" {
			state += ", last error " + clean(r.GetError())
		}
		fmt.Fprintf(a.stderr, "role %s policy %s: %s; %d revocations, %d omitted, %d characters, applied %s\n", clean(r.GetRoleArn()), clean(r.GetPolicyName()),
			state, r.GetEntries(), r.GetOmitted(), r.GetChars(), formatTime(r.GetAppliedAt()))
	}
	return nil
}

// printAWSNote says, after a revocation, how its AWS STS sessions are
// taken back: by the broker on the roles it keeps a deny policy on (as
// things stood before this revocation's write, which follows the call), or
// by hand with -o aws-policy.
func (a *app) printAWSNote(p *credbrokerv1.AWSRevocationPolicy) {
	if p.GetDocument() == "" {
		return
	}
	if len(p.GetRoles()) == 0 {
		a.printf("aws: STS sessions it covers stay valid until they expire unless its deny policy is on the role: print it with -o aws-policy (revoke list -o aws-policy: every revocation in effect)\n")
		return
	}
	for _, r := range p.GetRoles() {
		state := "in sync before this revocation"
		if r.GetError() != "" {
			state = "FAILING (last IAM error " + clean(r.GetError()) + "); the broker retries"
		}
		a.printf("aws: the broker is adding its deny to policy %s of role %s (%s); revoke list -o aws-policy shows when it is in place\n",
			clean(r.GetPolicyName()), clean(r.GetRoleArn()), state)
	}
}

// maxRolePolicyChars is IAM's limit on a role's inline policies together.
const maxRolePolicyChars = 10240

// kindName renders REVOCATION_KIND_CLUSTER as "cluster".
func kindName(k credbrokerv1.RevocationKind) string {
	return strings.ToLower(strings.TrimPrefix(k.String(), "REVOCATION_KIND_"))
}

func newClustersCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "clusters",
		Aliases: []string{"cluster"},
		Short:   "List workload clusters and take a deleted one's credentials back",
		Example: `  credbrokerctl clusters list
  credbrokerctl clusters delete capi-team-a/prod --reason "cluster deleted"`,
	}
	groupCommand(cmd)
	cmd.AddCommand(newClustersListCmd(a), newClustersDeleteCmd(a))
	return cmd
}

func newClustersListCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Short:   "List the workload clusters the broker knows of",
		Example: "  credbrokerctl clusters list -o json",
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			all, err := listAll(cmd.Context(), a, 0, func(ctx context.Context, c credbrokerv1.AdminServiceClient, size int32, token string) ([]*credbrokerv1.Cluster, string, error) {
				resp, err := c.ListClusters(ctx, &credbrokerv1.ListClustersRequest{PageSize: size, PageToken: token})
				return resp.GetClusters(), resp.GetNextPageToken(), err
			})
			if err != nil {
				return err
			}
			if a.jsonOutput() {
				return writeProtoList(a, all)
			}
			t := newTable(a.stdout, "CLUSTER", "NODES", "EVICTED", "UNUSED JOIN TOKENS", "STATE")
			for _, c := range all {
				state := "active"
				if r := c.GetRevocation(); r != nil {
					state = "revoked (" + r.GetRevocationId() + ")"
				}
				t.row(c.GetCluster(), fmt.Sprint(c.GetNodes()), fmt.Sprint(c.GetEvictedNodes()), fmt.Sprint(c.GetUnusedJoinTokens()), state)
			}
			return t.flush()
		},
	}
}

func newClustersDeleteCmd(a *app) *cobra.Command {
	var reason string
	cmd := &cobra.Command{
		Use:   "delete NAMESPACE/NAME [--reason TEXT]",
		Short: "Take a deleted cluster's credentials back",
		Long: `Take a deleted workload cluster's credentials back: the cluster is revoked
(requests for it and from its nodes are refused), its nodes are evicted and
its unused join tokens voided. Each step is on record. Repeating it is safe.`,
		Example: `  credbrokerctl clusters delete capi-team-a/prod --reason "cluster deleted by the fleet operator"`,
		Args:    exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if _, err := attest.ParseClusterRef(args[0]); err != nil {
				return usagef("%v", err)
			}
			resp, err := call(cmd.Context(), a, func(ctx context.Context, c credbrokerv1.AdminServiceClient) (*credbrokerv1.DeleteClusterResponse, error) {
				return c.DeleteCluster(ctx, &credbrokerv1.DeleteClusterRequest{Cluster: args[0], Reason: reason})
			})
			if err != nil {
				return err
			}
			if a.jsonOutput() {
				return a.writeProto(resp)
			}
			a.printf("cluster %s revoked (revocation %s); %d nodes evicted, %d unused join tokens voided\n",
				args[0], resp.GetRevocation().GetRevocationId(), len(resp.GetEvictedNodes()), resp.GetVoidedJoinTokens())
			for _, n := range resp.GetEvictedNodes() {
				a.printf("evicted %s\n", clean(n.GetSpiffeId()))
			}
			// Empty also when an earlier revocation of the cluster was in
			// effect: that one took its credentials back upstream.
			if len(resp.GetUpstream()) > 0 {
				a.printUpstream(resp.GetUpstream())
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", `why (default "cluster deleted")`)
	return cmd
}

func newQuotaCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "quota",
		Aliases: []string{"quotas"},
		Short:   "Show and reset issuance quota windows",
		Example: `  credbrokerctl quota show --identity spiffe://example.org/ns/capi-system/sa/capa-controller-manager
  credbrokerctl quota reset --cluster capi-team-a/prod`,
	}
	groupCommand(cmd)
	cmd.AddCommand(newQuotaShowCmd(a), newQuotaResetCmd(a))
	return cmd
}

// quotaFlags are the --identity | --cluster pair of the quota commands.
type quotaFlags struct{ identity, cluster string }

func (q *quotaFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringVar(&q.identity, "identity", "", "caller SPIFFE ID")
	cmd.Flags().StringVar(&q.cluster, "cluster", "", "workload cluster NAMESPACE/NAME")
}

func (q *quotaFlags) check() error {
	switch {
	case (q.identity == "") == (q.cluster == ""):
		return usagef("name one of --identity or --cluster")
	case q.identity != "" && !strings.HasPrefix(q.identity, "spiffe://"):
		return usagef("--identity %q is not a SPIFFE ID", q.identity)
	case q.cluster != "":
		return checkCluster(q.cluster)
	}
	return nil
}

func newQuotaShowCmd(a *app) *cobra.Command {
	var q quotaFlags
	cmd := &cobra.Command{
		Use:     "show --identity SPIFFE_ID | --cluster NAMESPACE/NAME",
		Short:   "Show the current quota window",
		Example: `  credbrokerctl quota show --cluster capi-team-a/prod -o json`,
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := q.check(); err != nil {
				return err
			}
			req := &credbrokerv1.GetQuotaRequest{Key: &credbrokerv1.GetQuotaRequest_SpiffeId{SpiffeId: q.identity}}
			if q.cluster != "" {
				req.Key = &credbrokerv1.GetQuotaRequest_Cluster{Cluster: q.cluster}
			}
			resp, err := call(cmd.Context(), a, func(ctx context.Context, c credbrokerv1.AdminServiceClient) (*credbrokerv1.GetQuotaResponse, error) {
				return c.GetQuota(ctx, req)
			})
			if err != nil {
				return err
			}
			if a.jsonOutput() {
				return a.writeProto(resp)
			}
			return a.printUsage(resp.GetUsage(), resp.GetLimits()...)
		},
	}
	q.add(cmd)
	return cmd
}

func newQuotaResetCmd(a *app) *cobra.Command {
	var q quotaFlags
	cmd := &cobra.Command{
		Use:     "reset --identity SPIFFE_ID | --cluster NAMESPACE/NAME",
		Short:   "Reset the current quota window (on record)",
		Example: `  credbrokerctl quota reset --identity spiffe://example.org/ns/capi-system/sa/capa-controller-manager`,
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := q.check(); err != nil {
				return err
			}
			req := &credbrokerv1.ResetQuotaRequest{Key: &credbrokerv1.ResetQuotaRequest_SpiffeId{SpiffeId: q.identity}}
			if q.cluster != "" {
				req.Key = &credbrokerv1.ResetQuotaRequest_Cluster{Cluster: q.cluster}
			}
			resp, err := call(cmd.Context(), a, func(ctx context.Context, c credbrokerv1.AdminServiceClient) (*credbrokerv1.ResetQuotaResponse, error) {
				return c.ResetQuota(ctx, req)
			})
			if err != nil {
				return err
			}
			if a.jsonOutput() {
				return a.writeProto(resp)
			}
			a.printf("reset; forgotten:\n")
			return a.printUsage(resp.GetForgotten())
		},
	}
	q.add(cmd)
	return cmd
}

// printUsage prints a quota key's window, one row per limit that applies to
// it (the broker's policy rules and profiles may set several), or one row
// without limits (a reset's forgotten window).
func (a *app) printUsage(u *credbrokerv1.QuotaUsage, limits ...*credbrokerv1.QuotaLimit) error {
	key := "identity " + u.GetSpiffeId()
	if u.GetCluster() != "" {
		key = "cluster " + u.GetCluster()
	}
	if len(limits) == 0 {
		t := newTable(a.stdout, "QUOTA", "USED", "WINDOW START", "RESETS AT")
		t.row(key, fmt.Sprint(u.GetUsed()), formatTime(u.GetWindowStart()), formatTime(u.GetResetAt()))
		return t.flush()
	}
	t := newTable(a.stdout, "QUOTA", "USED", "LIMIT", "LEFT", "WINDOW START", "RESETS AT", "APPLIES TO")
	for _, l := range limits {
		limit, left := "unlimited", "-"
		if l.GetMax() > 0 {
			limit, left = fmt.Sprintf("%d per %s", l.GetMax(), l.GetWindow().AsDuration()), fmt.Sprint(l.GetRemaining())
		}
		t.row(key, fmt.Sprint(u.GetUsed()), limit, left, formatTime(u.GetWindowStart()), formatTime(u.GetResetAt()), strings.Join(l.GetAppliesTo(), ", "))
	}
	return t.flush()
}
