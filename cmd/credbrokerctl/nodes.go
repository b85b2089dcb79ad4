package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/durationpb"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

func newJoinTokenCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "join-token",
		Aliases: []string{"join-tokens"},
		Short:   "Create one-time join tokens for nodes",
		Long: `A join token lets one node of a workload cluster attest to the broker once and
get its node SVID. Put it in the node's bootstrap data (cloud-init) instead of
any credential: it is single-use, expires quickly, and the broker keeps only its
hash. Replays are refused and audited.`,
		Example: `  credbrokerctl join-token create --cluster capi-team-a/prod --node worker-7`,
	}
	groupCommand(cmd)
	cmd.AddCommand(newJoinTokenCreateCmd(a))
	return cmd
}

func newJoinTokenCreateCmd(a *app) *cobra.Command {
	var cluster, node string
	var ttl time.Duration
	cmd := &cobra.Command{
		Use:   "create --cluster NAMESPACE/NAME [--node NAME] [--ttl 10m]",
		Short: "Create a join token; it is printed once",
		Long: `Create a one-time join token for a node of the workload cluster NAMESPACE/NAME.
The token is printed once and cannot be shown again. Without --node the node
names itself when it attests.`,
		Example: `  credbrokerctl join-token create --cluster capi-team-a/prod --node worker-7 --ttl 10m
  credbrokerctl join-token create --cluster capi-team-a/prod -o json`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkCluster(cluster); err != nil {
				return err
			}
			if ttl < 0 {
				return usagef("--ttl must not be negative")
			}
			req := &credbrokerv1.CreateJoinTokenRequest{Cluster: cluster, NodeName: node}
			if ttl > 0 {
				req.Ttl = durationpb.New(ttl)
			}
			resp, err := call(cmd.Context(), a, func(ctx context.Context, c credbrokerv1.AdminServiceClient) (*credbrokerv1.CreateJoinTokenResponse, error) {
				return c.CreateJoinToken(ctx, req)
			})
			if err != nil {
				return err
			}
			if a.jsonOutput() {
				return a.writeProto(resp)
			}
			a.printf("%s\n", resp.GetToken())
			fmt.Fprintf(a.stderr, "join token %s for %s expires %s; it is shown only once\n", resp.GetTokenId(), cluster, formatTime(resp.GetExpiresAt()))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&cluster, "cluster", "", "workload cluster NAMESPACE/NAME the node joins (required)")
	f.StringVar(&node, "node", "", "node name the token is for (default: the node names itself)")
	f.DurationVar(&ttl, "ttl", 0, "lifetime (default 10m, at most 24h)")
	return cmd
}

func newNodesCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "nodes",
		Aliases: []string{"node"},
		Short:   "Inspect and evict attested nodes",
		Long: `Nodes that attested to the broker and hold node SVIDs
(spiffe://TD/capi/cluster/NAMESPACE/CLUSTER/node/NODE). An evicted node can no
longer renew its SVID or be issued anything.`,
		Example: `  credbrokerctl nodes list --cluster capi-team-a/prod
  credbrokerctl nodes evict spiffe://example.org/capi/cluster/capi-team-a/prod/node/worker-7`,
	}
	groupCommand(cmd)
	cmd.AddCommand(newNodesListCmd(a), newNodesEvictCmd(a))
	return cmd
}

func newNodesListCmd(a *app) *cobra.Command {
	var cluster string
	var limit int
	cmd := &cobra.Command{
		Use:   "list [--cluster NAMESPACE/NAME] [--limit N]",
		Short: "List attested nodes",
		Long: `List attested nodes by SPIFFE ID. --limit N shows at most N (default 100);
--limit 0 shows all, following the broker's pages.`,
		Example: "  credbrokerctl nodes list --cluster capi-team-a/prod",
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cluster != "" {
				if err := checkCluster(cluster); err != nil {
					return err
				}
			}
			if limit < 0 {
				return usagef("--limit %d: want 0 (all) or more", limit)
			}
			nodes, err := listAll(cmd.Context(), a, limit, func(ctx context.Context, c credbrokerv1.AdminServiceClient, size int32, token string) ([]*credbrokerv1.Node, string, error) {
				resp, err := c.ListNodes(ctx, &credbrokerv1.ListNodesRequest{Cluster: cluster, PageSize: size, PageToken: token})
				return resp.GetNodes(), resp.GetNextPageToken(), err
			})
			if err != nil {
				return err
			}
			if a.jsonOutput() {
				return writeProtoList(a, nodes)
			}
			t := newTable(a.stdout, "SPIFFE ID", "ATTESTATION", "ATTESTED", "RENEWED", "SVID EXPIRES", "STATE")
			for _, n := range nodes {
				state := "active"
				if n.GetEvictedAt() != nil {
					state = "evicted " + formatTime(n.GetEvictedAt())
				}
				t.row(n.GetSpiffeId(), attestationName(n.GetAttestation()), formatTime(n.GetAttestedAt()), formatTime(n.GetRenewedAt()), formatTime(n.GetExpiresAt()), state)
			}
			return t.flush()
		},
	}
	cmd.Flags().StringVar(&cluster, "cluster", "", "only nodes of this workload cluster")
	cmd.Flags().IntVar(&limit, "limit", defaultListLimit, "maximum number of nodes to show (0 = all)")
	return cmd
}

func newNodesEvictCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "evict SPIFFE_ID",
		Short: "Evict a node: no more renewals or credentials",
		Long: `Evict a node. It can no longer renew its SVID, attest again under the same
identity, or be issued credentials. Its issuances that have not expired are
listed so that they can be revoked upstream.`,
		Example: "  credbrokerctl nodes evict spiffe://example.org/capi/cluster/capi-team-a/prod/node/worker-7",
		Args:    exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if !strings.HasPrefix(args[0], "spiffe://") {
				return usagef("%q is not a SPIFFE ID", args[0])
			}
			resp, err := call(cmd.Context(), a, func(ctx context.Context, c credbrokerv1.AdminServiceClient) (*credbrokerv1.EvictNodeResponse, error) {
				return c.EvictNode(ctx, &credbrokerv1.EvictNodeRequest{SpiffeId: args[0]})
			})
			if err != nil {
				return err
			}
			if a.jsonOutput() {
				return a.writeProto(resp)
			}
			a.printf("evicted %s\n", resp.GetNode().GetSpiffeId())
			if len(resp.GetIssuances()) == 0 {
				a.printf("no unexpired issuances to revoke\n")
				return nil
			}
			a.printf("\nUNEXPIRED ISSUANCES (%d) — revoke them upstream:\n", len(resp.GetIssuances()))
			t := newTable(a.stdout, "ID", "EXPIRES", "PROFILE", "ISSUER", "REF")
			for _, is := range resp.GetIssuances() {
				t.row(is.GetIssuanceId(), formatTime(is.GetExpiresAt()), is.GetProfile(), is.GetIssuer(), is.GetUpstreamRef())
			}
			return t.flush()
		},
	}
}
