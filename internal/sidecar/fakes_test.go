package sidecar

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/timestamppb"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/test/fakeclock"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// watchdog bounds waits for things that should happen at once; it is a hang
// guard, not a synchronisation sleep.
const watchdog = 10 * time.Second

// fakeClock is a fakeclock.Clock whose After channels fire when it is moved
// past their deadline. Every After call also sends its deadline on armed, so
// a test knows when the loop is waiting and for what.
type fakeClock struct {
	*fakeclock.Clock
	mu      sync.Mutex
	waiters []waiter
	armed   chan time.Time
}

type waiter struct {
	at time.Time
	ch chan time.Time
}

func newFakeClock(t0 time.Time) *fakeClock {
	return &fakeClock{Clock: fakeclock.New(t0), armed: make(chan time.Time, 100)}
}

func (c *fakeClock) After(d time.Duration) <-chan time.Time {
	ch := make(chan time.Time, 1)
	at := c.Now().Add(d)
	c.mu.Lock()
	c.waiters = append(c.waiters, waiter{at, ch})
	c.mu.Unlock()
	c.armed <- at
	return ch
}

// Set moves the clock to t and fires the waiters due by then.
func (c *fakeClock) Set(t time.Time) {
	c.Clock.Set(t)
	c.mu.Lock()
	defer c.mu.Unlock()
	kept := c.waiters[:0]
	for _, w := range c.waiters {
		if !w.at.After(t) {
			w.ch <- t
		} else {
			kept = append(kept, w)
		}
	}
	c.waiters = kept
}

// nextArmed waits for the loop's next After call.
func (c *fakeClock) nextArmed(t *testing.T) time.Time {
	t.Helper()
	select {
	case at := <-c.armed:
		return at
	case <-time.After(watchdog):
		t.Fatal("the refresh loop did not wait again")
		return time.Time{}
	}
}

// fakeBroker is a real BrokerService on loopback whose answers the test
// scripts and whose calls it counts.
type fakeBroker struct {
	credbrokerv1.UnimplementedBrokerServiceServer
	mu     sync.Mutex
	answer func(*credbrokerv1.IssueCredentialRequest) (*credbrokerv1.IssueCredentialResponse, error)
	gate   chan struct{} // when set, each call waits for it to close
	calls  atomic.Int32
	called chan *credbrokerv1.IssueCredentialRequest
	// watches, when set, receives each WatchRevocations call for the test
	// to script; nil answers UNIMPLEMENTED (an older broker).
	watches chan *fakeWatch
}

// fakeWatch is one WatchRevocations stream the test scripts: what it sends
// on send is streamed, and the stream ends with what it sends on end.
type fakeWatch struct {
	req  *credbrokerv1.WatchRevocationsRequest
	send chan *credbrokerv1.WatchRevocationsResponse
	end  chan error
}

func (b *fakeBroker) WatchRevocations(req *credbrokerv1.WatchRevocationsRequest, stream grpc.ServerStreamingServer[credbrokerv1.WatchRevocationsResponse]) error {
	if b.watches == nil {
		return b.UnimplementedBrokerServiceServer.WatchRevocations(req, stream)
	}
	w := &fakeWatch{req: req, send: make(chan *credbrokerv1.WatchRevocationsResponse), end: make(chan error, 1)}
	select {
	case b.watches <- w:
	case <-stream.Context().Done():
		return stream.Context().Err()
	}
	for {
		select {
		case m := <-w.send:
			if err := stream.Send(m); err != nil {
				return err
			}
		case err := <-w.end:
			return err
		case <-stream.Context().Done():
			return stream.Context().Err()
		}
	}
}

func (b *fakeBroker) IssueCredential(ctx context.Context, req *credbrokerv1.IssueCredentialRequest) (*credbrokerv1.IssueCredentialResponse, error) {
	b.calls.Add(1)
	b.mu.Lock()
	answer, gate := b.answer, b.gate
	b.mu.Unlock()
	select {
	case b.called <- req:
	default:
	}
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return answer(req)
}

func (b *fakeBroker) set(f func(*credbrokerv1.IssueCredentialRequest) (*credbrokerv1.IssueCredentialResponse, error)) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.answer = f
}

// give makes the broker answer with an AWS credential expiring at exp.
func (b *fakeBroker) give(key string, exp time.Time) {
	b.set(func(req *credbrokerv1.IssueCredentialRequest) (*credbrokerv1.IssueCredentialResponse, error) {
		return awsResponse(key, req, exp), nil
	})
}

func (b *fakeBroker) fail(err error) {
	b.set(func(*credbrokerv1.IssueCredentialRequest) (*credbrokerv1.IssueCredentialResponse, error) {
		return nil, err
	})
}

func awsResponse(key string, req *credbrokerv1.IssueCredentialRequest, exp time.Time) *credbrokerv1.IssueCredentialResponse {
	return &credbrokerv1.IssueCredentialResponse{Credential: &credbrokerv1.Credential{
		IssuanceId: "iss-" + key, Profile: req.GetProfile(), Cluster: req.GetCluster(), Issuer: "aws",
		ExpiresAt: timestamppb.New(exp),
		Kind: &credbrokerv1.Credential_Aws{Aws: &credbrokerv1.AWSCredentials{
			AccessKeyId: key, SecretAccessKey: "secret-" + key, SessionToken: "token-" + key,
		}},
	}}
}

// startBroker serves a fakeBroker on 127.0.0.1 and returns it with a client.
func startBroker(t *testing.T) (*fakeBroker, credbrokerv1.BrokerServiceClient) {
	t.Helper()
	b := &fakeBroker{called: make(chan *credbrokerv1.IssueCredentialRequest, 100)}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	credbrokerv1.RegisterBrokerServiceServer(srv, b)
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(lis) }()
	conn, err := grpc.NewClient("passthrough:///"+lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		srv.Stop()
		<-done
	})
	return b, credbrokerv1.NewBrokerServiceClient(conn)
}

func (b *fakeBroker) waitCall(t *testing.T) *credbrokerv1.IssueCredentialRequest {
	t.Helper()
	select {
	case req := <-b.called:
		return req
	case <-time.After(watchdog):
		t.Fatal("no upstream call")
		return nil
	}
}

func constRand(v float64) func() float64 { return func() float64 { return v } }
