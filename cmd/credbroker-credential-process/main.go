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

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/credbroker/credbroker/attest"
	"github.com/credbroker/credbroker/internal/backoff"
	"github.com/credbroker/credbroker/internal/brokerclient"
	"github.com/credbroker/credbroker/internal/svidsource"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

func main() {
	os.Exit(run(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}

const usage = `Usage: credbroker-credential-process --broker ADDR --profile P [--workload-api-socket ADDR | --svid-dir DIR] [flags]

Requests one credential from the broker and prints it on stdout. It
authenticates with its X.509-SVID from the SPIFFE Workload API (a SPIRE
agent: --workload-api-socket, default $SPIFFE_ENDPOINT_SOCKET; --spiffe-id
chooses among several SVIDs) or from an SVID directory (--svid-dir, or
$CREDBROKER_SVID_DIR: svid.pem, svid_key.pem, bundle.pem). A directory wins
over $SPIFFE_ENDPOINT_SOCKET; the two flags together are an error.

  --format aws   {"Version":1,"AccessKeyId","SecretAccessKey","SessionToken","Expiration"}
                 as the AWS credential_process contract wants (AWS profiles only)
  --format json  an object with the credential and "expiration" (RFC 3339);
                 token credentials have "token"

With --cache-file PATH, the last AWS credential is kept in PATH (JSON, mode
0600, replaced atomically; its directory is created 0700 if missing) and
handed out again without asking the broker while it has more than
--cache-min-remaining left and was issued for the same broker, broker ID,
identity source (SVID directory, or Workload API socket and SPIFFE ID),
profile, cluster, audience and TTL. The default of 10m keeps
every credential handed out outside the AWS CLI's mandatory refresh window.
The file holds secrets: one that group or others may access is not read, and
is replaced. Before a cached credential is handed out the broker is asked
whether it was revoked (one WatchRevocations call naming its issuance: its
issuance, its cluster or this identity revoked); a revoked one is not
printed but deleted from the file, and the broker is asked for a new one (refused with [REVOKED] while
the identity or cluster is revoked). When the broker cannot be reached the
cached credential is printed unchecked, with a warning; when it cannot check
for another reason (rate limited, older broker) a new credential is asked for. An unusable cache is reported on stderr and replaced; a cache
that cannot be written is reported and the credential still printed. Token
credentials are never cached.

In ~/.aws/config:
  [profile capa]
  credential_process = credbroker-credential-process --broker broker:8443 --workload-api-socket unix:///run/spire/agent.sock --profile capa --cluster team-a/prod --format aws --cache-file /var/cache/credbroker/capa.json

Exit status: 0 on success; 1 when the broker refused for good (policy, identity,
unknown profile, TTL out of range, revoked ...) or on any other failure; 2 on
bad usage; 3 when the refusal is temporary and the same request can succeed
later (rate limited, quota spent, broker or upstream unavailable, approval
pending). Failures are one line on stderr ending with the broker's reason in
brackets, e.g. [QUOTA_EXHAUSTED].

A profile that needs two-person approval is refused with APPROVAL_REQUIRED:
the line names the approval id, who can approve and the command
(credbrokerctl approvals approve ID); exit status 3. With --wait-approval D
the same request is repeated with backoff until an admin approves it (then
the credential is printed), denies it (exit 1), or D has passed (exit 3).
Warnings (cache problems) are lines on stderr too, and do not change the status.

Flags:
`

const prefix = "credbroker-credential-process: "

type options struct {
	broker, brokerID, svidDir, profile, cluster, audience, format, cacheFile string
	ttl, timeout, cacheMinRemaining, waitApproval                            time.Duration
	// socket and spiffeID name the Workload API identity (resolved with
	// svidDir by svidsource.Options.Resolve: one of them is set).
	socket, spiffeID string
	// identity is opened on first use, once per invocation.
	identity *brokerclient.Identity
}

// command is one invocation. The clock and the way to the broker are fields
// so that tests can drive the cache without a broker or a wait.
type command struct {
	stdout, stderr io.Writer
	now            func() time.Time
	issue          func(context.Context, options) (*credbrokerv1.Credential, error)
	// check asks the broker whether a cached credential was revoked (see
	// checkRevoked); nil hands out cached credentials unchecked (tests of
	// the cache alone).
	check func(ctx context.Context, o options, issuanceID string) (revokedBy string, err error)
	// sleep waits d or until ctx is done; nil means a timer.
	sleep func(ctx context.Context, d time.Duration) error
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return command{stdout: stdout, stderr: stderr, now: time.Now, issue: issue, check: checkRevoked}.run(ctx, args)
}

func (c command) run(ctx context.Context, args []string) int {
	o, fs, err := parseArgs(args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		fmt.Fprint(c.stderr, usage)
		fs.SetOutput(c.stderr)
		fs.PrintDefaults()
		return 0
	case err != nil:
		fmt.Fprintf(c.stderr, prefix+"%v (see --help)\n", err)
		return 2
	}
	defer o.identity.Close()
	// Warnings are shown only with a credential: a failure is one line.
	out, warnings, err := c.credential(ctx, o)
	if err != nil {
		fmt.Fprintf(c.stderr, prefix+"%v\n", err)
		var be brokerError
		if errors.As(err, &be) && !brokerclient.Permanent(be.err) {
			return exitTemporary
		}
		return 1
	}
	for _, w := range warnings {
		fmt.Fprintf(c.stderr, prefix+"warning: %s\n", w)
	}
	if _, err := c.stdout.Write(out); err != nil {
		fmt.Fprintf(c.stderr, prefix+"writing the credential: %v\n", err)
		return 1
	}
	return 0
}

// parseArgs returns the options args ask for, and the flag set for --help.
// Errors are one line, without the usage.
func parseArgs(args []string) (options, *flag.FlagSet, error) {
	var o options
	fs := flag.NewFlagSet("credbroker-credential-process", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	fs.StringVar(&o.broker, "broker", os.Getenv("CREDBROKER_ADDR"), "broker gRPC address HOST:PORT (env CREDBROKER_ADDR)")
	fs.StringVar(&o.brokerID, "broker-id", "", "exact SPIFFE ID the broker must present (default: any ID in the SVID's trust domain)")
	fs.StringVar(&o.svidDir, "svid-dir", os.Getenv("CREDBROKER_SVID_DIR"), "directory with svid.pem, svid_key.pem, bundle.pem (env CREDBROKER_SVID_DIR)")
	fs.StringVar(&o.socket, "workload-api-socket", os.Getenv(svidsource.EndpointEnv), "SPIFFE Workload API address, e.g. unix:///run/spire/agent.sock (env "+svidsource.EndpointEnv+")")
	fs.StringVar(&o.spiffeID, "spiffe-id", "", "with the Workload API: the SPIFFE ID of the SVID to use when the agent gives several (default: its first)")
	fs.StringVar(&o.profile, "profile", "", "credential profile to request")
	fs.StringVar(&o.cluster, "cluster", "", "workload cluster NAMESPACE/NAME for cluster-scoped profiles")
	fs.StringVar(&o.audience, "audience", "", "token audience (default: the profile's)")
	fs.StringVar(&o.format, "format", "json", "output format: aws or json")
	fs.DurationVar(&o.ttl, "ttl", 0, "requested lifetime (default: the profile's)")
	fs.DurationVar(&o.timeout, "timeout", 15*time.Second, "give up after this long")
	fs.StringVar(&o.cacheFile, "cache-file", "", "keep the last AWS credential in this owner-only file and reuse it (default: no cache)")
	fs.DurationVar(&o.cacheMinRemaining, "cache-min-remaining", defaultCacheMinRemaining, "reuse a cached credential only while it has more than this left")
	fs.DurationVar(&o.waitApproval, "wait-approval", 0, "when the profile needs two-person approval, keep asking (with backoff) up to this long for it to be granted (default: fail at once, exit 3)")
	if err := fs.Parse(args); err != nil {
		return o, fs, err
	}
	// The identity first: without one nothing else matters.
	id := svidsource.Options{Dir: o.svidDir, Socket: o.socket, SPIFFEID: o.spiffeID, Timeout: o.timeout}
	fs.Visit(func(f *flag.Flag) {
		id.DirExplicit = id.DirExplicit || f.Name == "svid-dir"
		id.SocketExplicit = id.SocketExplicit || f.Name == "workload-api-socket"
	})
	id, err := id.Resolve()
	if err != nil {
		return o, fs, err
	}
	if err := o.check(fs.Args()); err != nil {
		return o, fs, err
	}
	o.svidDir, o.socket = id.Dir, id.Socket
	o.identity = &brokerclient.Identity{Options: id}
	return o, fs, nil
}

func (o options) check(rest []string) error {
	switch {
	case len(rest) > 0:
		return fmt.Errorf("unexpected arguments %q", rest)
	case o.broker == "":
		return errors.New("--broker is required")
	case o.profile == "":
		return errors.New("--profile is required")
	case o.format != "aws" && o.format != "json":
		return fmt.Errorf("--format %q: want aws or json", o.format)
	case o.ttl < 0:
		return errors.New("--ttl must not be negative")
	case o.cacheMinRemaining < 0:
		return errors.New("--cache-min-remaining must not be negative")
	case o.waitApproval < 0:
		return errors.New("--wait-approval must not be negative")
	}
	if o.cluster != "" {
		if _, err := attest.ParseClusterRef(o.cluster); err != nil {
			return fmt.Errorf("--cluster: %w", err)
		}
	}
	return nil
}

// credential returns the rendered credential: from the cache when it holds a
// usable one, else from the broker (and then into the cache), with what went
// wrong with the cache on the way.
func (c command) credential(ctx context.Context, o options) (out []byte, warnings []string, err error) {
	if o.cacheFile == "" {
		cred, err := c.fetch(ctx, o)
		if err != nil {
			return nil, nil, err
		}
		out, err := render(cred, o.format)
		return out, nil, err
	}
	cache := credCache{path: o.cacheFile, key: keyOf(o), minRemaining: o.cacheMinRemaining, now: c.now}
	cached, note := cache.load()
	if note != "" {
		warnings = append(warnings, note)
	}
	if cached != nil && c.check != nil {
		switch revokedBy, err := c.check(ctx, o, cached.GetIssuanceId()); {
		case revokedBy != "":
			warnings = append(warnings, fmt.Sprintf("the cached credential was revoked (%s); asking the broker for a new one", revokedBy))
			cached = nil
			// Not left on disk, even if the broker now refuses a new one.
			if err := cache.remove(); err != nil {
				warnings = append(warnings, fmt.Sprintf("removing the revoked credential from the cache: %v", err))
			}
		case err != nil && unreachable(err):
			// Availability, as the sidecar: the broker cannot be asked,
			// and the credential was issued and has not expired.
			warnings = append(warnings, fmt.Sprintf("could not check the cached credential for revocation (%s); using it", brokerclient.Describe(err)))
		case err != nil:
			// Not known to be revoked, not checked either: ask afresh.
			cached = nil
		}
	}
	if cached != nil {
		out, err := render(cached, o.format)
		return out, warnings, err
	}
	cred, err := c.fetch(ctx, o)
	if err != nil {
		return nil, nil, err
	}
	if out, err = render(cred, o.format); err != nil {
		return nil, nil, err
	}
	if cred.GetAws() == nil {
		warnings = append(warnings, fmt.Sprintf("profile %q returns a %s; only AWS credentials are cached, --cache-file is not used", o.profile, kindName(cred)))
	} else if err := cache.store(cred); err != nil {
		warnings = append(warnings, fmt.Sprintf("credential not cached: %v", err))
	}
	return out, warnings, nil
}

// approvalBackoff spaces the requests of --wait-approval: an identical
// request is cheap for the broker (it finds the same approval), but a
// waiting client need not ask more often than every half minute.
var approvalBackoff = backoff.Policy{Min: 2 * time.Second, Max: 30 * time.Second}

// fetch asks the broker for the credential. With --wait-approval, a request
// that waits for two-person approval is repeated with backoff until it is
// served, refused otherwise, or the wait is over (then the last refusal is
// returned); stderr says once per approval what it waits for and who can
// give it (the broker's message).
func (c command) fetch(ctx context.Context, o options) (*credbrokerv1.Credential, error) {
	deadline := c.now().Add(o.waitApproval)
	told := ""
	for n := 1; ; n++ {
		cred, err := c.issue(ctx, o)
		if err == nil || o.waitApproval <= 0 || brokerclient.Reason(err) != credbrokerv1.ErrorReason_APPROVAL_REQUIRED {
			return cred, err
		}
		wait := approvalBackoff.Delay(n)
		if left := deadline.Sub(c.now()); left <= 0 {
			return nil, err
		} else if wait > left {
			wait = left
		}
		if id := brokerclient.Metadata(err, "approval_id"); id != told {
			told = id
			fmt.Fprintf(c.stderr, prefix+"waiting until %s for approval %s: %v\n", deadline.UTC().Format(time.RFC3339), id, err)
		}
		if err := c.pause(ctx, wait); err != nil {
			return nil, err
		}
	}
}

func (c command) pause(ctx context.Context, d time.Duration) error {
	if c.sleep != nil {
		return c.sleep(ctx, d)
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// issue asks the broker for one credential.
func issue(ctx context.Context, o options) (*credbrokerv1.Credential, error) {
	conn, err := o.identity.Dial(ctx, o.broker, o.brokerID)
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
		return nil, brokerError{err}
	}
	return resp.GetCredential(), nil
}

// checkRevoked asks the broker, through a revocation watch naming the
// cached issuance, whether a revocation covers it (its issuance, its
// cluster, or this identity) and returns who revoked it and why, or ""
// when none does. It reads only what the watch has in force when it starts
// and closes it: one call, bounded by --timeout.
func checkRevoked(ctx context.Context, o options, issuanceID string) (string, error) {
	conn, err := o.identity.Dial(ctx, o.broker, o.brokerID)
	if err != nil {
		return "", status.Error(codes.Unavailable, err.Error())
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	stream, err := credbrokerv1.NewBrokerServiceClient(conn).WatchRevocations(ctx, &credbrokerv1.WatchRevocationsRequest{IssuanceIds: []string{issuanceID}})
	if err != nil {
		return "", err
	}
	for {
		msg, err := stream.Recv()
		switch {
		case brokerclient.Reason(err) == credbrokerv1.ErrorReason_REVOKED:
			return fmt.Sprintf("revocation %s by %s", brokerclient.Metadata(err, "revocation_id"), brokerclient.Metadata(err, "revoked_by")), nil
		case err != nil:
			return "", err
		case msg.GetRevoked() != nil:
			r := msg.GetRevoked().GetRevocation()
			return fmt.Sprintf("revocation %s by %s: %s", r.GetRevocationId(), r.GetAdmin(), r.GetReason()), nil
		case msg.GetHeartbeat() != nil:
			return "", nil // the end of the revocations in force
		}
	}
}

// unreachable reports whether err says the broker could not be asked at
// all (no answer of its own), rather than that it refused.
func unreachable(err error) bool {
	_, answered := brokerclient.ErrorInfo(err)
	code := status.Code(err)
	return !answered && (code == codes.Unavailable || code == codes.DeadlineExceeded)
}

// exitTemporary is the exit status of a refusal that retrying can overcome.
const exitTemporary = 3

// brokerError is a failed call to the broker: described for people, with the
// status kept so that the exit status can follow the broker's reason.
type brokerError struct{ err error }

func (e brokerError) Error() string { return brokerclient.Describe(e.err) }
func (e brokerError) Unwrap() error { return e.err }

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
	// Secret is a dynamic secret's fields (e.g. database credentials).
	Secret json.RawMessage `json:"secret,omitempty"`
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
	if sec := c.GetSecret(); sec != nil {
		if !json.Valid([]byte(sec.GetJson())) {
			return nil, fmt.Errorf("the broker sent a secret that is not JSON")
		}
		out.Secret = json.RawMessage(sec.GetJson())
	}
	return marshal(out)
}

func kindName(c *credbrokerv1.Credential) string {
	switch {
	case c.GetToken() != nil:
		return "token"
	case c.GetSecret() != nil:
		return "secret"
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
