package spiffetest

import (
	"context"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// service implements the Workload API RPCs over a WorkloadAPI's state. It is
// separate from WorkloadAPI so that the RPC methods are not part of the
// package's API. ValidateJWTSVID and the WIT-SVID RPCs are Unimplemented.
type service struct {
	workload.UnimplementedSpiffeWorkloadAPIServer
	w *WorkloadAPI
}

func (s *service) FetchX509SVID(_ *workload.X509SVIDRequest, stream grpc.ServerStreamingServer[workload.X509SVIDResponse]) error {
	return serveStream(stream, s.w, func(st snapshot) *workload.X509SVIDResponse { return st.x509 })
}

func (s *service) FetchX509Bundles(_ *workload.X509BundlesRequest, stream grpc.ServerStreamingServer[workload.X509BundlesResponse]) error {
	return serveStream(stream, s.w, func(st snapshot) *workload.X509BundlesResponse { return st.x509Bundles })
}

func (s *service) FetchJWTBundles(_ *workload.JWTBundlesRequest, stream grpc.ServerStreamingServer[workload.JWTBundlesResponse]) error {
	return serveStream(stream, s.w, func(st snapshot) *workload.JWTBundlesResponse { return st.jwtBundles })
}

// serveStream sends pick's message whenever it is set and differs from the
// one last sent, waiting for changes in between, until the client goes away,
// the server stops, or SetError ends the stream.
func serveStream[T any](stream grpc.ServerStreamingServer[T], w *WorkloadAPI, pick func(snapshot) *T) error {
	// Send headers now, before any state exists, so that a client's
	// stream.Header() returns once the server is serving the stream; tests
	// use that to order their steps without sleeping.
	if err := stream.SendHeader(nil); err != nil {
		return err
	}
	ctx := stream.Context()
	var sent *T
	for {
		st := w.snapshot()
		if st.err != nil {
			return st.err
		}
		if msg := pick(st); msg != nil && msg != sent {
			if err := stream.Send(msg); err != nil {
				return err
			}
			sent = msg
		}
		select {
		case <-st.changed:
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		}
	}
}

// FetchJWTSVID mints a JWT-SVID for each of the caller's identities, or only
// for req.SpiffeId when it is set, with the signer given to SetJWTSigner.
// Error codes and messages follow SPIRE's agent.
func (s *service) FetchJWTSVID(_ context.Context, req *workload.JWTSVIDRequest) (*workload.JWTSVIDResponse, error) {
	st := s.w.snapshot()
	if st.err != nil {
		return nil, st.err
	}
	if len(req.Audience) == 0 {
		return nil, status.Error(codes.InvalidArgument, "audience must be specified")
	}
	if st.signer == nil {
		return nil, status.Error(codes.Unimplemented, "spiffetest: no JWT signer set")
	}
	ids := st.ids
	if req.SpiffeId != "" {
		want, err := spiffeid.FromString(req.SpiffeId)
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "invalid requested SPIFFE ID: %v", err)
		}
		ids = nil
		for _, id := range st.ids {
			if id.id == want {
				ids = append(ids, id)
			}
		}
	}
	if len(ids) == 0 {
		return nil, status.Error(codes.PermissionDenied, "no identity issued")
	}
	resp := &workload.JWTSVIDResponse{}
	for _, id := range ids {
		token, err := st.signer(id.id, req.Audience)
		if err != nil {
			return nil, status.Errorf(codes.Unavailable, "could not fetch JWT-SVID: %v", err)
		}
		resp.Svids = append(resp.Svids, &workload.JWTSVID{SpiffeId: id.id.String(), Svid: token, Hint: id.hint})
	}
	return resp, nil
}
