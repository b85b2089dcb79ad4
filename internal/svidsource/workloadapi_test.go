package svidsource_test

import (
	"context"
	"net"
	"os"
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
	"github.com/credbroker/credbroker/internal/svidsource"
	"github.com/credbroker/credbroker/test/spiffetest"
)

// agentServing starts a Workload API serving SVIDs for ids, in that order.
func agentServing(t *testing.T, ids ...spiffeid.ID) (*spiffetest.WorkloadAPI, *ca.CA) {
	t.Helper()
	w, err := spiffetest.StartWorkloadAPI(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	c, err := ca.New(td)
	if err != nil {
		t.Fatal(err)
	}
	setSVIDs(t, w, c, ids...)
	return w, c
}

func setSVIDs(t *testing.T, w *spiffetest.WorkloadAPI, c *ca.CA, ids ...spiffeid.ID) []*x509svid.SVID {
	t.Helper()
	var svids []*x509svid.SVID
	for _, i := range ids {
		s, err := c.MintX509SVID(i, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		svids = append(svids, s)
	}
	if err := w.SetX509(svids, x509bundle.NewSet(c.X509Bundle())); err != nil {
		t.Fatal(err)
	}
	return svids
}

// TestWorkloadAPIChoosesSVIDByID: with several SVIDs from the agent, the
// source serves the one asked for, also after a rotation that reorders them;
// without a choice, the agent's first; an ID the agent does not serve is an
// error naming what it does serve.
func TestWorkloadAPIChoosesSVIDByID(t *testing.T) {
	other := spiffeid.RequireFromPath(td, "/ns/capi-system/sa/other")
	w, c := agentServing(t, other, id)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()

	def, err := svidsource.FromWorkloadAPI(ctx, w.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer def.Close()
	if s, _ := def.GetX509SVID(); s.ID != other {
		t.Errorf("default SVID %s, want the agent's first, %s", s.ID, other)
	}

	chosen, err := svidsource.FromWorkloadAPI(ctx, w.Addr(), svidsource.WithSPIFFEID(id))
	if err != nil {
		t.Fatal(err)
	}
	defer chosen.Close()
	if s, _ := chosen.GetX509SVID(); s.ID != id {
		t.Fatalf("chosen SVID %s, want %s", s.ID, id)
	}
	rotated := setSVIDs(t, w, c, id, other)
	want := rotated[0].Certificates[0].SerialNumber.String()
	for serial(t, chosen) != want {
		select {
		case <-chosen.Updated():
		case <-ctx.Done():
			t.Fatal("rotation not followed")
		}
	}

	missing := spiffeid.RequireFromPath(td, "/credbroker")
	_, err = svidsource.FromWorkloadAPI(ctx, w.Addr(), svidsource.WithSPIFFEID(missing))
	if err == nil || !strings.Contains(err.Error(), missing.String()) || !strings.Contains(err.Error(), id.String()) || !strings.Contains(err.Error(), other.String()) {
		t.Fatalf("asking for an ID the agent does not serve: %v", err)
	}
}

// TestWorkloadAPIFailuresSayWhy: a start that gets no identity says whether
// the socket is missing, is no socket, has nobody listening, or the agent
// has no registration entry for the caller — not only that the wait ended.
func TestWorkloadAPIFailuresSayWhy(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	stale := filepath.Join(dir, "stale.sock")
	lis, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	lis.(*net.UnixListener).SetUnlinkOnClose(false)
	lis.Close()

	noEntry, _ := agentServing(t, id)
	noEntry.SetError(status.Error(codes.PermissionDenied, "no identity issued"))

	for name, tc := range map[string]struct {
		addr    string
		timeout time.Duration
		want    string
	}{
		"missing socket":   {"unix://" + filepath.Join(dir, "none.sock"), 100 * time.Millisecond, "does not exist"},
		"not a socket":     {"unix://" + file, 100 * time.Millisecond, "is not a socket"},
		"nobody listening": {"unix://" + stale, 100 * time.Millisecond, "nothing listens"},
		// The agent refuses at once; the bound only ends the client's retries.
		"no registration entry": {noEntry.Addr(), 2 * time.Second, "no registration entry matches"},
	} {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), tc.timeout)
			defer cancel()
			src, err := svidsource.FromWorkloadAPI(ctx, tc.addr)
			if err == nil {
				src.Close()
				t.Fatal("got an identity")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not say %q", err, tc.want)
			}
		})
	}

	t.Setenv(svidsource.EndpointEnv, "")
	if _, err := svidsource.FromWorkloadAPI(t.Context(), ""); err == nil || !strings.Contains(err.Error(), svidsource.EndpointEnv) {
		t.Errorf("no address at all: %v", err)
	}
}

// TestOptionsResolve: one identity source, stated once.
func TestOptionsResolve(t *testing.T) {
	for name, tc := range map[string]struct {
		in      svidsource.Options
		want    string // error substring; "" for success
		useSock bool
	}{
		"both explicit":            {svidsource.Options{Dir: "d", DirExplicit: true, Socket: "unix:///s", SocketExplicit: true}, "not both", false},
		"socket flag over env dir": {svidsource.Options{Dir: "d", Socket: "unix:///s", SocketExplicit: true}, "", true},
		"neither":                  {svidsource.Options{}, "an identity is required", false},
		"dir wins over env":        {svidsource.Options{Dir: "d", Socket: "unix:///s"}, "", false},
		"env socket":               {svidsource.Options{Socket: "unix:///s"}, "", true},
		"id with a dir":            {svidsource.Options{Dir: "d", SPIFFEID: "spiffe://example.test/x"}, "--spiffe-id", false},
		"bad id":                   {svidsource.Options{Socket: "unix:///s", SPIFFEID: "nope"}, "--spiffe-id", false},
		"id with the socket":       {svidsource.Options{Socket: "unix:///s", SocketExplicit: true, SPIFFEID: "spiffe://example.test/x"}, "", true},
		"explicit socket no dir":   {svidsource.Options{Socket: "unix:///s", SocketExplicit: true}, "", true},
	} {
		got, err := tc.in.Resolve()
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v", name, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: %v, want an error with %q", name, err, tc.want)
		case tc.want == "" && (got.Socket != "") != tc.useSock:
			t.Errorf("%s: resolved to %+v", name, got)
		}
	}
}

// TestOpenFromWorkloadAPIWithID: Open, as the commands call it, takes the
// chosen SVID from a real agent.
func TestOpenFromWorkloadAPIWithID(t *testing.T) {
	other := spiffeid.RequireFromPath(td, "/other")
	w, _ := agentServing(t, other, id)
	o, err := svidsource.Options{Socket: w.Addr(), SocketExplicit: true, SPIFFEID: id.String(), Timeout: 10 * time.Second}.Resolve()
	if err != nil {
		t.Fatal(err)
	}
	src, err := svidsource.Open(t.Context(), o)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	if s, _ := src.GetX509SVID(); s.ID != id {
		t.Fatalf("SVID %s, want %s", s.ID, id)
	}
}
