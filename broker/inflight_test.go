package broker_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/credbroker/credbroker/broker"
	"github.com/credbroker/credbroker/test/poll"
)

// Calls whose request body never comes hold a goroutine each from their
// HEADERS frame on, before any interceptor runs: one source address may hold
// at most MaxStreamsPerAddress of them, whatever number of connections it
// spreads them over; the next call is refused before its handler starts,
// and ending one gives its slot back.
func TestOpenStreamsCappedPerAddress(t *testing.T) {
	reg := prometheus.NewRegistry()
	srv := broker.NewHealthServer(broker.NewHealth(0), slog.New(slog.NewTextHandler(io.Discard, nil)), broker.NewMetrics(reg), nil)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(lis)
	defer srv.Stop()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	// stall opens n calls on conn whose bodies never come, then makes one
	// whole call: its answer comes after the server has seen every earlier
	// HEADERS frame on the connection, so the stalled calls are counted.
	stall := func(conn *grpc.ClientConn, n int) (lastCancel context.CancelFunc, sync error) {
		desc := &grpc.StreamDesc{ClientStreams: true, ServerStreams: true}
		for range n {
			sctx, scancel := context.WithCancel(ctx)
			if _, err := conn.NewStream(sctx, desc, healthpb.Health_Check_FullMethodName); err != nil {
				t.Fatal(err)
			}
			lastCancel = scancel
		}
		_, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
		return lastCancel, err
	}
	dial := func() *grpc.ClientConn {
		conn, err := grpc.NewClient("passthrough:///"+lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return conn
	}
	refused := func(err error) bool {
		return status.Code(err) == codes.ResourceExhausted && strings.Contains(status.Convert(err).Message(), "too many calls open from this address")
	}

	// One connection takes at most 1024 streams at once (MaxConcurrentStreams),
	// so a second one carries the rest.
	if _, err := stall(dial(), broker.MaxStreamsPerAddress/2); refused(err) {
		t.Fatalf("refused under the cap: %v", err)
	}
	// A call's slot is freed just after it has ended, so the whole call that
	// stall makes may still hold one when its answer is read: wait until
	// only the stalled calls are open.
	settled := func(open int) {
		t.Helper()
		wait, stop := context.WithTimeout(ctx, 30*time.Second)
		defer stop()
		poll.New(t, wait, 10*time.Millisecond).UntilCode(fmt.Sprintf("%d calls open", open), codes.OK, false, func() error {
			if got := gatherGauge(t, reg, "credbroker_streams_open"); got != float64(open) {
				return status.Errorf(codes.Unavailable, "%v open", got)
			}
			return nil
		})
	}
	settled(broker.MaxStreamsPerAddress / 2)
	second := dial()
	release, err := stall(second, broker.MaxStreamsPerAddress/2-1)
	if refused(err) {
		t.Fatalf("refused at the last slot: %v", err)
	}
	settled(broker.MaxStreamsPerAddress - 1)
	if _, err := stall(second, 1); !refused(err) {
		t.Fatalf("call past %d open streams from one address: %v, want RESOURCE_EXHAUSTED", broker.MaxStreamsPerAddress, err)
	}
	if got := gatherCounter(t, reg, "credbroker_streams_refused_total", "per_address"); got != 1 {
		t.Errorf("credbroker_streams_refused_total{reason=per_address} = %v, want 1", got)
	}
	// Cancelling a stalled call frees its slot once the server has seen its
	// RST_STREAM: a call is then answered by the health service (whatever
	// it answers), not refused by the cap.
	release()
	wait, stop := context.WithTimeout(ctx, 30*time.Second)
	defer stop()
	poll.New(t, wait, 10*time.Millisecond).UntilCode("a call after a stalled one ended", codes.OK, false, func() error {
		if _, err := healthpb.NewHealthClient(second).Check(ctx, &healthpb.HealthCheckRequest{}); refused(err) {
			return err
		}
		return nil
	})
}

func gatherCounter(t *testing.T, reg *prometheus.Registry, name, label string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetValue() == label {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// gatherGauge reads the unlabelled gauge name from reg (0 if absent).
func gatherGauge(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() == name && len(f.GetMetric()) == 1 {
			return f.GetMetric()[0].GetGauge().GetValue()
		}
	}
	return 0
}
