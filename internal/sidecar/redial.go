package sidecar

import (
	"context"
	"errors"
	"sync"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// Redialer is an Upstream over a broker connection that is replaced when
// the SVID changes. gRPC keeps a working connection open indefinitely, and
// the broker authenticates the SVID presented in that connection's TLS
// handshake; so before each call the Redialer compares the serial number of
// the source's current SVID with the one it dialed with, and dials anew when
// it differs. The old connection is closed once its last call has finished.
type Redialer struct {
	svids x509svid.Source
	dial  func() (*grpc.ClientConn, error)

	mu      sync.Mutex
	conn    *grpc.ClientConn
	serial  string
	calls   map[*grpc.ClientConn]int // calls in progress per connection
	retired map[*grpc.ClientConn]bool
	closed  bool
}

// NewRedialer returns a Redialer that dials with dial (e.g. a closure over
// brokerclient.DialSource with the same svids) on first use and whenever
// the SVID from svids changes.
func NewRedialer(svids x509svid.Source, dial func() (*grpc.ClientConn, error)) *Redialer {
	return &Redialer{svids: svids, dial: dial, calls: map[*grpc.ClientConn]int{}, retired: map[*grpc.ClientConn]bool{}}
}

// IssueCredential calls the broker on a connection made with the current SVID.
func (d *Redialer) IssueCredential(ctx context.Context, in *credbrokerv1.IssueCredentialRequest, opts ...grpc.CallOption) (*credbrokerv1.IssueCredentialResponse, error) {
	conn, err := d.acquire()
	if err != nil {
		return nil, err
	}
	defer d.release(conn)
	resp, err := credbrokerv1.NewBrokerServiceClient(conn).IssueCredential(ctx, in, opts...)
	if status.Code(err) == codes.Unavailable {
		// The next call dials afresh, so recovery after a broker restart
		// does not wait out gRPC's own reconnect backoff.
		d.drop(conn)
	}
	return resp, err
}

// WatchRevocations opens a revocation watch on a connection made with the
// current SVID. The connection is held until ctx ends (cancel it when done
// with the stream); a stream that fails UNAVAILABLE has the next call dial
// afresh.
func (d *Redialer) WatchRevocations(ctx context.Context, in *credbrokerv1.WatchRevocationsRequest, opts ...grpc.CallOption) (grpc.ServerStreamingClient[credbrokerv1.WatchRevocationsResponse], error) {
	conn, err := d.acquire()
	if err != nil {
		return nil, err
	}
	stream, err := credbrokerv1.NewBrokerServiceClient(conn).WatchRevocations(ctx, in, opts...)
	if err != nil {
		d.release(conn)
		if status.Code(err) == codes.Unavailable {
			d.drop(conn)
		}
		return nil, err
	}
	context.AfterFunc(ctx, func() { d.release(conn) })
	return &watchStream{ServerStreamingClient: stream, d: d, conn: conn}, nil
}

// watchStream drops its connection when it fails UNAVAILABLE.
type watchStream struct {
	grpc.ServerStreamingClient[credbrokerv1.WatchRevocationsResponse]
	d    *Redialer
	conn *grpc.ClientConn
}

func (s *watchStream) Recv() (*credbrokerv1.WatchRevocationsResponse, error) {
	m, err := s.ServerStreamingClient.Recv()
	if status.Code(err) == codes.Unavailable {
		s.d.drop(s.conn)
	}
	return m, err
}

// drop retires conn if it is still the current connection.
func (d *Redialer) drop(conn *grpc.ClientConn) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.conn == conn {
		d.conn = nil
		d.retired[conn] = true
	}
}

// serialInUse returns the serial number of the SVID the current connection was dialed with.
func (d *Redialer) serialInUse() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.serial
}

func (d *Redialer) acquire() (*grpc.ClientConn, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, status.Error(codes.Canceled, "sidecar: broker connection is closed")
	}
	serial := d.serial
	if svid, err := d.svids.GetX509SVID(); err == nil {
		serial = svid.Certificates[0].SerialNumber.String()
	} else if d.conn == nil {
		// Report it as the broker being unreachable: it is transient (a
		// rotation in progress) and Describe renders it well.
		return nil, status.Errorf(codes.Unavailable, "no usable SVID: %v", err)
	}
	if d.conn == nil || serial != d.serial {
		conn, err := d.dial()
		if err != nil {
			return nil, status.Errorf(codes.Unavailable, "dial broker: %v", err)
		}
		if old := d.conn; old != nil {
			d.retireLocked(old)
		}
		d.conn, d.serial = conn, serial
	}
	d.calls[d.conn]++
	return d.conn, nil
}

func (d *Redialer) release(conn *grpc.ClientConn) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.calls[conn]--
	if d.calls[conn] == 0 {
		delete(d.calls, conn)
		if d.retired[conn] {
			delete(d.retired, conn)
			conn.Close()
		}
	}
}

// retireLocked closes conn now if idle, else after its last call.
func (d *Redialer) retireLocked(conn *grpc.ClientConn) {
	if d.calls[conn] == 0 {
		conn.Close()
		return
	}
	d.retired[conn] = true
}

// Close closes the current connection; calls in progress on it fail.
func (d *Redialer) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.closed = true
	var errs []error
	for conn := range d.retired {
		errs = append(errs, conn.Close())
	}
	if d.conn != nil {
		errs = append(errs, d.conn.Close())
	}
	d.conn, d.retired = nil, map[*grpc.ClientConn]bool{}
	return errors.Join(errs...)
}
