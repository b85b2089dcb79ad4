// Package svidsource provides the sidecar's own X.509 identity as go-spiffe
// sources (x509svid.Source and x509bundle.Source) that follow rotation:
// either from a SPIFFE Workload API (SPIRE agent) or from an SVID directory
// (internal/svidfile format) that something else rewrites.
//
// Hand the sources, not a loaded SVID, to grpccredentials so that every new
// TLS handshake presents the current SVID.
package svidsource

import (
	"context"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

// Source is what both constructors return: an SVID source and a bundle
// source that must be closed when no longer used.
type Source interface {
	x509svid.Source
	x509bundle.Source
	Close() error
}

// FromWorkloadAPI connects to the Workload API at addr (for example
// "unix:///run/spire/agent.sock"; empty means the SPIFFE_ENDPOINT_SOCKET
// environment variable) and blocks until the first X.509 context arrives or
// ctx ends. The source follows rotations pushed by the agent. The caller must
// Close it.
func FromWorkloadAPI(ctx context.Context, addr string) (*workloadapi.X509Source, error) {
	var opts []workloadapi.X509SourceOption
	if addr != "" {
		opts = append(opts, workloadapi.WithClientOptions(workloadapi.WithAddr(addr)))
	}
	return workloadapi.NewX509Source(ctx, opts...)
}
