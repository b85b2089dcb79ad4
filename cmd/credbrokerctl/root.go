package main

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/credbroker/credbroker/internal/brokerclient"
	"github.com/credbroker/credbroker/internal/svidsource"
)

// socketEnv overrides the default --socket.
const socketEnv = "CREDBROKER_ADMIN_SOCKET"

const defaultSocket = "./data/admin.sock"

// Output formats for -o.
const (
	outputTable = "table"
	outputJSON  = "json"
	// outputAWSPolicy prints the AWS deny document of revocations; only the
	// commands annotated with it accept it.
	outputAWSPolicy = "aws-policy"
)

// annotationAWSPolicy marks a command that accepts -o aws-policy.
const annotationAWSPolicy = "credbrokerctl/aws-policy"

// annotationReplicas marks a command that accepts --socket and --broker
// more than once, one for each replica (audit export).
const annotationReplicas = "credbrokerctl/replicas"

// app holds the global flags and the process environment the commands use.
type app struct {
	socket  string
	output  string
	timeout time.Duration

	// broker, svidDir and brokerID select the admin API over mTLS instead
	// of the socket; the admin's identity comes from svidDir or the
	// Workload API (workloadAPI, spiffeID), opened once per invocation.
	broker, svidDir, brokerID string
	workloadAPI, spiffeID     string
	identity                  *brokerclient.Identity
	// sockets and brokers are every --socket and --broker given (a command
	// annotated annotationReplicas takes several); socket and broker are
	// the one every other command talks to.
	sockets, brokers []string
	socketsChanged   bool

	now    func() time.Time
	getenv func(string) string
	stdin  io.Reader // nil: none (audit verify --file - fails)
	stdout io.Writer
	stderr io.Writer
	// isTerminal reports whether a writer is a terminal (progress bars are
	// drawn only there); nil means never.
	isTerminal func(io.Writer) bool
}

func newRootCmd(a *app) *cobra.Command {
	root := &cobra.Command{
		Use:   "credbrokerctl",
		Short: "Administer a credbroker server",
		Long: `credbrokerctl inspects and administers a running credbroker through its
admin API. It never opens the broker's database.

By default it uses the local admin unix socket, which the broker accepts
only from its own uid (or root), so run credbrokerctl as that user. With
--broker it uses the admin API on the broker's gRPC listener instead,
authenticated by an admin X.509-SVID (one of admin.spiffe_ids) from the
SPIFFE Workload API (--workload-api-socket, default $SPIFFE_ENDPOINT_SOCKET;
--spiffe-id chooses among several SVIDs) or from an SVID directory
(--svid-dir, which wins over $SPIFFE_ENDPOINT_SOCKET).`,
		Example: `  credbrokerctl --socket /var/lib/credbroker/admin.sock issuances list --since 1h
  CREDBROKER_ADMIN_SOCKET=./data/admin.sock credbrokerctl audit verify -o json
  credbrokerctl --broker 127.0.0.1:8443 --svid-dir ./data/dev/admin audit verify
  credbrokerctl --broker credbroker:8443 --workload-api-socket unix:///run/spire/agent.sock \
    --spiffe-id spiffe://example.org/credbroker/admin approvals list`,
		SilenceErrors: true,
		SilenceUsage:  true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			switch {
			case a.output == outputAWSPolicy && cmd.Annotations[annotationAWSPolicy] == "":
				return usagef("-o %s is only for revoke issuance|identity|cluster and revoke list", outputAWSPolicy)
			case a.output != outputTable && a.output != outputJSON && a.output != outputAWSPolicy:
				return usagef("unknown output format %q: use table or json (or aws-policy for revoke)", a.output)
			}
			if a.timeout <= 0 {
				return usagef("--timeout must be positive")
			}
			if err := a.resolveTargets(cmd); err != nil {
				return err
			}
			return a.resolveIdentity(cmd)
		},
	}
	root.CompletionOptions.DisableDefaultCmd = true
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	groupCommand(root)

	socket := defaultSocket
	if env := a.getenv(socketEnv); env != "" {
		socket = env
	}
	f := root.PersistentFlags()
	f.StringArrayVar(&a.sockets, "socket", []string{socket}, "path of the broker's admin unix socket (env "+socketEnv+"); audit export takes one per replica")
	f.StringVarP(&a.output, "output", "o", outputTable, "output format: table or json (revoke also: aws-policy)")
	f.DurationVar(&a.timeout, "timeout", 10*time.Second, "how long to wait for the broker to answer (for verify and export: for each message, not the whole stream)")
	f.StringArrayVar(&a.brokers, "broker", nil, "use the admin API over mTLS at this gRPC address instead of the socket; audit export takes one per replica")
	f.StringVar(&a.svidDir, "svid-dir", "", "with --broker: directory with the admin's svid.pem, svid_key.pem, bundle.pem")
	f.StringVar(&a.workloadAPI, "workload-api-socket", "", "with --broker: SPIFFE Workload API address for the admin's SVID, e.g. unix:///run/spire/agent.sock (default: env "+svidsource.EndpointEnv+")")
	f.StringVar(&a.spiffeID, "spiffe-id", "", "with the Workload API: the SPIFFE ID of the admin SVID when the agent gives several (default: its first)")
	f.StringVar(&a.brokerID, "broker-id", "", "with --broker: exact SPIFFE ID the broker must present (default: any in the SVID's trust domain)")

	root.AddCommand(newIssuancesCmd(a), newAuditCmd(a), newJoinTokenCmd(a), newNodesCmd(a), newRevokeCmd(a), newClustersCmd(a), newQuotaCmd(a), newApprovalsCmd(a), newPolicyCmd(a), newKeysCmd(a))
	return root
}

// resolveTargets settles which broker the command talks to, and refuses
// several --socket or --broker values but for a command that merges
// replicas.
func (a *app) resolveTargets(cmd *cobra.Command) error {
	a.socketsChanged = cmd.Flags().Changed("socket")
	if cmd.Annotations[annotationReplicas] == "" {
		for name, values := range map[string][]string{"socket": a.sockets, "broker": a.brokers} {
			if len(values) > 1 {
				return usagef("--%s given %d times: only audit export reads several replicas", name, len(values))
			}
		}
	}
	if len(a.sockets) > 0 {
		a.socket = a.sockets[len(a.sockets)-1]
	}
	if len(a.brokers) > 0 {
		a.broker = a.brokers[len(a.brokers)-1]
	}
	return nil
}

// replicas is every broker the flags name, for a command that reads each
// replica: every --broker, and every --socket given (the default socket
// only when neither is).
func (a *app) replicas() []target {
	var ts []target
	if a.socketsChanged || len(a.brokers) == 0 {
		for _, s := range a.sockets {
			ts = append(ts, target{socket: s})
		}
	}
	for _, b := range a.brokers {
		ts = append(ts, target{broker: b})
	}
	return ts
}

// resolveIdentity settles where the admin's identity comes from when
// --broker is given, and refuses identity flags without it (the admin
// socket needs none; $SPIFFE_ENDPOINT_SOCKET alone does not matter then).
func (a *app) resolveIdentity(cmd *cobra.Command) error {
	flags := cmd.Flags()
	if a.broker == "" {
		for _, name := range []string{"svid-dir", "workload-api-socket", "spiffe-id"} {
			if flags.Changed(name) {
				return usagef("--%s goes with --broker (the admin socket needs no SVID)", name)
			}
		}
		return nil
	}
	o := svidsource.Options{Dir: a.svidDir, DirExplicit: flags.Changed("svid-dir"), Socket: a.workloadAPI,
		SocketExplicit: flags.Changed("workload-api-socket"), SPIFFEID: a.spiffeID, Timeout: a.timeout}
	if o.Socket == "" {
		o.Socket = a.getenv(svidsource.EndpointEnv)
	}
	o, err := o.Resolve()
	if err != nil {
		return usageError{fmt.Errorf("with --broker: %w", err)}
	}
	a.identity = &brokerclient.Identity{Options: o}
	return nil
}

// groupCommand makes cmd, which only holds subcommands, reject unknown
// subcommands, and being run bare, as usage errors.
func groupCommand(cmd *cobra.Command) {
	cmd.Args = cobra.ArbitraryArgs
	cmd.RunE = func(c *cobra.Command, args []string) error {
		if len(args) > 0 {
			return usagef("unknown command %q for %q", args[0], c.CommandPath())
		}
		var subs []string
		for _, sub := range c.Commands() {
			if sub.IsAvailableCommand() {
				subs = append(subs, sub.Name())
			}
		}
		return usagef("missing subcommand (one of: %s)", strings.Join(subs, ", "))
	}
}

// exactArgs is cobra.ExactArgs reporting a usage error.
func exactArgs(n int) cobra.PositionalArgs {
	return func(c *cobra.Command, args []string) error {
		if err := cobra.ExactArgs(n)(c, args); err != nil {
			return usageError{err}
		}
		return nil
	}
}

// noArgs rejects positional arguments as a usage error.
func noArgs(c *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usagef("%s takes no arguments, got %q", c.CommandPath(), args[0])
	}
	return nil
}

// jsonOutput reports whether -o json was asked for.
func (a *app) jsonOutput() bool { return a.output == outputJSON }

func (a *app) printf(format string, args ...any) {
	fmt.Fprintf(a.stdout, format, args...)
}
