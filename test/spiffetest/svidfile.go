package spiffetest

import (
	"fmt"
	"path/filepath"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/credbroker/credbroker/internal/svidfile"
)

// ServeSVIDDirs starts a Workload API in socketDir that serves the SVIDs of
// the SVID directories dirs (internal/svidfile format), the first as the
// default, with the bundle of the first: the same identities a test would
// otherwise hand a client as directories, the way a SPIRE agent hands them.
func ServeSVIDDirs(socketDir string, dirs ...string) (*WorkloadAPI, error) {
	var svids []*x509svid.SVID
	bundles := x509bundle.NewSet()
	for _, d := range dirs {
		s, b, err := svidfile.Load(d)
		if err != nil {
			return nil, fmt.Errorf("spiffetest: %s: %w", filepath.Base(d), err)
		}
		svids = append(svids, s)
		if !bundles.Has(b.TrustDomain()) {
			bundles.Add(b)
		}
	}
	w, err := StartWorkloadAPI(socketDir)
	if err != nil {
		return nil, err
	}
	if err := w.SetX509(svids, bundles); err != nil {
		w.Close()
		return nil, err
	}
	return w, nil
}
