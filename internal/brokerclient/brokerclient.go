// Package brokerclient dials the broker as a workload: mTLS with an
// X.509-SVID from an SVID directory, the broker authenticated as a SPIFFE ID
// of the bundle's trust domain. It also turns broker errors into one line a
// person can act on.
package brokerclient

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffegrpc/grpccredentials"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/credbroker/credbroker/internal/svidfile"
)

// Dial returns a connection to the broker at addr using the SVID in svidDir.
// brokerID, when not empty, is the exact SPIFFE ID the broker must present;
// otherwise any ID in the SVID's trust domain is accepted.
func Dial(addr, svidDir, brokerID string) (*grpc.ClientConn, error) {
	if addr == "" {
		return nil, errors.New("broker address is required")
	}
	svid, bundle, err := svidfile.Load(svidDir)
	if err != nil {
		return nil, err
	}
	authorizer := tlsconfig.AuthorizeMemberOf(svid.ID.TrustDomain())
	if brokerID != "" {
		id, err := spiffeid.FromString(brokerID)
		if err != nil {
			return nil, fmt.Errorf("broker SPIFFE ID %q: %w", brokerID, err)
		}
		authorizer = tlsconfig.AuthorizeID(id)
	}
	creds := grpccredentials.MTLSClientCredentials(svid, bundle, authorizer)
	return grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(creds))
}

// Describe renders a broker error as one actionable line: the gRPC code, the
// message, a hint, and the broker's stable reason in brackets, e.g.
//
//	resource exhausted: limits: rate of 5/s (burst 10) exceeded ...; retry in 2s [RATE_LIMITED]
func Describe(err error) string {
	st, ok := status.FromError(err)
	if !ok {
		return err.Error()
	}
	info, hasInfo := ErrorInfo(err)
	var hint string
	if st.Code() == codes.Unavailable && !hasInfo {
		// No answer from the broker itself: a transport failure.
		hint = " (is the broker running and reachable?)"
	}
	if d, ok := RetryAfter(err); ok && !strings.Contains(st.Message(), "retry") {
		hint += fmt.Sprintf(" (retry after %s)", d.Round(time.Millisecond))
	}
	if hasInfo && info.GetReason() != "" {
		hint += " [" + info.GetReason() + "]"
	}
	return fmt.Sprintf("%s: %s%s", codeName(st.Code()), st.Message(), hint)
}

func codeName(c codes.Code) string {
	// "PermissionDenied" -> "permission denied"
	var b strings.Builder
	for i, r := range c.String() {
		if i > 0 && r >= 'A' && r <= 'Z' {
			b.WriteByte(' ')
		}
		b.WriteRune(r)
	}
	return strings.ToLower(b.String())
}
