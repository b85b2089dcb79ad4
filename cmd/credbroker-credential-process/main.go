// Command credbroker-credential-process requests one credential from the
// broker and prints it: in the AWS `credential_process` format for AWS
// profiles, or as JSON. It exits non-zero with one line on stderr on any
// failure, which the AWS SDKs and CLI show to the user.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/credbroker/credbroker/internal/brokerclient"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

func main() {
	os.Exit(run(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}

const usage = `Usage: credbroker-credential-process --broker ADDR --svid-dir DIR --profile P [flags]

Requests one credential from the broker, authenticating with the X.509-SVID in
DIR (svid.pem, svid_key.pem, bundle.pem), and prints it on stdout.

  --format aws   {"Version":1,"AccessKeyId","SecretAccessKey","SessionToken","Expiration"}
                 as the AWS credential_process contract wants (AWS profiles only)
  --format json  an object with the credential and "expiration" (RFC 3339);
                 token credentials have "token"

In ~/.aws/config:
  [profile capa]
  credential_process = credbroker-credential-process --broker broker:8443 --svid-dir /var/run/svid --profile capa --format aws

Exit status: 0 on success, 1 on any failure (one line on stderr), 2 on bad usage.

Flags:
`

type options struct {
	broker, brokerID, svidDir, profile, cluster, audience, format string
	ttl, timeout                                                  time.Duration
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var o options
	fs := flag.NewFlagSet("credbroker-credential-process", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, usage); fs.PrintDefaults() }
	fs.StringVar(&o.broker, "broker", os.Getenv("CREDBROKER_ADDR"), "broker gRPC address HOST:PORT (env CREDBROKER_ADDR)")
	fs.StringVar(&o.brokerID, "broker-id", "", "exact SPIFFE ID the broker must present (default: any ID in the SVID's trust domain)")
	fs.StringVar(&o.svidDir, "svid-dir", os.Getenv("CREDBROKER_SVID_DIR"), "directory with svid.pem, svid_key.pem, bundle.pem (env CREDBROKER_SVID_DIR)")
	fs.StringVar(&o.profile, "profile", "", "credential profile to request")
	fs.StringVar(&o.cluster, "cluster", "", "workload cluster NAMESPACE/NAME for cluster-scoped profiles")
	fs.StringVar(&o.audience, "audience", "", "token audience (default: the profile's)")
	fs.StringVar(&o.format, "format", "json", "output format: aws or json")
	fs.DurationVar(&o.ttl, "ttl", 0, "requested lifetime (default: the profile's)")
	fs.DurationVar(&o.timeout, "timeout", 15*time.Second, "give up after this long")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if err := o.check(fs.Args()); err != nil {
		fmt.Fprintf(stderr, "credbroker-credential-process: %v (see --help)\n", err)
		return 2
	}
	out, err := request(ctx, o)
	if err != nil {
		fmt.Fprintf(stderr, "credbroker-credential-process: %v\n", err)
		return 1
	}
	stdout.Write(out)
	return 0
}

func (o options) check(rest []string) error {
	switch {
	case len(rest) > 0:
		return fmt.Errorf("unexpected arguments %q", rest)
	case o.broker == "":
		return errors.New("--broker is required")
	case o.svidDir == "":
		return errors.New("--svid-dir is required")
	case o.profile == "":
		return errors.New("--profile is required")
	case o.format != "aws" && o.format != "json":
		return fmt.Errorf("--format %q: want aws or json", o.format)
	case o.ttl < 0:
		return errors.New("--ttl must not be negative")
	}
	return nil
}

func request(ctx context.Context, o options) ([]byte, error) {
	conn, err := brokerclient.Dial(o.broker, o.svidDir, o.brokerID)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	req := &credbrokerv1.IssueCredentialRequest{Profile: o.profile, Cluster: o.cluster, Audience: o.audience}
	if o.ttl > 0 {
		req.Ttl = durationpb.New(o.ttl)
	}
	resp, err := credbrokerv1.NewBrokerServiceClient(conn).IssueCredential(ctx, req)
	if err != nil {
		return nil, errors.New(brokerclient.Describe(err))
	}
	return render(resp.GetCredential(), o.format)
}

// awsOutput is the credential_process contract.
type awsOutput struct {
	Version         int    `json:"Version"`
	AccessKeyID     string `json:"AccessKeyId"`
	SecretAccessKey string `json:"SecretAccessKey"`
	SessionToken    string `json:"SessionToken"`
	Expiration      string `json:"Expiration"`
}

type jsonOutput struct {
	IssuanceID      string `json:"issuance_id"`
	Profile         string `json:"profile"`
	Cluster         string `json:"cluster,omitempty"`
	Issuer          string `json:"issuer"`
	Expiration      string `json:"expiration"`
	Token           string `json:"token,omitempty"`
	TokenType       string `json:"token_type,omitempty"`
	AccessKeyID     string `json:"access_key_id,omitempty"`
	SecretAccessKey string `json:"secret_access_key,omitempty"`
	SessionToken    string `json:"session_token,omitempty"`
}

func render(c *credbrokerv1.Credential, format string) ([]byte, error) {
	exp := c.GetExpiresAt().AsTime().UTC().Format(time.RFC3339)
	aws := c.GetAws()
	if format == "aws" {
		if aws == nil {
			return nil, fmt.Errorf("profile %q returns a %s, not AWS credentials; use --format json", c.GetProfile(), kindName(c))
		}
		return marshal(awsOutput{Version: 1, AccessKeyID: aws.GetAccessKeyId(), SecretAccessKey: aws.GetSecretAccessKey(), SessionToken: aws.GetSessionToken(), Expiration: exp})
	}
	out := jsonOutput{
		IssuanceID: c.GetIssuanceId(), Profile: c.GetProfile(), Cluster: c.GetCluster(),
		Issuer: c.GetIssuer(), Expiration: exp,
		Token: c.GetToken().GetToken(), TokenType: c.GetToken().GetTokenType(),
	}
	if aws != nil {
		out.AccessKeyID, out.SecretAccessKey, out.SessionToken = aws.GetAccessKeyId(), aws.GetSecretAccessKey(), aws.GetSessionToken()
	}
	return marshal(out)
}

func kindName(c *credbrokerv1.Credential) string {
	if c.GetToken() != nil {
		return "token"
	}
	return "credential"
}

func marshal(v any) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}
