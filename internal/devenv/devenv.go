// Package devenv prepares what `credbroker serve --dev` needs to run offline:
// a development trust domain with its CA (kept in DATA_DIR/dev/ca), the
// broker's own server SVID, and ready-to-use SVID directories for a demo
// controller and a demo admin. Nothing here is for production.
package devenv

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/credbroker/credbroker/internal/ca"
	"github.com/credbroker/credbroker/internal/svidfile"
)

// Paths of the demo identities, relative to the trust domain.
const (
	ControllerPath = "/ns/capi-system/sa/demo-controller"
	AdminPath      = "/credbroker/admin"
	ServerPath     = "/credbroker/server"
)

// SVIDTTL is the lifetime of the dev SVIDs; they are re-minted at each start.
const SVIDTTL = 24 * time.Hour

// Env is a prepared development environment.
type Env struct {
	CA            *ca.CA
	ServerSVID    *x509svid.SVID
	ControllerDir string
	AdminDir      string
}

// Prepare loads or creates the dev CA under dataDir/dev/ca and writes fresh
// SVID directories dataDir/dev/controller and dataDir/dev/admin.
func Prepare(dataDir string, td spiffeid.TrustDomain) (*Env, error) {
	devDir := filepath.Join(dataDir, "dev")
	caDir := filepath.Join(devDir, "ca")
	authority, err := ca.Load(caDir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if authority, err = ca.New(td); err != nil {
			return nil, fmt.Errorf("devenv: %w", err)
		}
		if err := authority.Save(caDir); err != nil {
			return nil, fmt.Errorf("devenv: %w", err)
		}
	case err != nil:
		return nil, fmt.Errorf("devenv: %w (delete %s to start a fresh dev trust domain)", err, caDir)
	}
	if authority.TrustDomain() != td {
		return nil, fmt.Errorf("devenv: %s holds a CA for trust domain %q, not %q (delete it to start afresh)", caDir, authority.TrustDomain(), td)
	}

	env := &Env{
		CA:            authority,
		ControllerDir: filepath.Join(devDir, "controller"),
		AdminDir:      filepath.Join(devDir, "admin"),
	}
	env.ServerSVID, err = authority.MintX509SVID(spiffeid.RequireFromPath(td, ServerPath), SVIDTTL,
		ca.WithDNSNames("localhost"), ca.WithIPAddresses(net.IPv4(127, 0, 0, 1), net.IPv6loopback))
	if err != nil {
		return nil, fmt.Errorf("devenv: server SVID: %w", err)
	}
	for dir, path := range map[string]string{env.ControllerDir: ControllerPath, env.AdminDir: AdminPath} {
		svid, err := authority.MintX509SVID(spiffeid.RequireFromPath(td, path), SVIDTTL)
		if err != nil {
			return nil, fmt.Errorf("devenv: %s: %w", path, err)
		}
		if err := svidfile.Write(dir, svid, authority.X509Bundle()); err != nil {
			return nil, fmt.Errorf("devenv: %w", err)
		}
	}
	if err := os.Chmod(devDir, 0o700); err != nil {
		return nil, fmt.Errorf("devenv: %w", err)
	}
	return env, nil
}
