package broker_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"runtime"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	reflectionalphapb "google.golang.org/grpc/reflection/grpc_reflection_v1alpha"
	"google.golang.org/grpc/status"

	"github.com/credbroker/credbroker/broker"
	"github.com/credbroker/credbroker/broker/limits"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// serveHealth starts the plain-text health listener of h's broker serving
// hl, and returns a connection to it without TLS, as a kubelet probe makes.
func serveHealth(t *testing.T, h *harness, hl *broker.Health) *grpc.ClientConn {
	t.Helper()
	s := broker.NewHealthServer(hl, slog.New(slog.NewTextHandler(io.Discard, nil)), h.metrics, h.rateLimits)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(lis)
	t.Cleanup(s.Stop)
	return h.connect(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
}

func checkStatus(t *testing.T, conn *grpc.ClientConn, service string) healthpb.HealthCheckResponse_ServingStatus {
	t.Helper()
	resp, err := healthpb.NewHealthClient(conn).Check(context.Background(), &healthpb.HealthCheckRequest{Service: service})
	if err != nil {
		t.Fatalf("Check(%q): %v", service, err)
	}
	return resp.Status
}

// TestHealthServedWithoutIdentity: the standard health client gets the
// broker's status on the mTLS port without a client certificate and on the
// plain-text health listener; the status follows SetServing, covers the
// broker's services by name, and Stop makes it NOT_SERVING for good.
func TestHealthServedWithoutIdentity(t *testing.T) {
	hl := broker.NewHealth(0)
	h := newHarness(t, func(c *harnessConfig) { c.serverOptions = []broker.ServerOption{broker.WithHealth(hl)} })
	mtls, plain := h.dialNoCert(), serveHealth(t, h, hl)

	for name, conn := range map[string]*grpc.ClientConn{"mTLS port without certificate": mtls, "health listener": plain} {
		if got := checkStatus(t, conn, ""); got != healthpb.HealthCheckResponse_NOT_SERVING {
			t.Errorf("%s: before the broker is ready: %v, want NOT_SERVING", name, got)
		}
		if got := checkStatus(t, conn, broker.LivenessService); got != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("%s: liveness before the broker is ready: %v, want SERVING", name, got)
		}
	}
	hl.SetServing(true)
	for name, conn := range map[string]*grpc.ClientConn{"mTLS port without certificate": mtls, "health listener": plain} {
		for _, svc := range []string{"", credbrokerv1.BrokerService_ServiceDesc.ServiceName, credbrokerv1.NodeService_ServiceDesc.ServiceName} {
			if got := checkStatus(t, conn, svc); got != healthpb.HealthCheckResponse_SERVING {
				t.Errorf("%s: service %q: %v, want SERVING", name, svc, got)
			}
		}
		if _, err := healthpb.NewHealthClient(conn).Check(context.Background(), &healthpb.HealthCheckRequest{Service: "no.such.Service"}); status.Code(err) != codes.NotFound {
			t.Errorf("%s: unknown service: %v, want NOT_FOUND", name, err)
		}
	}
	// The health listener serves nothing else.
	_, err := credbrokerv1.NewBrokerServiceClient(plain).IssueCredential(context.Background(), &credbrokerv1.IssueCredentialRequest{Profile: "plain-token"})
	if status.Code(err) != codes.Unimplemented {
		t.Errorf("IssueCredential on the health listener: %v, want UNIMPLEMENTED", err)
	}

	hl.SetServing(false) // e.g. the audit log cannot be written
	if got := checkStatus(t, plain, ""); got != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Errorf("after SetServing(false): %v", got)
	}
	if got := checkStatus(t, plain, broker.LivenessService); got != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("liveness while not ready: %v, want SERVING (a restart would not help)", got)
	}
	hl.SetServing(true)
	hl.Stop()
	hl.SetServing(true) // a late check result must not revive a stopping broker
	for _, svc := range []string{"", broker.LivenessService} {
		if got := checkStatus(t, plain, svc); got != healthpb.HealthCheckResponse_NOT_SERVING {
			t.Errorf("service %q after Stop: %v, want NOT_SERVING", svc, got)
		}
	}
}

// TestHealthWatchStreamsAreCapped: Watch streams see status changes; past
// the cap (shared by both listeners) a Watch is RESOURCE_EXHAUSTED, a slot
// frees when a stream ends, and Stop ends every stream after NOT_SERVING.
func TestHealthWatchStreamsAreCapped(t *testing.T) {
	hl := broker.NewHealth(2)
	hl.SetServing(true)
	h := newHarness(t, func(c *harnessConfig) { c.serverOptions = []broker.ServerOption{broker.WithHealth(hl)} })
	mtls, plain := h.dialNoCert(), serveHealth(t, h, hl)

	watch := func(conn *grpc.ClientConn) (grpc.ServerStreamingClient[healthpb.HealthCheckResponse], context.CancelFunc, error) {
		ctx, cancel := context.WithCancel(context.Background())
		w, err := healthpb.NewHealthClient(conn).Watch(ctx, &healthpb.HealthCheckRequest{})
		if err != nil {
			cancel()
			t.Fatal(err)
		}
		first, err := w.Recv()
		if err != nil {
			cancel()
			return nil, nil, err
		}
		if first.Status != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("first Watch message: %v", first.Status)
		}
		return w, cancel, nil
	}
	w1, cancel1, err := watch(mtls)
	if err != nil {
		t.Fatal(err)
	}
	defer cancel1()
	w2, cancel2, err := watch(plain)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := watch(plain); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("third Watch: %v, want RESOURCE_EXHAUSTED", err)
	}
	if _, _, err := watch(mtls); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("third Watch on the mTLS port: %v, want RESOURCE_EXHAUSTED", err)
	}
	// Ending a stream frees its slot (the server notices the cancellation
	// asynchronously: wait for it by retrying on the server's answer, not
	// on time).
	cancel2()
	if _, err := w2.Recv(); status.Code(err) != codes.Canceled {
		t.Fatalf("cancelled Watch: %v", err)
	}
	var w3 grpc.ServerStreamingClient[healthpb.HealthCheckResponse]
	for {
		var cancel3 context.CancelFunc
		w3, cancel3, err = watch(plain)
		if err == nil {
			defer cancel3()
			break
		}
		if status.Code(err) != codes.ResourceExhausted {
			t.Fatal(err)
		}
		runtime.Gosched() // the server tears the cancelled stream down on its own goroutine
	}

	hl.SetServing(false)
	for _, w := range []grpc.ServerStreamingClient[healthpb.HealthCheckResponse]{w1, w3} {
		if m, err := w.Recv(); err != nil || m.Status != healthpb.HealthCheckResponse_NOT_SERVING {
			t.Fatalf("Watch after SetServing(false): %v, %v", m, err)
		}
	}
	hl.Stop()
	for _, w := range []grpc.ServerStreamingClient[healthpb.HealthCheckResponse]{w1, w3} {
		for {
			_, err := w.Recv()
			if err != nil {
				if status.Code(err) != codes.Canceled {
					t.Fatalf("Watch after Stop ended with %v, want CANCELED", err)
				}
				break
			}
		}
	}
}

// TestHealthChecksAreRateLimitedPerAddress: health checks need no identity,
// so they are bounded per source address (and in total) like every method.
func TestHealthChecksAreRateLimitedPerAddress(t *testing.T) {
	hl := broker.NewHealth(0)
	hl.SetServing(true)
	h := newHarness(t, func(c *harnessConfig) {
		c.serverOptions = []broker.ServerOption{broker.WithHealth(hl)}
		c.requests.Health = limits.Spec{Rate: 1, Burst: 2}
		c.requests.HealthTotal = limits.Spec{Rate: 100, Burst: 100}
	})
	a, b := h.dialNoCertFrom("127.0.0.2"), h.dialNoCertFrom("127.0.0.3")
	for range 2 {
		checkStatus(t, a, "")
	}
	_, err := healthpb.NewHealthClient(a).Check(context.Background(), &healthpb.HealthCheckRequest{})
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("third check within the second: %v, want RESOURCE_EXHAUSTED", err)
	}
	checkStatus(t, b, "") // another address has its own bucket
	h.clock.Advance(time.Second)
	checkStatus(t, a, "")
}

// TestReflectionListsServicesToAuthenticatedCallers: with reflection on,
// the real reflection client (v1 and v1alpha) lists the broker's services
// and resolves their descriptors for a caller with an SVID; a caller
// without one is refused. Without the option there is no reflection.
func TestReflectionListsServicesToAuthenticatedCallers(t *testing.T) {
	h := newHarness(t, func(c *harnessConfig) {
		c.serverOptions = []broker.ServerOption{broker.WithReflection(), broker.WithHealth(broker.NewHealth(0))}
	})
	conn := h.dial(h.mint(controllerID, time.Hour))

	stream, err := reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	ask := func(req *reflectionpb.ServerReflectionRequest) *reflectionpb.ServerReflectionResponse {
		t.Helper()
		if err := stream.Send(req); err != nil {
			t.Fatal(err)
		}
		resp, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	resp := ask(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}})
	var names []string
	for _, s := range resp.GetListServicesResponse().GetService() {
		names = append(names, s.Name)
	}
	for _, want := range []string{"credbroker.v1.BrokerService", "credbroker.v1.NodeService", "credbroker.v1.AdminService", "grpc.health.v1.Health"} {
		if !slices.Contains(names, want) {
			t.Errorf("listed services %v lack %s", names, want)
		}
	}
	resp = ask(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_FileContainingSymbol{FileContainingSymbol: "credbroker.v1.BrokerService"}})
	if len(resp.GetFileDescriptorResponse().GetFileDescriptorProto()) == 0 {
		t.Errorf("no descriptor for credbroker.v1.BrokerService: %v", resp)
	}
	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}

	// v1alpha, for older clients.
	alpha, err := reflectionalphapb.NewServerReflectionClient(conn).ServerReflectionInfo(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	//lint:ignore SA1019 the broker serves the deprecated v1alpha for clients that know only it
	if err := alpha.Send(&reflectionalphapb.ServerReflectionRequest{MessageRequest: &reflectionalphapb.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	r, err := alpha.Recv()
	if err != nil {
		t.Fatalf("v1alpha ListServices: %v", err)
	}
	//lint:ignore SA1019 as above
	if len(r.GetListServicesResponse().GetService()) == 0 {
		t.Fatalf("v1alpha ListServices: %v", r)
	}
	alpha.CloseSend()

	// No identity, no schema.
	anon, err := reflectionpb.NewServerReflectionClient(h.dialNoCert()).ServerReflectionInfo(context.Background())
	if err == nil {
		_, err = anon.Recv()
	}
	if status.Code(err) != codes.Unauthenticated {
		t.Errorf("reflection without an identity: %v, want UNAUTHENTICATED", err)
	}

	// Off by default.
	off := newHarness(t)
	plainStream, err := reflectionpb.NewServerReflectionClient(off.dial(off.mint(controllerID, time.Hour))).ServerReflectionInfo(context.Background())
	if err == nil {
		_, err = plainStream.Recv()
	}
	if status.Code(err) != codes.Unimplemented {
		t.Errorf("reflection when not enabled: %v, want UNIMPLEMENTED", err)
	}
}
