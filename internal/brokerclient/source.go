package brokerclient

import (
	"errors"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffegrpc/grpccredentials"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
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
