// Command credbroker-sidecar runs beside an AWS SDK program (a CAPA
// controller) and serves it broker-issued AWS credentials through the SDKs'
// standard container-credentials provider, on loopback only.
package main

import (
	"context"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/credbroker/credbroker/internal/sidecar"
	"github.com/credbroker/credbroker/internal/svidsource"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if len(os.Args) > 1 && os.Args[1] == "node" {
		os.Exit(runNode(ctx, os.Args[2:], os.Stderr))
	}
	os.Exit(run(ctx, os.Args[1:], os.Stderr))
}

const usage = `Usage: credbroker-sidecar node ...   (on a node: attest and keep the node SVID; see "node --help")
       credbroker-sidecar --broker ADDR (--svid-dir DIR | --workload-api-socket ADDR)
         --token-file PATH (--credential NAME=PROFILE[@NS/CLUSTER][,ttl=DURATION]... | --profile P [--cluster NS/NAME])
         [flags]

Fetches AWS credentials from the credbroker and serves them to an unmodified
AWS SDK program in the same pod through the container-credentials endpoint:

  GET http://LISTEN/v1/credentials/NAME   with header "Authorization: <token>"
  GET http://LISTEN/healthz               200 when every credential is valid, else 503
  GET http://LISTEN/metrics               Prometheus metrics

LISTEN is on loopback only. For Prometheus and the kubelet, --metrics-listen
ADDR (e.g. :9912) starts a second server on an address of its own, reachable
from outside the pod, that answers only

  GET http://ADDR/metrics                 the same metrics
  GET http://ADDR/healthz                 200 or 503 as above, naming the missing
                                          credentials but not why (see LISTEN)

and 404 to anything else: it never serves a credential. It is up before the
first credential is fetched. It must not share --listen's port.

Give the controller container these environment variables (the AWS SDKs and
CLI then need no code or config change):

  AWS_CONTAINER_CREDENTIALS_FULL_URI=http://127.0.0.1:9911/v1/credentials/default
  AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE=/var/run/credbroker/token
  # (SDKs too old for the _FILE variable: AWS_CONTAINER_AUTHORIZATION_TOKEN=<contents of the file>)

with the token file on a volume both containers mount (an emptyDir; use
--token-file-mode 0640 and a pod fsGroup when they run as different users).

Identity: the sidecar authenticates to the broker with its own X.509-SVID,
either from a SPIFFE Workload API (--workload-api-socket, default
$SPIFFE_ENDPOINT_SOCKET) or from an SVID directory (--svid-dir; svid.pem,
svid_key.pem, bundle.pem, re-read when they change). Give exactly one; an
--svid-dir wins over $SPIFFE_ENDPOINT_SOCKET. When the agent gives this pod
several SVIDs, --spiffe-id chooses one (default: the agent's first).

Credentials: --credential NAME=PROFILE[@NAMESPACE/CLUSTER][,ttl=DURATION],
repeatable, e.g.
  --credential default=capa-controller
  --credential prod=capa-controller@clusters/prod-1,ttl=30m
NAME is the last path segment of the URL. --profile P [--cluster NS/NAME] is
shorthand for one credential named "default".

Refresh: each credential is renewed in the background at --refresh-at of its
lifetime (up to 10% earlier, jittered). When the broker is unreachable the
last credential is served until 10s before it expires, then 503 until the
broker answers again (retries back off from 1s to 30s). The AWS SDKs treat a
container credential as stale 5 minutes before it expires, so use TTLs well
above 5 minutes.

Revocation: the sidecar keeps a revocation watch open at the broker for the
credentials it serves. When an admin revokes one of them, or the sidecar's
identity, or the cluster a credential is for, the sidecar drops it at once
and answers 403 {"code":"CredentialRevoked","message":...} naming the
revocation; a revoked issuance is replaced by a fresh credential, a revoked
identity or cluster is asked for again only with backoff, and at once when
the revocation is lifted. If the watch breaks it reconnects with backoff;
while the broker is unreachable the held credentials are served until they
expire (see above). --watch-revocations=false turns the watch off. An SDK
keeps a credential it retrieved until 5 minutes before the expiry it was
told: --served-lifetime 6m tells it at most 6 minutes from now, so it comes
back about every minute and a revoked credential leaves the program too.

Startup: every credential is fetched once. If the broker refuses (permission
denied, unauthenticated, invalid argument, not found, or a profile that does
not issue AWS credentials) the sidecar exits 1. If it is merely unavailable
the sidecar serves anyway (503, /healthz 503) and keeps retrying; if its
identity or cluster is revoked it serves the refusal (403) until the lift.
When the endpoint is up it logs "msg=serving addr=HOST:PORT".

Exit status: 0 after SIGTERM/SIGINT, 1 on failure, 2 on bad usage.

Flags:
`

type options struct {
	broker, brokerID, svidDir, socket, listen, tokenFile, tokenMode string
	metricsListen                                                   string
	profile, cluster, credFile                                      string
	credentials                                                     []string
	refreshAt                                                       float64
	servedLifetime                                                  time.Duration
	watch                                                           bool
	startTimeout                                                    time.Duration
	socketSet                                                       bool // --workload-api-socket given explicitly
	spiffeID                                                        string
	// source is where the identity comes from, settled by check.
	source svidsource.Options
}

// newFlagSet returns a flag set for a (sub)command that prints usage on
// --help and errors on stderr, with the flags naming the broker.
func newFlagSet(name, usage string, stderr io.Writer, broker, brokerID *string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, usage); fs.PrintDefaults() }
	fs.StringVar(broker, "broker", os.Getenv("CREDBROKER_ADDR"), "broker gRPC address HOST:PORT (env CREDBROKER_ADDR)")
	fs.StringVar(brokerID, "broker-id", "", "exact SPIFFE ID the broker must present (default: any ID in the trust domain)")
	return fs
}

func run(ctx context.Context, args []string, stderr io.Writer) int {
	var o options
	fs := newFlagSet("credbroker-sidecar", usage, stderr, &o.broker, &o.brokerID)
	fs.StringVar(&o.svidDir, "svid-dir", "", "SVID directory (svid.pem, svid_key.pem, bundle.pem); excludes --workload-api-socket")
	fs.StringVar(&o.socket, "workload-api-socket", os.Getenv("SPIFFE_ENDPOINT_SOCKET"), "SPIFFE Workload API address, e.g. unix:///run/spire/agent.sock (env SPIFFE_ENDPOINT_SOCKET)")
	fs.StringVar(&o.spiffeID, "spiffe-id", "", "with the Workload API: the SPIFFE ID of the SVID to use when the agent gives several (default: its first)")
	fs.StringVar(&o.listen, "listen", "127.0.0.1:9911", "loopback IP:PORT to serve on (127.0.0.0/8 or [::1]; port 0 picks one)")
	fs.StringVar(&o.metricsListen, "metrics-listen", "", "IP:PORT or :PORT to serve only /metrics and /healthz on, for Prometheus and the kubelet (never credentials; a port other than --listen's); empty: off")
	fs.StringVar(&o.tokenFile, "token-file", "", "authorization token file; created with a fresh random token if missing (required)")
	fs.StringVar(&o.tokenMode, "token-file-mode", "0600", "mode of a token file the sidecar creates, e.g. 0640 for a shared fsGroup")
	fs.Func("credential", "credential to serve, NAME=PROFILE[@NS/CLUSTER][,ttl=DURATION] (repeatable)", func(s string) error {
		o.credentials = append(o.credentials, s)
		return nil
	})
	fs.StringVar(&o.profile, "profile", "", `shorthand: serve one credential named "default" for this profile`)
	fs.StringVar(&o.cluster, "cluster", "", "with --profile: workload cluster NAMESPACE/NAME")
	fs.StringVar(&o.credFile, "credentials-file", "", "also keep an AWS shared-credentials file here, one [NAME] section per credential (mode 0600)")
	fs.DurationVar(&o.servedLifetime, "served-lifetime", 0, "tell the SDK a credential expires at most this long from now (e.g. 6m: the SDKs then come back about every minute, so a revoked credential leaves the program within a minute); 0: its real expiry")
	fs.BoolVar(&o.watch, "watch-revocations", true, "keep a revocation watch open at the broker and stop serving a revoked credential at once")
	fs.Float64Var(&o.refreshAt, "refresh-at", sidecar.DefaultRefreshAt, "refresh at this fraction of a credential's lifetime (0 < f < 1)")
	fs.DurationVar(&o.startTimeout, "identity-timeout", 30*time.Second, "how long to wait for the first SVID from the Workload API")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	fs.Visit(func(f *flag.Flag) { o.socketSet = o.socketSet || f.Name == "workload-api-socket" })
	specs, mode, err := o.check(fs.Args())
	if err != nil {
		fmt.Fprintf(stderr, "credbroker-sidecar: %v (see --help)\n", err)
		return 2
	}

	log := slog.New(slog.NewTextHandler(stderr, nil))
	token, created, err := sidecar.LoadOrCreateToken(o.tokenFile, mode, rand.Reader)
	if err != nil {
		fmt.Fprintf(stderr, "credbroker-sidecar: %v\n", err)
		return 1
	}
	if created {
		log.Info("created token file", "path", o.tokenFile)
	}
	src, err := o.identity(ctx, log)
	if err != nil {
		fmt.Fprintf(stderr, "credbroker-sidecar: %v\n", err)
		return 1
	}
	defer src.Close()

	err = sidecar.Run(ctx, sidecar.Options{
		Broker: o.broker, BrokerID: o.brokerID, SVIDs: src, Bundles: src,
		Credentials: specs, Listen: o.listen, MetricsListen: o.metricsListen, Token: token,
		CredentialsFile: o.credFile, RefreshAt: o.refreshAt, Logger: log, NoWatch: !o.watch, ServedLifetime: o.servedLifetime,
	})
	if err != nil {
		fmt.Fprintf(stderr, "credbroker-sidecar: %v\n", err)
		return 1
	}
	return 0
}

// check validates the options and settles the identity source (o.source).
func (o *options) check(rest []string) ([]sidecar.Spec, os.FileMode, error) {
	switch {
	case len(rest) > 0:
		return nil, 0, fmt.Errorf("unexpected arguments %q", rest)
	case o.broker == "":
		return nil, 0, errors.New("--broker is required")
	}
	// An --svid-dir wins over SPIFFE_ENDPOINT_SOCKET from the environment.
	src, err := svidsource.Options{Dir: o.svidDir, DirExplicit: o.svidDir != "", Socket: o.socket, SocketExplicit: o.socketSet,
		SPIFFEID: o.spiffeID, Timeout: o.startTimeout}.Resolve()
	if err != nil {
		return nil, 0, err
	}
	o.source = src
	switch {
	case o.tokenFile == "":
		return nil, 0, errors.New("--token-file is required")
	case o.servedLifetime < 0:
		return nil, 0, errors.New("--served-lifetime must not be negative")
	case !(o.refreshAt > 0 && o.refreshAt < 1):
		return nil, 0, fmt.Errorf("--refresh-at %v: want a fraction between 0 and 1", o.refreshAt)
	case o.cluster != "" && o.profile == "":
		return nil, 0, errors.New("--cluster goes with --profile")
	case o.profile == "" && len(o.credentials) == 0:
		return nil, 0, errors.New("no credential to serve: give --credential or --profile")
	}
	if err := sidecar.CheckListen(o.listen); err != nil {
		return nil, 0, err
	}
	if o.metricsListen != "" {
		if err := sidecar.CheckMetricsListen(o.metricsListen, o.listen); err != nil {
			return nil, 0, fmt.Errorf("--metrics-listen: %w", err)
		}
	}
	mode, err := strconv.ParseUint(o.tokenMode, 8, 32)
	if err != nil || mode > 0o777 {
		return nil, 0, fmt.Errorf("--token-file-mode %q: want an octal mode such as 0600", o.tokenMode)
	}
	var specs []sidecar.Spec
	if o.profile != "" {
		if err := sidecar.CheckCluster(o.cluster); err != nil {
			return nil, 0, fmt.Errorf("--cluster: %w", err)
		}
		specs = append(specs, sidecar.Spec{Name: "default", Profile: o.profile, Cluster: o.cluster})
	}
	seen := map[string]bool{}
	for _, s := range o.credentials {
		spec, err := sidecar.ParseSpec(s)
		if err != nil {
			return nil, 0, err
		}
		specs = append(specs, spec)
	}
	for _, s := range specs {
		if seen[s.Name] {
			return nil, 0, fmt.Errorf("credential %q is defined twice", s.Name)
		}
		seen[s.Name] = true
	}
	return specs, os.FileMode(mode), nil
}

// identity opens the source check settled on; svidsource says why a
// Workload API gave no identity (missing socket, no registration entry, ...).
func (o options) identity(ctx context.Context, log *slog.Logger) (svidsource.Source, error) {
	src := o.source
	src.OnDirError = func(err error) { log.Warn("SVID directory", "error", err) }
	return svidsource.Open(ctx, src)
}
