package main

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/durationpb"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

func newPolicyCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "policy",
		Short:   "Explain the broker's policy decisions",
		Example: "  credbrokerctl policy explain --id spiffe://example.org/ns/capi-system/sa/capa-controller-manager --profile capa --cluster capi-team-a/prod",
	}
	groupCommand(cmd)
	cmd.AddCommand(newPolicyExplainCmd(a))
	return cmd
}

func newPolicyExplainCmd(a *app) *cobra.Command {
	var id, profile, cluster, audience string
	var ttl time.Duration
	cmd := &cobra.Command{
		Use:   "explain --id SPIFFE_ID --profile P [--cluster NS/NAME] [--ttl D] [--audience A]",
		Short: "Say whether an identity's request would be granted now, and why; exit 1 if not",
		Long: `Ask the broker whether IssueCredential from the identity, with these fields,
would be served now, and why: each step the issuance path takes (request,
revocation, policy, rate limit, approval, quota) with its outcome, the policy
rule that grants it (or why none does), the quotas it would spend from and
what is left of them, the revocation in force that covers it, whether the
profile needs two-person approval, and what the issuer would send upstream
(for AWS profiles, the session policy exactly as it would be sent).

The answer comes from the decision code issuance itself runs. Nothing is
issued, no quota or rate token is spent and nothing is written. It cannot
foresee an upstream failure, nor requests the identity makes meanwhile.
Exits 0 when the request would be granted, 1 when it would be refused.`,
		Example: `  credbrokerctl policy explain --id spiffe://example.org/ns/capi-system/sa/capa-controller-manager --profile capa --cluster capi-team-a/prod
  credbrokerctl policy explain --id spiffe://example.org/capi/cluster/capi-team-a/prod/node/w1 --profile node-ecr -o json`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			switch {
			case !strings.HasPrefix(id, "spiffe://"):
				return usagef("--id %q is not a SPIFFE ID", id)
			case profile == "":
				return usagef("--profile is required")
			case ttl < 0:
				return usagef("--ttl must not be negative")
			}
			if cluster != "" {
				if err := checkCluster(cluster); err != nil {
					return err
				}
			}
			req := &credbrokerv1.ExplainPolicyRequest{SpiffeId: id, Profile: profile, Cluster: cluster, Audience: audience}
			if ttl > 0 {
				req.Ttl = durationpb.New(ttl)
			}
			resp, err := call(cmd.Context(), a, func(ctx context.Context, c credbrokerv1.AdminServiceClient) (*credbrokerv1.ExplainPolicyResponse, error) {
				return c.ExplainPolicy(ctx, req)
			})
			if err != nil {
				return err
			}
			if a.jsonOutput() {
				err = a.writeProto(resp)
			} else {
				err = a.printExplanation(id, profile, resp)
			}
			if err == nil && !resp.GetGranted() {
				return silentExit(exitFailure)
			}
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&id, "id", "", "the caller's SPIFFE ID")
	f.StringVar(&profile, "profile", "", "the profile it would ask for")
	f.StringVar(&cluster, "cluster", "", "the workload cluster NAMESPACE/NAME it would ask for")
	f.DurationVar(&ttl, "ttl", 0, "the lifetime it would ask for (default: the profile's)")
	f.StringVar(&audience, "audience", "", "the audience it would ask for (default: the profile's first)")
	return cmd
}

var outcomeNames = map[credbrokerv1.ExplainOutcome]string{
	credbrokerv1.ExplainOutcome_EXPLAIN_OUTCOME_PASS:        "pass",
	credbrokerv1.ExplainOutcome_EXPLAIN_OUTCOME_REFUSE:      "REFUSE",
	credbrokerv1.ExplainOutcome_EXPLAIN_OUTCOME_NOT_REACHED: "not reached",
}

func (a *app) printExplanation(id, profile string, r *credbrokerv1.ExplainPolicyResponse) error {
	if r.GetGranted() {
		a.printf("GRANTED: %s would get profile %s from issuer %s (cluster %s, audience %s, ttl %s), by policy rule %d\n",
			clean(id), clean(profile), clean(r.GetIssuer()), orNone(r.GetCluster()), clean(r.GetAudience()), r.GetTtl().AsDuration(), r.GetRule())
	} else {
		a.printf("REFUSED [%s]: %s\n", r.GetRefusalReason(), clean(r.GetRefusal()))
	}
	a.printf("\n")
	t := newTable(a.stdout, "STEP", "OUTCOME", "DETAIL")
	for _, s := range r.GetSteps() {
		t.row(s.GetStep(), outcomeNames[s.GetOutcome()], s.GetDetail())
	}
	if err := t.flush(); err != nil {
		return err
	}
	if len(r.GetQuotas()) > 0 {
		a.printf("\n")
		t := newTable(a.stdout, "QUOTA", "USED", "LIMIT", "LEFT", "RESETS AT")
		for _, q := range r.GetQuotas() {
			key := "identity " + q.GetSpiffeId()
			if q.GetCluster() != "" {
				key = "cluster " + q.GetCluster()
			}
			t.row(key, fmt.Sprint(q.GetUsed()), fmt.Sprintf("%d per %s", q.GetMax(), q.GetWindow().AsDuration()), fmt.Sprint(q.GetRemaining()), formatTime(q.GetResetAt()))
		}
		if err := t.flush(); err != nil {
			return err
		}
	}
	if rv := r.GetRevocation(); rv != nil {
		a.printf("\nrevocation in force: %s %s (revocation %s by %s: %s)\n", kindName(rv.GetKind()), clean(rv.GetTarget()), rv.GetRevocationId(), clean(rv.GetAdmin()), clean(rv.GetReason()))
	}
	if n := r.GetApprovers(); n > 0 {
		a.printf("\napproval: %d distinct admins other than the requester, within %s\n", n, r.GetApprovalWindow().AsDuration())
	}
	if u := r.GetUpstream(); u != nil {
		a.printf("\nupstream: %s\n", clean(u.GetTarget()))
		keys := make([]string, 0, len(u.GetDetails()))
		for k := range u.GetDetails() {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			a.printf("  %s: %s\n", clean(k), clean(u.GetDetails()[k]))
		}
		if u.GetSessionPolicy() != "" {
			a.printf("session policy (as sent):\n%s\n", clean(u.GetSessionPolicy()))
		}
	}
	return nil
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return clean(s)
}
