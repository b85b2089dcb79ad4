package main

import (
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/credbroker/credbroker/internal/ca"
	"github.com/credbroker/credbroker/test/spiffetest"
)

// TestIdentityChosenBySPIFFEID: the sidecar takes the SVID named by
// --spiffe-id from a real Workload API serving several, and a Workload API
// with no registration entry for it is reported as such.
func TestIdentityChosenBySPIFFEID(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("sidecar.test")
	authority, err := ca.New(td)
	if err != nil {
		t.Fatal(err)
	}
	var svids []*x509svid.SVID
	for _, p := range []string{"/ns/capa-system/sa/default", "/ns/capa-system/sa/capa-controller-manager"} {
		s, err := authority.MintX509SVID(spiffeid.RequireFromPath(td, p), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		svids = append(svids, s)
	}
	agent, err := spiffetest.StartWorkloadAPI(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer agent.Close()
	if err := agent.SetX509(svids, x509bundle.NewSet(authority.X509Bundle())); err != nil {
		t.Fatal(err)
	}

	o := options{broker: "b:1", socket: agent.Addr(), socketSet: true, spiffeID: svids[1].ID.String(), startTimeout: 10 * time.Second,
		tokenFile: filepath.Join(t.TempDir(), "tok"), tokenMode: "0600", refreshAt: 0.5, listen: "127.0.0.1:0", profile: "p"}
	if _, _, err := o.check(nil); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	src, err := o.identity(context.Background(), log)
	if err != nil {
		t.Fatal(err)
	}
	got, err := src.GetX509SVID()
	src.Close()
	if err != nil || got.ID != svids[1].ID {
		t.Fatalf("SVID %v, %v; want %s", got, err, svids[1].ID)
	}

	agent.SetError(status.Error(codes.PermissionDenied, "no identity issued"))
	o.startTimeout = 2 * time.Second // the agent refuses at once; this ends the retries
	if _, _, err := o.check(nil); err != nil {
		t.Fatal(err)
	}
	if _, err := o.identity(context.Background(), log); err == nil || !strings.Contains(err.Error(), "no registration entry matches") {
		t.Fatalf("no registration entry: %v", err)
	}
}
