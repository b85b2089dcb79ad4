package sidecar

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	"github.com/credbroker/credbroker/internal/brokerclient"
	"github.com/credbroker/credbroker/internal/ca"
	"github.com/credbroker/credbroker/internal/svidfile"
	"github.com/credbroker/credbroker/internal/svidsource"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// serialBroker answers with the serial of the client certificate it saw.
type serialBroker struct {
	credbrokerv1.UnimplementedBrokerServiceServer
}

func (serialBroker) IssueCredential(ctx context.Context, req *credbrokerv1.IssueCredentialRequest) (*credbrokerv1.IssueCredentialResponse, error) {
	p, _ := peer.FromContext(ctx)
	info := p.AuthInfo.(credentials.TLSInfo)
	return awsResponse(info.State.PeerCertificates[0].SerialNumber.String(), req, time.Now().Add(time.Hour)), nil
}

// TestRedialerPresentsRotatedSVID: real mTLS with DialSource over a
// FromDir source; after the SVID directory rotates, the broker sees the new
// certificate although gRPC would have kept the old connection.
func TestRedialerPresentsRotatedSVID(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("example.test")
	c, err := ca.New(td)
	if err != nil {
		t.Fatal(err)
	}
	brokerID := spiffeid.RequireFromPath(td, "/credbroker")
	serverSVID, err := c.MintX509SVID(brokerID, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(tlsconfig.MTLSServerConfig(serverSVID, c.X509Bundle(), tlsconfig.AuthorizeMemberOf(td)))))
	credbrokerv1.RegisterBrokerServiceServer(srv, serialBroker{})
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(lis) }()
	defer func() { srv.Stop(); <-done }()

	dir := t.TempDir()
	mint := func() string {
		s, err := c.MintX509SVID(spiffeid.RequireFromPath(td, "/sidecar"), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if err := svidfile.Write(dir, s, c.X509Bundle()); err != nil {
			t.Fatal(err)
		}
		return s.Certificates[0].SerialNumber.String()
	}
	first := mint()
	src, err := svidsource.FromDir(dir, svidsource.WithCheckInterval(0))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()

	dial := func(id string) *Redialer {
		return NewRedialer(src, func() (*grpc.ClientConn, error) {
			return brokerclient.DialSource(lis.Addr().String(), src, src, id)
		})
	}
	rd := dial(brokerID.String())
	defer rd.Close()
	call := func() string {
		t.Helper()
		resp, err := rd.IssueCredential(t.Context(), &credbrokerv1.IssueCredentialRequest{Profile: "p"})
		if err != nil {
			t.Fatal(brokerclient.Describe(err))
		}
		return resp.GetCredential().GetAws().GetAccessKeyId()
	}
	if got := call(); got != first {
		t.Fatalf("broker saw serial %s, want %s", got, first)
	}
	second := mint()
	if got := call(); got != second {
		t.Errorf("after rotation the broker saw serial %s, want %s", got, second)
	}
	if rd.serialInUse() != second {
		t.Error("redialer did not record the new serial")
	}

	wrong := dial(spiffeid.RequireFromPath(td, "/not-the-broker").String())
	defer wrong.Close()
	if _, err := wrong.IssueCredential(t.Context(), &credbrokerv1.IssueCredentialRequest{Profile: "p"}); err == nil {
		t.Error("a broker with another SPIFFE ID was accepted")
	}
}
