package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/credbroker/credbroker/internal/nodeagent"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

const nodeUsage = `Usage: credbroker-sidecar node --broker ADDR --trust-domain TD --bundle FILE --svid-dir DIR
         (--join-token-file FILE [--node NAME] | --psat-token-file FILE --cluster NS/NAME | --aws-iid --cluster NS/NAME)
         [--once]

Runs on a node of a workload cluster. The node makes its own key (it never
leaves the node), attests to the broker with bootstrap evidence, and keeps its
node SVID spiffe://TD/capi/cluster/NS/CLUSTER/node/NODE in DIR (svid.pem,
svid_key.pem mode 0600, bundle.pem), renewing it at about half of its lifetime
with its current SVID. Other clients use DIR: credbroker-credential-process
--svid-dir DIR, or credbroker-sidecar --svid-dir DIR (re-read on renewal).

Evidence (used only when DIR holds no valid SVID):
  --join-token-file FILE   a one-time token from "credbrokerctl join-token create";
                           the file is deleted once the token is used
  --psat-token-file FILE   a projected service account token of this cluster
                           (audience "credbroker"), e.g. /var/run/secrets/credbroker/token
  --aws-iid                the EC2 instance identity document from the instance
                           metadata service (IMDSv2)

--bundle is the broker's trust bundle (PEM, public): it goes into the node's
bootstrap data with the join token, so the node can verify the broker before it
has an SVID.

Exit status: 0 after SIGTERM/SIGINT (or after one attestation/renewal with
--once), 1 on failure, 2 on bad usage.

Flags:
`

type nodeOptions struct {
	broker, brokerID, trustDomain, bundle, dir string
	joinTokenFile, node, psatFile, cluster     string
	iid, once                                  bool
}

func runNode(ctx context.Context, args []string, stderr io.Writer) int {
	var o nodeOptions
	fs := newFlagSet("credbroker-sidecar node", nodeUsage, stderr, &o.broker, &o.brokerID)
	fs.StringVar(&o.trustDomain, "trust-domain", "", "the broker's trust domain, e.g. example.org (required)")
	fs.StringVar(&o.bundle, "bundle", "", "PEM file of the trust domain's CA certificates, to verify the broker (required)")
	fs.StringVar(&o.dir, "svid-dir", "", "directory to keep the node SVID in (required)")
	fs.StringVar(&o.joinTokenFile, "join-token-file", "", "file holding a one-time join token")
	fs.StringVar(&o.node, "node", "", "with --join-token-file: this node's name, when the token does not fix one")
	fs.StringVar(&o.psatFile, "psat-token-file", "", "projected service account token file")
	fs.BoolVar(&o.iid, "aws-iid", false, "attest with the EC2 instance identity document")
	fs.StringVar(&o.cluster, "cluster", "", "with --psat-token-file or --aws-iid: workload cluster NAMESPACE/NAME (a join token names its own)")
	fs.BoolVar(&o.once, "once", false, "make sure DIR holds a valid SVID (attest or renew once), then exit")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	ev, err := o.check(fs.Args())
	if err != nil {
		fmt.Fprintf(stderr, "credbroker-sidecar node: %v (see --help)\n", err)
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	if err := o.run(ctx, ev, log); err != nil {
		fmt.Fprintf(stderr, "credbroker-sidecar node: %v\n", err)
		return 1
	}
	return 0
}

func (o nodeOptions) check(rest []string) (nodeagent.Evidence, error) {
	kinds := 0
	for _, set := range []bool{o.joinTokenFile != "", o.psatFile != "", o.iid} {
		if set {
			kinds++
		}
	}
	switch {
	case len(rest) > 0:
		return nil, fmt.Errorf("unexpected arguments %q", rest)
	case o.broker == "" || o.trustDomain == "" || o.bundle == "" || o.dir == "":
		return nil, errors.New("--broker, --trust-domain, --bundle and --svid-dir are required")
	case kinds > 1:
		return nil, errors.New("give one kind of evidence: --join-token-file, --psat-token-file or --aws-iid")
	case (o.psatFile != "" || o.iid) && o.cluster == "":
		return nil, errors.New("--cluster NAMESPACE/NAME is required with --psat-token-file and --aws-iid")
	case o.cluster != "" && o.joinTokenFile != "":
		// Refused rather than ignored: an operator who passes it believes it
		// chooses the cluster, and it does not.
		return nil, errors.New("--cluster does not apply to --join-token-file: the join token names its cluster (credbrokerctl join-token create --cluster)")
	case o.cluster != "" && kinds == 0:
		return nil, errors.New("--cluster goes with --psat-token-file or --aws-iid")
	case o.node != "" && o.joinTokenFile == "":
		return nil, errors.New("--node goes with --join-token-file: with other evidence the node name comes from the evidence")
	}
	switch {
	case o.joinTokenFile != "":
		return func(ctx context.Context, req *credbrokerv1.AttestNodeRequest) error {
			b, err := os.ReadFile(o.joinTokenFile)
			if err != nil {
				return fmt.Errorf("join token: %w", err)
			}
			return nodeagent.JoinToken(strings.TrimSpace(string(b)), o.node)(ctx, req)
		}, nil
	case o.psatFile != "":
		return nodeagent.PSAT(o.cluster, func() ([]byte, error) {
			b, err := os.ReadFile(o.psatFile)
			return []byte(strings.TrimSpace(string(b))), err
		}), nil
	case o.iid:
		return nodeagent.IID(o.cluster, fetchIID), nil
	}
	return nil, nil
}

// fetchIID reads the instance identity document and its RSA-SHA256
// signature from the instance metadata service (IMDSv2), at the SDK's
// standard AWS_EC2_METADATA_SERVICE_ENDPOINT when that is set.
func fetchIID(ctx context.Context) (document, signature []byte, err error) {
	client := imds.New(imds.Options{Endpoint: os.Getenv("AWS_EC2_METADATA_SERVICE_ENDPOINT")})
	get := func(path string) ([]byte, error) {
		out, err := client.GetDynamicData(ctx, &imds.GetDynamicDataInput{Path: path})
		if err != nil {
			return nil, err
		}
		defer out.Content.Close()
		return io.ReadAll(io.LimitReader(out.Content, 64<<10))
	}
	if document, err = get("instance-identity/document"); err != nil {
		return nil, nil, err
	}
	if signature, err = get("instance-identity/signature"); err != nil {
		return nil, nil, err
	}
	return document, signature, nil
}

func (o nodeOptions) run(ctx context.Context, ev nodeagent.Evidence, log *slog.Logger) error {
	td, err := spiffeid.TrustDomainFromString(o.trustDomain)
	if err != nil {
		return fmt.Errorf("--trust-domain: %w", err)
	}
	bundle, err := x509bundle.Load(td, o.bundle)
	if err != nil {
		return fmt.Errorf("--bundle: %w", err)
	}
	agent, err := nodeagent.New(nodeagent.Config{Broker: o.broker, BrokerID: o.brokerID, Bootstrap: bundle, Dir: o.dir, Evidence: ev, Log: log})
	if err != nil {
		return err
	}
	if o.once {
		svid, err := agent.Ensure(ctx)
		if err != nil {
			return err
		}
		o.forgetJoinToken(log)
		log.Info("node SVID ready", "spiffe_id", svid.ID.String(), "expires", svid.Certificates[0].NotAfter)
		return nil
	}
	return agent.Run(ctx, func(ctx context.Context, until time.Time) error {
		o.forgetJoinToken(log)
		t := time.NewTimer(time.Until(until))
		defer t.Stop()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
			return nil
		}
	})
}

// forgetJoinToken deletes a join token file once the node holds an SVID:
// the token is spent, and bootstrap data should keep nothing.
func (o nodeOptions) forgetJoinToken(log *slog.Logger) {
	if o.joinTokenFile == "" {
		return
	}
	if err := os.Remove(o.joinTokenFile); err != nil && !errors.Is(err, os.ErrNotExist) {
		log.Warn("cannot delete the used join token file", "path", o.joinTokenFile, "error", err.Error())
	}
}
