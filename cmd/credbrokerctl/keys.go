package main

import (
	"context"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

func newKeysCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "keys",
		Aliases: []string{"key"},
		Short:   "List and rotate the local JWT issuer's signing keys",
		Long: `The broker's local JWT issuer signs with a key of each replica's own, rotated
on its schedule (issuers.NAME.jwt.rotation_period) with an overlap; every
replica's JWKS serves every replica's public keys. 'keys list' shows them as
the answering replica knows them; 'keys rotate' replaces the answering
replica's key now, for an admin who suspects it leaked. Private keys never
leave the replica.`,
		Example: `  credbrokerctl keys list
  credbrokerctl keys rotate
  credbrokerctl keys rotate --retire-previous`,
	}
	groupCommand(cmd)
	cmd.AddCommand(newKeysListCmd(a), newKeysRotateCmd(a))
	return cmd
}

func newKeysListCmd(a *app) *cobra.Command {
	var issuer string
	cmd := &cobra.Command{
		Use:   "list [--issuer NAME]",
		Short: "List the signing keys",
		Long: `List the signing keys of the local JWT issuers (or of --issuer): the answering
replica's own (active: it signs; published: its next key, in the JWKS before
it signs; retired: signs no more, published until its last token has
expired) and every other replica's key it serves in its JWKS (published).
CREATED is when a key was made (the answering replica's keys only), NOT
AFTER when it leaves the JWKS (none for a replica's active and next keys,
whose publication it renews).`,
		Example: `  credbrokerctl keys list
  credbrokerctl --broker credbroker-1.credbroker:8443 --svid-dir ./admin keys list -o json`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			resp, err := call(cmd.Context(), a, func(ctx context.Context, c credbrokerv1.AdminServiceClient) (*credbrokerv1.ListSigningKeysResponse, error) {
				return c.ListSigningKeys(ctx, &credbrokerv1.ListSigningKeysRequest{Issuer: issuer})
			})
			if err != nil {
				return err
			}
			if a.jsonOutput() {
				return writeProtoList(a, resp.GetKeys())
			}
			t := newTable(a.stdout, "ISSUER", "REPLICA", "KID", "ALG", "STATE", "CREATED", "NOT AFTER")
			for _, k := range resp.GetKeys() {
				t.row(k.GetIssuer(), k.GetReplica(), k.GetKid(), k.GetAlg(), keyStateName(k.GetState()), formatTime(k.GetCreatedAt()), formatTime(k.GetNotAfter()))
			}
			return t.flush()
		},
	}
	cmd.Flags().StringVar(&issuer, "issuer", "", "only this local JWT issuer (default: all)")
	return cmd
}

func newKeysRotateCmd(a *app) *cobra.Command {
	var issuer string
	var retire bool
	cmd := &cobra.Command{
		Use:   "rotate [--issuer NAME] [--retire-previous]",
		Short: "Make the answering replica sign with a new key now",
		Long: `Replace the signing key of the replica that answers (the admin socket's, or
--broker's) now, without a restart and without the publish-ahead of a
scheduled rotation: a new key is made, published, and signs every token from
now on; the previous private key is deleted (and a next key waiting to sign,
which shared its disk, is withdrawn). The other replicas keep their keys:
rotate each one whose key is in doubt. A relying party that cached the JWKS
may refuse the new key's tokens until it fetches the JWKS again (at most its
max-age, 5 minutes).

Without --retire-previous the previous key stays published until the last
token it signed has expired, so tokens in flight keep working. With
--retire-previous it is withdrawn from the JWKS at once (the other replicas
drop it at their next key round, within 30 seconds): every token it signed
stops verifying, those in flight included, and their holders must fetch new
ones (a relying party that cached the JWKS accepts them until it fetches the
JWKS again, at most its max-age, 5 minutes). Use it when the key itself is
believed stolen.

The rotation is on record (a key_rotated decision naming you) before the new
key signs; if the record cannot be written nothing changes. --issuer is
needed only when several local JWT issuers are configured.`,
		Example: `  credbrokerctl keys rotate
  credbrokerctl --broker credbroker-2.credbroker:8443 --svid-dir ./admin keys rotate --retire-previous`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if retire {
				fmt.Fprintln(a.stderr, "warning: --retire-previous withdraws the previous key from the JWKS at once: every unexpired token it signed stops verifying")
			}
			resp, err := call(cmd.Context(), a, func(ctx context.Context, c credbrokerv1.AdminServiceClient) (*credbrokerv1.RotateSigningKeyResponse, error) {
				return c.RotateSigningKey(ctx, &credbrokerv1.RotateSigningKeyRequest{Issuer: issuer, RetirePrevious: retire})
			})
			if err != nil {
				return err
			}
			if a.jsonOutput() {
				return a.writeProto(resp)
			}
			a.printf("issuer %s: key %s signs from now on, replacing %s\n", clean(resp.GetIssuer()), clean(resp.GetKid()), clean(resp.GetPreviousKid()))
			if retire {
				a.printf("key %s withdrawn from the JWKS: tokens it signed no longer verify\n", clean(resp.GetPreviousKid()))
			} else {
				a.printf("key %s stays published until %s, when the last token it signed has expired\n", clean(resp.GetPreviousKid()), formatTime(resp.GetPreviousNotAfter()))
			}
			a.printf("on record: seq %d\n", resp.GetRecord().GetSeq())
			return nil
		},
	}
	cmd.Flags().StringVar(&issuer, "issuer", "", "the local JWT issuer (needed only when several are configured)")
	cmd.Flags().BoolVar(&retire, "retire-previous", false, "withdraw the previous key from the JWKS at once: tokens it signed stop verifying")
	return cmd
}

// keyStateName renders SIGNING_KEY_STATE_ACTIVE as "active".
func keyStateName(s credbrokerv1.SigningKeyState) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "SIGNING_KEY_STATE_"))
}
