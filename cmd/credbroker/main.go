// Command credbroker is the credential broker server.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/credbroker/credbroker/broker/config"
	"github.com/credbroker/credbroker/internal/daemon"
)

func main() {
	if err := newRootCommand().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "credbroker:", err)
		os.Exit(1)
	}
}

func newRootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:           "credbroker",
		Short:         "Short-lived, scoped credentials for Cluster API controllers and nodes",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newServeCommand(), newCheckConfigCommand())
	return root
}

func newCheckConfigCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "check-config FILE",
		Short: "Validate a configuration file without starting the broker",
		Long: `Parse and validate a configuration file the way 'serve --config' does: unknown
keys, bad values, profiles naming missing issuers, policy rules granting
unknown profiles. Every problem is reported; the exit status is 1 if there
is any. For a valid file it prints where the state is kept (the local file,
or etcd shared by replicas), who may get what (each policy rule with
each profile it grants: issuer, clusters, lifetimes, quotas, approval), then
the limits as they apply: the issuance limits
of each profile and of each policy rule with each profile it grants, the
request limits and the bounds on refusal records. Files the configuration names (SVIDs, bundles, keys) are not read.`,
		Example: `  credbroker check-config /etc/credbroker/config.yaml`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := config.LoadFile(args[0])
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: configuration OK\n", args[0])
			if err := cfg.WriteState(cmd.OutOrStdout()); err != nil {
				return err
			}
			if err := cfg.WriteGrants(cmd.OutOrStdout()); err != nil {
				return err
			}
			return cfg.WriteLimits(cmd.OutOrStdout())
		},
	}
}

func newServeCommand() *cobra.Command {
	var opts daemon.Options
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the broker",
		Long: `Run the broker: the mTLS gRPC API for workloads and admins, the HTTP listener
(/healthz, /metrics, OIDC discovery and JWKS) and the admin unix socket.

With --dev it runs offline on the embedded development configuration: it
creates a dev trust domain and CA in the data directory, writes ready-to-use
SVID directories for a demo controller (DATA_DIR/dev/controller) and a demo
admin (DATA_DIR/dev/admin), and prints a line that requests a credential.
With --dev --config FILE it uses that dev identity and trust with the file's
issuers, profiles, policy and limits (the file must not set tls.*): a way to
try real issuers, such as AWS STS, from a laptop.

SIGTERM or SIGINT drains in-flight requests, then closes the database.
SIGHUP re-reads the SVID and trust bundle files at once (they are also
re-read every tls.reload_interval).`,
		Example: `  credbroker serve --dev
  credbroker serve --dev --data-dir /tmp/cb --listen 127.0.0.1:0 --http-listen 127.0.0.1:0
  credbroker serve --dev --config ./aws-try.yaml
  credbroker serve --config /etc/credbroker/config.yaml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			hup := make(chan os.Signal, 1)
			signal.Notify(hup, syscall.SIGHUP)
			defer signal.Stop(hup)
			opts.Reload = hup
			opts.Stdout, opts.Stderr = cmd.OutOrStdout(), cmd.ErrOrStderr()
			if exe, err := os.Executable(); err == nil {
				opts.BinDir = filepath.Dir(exe)
			}
			return daemon.Run(ctx, opts)
		},
	}
	f := cmd.Flags()
	f.BoolVar(&opts.Dev, "dev", false, "run with a generated dev CA and demo SVIDs (on the embedded dev configuration unless --config is given)")
	f.StringVar(&opts.ConfigFile, "config", "", "configuration file (YAML; unknown keys are errors)")
	f.StringVar(&opts.DataDir, "data-dir", "", "data directory (database, keys, admin socket); default ./data or the config's data_dir")
	f.StringVar(&opts.Listen, "listen", "", "gRPC mTLS listen address; default 127.0.0.1:8443 or the config's listen")
	f.StringVar(&opts.HTTPListen, "http-listen", "", "HTTP listen address for /healthz, /metrics and OIDC discovery; default 127.0.0.1:8444")
	return cmd
}
