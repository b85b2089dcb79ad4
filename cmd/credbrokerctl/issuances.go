package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/credbroker/credbroker/attest"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// listPageSize is the page size the CLI asks for; the broker's maximum.
const listPageSize = 1000

// defaultListLimit is how many items a list shows unless --limit says
// otherwise; a note on stderr says when more were left out.
const defaultListLimit = 100

func newIssuancesCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "issuances",
		Aliases: []string{"issuance"},
		Short:   "Inspect issued credentials",
		Long: `Inspect the credentials the broker has issued. Secrets are never shown
(the broker does not keep them); the REF column is the upstream reference an
operator can match: a token's jti, an AWS AccessKeyId or a Vault lease id.`,
		Example: `  credbrokerctl issuances list --cluster team-a/prod --since 24h
  credbrokerctl issuances show 0190a6e2-7c1d-7abc-8def-0123456789ab`,
	}
	groupCommand(cmd)
	cmd.AddCommand(newIssuancesListCmd(a), newIssuancesShowCmd(a))
	return cmd
}

func newIssuancesListCmd(a *app) *cobra.Command {
	var caller, cluster, since string
	var limit int
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List issued credentials, newest first",
		Long: `List issued credentials, newest first. Filters combine with AND.

--since takes an RFC 3339 time or a duration back from now (90m, 1h, 7d).
--limit N shows at most N (default 100); --limit 0 shows all, following the
broker's pages.`,
		Example: `  credbrokerctl issuances list
  credbrokerctl issuances list --caller spiffe://example.org/ns/capi-system/sa/capa-controller-manager
  credbrokerctl issuances list --cluster team-a/prod --since 2026-01-02T15:04:05Z --limit 500 -o json`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			req := &credbrokerv1.ListIssuancesRequest{Caller: caller, Cluster: cluster}
			if cluster != "" {
				if err := checkCluster(cluster); err != nil {
					return err
				}
			}
			if limit < 0 {
				return usagef("--limit %d: want 0 (all) or more", limit)
			}
			if since != "" {
				t, err := parseSince(since, a.now())
				if err != nil {
					return usageError{err}
				}
				req.Since = timestamppb.New(t)
			}
			return a.listIssuances(cmd, req, limit)
		},
	}
	f := cmd.Flags()
	f.StringVar(&caller, "caller", "", "only this caller SPIFFE ID")
	f.StringVar(&cluster, "cluster", "", "only this workload cluster, NAMESPACE/NAME")
	f.StringVar(&since, "since", "", "only issuances at or after this RFC 3339 time or duration ago (e.g. 1h, 7d)")
	f.IntVar(&limit, "limit", defaultListLimit, "maximum number of issuances to show (0 = all)")
	return cmd
}

// checkCluster refuses a --cluster the broker would refuse, before calling it.
func checkCluster(s string) error {
	if _, err := attest.ParseClusterRef(s); err != nil {
		return usagef("--cluster: %v", err)
	}
	return nil
}

// parseSince accepts an RFC 3339 time, or a positive duration before now in
// Go syntax or whole days ("7d").
func parseSince(s string, now time.Time) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	var d time.Duration
	if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.Atoi(days)
		if err != nil || n > 365*100 {
			return time.Time{}, fmt.Errorf("--since %q: want an RFC 3339 time or a duration like 1h or 7d", s)
		}
		d = time.Duration(n) * 24 * time.Hour
	} else {
		var err error
		if d, err = time.ParseDuration(s); err != nil {
			return time.Time{}, fmt.Errorf("--since %q: want an RFC 3339 time or a duration like 1h or 7d", s)
		}
	}
	if d <= 0 {
		return time.Time{}, fmt.Errorf("--since %q: the duration must be positive", s)
	}
	return now.Add(-d), nil
}

func (a *app) listIssuances(cmd *cobra.Command, req *credbrokerv1.ListIssuancesRequest, limit int) error {
	issuances, err := listAll(cmd.Context(), a, limit, func(ctx context.Context, c credbrokerv1.AdminServiceClient, size int32, token string) ([]*credbrokerv1.Issuance, string, error) {
		req.PageSize, req.PageToken = size, token
		resp, err := c.ListIssuances(ctx, req)
		return resp.GetIssuances(), resp.GetNextPageToken(), err
	})
	if err != nil {
		return err
	}
	if a.jsonOutput() {
		return writeProtoList(a, issuances)
	}
	t := newTable(a.stdout, "ID", "ISSUED", "EXPIRES", "CALLER", "PROFILE", "CLUSTER", "ISSUER", "REF")
	for _, is := range issuances {
		t.row(is.GetIssuanceId(), formatTime(is.GetIssuedAt()), formatTime(is.GetExpiresAt()), is.GetCaller(),
			is.GetProfile(), is.GetCluster(), is.GetIssuer(), is.GetUpstreamRef())
	}
	return t.flush()
}

func newIssuancesShowCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "show ID",
		Short: "Show one issuance and its audit records",
		Long: `Show one issuance and every audit record that names it (the intent recorded
before the issuer was called, and the result).`,
		Example: `  credbrokerctl issuances show 0190a6e2-7c1d-7abc-8def-0123456789ab
  credbrokerctl issuances show 0190a6e2-7c1d-7abc-8def-0123456789ab -o json`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if args[0] == "" {
				return usagef("issuance ID is empty")
			}
			return a.showIssuance(cmd, args[0])
		},
	}
}

func (a *app) showIssuance(cmd *cobra.Command, id string) error {
	resp, err := call(cmd.Context(), a, func(ctx context.Context, c credbrokerv1.AdminServiceClient) (*credbrokerv1.GetIssuanceResponse, error) {
		return c.GetIssuance(ctx, &credbrokerv1.GetIssuanceRequest{IssuanceId: id})
	})
	if err != nil {
		return err
	}
	if a.jsonOutput() {
		return a.writeProto(resp)
	}
	is := resp.GetIssuance()
	if is == nil {
		// A refused or failed request: its records say what happened.
		a.printf("No credential was issued for request %s.\n", id)
		return a.printRecords(resp.GetRecords())
	}
	kv := newTable(a.stdout, "FIELD", "VALUE")
	for _, f := range [][2]string{
		{"ID", is.GetIssuanceId()},
		{"ISSUED", formatTime(is.GetIssuedAt())},
		{"EXPIRES", formatTime(is.GetExpiresAt())},
		{"CALLER", is.GetCaller()},
		{"ATTESTATION", attestationName(is.GetAttestation())},
		{"PROFILE", is.GetProfile()},
		{"CLUSTER", is.GetCluster()},
		{"ISSUER", is.GetIssuer()},
		{"REF", is.GetUpstreamRef()},
		{"SOURCE IDENTITY", is.GetSourceIdentity()},
		{"REUSED", reusedText(is.GetReused())},
	} {
		kv.row(f[0], f[1])
	}
	if err := kv.flush(); err != nil {
		return err
	}
	return a.printRecords(resp.GetRecords())
}

func (a *app) printRecords(records []*credbrokerv1.AuditRecord) error {
	a.printf("\nAUDIT RECORDS (%d)\n", len(records))
	t := newTable(a.stdout, "SEQ", "TIME", "DECISION", "REASON", "TTL", "REF", "ID", "HASH")
	for _, r := range records {
		ttl := ""
		if r.GetTtl() != nil {
			ttl = r.GetTtl().AsDuration().String()
		}
		t.row(strconv.FormatUint(r.GetSeq(), 10), formatTime(r.GetTime()), decisionName(r.GetDecision()),
			r.GetReason(), ttl, r.GetUpstreamRef(), r.GetRecordId(), shortHash(r.GetHash()))
	}
	return t.flush()
}

// reusedText says whether a credential was handed out again from an earlier
// issuance (its REF names the upstream credential they share).
func reusedText(reused bool) string {
	if reused {
		return "yes (minted for an earlier issuance with the same REF)"
	}
	return "no"
}
