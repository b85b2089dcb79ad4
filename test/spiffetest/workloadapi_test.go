package spiffetest_test

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/credbroker/credbroker/internal/ca"
	"github.com/credbroker/credbroker/test/spiffetest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// watchdog bounds how long a test waits for something that should happen at
// once; it is a hang guard, not a synchronisation sleep.
const watchdog = 10 * time.Second

var (
	tdA = spiffeid.RequireTrustDomainFromString("a.test")
	tdB = spiffeid.RequireTrustDomainFromString("b.test")
)

type fixture struct {
	w      *spiffetest.WorkloadAPI
	caA    *ca.CA // the workload's own trust domain
	caB    *ca.CA // a federated trust domain
	idA    spiffeid.ID
	bundle *x509bundle.Set
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	w, err := spiffetest.StartWorkloadAPI(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := w.Close(); err != nil {
			t.Error(err)
		}
	})
	f := &fixture{w: w, caA: newCA(t, tdA), caB: newCA(t, tdB), idA: spiffeid.RequireFromPath(tdA, "/ns/capi-system/sa/capa")}
	f.bundle = x509bundle.NewSet(f.caA.X509Bundle(), f.caB.X509Bundle())
	return f
}

func newCA(t *testing.T, td spiffeid.TrustDomain) *ca.CA {
	t.Helper()
	c, err := ca.New(td)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func (f *fixture) mint(t *testing.T, id spiffeid.ID, hint string) *x509svid.SVID {
	t.Helper()
	s, err := f.caA.MintX509SVID(id, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	s.Hint = hint
	return s
}

func (f *fixture) setX509(t *testing.T, svids ...*x509svid.SVID) {
	t.Helper()
	if err := f.w.SetX509(svids, f.bundle); err != nil {
		t.Fatal(err)
	}
}

func (f *fixture) clientOpts() workloadapi.SourceOption {
	return workloadapi.WithClientOptions(workloadapi.WithAddr(f.w.Addr()))
}

func ctxWithWatchdog(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), watchdog)
	t.Cleanup(cancel)
	return ctx
}

func waitUpdated(t *testing.T, ch <-chan struct{}) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(watchdog):
		t.Fatal("source was not updated")
	}
}

func sameSVID(t *testing.T, got, want *x509svid.SVID) {
	t.Helper()
	if got.ID != want.ID {
		t.Errorf("SVID ID = %s, want %s", got.ID, want.ID)
	}
	if len(got.Certificates) != len(want.Certificates) {
		t.Fatalf("chain has %d certificates, want %d", len(got.Certificates), len(want.Certificates))
	}
	for i := range got.Certificates {
		if !got.Certificates[i].Equal(want.Certificates[i]) {
			t.Errorf("certificate %d differs", i)
		}
	}
	pub := got.PrivateKey.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !pub.Equal(want.PrivateKey.Public()) {
		t.Error("private key differs")
	}
	if got.Hint != want.Hint {
		t.Errorf("hint = %q, want %q", got.Hint, want.Hint)
	}
}

func sameAuthorities(t *testing.T, src x509bundle.Source, c *ca.CA) {
	t.Helper()
	b, err := src.GetX509BundleForTrustDomain(c.TrustDomain())
	if err != nil {
		t.Fatal(err)
	}
	if got := b.X509Authorities(); len(got) != 1 || !got[0].Equal(c.Certificate()) {
		t.Errorf("X.509 bundle for %s = %d certs, want the CA root", c.TrustDomain(), len(got))
	}
}

func TestX509SourceGetsSVIDAndBundlesAndRotation(t *testing.T) {
	f := newFixture(t)
	first := f.mint(t, f.idA, "")
	f.setX509(t, first)

	src, err := workloadapi.NewX509Source(ctxWithWatchdog(t), f.clientOpts())
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()

	got, err := src.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	sameSVID(t, got, first)
	sameAuthorities(t, src, f.caA)
	sameAuthorities(t, src, f.caB) // federated bundle

	// Rotation: the open stream gets the new SVID without reconnecting.
	second := f.mint(t, f.idA, "")
	f.setX509(t, second)
	waitUpdated(t, src.Updated())
	got, err = src.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	sameSVID(t, got, second)
}

func TestSeveralSVIDsFirstIsDefault(t *testing.T) {
	f := newFixture(t)
	def := f.mint(t, f.idA, "internal")
	other := f.mint(t, spiffeid.RequireFromPath(tdA, "/other"), "external")
	f.setX509(t, def, other)

	c, err := workloadapi.New(ctxWithWatchdog(t), workloadapi.WithAddr(f.w.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	svids, err := c.FetchX509SVIDs(ctxWithWatchdog(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(svids) != 2 {
		t.Fatalf("got %d SVIDs, want 2", len(svids))
	}
	sameSVID(t, svids[0], def)
	sameSVID(t, svids[1], other)

	src, err := workloadapi.NewX509Source(ctxWithWatchdog(t), workloadapi.WithClient(c))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	got, err := src.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	sameSVID(t, got, def)
}

func TestFetchX509BundlesKeyedByTrustDomainID(t *testing.T) {
	f := newFixture(t)
	f.setX509(t, f.mint(t, f.idA, ""))

	c, err := workloadapi.New(ctxWithWatchdog(t), workloadapi.WithAddr(f.w.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	set, err := c.FetchX509Bundles(ctxWithWatchdog(t))
	if err != nil {
		t.Fatal(err)
	}
	if set.Len() != 2 {
		t.Fatalf("got %d bundles, want 2", set.Len())
	}
	sameAuthorities(t, set, f.caA)
	sameAuthorities(t, set, f.caB)
}

func TestBundleSourceGetsBundlesAndJWTRotation(t *testing.T) {
	f := newFixture(t)
	f.setX509(t, f.mint(t, f.idA, ""))
	if err := f.w.SetJWTBundles(jwtbundle.NewSet(f.caA.JWTBundle(), f.caB.JWTBundle())); err != nil {
		t.Fatal(err)
	}

	src, err := workloadapi.NewBundleSource(ctxWithWatchdog(t), f.clientOpts())
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	sameAuthorities(t, src, f.caA)
	sameAuthorities(t, src, f.caB)
	for _, c := range []*ca.CA{f.caA, f.caB} {
		b, err := src.GetJWTBundleForTrustDomain(c.TrustDomain())
		if err != nil {
			t.Fatal(err)
		}
		if !b.Equal(c.JWTBundle()) {
			t.Errorf("JWT bundle for %s differs", c.TrustDomain())
		}
	}

	// Rotate: a new JWT key for a.test, and b.test no longer federated.
	rotated := newCA(t, tdA)
	if err := f.w.SetJWTBundles(jwtbundle.NewSet(rotated.JWTBundle())); err != nil {
		t.Fatal(err)
	}
	waitUpdated(t, src.Updated())
	b, err := src.GetJWTBundleForTrustDomain(tdA)
	if err != nil {
		t.Fatal(err)
	}
	if !b.HasJWTAuthority(rotated.JWTKeyID()) || b.HasJWTAuthority(f.caA.JWTKeyID()) {
		t.Errorf("JWT bundle after rotation has the wrong keys: %v", b.JWTAuthorities())
	}
	if _, err := src.GetJWTBundleForTrustDomain(tdB); err == nil {
		t.Error("b.test JWT bundle still present after it was removed")
	}
}

func TestJWTSourceMintsWithSigner(t *testing.T) {
	f := newFixture(t)
	other := spiffeid.RequireFromPath(tdA, "/other")
	f.setX509(t, f.mint(t, f.idA, ""), f.mint(t, other, ""))
	if err := f.w.SetJWTBundles(jwtbundle.NewSet(f.caA.JWTBundle())); err != nil {
		t.Fatal(err)
	}

	src, err := workloadapi.NewJWTSource(ctxWithWatchdog(t), f.clientOpts())
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	ctx := ctxWithWatchdog(t)

	// No signer yet: Unimplemented, like an agent without JWT support.
	_, err = src.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "broker"})
	if status.Code(err) != codes.Unimplemented {
		t.Fatalf("FetchJWTSVID without signer: %v, want Unimplemented", err)
	}

	f.w.SetJWTSigner(func(id spiffeid.ID, aud []string) (string, error) {
		return f.caA.MintJWTSVID(id, aud, time.Minute)
	})
	for _, tc := range []struct {
		subject spiffeid.ID
		want    spiffeid.ID
	}{
		{spiffeid.ID{}, f.idA}, // the default identity
		{other, other},
	} {
		svid, err := src.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "broker", ExtraAudiences: []string{"x"}, Subject: tc.subject})
		if err != nil {
			t.Fatal(err)
		}
		parsed, err := jwtsvid.ParseAndValidate(svid.Marshal(), src, []string{"broker"})
		if err != nil {
			t.Fatal(err)
		}
		if parsed.ID != tc.want {
			t.Errorf("JWT-SVID subject = %s, want %s", parsed.ID, tc.want)
		}
	}

	_, err = src.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "broker", Subject: spiffeid.RequireFromPath(tdA, "/stranger")})
	if status.Code(err) != codes.PermissionDenied {
		t.Errorf("FetchJWTSVID for a foreign ID: %v, want PermissionDenied", err)
	}
}

// rawClient returns a generated Workload API client that adds no headers.
func rawClient(t *testing.T, w *spiffetest.WorkloadAPI) workload.SpiffeWorkloadAPIClient {
	t.Helper()
	conn, err := grpc.NewClient(w.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return workload.NewSpiffeWorkloadAPIClient(conn)
}

func withHeader(ctx context.Context) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "workload.spiffe.io", "true")
}

func TestRequestWithoutSecurityHeaderIsRejected(t *testing.T) {
	f := newFixture(t)
	f.setX509(t, f.mint(t, f.idA, ""))
	c := rawClient(t, f.w)
	ctx := ctxWithWatchdog(t)

	for name, md := range map[string]metadata.MD{
		"missing": nil,
		"false":   metadata.Pairs("workload.spiffe.io", "false"),
	} {
		t.Run(name, func(t *testing.T) {
			ctx := metadata.NewOutgoingContext(ctx, md)
			stream, err := c.FetchX509SVID(ctx, &workload.X509SVIDRequest{})
			if err == nil {
				_, err = stream.Recv()
			}
			if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "security header") {
				t.Errorf("FetchX509SVID: %v, want InvalidArgument about the security header", err)
			}
			_, err = c.FetchJWTSVID(ctx, &workload.JWTSVIDRequest{Audience: []string{"a"}})
			if status.Code(err) != codes.InvalidArgument {
				t.Errorf("FetchJWTSVID: %v, want InvalidArgument", err)
			}
		})
	}

	// The same call with the header succeeds, so it was the header.
	stream, err := c.FetchX509SVID(withHeader(ctx), &workload.X509SVIDRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatalf("with header: %v", err)
	}
}

// openStream opens a FetchX509SVID stream and waits until the server is
// serving it.
func openStream(t *testing.T, ctx context.Context, c workload.SpiffeWorkloadAPIClient) grpc.ServerStreamingClient[workload.X509SVIDResponse] {
	t.Helper()
	stream, err := c.FetchX509SVID(withHeader(ctx), &workload.X509SVIDRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Header(); err != nil {
		t.Fatal(err)
	}
	return stream
}

func TestStreamWaitsForStateThenGetsEveryUpdate(t *testing.T) {
	f := newFixture(t)
	ctx := ctxWithWatchdog(t)
	stream := openStream(t, ctx, rawClient(t, f.w)) // no state yet

	for i := range 3 {
		svid := f.mint(t, f.idA, fmt.Sprint(i))
		f.setX509(t, svid)
		resp, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.Svids) != 1 || resp.Svids[0].Hint != svid.Hint {
			t.Fatalf("update %d: got %v", i, resp.Svids)
		}
		got, err := x509svid.ParseRaw(resp.Svids[0].X509Svid, resp.Svids[0].X509SvidKey)
		if err != nil {
			t.Fatal(err)
		}
		got.Hint = resp.Svids[0].Hint
		sameSVID(t, got, svid)
		if _, ok := resp.FederatedBundles[tdB.IDString()]; !ok || len(resp.FederatedBundles) != 1 {
			t.Errorf("federated bundles keyed %v, want only %s", keys(resp.FederatedBundles), tdB.IDString())
		}
	}
}

func keys(m map[string][]byte) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

var errNoIdentity = status.Error(codes.PermissionDenied, "no identity issued")

func TestSetErrorEndsStreamsAndFailsFetches(t *testing.T) {
	f := newFixture(t)
	f.setX509(t, f.mint(t, f.idA, ""))
	ctx := ctxWithWatchdog(t)
	stream := openStream(t, ctx, rawClient(t, f.w))
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}

	f.w.SetError(errNoIdentity)
	if _, err := stream.Recv(); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("open stream after SetError: %v, want PermissionDenied", err)
	}

	c, err := workloadapi.New(ctx, workloadapi.WithAddr(f.w.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.FetchX509Context(ctx); status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "no identity issued") {
		t.Errorf("FetchX509Context: %v, want PermissionDenied no identity issued", err)
	}
	if _, err := c.FetchJWTBundles(ctx); status.Code(err) != codes.PermissionDenied {
		t.Errorf("FetchJWTBundles: %v, want PermissionDenied", err)
	}
	if _, err := c.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "a"}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("FetchJWTSVID: %v, want PermissionDenied", err)
	}

	// The client gives up on InvalidArgument, so source creation fails with it.
	f.w.SetError(status.Error(codes.InvalidArgument, "bad request"))
	if _, err := workloadapi.NewX509Source(ctx, workloadapi.WithClient(c)); status.Code(err) != codes.InvalidArgument {
		t.Errorf("NewX509Source: %v, want InvalidArgument", err)
	}

	f.w.SetError(nil)
	if _, err := c.FetchX509Context(ctx); err != nil {
		t.Errorf("FetchX509Context after clearing the error: %v", err)
	}
}

// watcher records what WatchX509Context reports.
type watcher struct {
	updates chan *workloadapi.X509Context
	errs    chan error
}

func (w *watcher) OnX509ContextUpdate(c *workloadapi.X509Context) { w.updates <- c }

func (w *watcher) OnX509ContextWatchError(err error) {
	select { // the client retries in a loop; one error is enough
	case w.errs <- err:
	default:
	}
}

// fastBackoff retries at once-ish, so the recovery test does not wait out
// the client's default one-second backoff.
type fastBackoff struct{}

func (fastBackoff) NewBackoff() workloadapi.Backoff { return fastBackoff{} }
func (fastBackoff) Next() time.Duration             { return time.Millisecond }
func (fastBackoff) Reset()                          {}

func TestWatcherSeesErrorThenRecovers(t *testing.T) {
	f := newFixture(t)
	f.w.SetError(errNoIdentity)
	ctx, cancel := context.WithCancel(ctxWithWatchdog(t))
	c, err := workloadapi.New(ctx, workloadapi.WithAddr(f.w.Addr()), workloadapi.WithBackoffStrategy(fastBackoff{}))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	w := &watcher{updates: make(chan *workloadapi.X509Context, 1), errs: make(chan error, 1)}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		_ = c.WatchX509Context(ctx, w)
	}()
	defer wg.Wait()
	defer cancel()

	select {
	case err := <-w.errs:
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("watch error %v, want PermissionDenied", err)
		}
	case <-ctx.Done():
		t.Fatal("no watch error")
	}

	svid := f.mint(t, f.idA, "")
	f.setX509(t, svid)
	f.w.SetError(nil)
	select {
	case x := <-w.updates:
		sameSVID(t, x.DefaultSVID(), svid)
	case <-ctx.Done():
		t.Fatal("no update after the error was cleared")
	}
}

func TestCloseEndsOpenStreams(t *testing.T) {
	w, err := spiffetest.StartWorkloadAPI(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	c := newCA(t, tdA)
	svid, err := c.MintX509SVID(spiffeid.RequireFromPath(tdA, "/w"), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.SetX509([]*x509svid.SVID{svid}, x509bundle.NewSet(c.X509Bundle())); err != nil {
		t.Fatal(err)
	}
	ctx := ctxWithWatchdog(t)
	src, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr(w.Addr())))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()

	// A stream blocked waiting for JWT bundles that never come.
	raw := rawClient(t, w)
	jwtStream, err := raw.FetchJWTBundles(withHeader(ctx), &workload.JWTBundlesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := jwtStream.Header(); err != nil {
		t.Fatal(err)
	}

	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := jwtStream.Recv(); status.Code(err) != codes.Unavailable && status.Code(err) != codes.Canceled {
		t.Errorf("open stream after Close: %v, want Unavailable or Canceled", err)
	}
	if _, err := os.Stat(w.SocketPath()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket still there after Close: %v", err)
	}
	if err := w.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestSetX509Validation(t *testing.T) {
	f := newFixture(t)
	if err := f.w.SetX509(nil, f.bundle); err == nil {
		t.Error("SetX509 with no SVIDs succeeded")
	}
	svid := f.mint(t, f.idA, "")
	if err := f.w.SetX509([]*x509svid.SVID{svid}, x509bundle.NewSet(f.caB.X509Bundle())); err == nil || !strings.HasPrefix(err.Error(), "spiffetest: ") {
		t.Errorf("SetX509 without the SVID's bundle: %v, want a spiffetest error", err)
	}
	if err := f.w.SetX509([]*x509svid.SVID{svid}, nil); err == nil {
		t.Error("SetX509 with a nil bundle set succeeded")
	}
}

func TestStartRejectsOverlongSocketPath(t *testing.T) {
	_, err := spiffetest.StartWorkloadAPI("/" + strings.Repeat("d", 120))
	if err == nil || !strings.Contains(err.Error(), "longer than") {
		t.Errorf("StartWorkloadAPI with a long path: %v", err)
	}
}

func TestRawBundleEncoding(t *testing.T) {
	f := newFixture(t)
	f.setX509(t, f.mint(t, f.idA, ""))
	if err := f.w.SetJWTBundles(jwtbundle.NewSet(f.caA.JWTBundle(), f.caB.JWTBundle())); err != nil {
		t.Fatal(err)
	}
	c := rawClient(t, f.w)
	ctx := withHeader(ctxWithWatchdog(t))

	xs, err := c.FetchX509Bundles(ctx, &workload.X509BundlesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	x, err := xs.Recv()
	if err != nil {
		t.Fatal(err)
	}
	js, err := c.FetchJWTBundles(ctx, &workload.JWTBundlesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	j, err := js.Recv()
	if err != nil {
		t.Fatal(err)
	}
	for _, cc := range []*ca.CA{f.caA, f.caB} {
		key := cc.TrustDomain().IDString() // "spiffe://a.test", not "a.test"
		b, err := x509bundle.ParseRaw(cc.TrustDomain(), x.Bundles[key])
		if err != nil || !b.Equal(cc.X509Bundle()) {
			t.Errorf("X.509 bundle %q: %v, equal=%v", key, err, err == nil && b.Equal(cc.X509Bundle()))
		}
		jb, err := jwtbundle.Parse(cc.TrustDomain(), j.Bundles[key])
		if err != nil || !jb.Equal(cc.JWTBundle()) {
			t.Errorf("JWT bundle %q: %v", key, err)
		}
	}
	if len(x.Bundles) != 2 || len(j.Bundles) != 2 {
		t.Errorf("got %d X.509 and %d JWT bundles, want 2 each", len(x.Bundles), len(j.Bundles))
	}
}
