package svidsource_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"go.uber.org/goleak"

	"github.com/credbroker/credbroker/internal/ca"
	"github.com/credbroker/credbroker/internal/svidfile"
	"github.com/credbroker/credbroker/internal/svidsource"
	"github.com/credbroker/credbroker/test/fakeclock"
	"github.com/credbroker/credbroker/test/spiffetest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var (
	td = spiffeid.RequireTrustDomainFromString("example.test")
	id = spiffeid.RequireFromPath(td, "/ns/capi-system/sa/sidecar")
	t0 = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
)

func newCA(t *testing.T) *ca.CA {
	t.Helper()
	c, err := ca.New(td, ca.WithClock(func() time.Time { return t0.Add(-time.Hour) }))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func mint(t *testing.T, c *ca.CA, at time.Time, ttl time.Duration) *x509svid.SVID {
	t.Helper()
	s, err := c.With(ca.WithClock(func() time.Time { return at })).MintX509SVID(id, ttl)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func serial(t *testing.T, src x509svid.Source) string {
	t.Helper()
	s, err := src.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	return s.Certificates[0].SerialNumber.String()
}

func TestFromDirFollowsRotationAndKeepsLastGood(t *testing.T) {
	c := newCA(t)
	dir := t.TempDir()
	first := mint(t, c, t0, time.Hour)
	if err := svidfile.Write(dir, first, c.X509Bundle()); err != nil {
		t.Fatal(err)
	}
	clk := fakeclock.New(t0)
	var errs []error
	src, err := svidsource.FromDir(dir, svidsource.WithClock(clk.Now), svidsource.WithErrorHandler(func(err error) { errs = append(errs, err) }))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	want := first.Certificates[0].SerialNumber.String()
	if got := serial(t, src); got != want {
		t.Fatalf("serial %s, want %s", got, want)
	}
	if b, err := src.GetX509BundleForTrustDomain(td); err != nil || !b.Equal(c.X509Bundle()) {
		t.Errorf("bundle: %v", err)
	}
	if _, err := src.GetX509BundleForTrustDomain(spiffeid.RequireTrustDomainFromString("other.test")); err == nil {
		t.Error("bundle for a foreign trust domain")
	}

	// Rotation: new SVID written atomically; seen after the check interval.
	second := mint(t, c, t0, time.Hour)
	if err := svidfile.Write(dir, second, c.X509Bundle()); err != nil {
		t.Fatal(err)
	}
	if got := serial(t, src); got != want {
		t.Error("re-read before the check interval")
	}
	clk.Advance(svidsource.DefaultCheckInterval)
	want = second.Certificates[0].SerialNumber.String()
	if got := serial(t, src); got != want {
		t.Fatalf("after rotation serial %s, want %s", got, want)
	}

	// Half a rotation: a new certificate with the old key. The old stays.
	third := mint(t, c, t0, time.Hour)
	certPEM, _, err := third.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(dir, "tmp")
	if err := os.WriteFile(tmp, certPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, svidfile.CertFile)); err != nil {
		t.Fatal(err)
	}
	clk.Advance(svidsource.DefaultCheckInterval)
	if got := serial(t, src); got != want {
		t.Errorf("half rotation replaced the SVID")
	}
	clk.Advance(svidsource.DefaultCheckInterval)
	serial(t, src)
	if len(errs) != 1 {
		t.Errorf("error handler called %d times, want once per broken state: %v", len(errs), errs)
	}
	// Completing it is picked up.
	if err := svidfile.Write(dir, third, c.X509Bundle()); err != nil {
		t.Fatal(err)
	}
	clk.Advance(svidsource.DefaultCheckInterval)
	if got := serial(t, src); got != third.Certificates[0].SerialNumber.String() {
		t.Error("completed rotation not picked up")
	}
}

func TestFromDirNeverReturnsExpiredSVIDSilently(t *testing.T) {
	c := newCA(t)
	dir := t.TempDir()
	if err := svidfile.Write(dir, mint(t, c, t0, time.Minute), c.X509Bundle()); err != nil {
		t.Fatal(err)
	}
	clk := fakeclock.New(t0)
	// A long interval: expiry must force a re-read regardless.
	src, err := svidsource.FromDir(dir, svidsource.WithClock(clk.Now), svidsource.WithCheckInterval(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	clk.Advance(2 * time.Minute)
	if s, err := src.GetX509SVID(); err == nil {
		t.Fatalf("expired SVID returned: expires %v", s.Certificates[0].NotAfter)
	}
	fresh := mint(t, c, t0.Add(2*time.Minute), time.Hour)
	if err := svidfile.Write(dir, fresh, c.X509Bundle()); err != nil {
		t.Fatal(err)
	}
	if got := serial(t, src); got != fresh.Certificates[0].SerialNumber.String() {
		t.Error("the valid SVID on disk was not picked up at once")
	}
	src.Close()
	if _, err := src.GetX509SVID(); err == nil {
		t.Error("closed source still answers")
	}
}

func TestFromDirFailsOnMissingOrExpired(t *testing.T) {
	if _, err := svidsource.FromDir(t.TempDir()); err == nil {
		t.Error("empty directory accepted")
	}
	c := newCA(t)
	dir := t.TempDir()
	if err := svidfile.Write(dir, mint(t, c, t0, time.Minute), c.X509Bundle()); err != nil {
		t.Fatal(err)
	}
	if _, err := svidsource.FromDir(dir, svidsource.WithClock(func() time.Time { return t0.Add(time.Hour) })); err == nil {
		t.Error("expired SVID accepted")
	}
}

func TestFromWorkloadAPIFollowsRotation(t *testing.T) {
	w, err := spiffetest.StartWorkloadAPI(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	c, err := ca.New(td)
	if err != nil {
		t.Fatal(err)
	}
	first, err := c.MintX509SVID(id, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.SetX509([]*x509svid.SVID{first}, x509bundle.NewSet(c.X509Bundle())); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	src, err := svidsource.FromWorkloadAPI(ctx, w.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	var _ svidsource.Source = src
	if got := serial(t, src); got != first.Certificates[0].SerialNumber.String() {
		t.Fatal("wrong first SVID")
	}
	second, err := c.MintX509SVID(id, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.SetX509([]*x509svid.SVID{second}, x509bundle.NewSet(c.X509Bundle())); err != nil {
		t.Fatal(err)
	}
	want := second.Certificates[0].SerialNumber.String()
	for serial(t, src) != want { // an update signal may be the first SVID's
		select {
		case <-src.Updated():
		case <-ctx.Done():
			t.Fatal("rotation not followed")
		}
	}
}
