package brokerclient

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffegrpc/grpccredentials"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"

	"github.com/credbroker/credbroker/internal/svidsource"
)

// DialSource returns a connection to the broker at addr that authenticates
// with the SVIDs and bundles of the given sources, which are consulted on
// every TLS handshake, so a new connection always presents the current SVID.
// brokerID, when not empty, is the exact SPIFFE ID the broker must present;
// otherwise any ID in the trust domain of the SVID current at dial time is
// accepted.
//
// gRPC keeps one connection open for as long as it works, and the broker
// sees the SVID of that connection's handshake. A long-running client must
// therefore dial again when its SVID rotates (see sidecar.Redialer).
func DialSource(addr string, svids x509svid.Source, bundles x509bundle.Source, brokerID string) (*grpc.ClientConn, error) {
	if addr == "" {
		return nil, errors.New("brokerclient: broker address is required")
	}
	if svids == nil || bundles == nil {
		return nil, errors.New("brokerclient: SVID and bundle sources are required")
	}
	var authorizer tlsconfig.Authorizer
	if brokerID != "" {
		id, err := spiffeid.FromString(brokerID)
		if err != nil {
			return nil, fmt.Errorf("brokerclient: broker SPIFFE ID %q: %w", brokerID, err)
		}
		authorizer = tlsconfig.AuthorizeID(id)
	} else {
		svid, err := svids.GetX509SVID()
		if err != nil {
			return nil, fmt.Errorf("brokerclient: %w", err)
		}
		authorizer = tlsconfig.AuthorizeMemberOf(svid.ID.TrustDomain())
	}
	creds := grpccredentials.MTLSClientCredentials(svids, bundles, authorizer)
	return grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(creds))
}

// Identity is a command's own identity, opened on first use and shared by
// the calls of one invocation, so that a command asking the broker twice
// fetches its SVID from the Workload API once. The zero value is not
// usable: set Options (resolved by svidsource.Options.Resolve).
type Identity struct {
	Options svidsource.Options

	mu     sync.Mutex
	src    svidsource.Source
	err    error
	opened bool
}

// Dial opens the identity if it is not open yet and dials the broker at
// addr with it (see DialSource).
func (i *Identity) Dial(ctx context.Context, addr, brokerID string) (*grpc.ClientConn, error) {
	i.mu.Lock()
	if !i.opened {
		i.src, i.err = svidsource.Open(ctx, i.Options)
		i.opened = true
	}
	src, err := i.src, i.err
	i.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return DialSource(addr, src, src, brokerID)
}

// Close releases the identity's source, if it was opened.
func (i *Identity) Close() {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.src != nil {
		i.src.Close()
	}
	i.src, i.err, i.opened = nil, errors.New("brokerclient: identity is closed"), true
}
