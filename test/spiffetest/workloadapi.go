// Package spiffetest serves a real SPIFFE Workload API on a unix socket, for
// tests only. It stands in for a SPIRE agent: go-spiffe's workloadapi client
// (X509Source, BundleSource, JWTSource) talks to it over gRPC exactly as it
// would to SPIRE, but the SVIDs and bundles it hands out are whatever the test
// sets, usually minted with internal/ca.
//
// Streams behave like SPIRE's: a fetch stream sends the current state as soon
// as it opens (or waits until there is some), then a new message on every
// change. Requests without the `workload.spiffe.io: true` header are rejected
// with InvalidArgument. It does no workload attestation: every caller on the
// socket gets the same identity.
package spiffetest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// SocketName is the file name of the socket made in the directory given to
// StartWorkloadAPI.
const SocketName = "agent.sock"

// maxSocketPath is the longest unix socket path Linux accepts (sun_path is
// 108 bytes including the terminating NUL).
const maxSocketPath = 107

// JWTSigner mints a JWT-SVID for id with the given audiences, e.g.
//
//	func(id spiffeid.ID, aud []string) (string, error) { return c.MintJWTSVID(id, aud, time.Minute) }
type JWTSigner func(id spiffeid.ID, audience []string) (string, error)

// WorkloadAPI is a Workload API server on a unix socket. Its methods are safe
// for concurrent use.
type WorkloadAPI struct {
	path   string
	srv    *grpc.Server
	served chan struct{} // closed when Serve has returned

	closeOnce sync.Once
	closeErr  error

	mu sync.Mutex
	// x509 is the FetchX509SVID response and x509Bundles the FetchX509Bundles
	// one; both nil until SetX509. Each Set makes new messages, so a stream
	// knows it has something new to send by pointer comparison.
	x509        *workload.X509SVIDResponse
	x509Bundles *workload.X509BundlesResponse
	ids         []identity // the SVIDs' identities, default first, for FetchJWTSVID
	jwtBundles  *workload.JWTBundlesResponse
	signer      JWTSigner
	err         error // status error every fetch returns, or nil
	// changed is closed, and replaced, on every change to the fields above,
	// waking every open stream.
	changed chan struct{}
}

// identity is one SPIFFE ID the agent holds an X.509-SVID for.
type identity struct {
	id   spiffeid.ID
	hint string
}

// StartWorkloadAPI serves the Workload API on a new unix socket named
// SocketName in dir (for example t.TempDir()). The caller must Close it.
func StartWorkloadAPI(dir string) (*WorkloadAPI, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("spiffetest: socket directory: %w", err)
	}
	path := filepath.Join(abs, SocketName)
	if len(path) > maxSocketPath {
		return nil, fmt.Errorf("spiffetest: socket path %q is longer than %d bytes", path, maxSocketPath)
	}
	lis, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("spiffetest: listen: %w", err)
	}
	w := &WorkloadAPI{
		path:    path,
		served:  make(chan struct{}),
		changed: make(chan struct{}),
	}
	w.srv = grpc.NewServer(
		grpc.ChainUnaryInterceptor(unaryHeaderCheck),
		grpc.ChainStreamInterceptor(streamHeaderCheck),
		// So that Close returns only once every handler goroutine has.
		grpc.WaitForHandlers(true),
	)
	workload.RegisterSpiffeWorkloadAPIServer(w.srv, &service{w: w})
	go func() {
		defer close(w.served)
		// Serve's error is uninteresting: it returns nil after Stop, and a
		// failure of the listener shows up in the tests as client errors.
		_ = w.srv.Serve(lis)
	}()
	return w, nil
}

// Addr returns the socket's address as workloadapi.WithAddr wants it:
// "unix:///abs/path/agent.sock".
func (w *WorkloadAPI) Addr() string { return "unix://" + w.path }

// SocketPath returns the absolute path of the socket.
func (w *WorkloadAPI) SocketPath() string { return w.path }

// Close stops the server: open streams end (clients see Unavailable or
// Canceled), Close waits for every handler to return, and the socket file is
// removed. Calling it again returns the first result.
func (w *WorkloadAPI) Close() error {
	w.closeOnce.Do(func() {
		w.srv.Stop() // closes the listener, cancels RPCs, waits for handlers
		<-w.served
		if err := os.Remove(w.path); err != nil && !errors.Is(err, os.ErrNotExist) {
			w.closeErr = fmt.Errorf("spiffetest: remove socket: %w", err)
		}
	})
	return w.closeErr
}

// SetError makes every fetch RPC fail with err, as a SPIRE agent does for a
// caller it has no identity for (status.Error(codes.PermissionDenied, "no
// identity issued")). Open fetch streams end with err at once. An error that
// is not a gRPC status is sent as codes.Unknown. nil clears it; clients then
// reconnect and get the current state.
func (w *WorkloadAPI) SetError(err error) {
	if err != nil {
		err = status.Convert(err).Err()
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.err = err
	w.broadcastLocked()
}

// SetJWTSigner makes FetchJWTSVID mint JWT-SVIDs with sign, for the
// identities of the X.509-SVIDs last given to SetX509. Without a signer
// FetchJWTSVID fails with Unimplemented; nil removes it.
func (w *WorkloadAPI) SetJWTSigner(sign JWTSigner) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.signer = sign
}

// broadcastLocked wakes every stream waiting on the state. w.mu must be held.
func (w *WorkloadAPI) broadcastLocked() {
	close(w.changed)
	w.changed = make(chan struct{})
}

// snapshot is the state a stream or RPC acts on, and the channel that is
// closed when it changes.
type snapshot struct {
	x509        *workload.X509SVIDResponse
	x509Bundles *workload.X509BundlesResponse
	ids         []identity
	jwtBundles  *workload.JWTBundlesResponse
	signer      JWTSigner
	err         error
	changed     <-chan struct{}
}

func (w *WorkloadAPI) snapshot() snapshot {
	w.mu.Lock()
	defer w.mu.Unlock()
	return snapshot{
		x509:        w.x509,
		x509Bundles: w.x509Bundles,
		ids:         w.ids,
		jwtBundles:  w.jwtBundles,
		signer:      w.signer,
		err:         w.err,
		changed:     w.changed,
	}
}

// securityHeader is the metadata key every Workload API request must carry
// with the value "true", so that a server-side request forgery cannot reach
// the API (SPIFFE Workload API spec, section 6.2.1).
const securityHeader = "workload.spiffe.io"

// checkHeader rejects a request without the security header the way SPIRE's
// agent does.
func checkHeader(ctx context.Context) error {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get(securityHeader); len(v) != 1 || v[0] != "true" {
		return status.Error(codes.InvalidArgument, "security header missing from request")
	}
	return nil
}

func unaryHeaderCheck(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if err := checkHeader(ctx); err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

func streamHeaderCheck(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if err := checkHeader(ss.Context()); err != nil {
		return err
	}
	return handler(srv, ss)
}
