package main

import (
	"context"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

func newApprovalsCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "approvals",
		Short: "List, show, approve and deny two-person approvals",
		Long: `A profile marked approval: {approvers: N, window: D} serves a credential only
after N distinct admin principals other than the requester approved that exact
request (caller, profile, cluster, audience, TTL) within the window. The
requester is refused with FAILED_PRECONDITION (reason APPROVAL_REQUIRED) naming
the approval id; once approved, its next identical request gets the
credential, once. An admin SPIFFE ID over mTLS and each uid on the admin
socket are distinct principals; the requester can never approve its own
request, and an admin approving twice counts once. Every step is on record in
the audit log.`,
		Example: `  credbrokerctl approvals list
  credbrokerctl approvals show 0190f0a0-0000-7000-8000-000000000001
  credbrokerctl approvals approve 0190f0a0-0000-7000-8000-000000000001
  credbrokerctl approvals deny 0190f0a0-0000-7000-8000-000000000001 --reason "no change ticket"`,
	}
	groupCommand(cmd)
	cmd.AddCommand(newApprovalsListCmd(a), newApprovalsShowCmd(a), newApprovalsApproveCmd(a), newApprovalsDenyCmd(a))
	return cmd
}

func newApprovalsListCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Short:   "List approvals (pending, granted, and decided or expired ones not purged yet)",
		Example: "  credbrokerctl approvals list -o json",
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			all, err := listAll(cmd.Context(), a, 0, func(ctx context.Context, c credbrokerv1.AdminServiceClient, size int32, token string) ([]*credbrokerv1.Approval, string, error) {
				resp, err := c.ListApprovals(ctx, &credbrokerv1.ListApprovalsRequest{PageSize: size, PageToken: token})
				return resp.GetApprovals(), resp.GetNextPageToken(), err
			})
			if err != nil {
				return err
			}
			if a.jsonOutput() {
				return writeProtoList(a, all)
			}
			return a.printApprovals(all...)
		},
	}
}

func newApprovalsShowCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:     "show APPROVAL_ID",
		Short:   "Show one approval: the request it is bound to and who approved",
		Example: "  credbrokerctl approvals show 0190f0a0-0000-7000-8000-000000000001",
		Args:    exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			resp, err := call(cmd.Context(), a, func(ctx context.Context, c credbrokerv1.AdminServiceClient) (*credbrokerv1.GetApprovalResponse, error) {
				return c.GetApproval(ctx, &credbrokerv1.GetApprovalRequest{ApprovalId: args[0]})
			})
			if err != nil {
				return err
			}
			if a.jsonOutput() {
				return a.writeProto(resp)
			}
			a.printApproval(resp.GetApproval())
			return nil
		},
	}
}

func newApprovalsApproveCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "approve APPROVAL_ID",
		Short: "Approve as the calling admin principal",
		Long: `Approve the request as the calling admin principal (the admin SPIFFE ID over
mTLS, or unix:uid=N on the admin socket). Check the request first with
"approvals show": an approval covers exactly that request.`,
		Example: "  credbrokerctl approvals approve 0190f0a0-0000-7000-8000-000000000001",
		Args:    exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			resp, err := call(cmd.Context(), a, func(ctx context.Context, c credbrokerv1.AdminServiceClient) (*credbrokerv1.ApproveResponse, error) {
				return c.Approve(ctx, &credbrokerv1.ApproveRequest{ApprovalId: args[0]})
			})
			if err != nil {
				return err
			}
			if a.jsonOutput() {
				return a.writeProto(resp)
			}
			ap := resp.GetApproval()
			switch {
			case !resp.GetCounted() && ap.GetStatus() == credbrokerv1.ApprovalStatus_APPROVAL_STATUS_GRANTED:
				a.printf("approval %s was already granted; nothing changed\n", ap.GetApprovalId())
			case !resp.GetCounted():
				a.printf("you had approved %s already; it still needs %d more\n", ap.GetApprovalId(), remaining(ap))
			case ap.GetStatus() == credbrokerv1.ApprovalStatus_APPROVAL_STATUS_GRANTED:
				a.printf("approval %s granted: %s's next identical request gets the credential, once\n", ap.GetApprovalId(), clean(ap.GetRequester()))
			default:
				a.printf("approved %s; it needs %d more approval(s) from other admins\n", ap.GetApprovalId(), remaining(ap))
			}
			return nil
		},
	}
}

func newApprovalsDenyCmd(a *app) *cobra.Command {
	var reason string
	cmd := &cobra.Command{
		Use:     "deny APPROVAL_ID [--reason TEXT]",
		Short:   "Deny an approval: the requester is told, and the request is refused until the window ends",
		Example: "  credbrokerctl approvals deny 0190f0a0-0000-7000-8000-000000000001 --reason \"no change ticket\"",
		Args:    exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			resp, err := call(cmd.Context(), a, func(ctx context.Context, c credbrokerv1.AdminServiceClient) (*credbrokerv1.DenyApprovalResponse, error) {
				return c.DenyApproval(ctx, &credbrokerv1.DenyApprovalRequest{ApprovalId: args[0], Reason: reason})
			})
			if err != nil {
				return err
			}
			if a.jsonOutput() {
				return a.writeProto(resp)
			}
			a.printf("denied %s\n", resp.GetApproval().GetApprovalId())
			return nil
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why, in words the requester will see")
	return cmd
}

func itoa(n int) string { return strconv.Itoa(n) }

func remaining(ap *credbrokerv1.Approval) int {
	return max(int(ap.GetApproversNeeded())-len(ap.GetApprovals()), 0)
}

func approvalStatusName(s credbrokerv1.ApprovalStatus) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "APPROVAL_STATUS_"))
}

func approvers(ap *credbrokerv1.Approval) string {
	names := make([]string, len(ap.GetApprovals()))
	for i, v := range ap.GetApprovals() {
		names[i] = v.GetAdmin()
	}
	return strings.Join(names, ", ")
}

// printApprovals prints approvals as a table.
func (a *app) printApprovals(as ...*credbrokerv1.Approval) error {
	t := newTable(a.stdout, "ID", "STATUS", "REQUESTER", "PROFILE", "CLUSTER", "APPROVED", "EXPIRES", "APPROVERS")
	for _, ap := range as {
		t.row(ap.GetApprovalId(), approvalStatusName(ap.GetStatus()), ap.GetRequester(), ap.GetProfile(), ap.GetCluster(),
			strings.Join([]string{itoa(len(ap.GetApprovals())), itoa(int(ap.GetApproversNeeded()))}, "/"), formatTime(ap.GetExpiresAt()), approvers(ap))
	}
	return t.flush()
}

// printApproval prints one approval, field by field.
func (a *app) printApproval(ap *credbrokerv1.Approval) {
	line := func(k, v string) {
		if v != "" {
			a.printf("%-12s %s\n", k+":", clean(v))
		}
	}
	line("approval", ap.GetApprovalId())
	line("status", approvalStatusName(ap.GetStatus()))
	line("requester", ap.GetRequester())
	line("profile", ap.GetProfile())
	line("cluster", ap.GetCluster())
	line("audience", ap.GetAudience())
	if ap.GetTtl() != nil {
		line("ttl", ap.GetTtl().AsDuration().String())
	}
	line("approvals", itoa(len(ap.GetApprovals()))+" of "+itoa(int(ap.GetApproversNeeded())))
	for _, v := range ap.GetApprovals() {
		line("approved by", v.GetAdmin()+" at "+formatTime(v.GetApprovedAt()))
	}
	line("requested", formatTime(ap.GetCreatedAt()))
	line("expires", formatTime(ap.GetExpiresAt()))
	line("granted", formatTime(ap.GetGrantedAt()))
	if ap.GetDeniedBy() != "" {
		line("denied by", ap.GetDeniedBy()+" at "+formatTime(ap.GetDeniedAt()))
		line("reason", ap.GetDenyReason())
	}
	if ap.GetConsumedBy() != "" {
		line("used by", "issuance "+ap.GetConsumedBy()+" at "+formatTime(ap.GetConsumedAt()))
	}
	line("digest", ap.GetRequestDigest())
}
