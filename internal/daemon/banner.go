package daemon

import (
	"bytes"
	"fmt"
	"io"
	"path/filepath"

	"github.com/credbroker/credbroker/broker/config"
)

func bytesReader(b []byte) io.Reader { return bytes.NewReader(b) }

// printDevBanner tells a developer what is running and gives a line to paste.
func printDevBanner(opts Options, cfg *config.Config, t *trust) {
	if opts.Stdout == nil {
		return
	}
	bin := func(name string) string {
		if opts.BinDir == "" {
			return name
		}
		return filepath.Join(opts.BinDir, name)
	}
	fmt.Fprintf(opts.Stdout, `credbroker is running in DEV mode (trust domain %s; keys and SVIDs in %s).
  gRPC (mTLS)   %s
  HTTP          http://%s  (/healthz, /metrics, /.well-known/openid-configuration)
  admin socket  %s
  demo SVIDs    %s  %s

Request a credential as the demo controller:
  %s --broker %s --svid-dir %s --profile dev-token --format json

Inspect and verify:
  %s --socket %s issuances list
  %s --socket %s audit verify

`, cfg.TrustDomain, cfg.DataDir, cfg.Listen, cfg.HTTPListen, cfg.Admin.Socket,
		t.dev.ControllerDir, t.dev.AdminDir,
		bin("credbroker-credential-process"), cfg.Listen, t.dev.ControllerDir,
		bin("credbrokerctl"), cfg.Admin.Socket, bin("credbrokerctl"), cfg.Admin.Socket)
	if cfg.NodeAttestation != nil {
		tokenFile := filepath.Join(cfg.DataDir, "dev", "join-token")
		fmt.Fprintf(opts.Stdout, `Admit a node of workload cluster team-a/alpha with a one-time join token:
  %s --socket %s join-token create --cluster team-a/alpha --node worker-1 > %s
  %s node --once --broker %s --trust-domain %s --bundle %s --svid-dir %s --join-token-file %s

`, bin("credbrokerctl"), cfg.Admin.Socket, tokenFile,
			bin("credbroker-sidecar"), cfg.Listen, cfg.TrustDomain, filepath.Join(t.dev.ControllerDir, "bundle.pem"),
			filepath.Join(cfg.DataDir, "dev", "node"), tokenFile)
	}
}
