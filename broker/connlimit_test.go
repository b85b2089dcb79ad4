package broker_test

import (
	"errors"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/credbroker/credbroker/broker"
	"github.com/credbroker/credbroker/broker/limits"
	"github.com/credbroker/credbroker/test/fakeclock"
)

// connLimitFixture is a real TCP listener behind LimitConnections, whose
// accepted connections arrive on accepted.
type connLimitFixture struct {
	t        *testing.T
	addr     string
	accepted chan net.Conn
	reg      *prometheus.Registry
	clock    *fakeclock.Clock
}

func newConnLimitFixture(t *testing.T, lim broker.ConnLimits) *connLimitFixture {
	t.Helper()
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &connLimitFixture{t: t, addr: raw.Addr().String(), accepted: make(chan net.Conn, 16), reg: prometheus.NewRegistry(), clock: fakeclock.New(time.Unix(1_800_000_000, 0))}
	lis, err := broker.LimitConnections(raw, "grpc", lim, broker.NewMetrics(f.reg), f.clock.Now)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			f.accepted <- c
		}
	}()
	t.Cleanup(func() {
		lis.Close()
		<-done
		close(f.accepted)
		for c := range f.accepted {
			c.Close()
		}
	})
	return f
}

// admitted dials and returns the server's side of the connection, which the
// limits let in.
func (f *connLimitFixture) admitted() (client, server net.Conn) {
	f.t.Helper()
	c := f.dial()
	return c, <-f.accepted
}

// refused dials and checks that the broker closes the connection without
// handing it to the server.
func (f *connLimitFixture) refused() {
	f.t.Helper()
	c := f.dial()
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, io.EOF) && !isReset(err) {
		f.t.Fatalf("read on a connection over the limits: %v, want it closed", err)
	}
}

func isReset(err error) bool { return errors.Is(err, syscall.ECONNRESET) }

func (f *connLimitFixture) dial() net.Conn {
	f.t.Helper()
	c, err := net.Dial("tcp", f.addr)
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() { c.Close() })
	return c
}

func (f *connLimitFixture) metric(name string, labels ...string) float64 {
	f.t.Helper()
	families, err := f.reg.Gather()
	if err != nil {
		f.t.Fatal(err)
	}
	for _, fam := range families {
		if fam.GetName() != name {
			continue
		}
	next:
		for _, m := range fam.GetMetric() {
			have := map[string]bool{}
			for _, l := range m.GetLabel() {
				have[l.GetValue()] = true
			}
			for _, v := range labels {
				if !have[v] {
					continue next
				}
			}
			if m.GetGauge() != nil {
				return m.GetGauge().GetValue()
			}
			return m.GetCounter().GetValue()
		}
	}
	return 0
}

var generousRates = broker.ConnLimits{Accept: limits.Spec{Rate: 1, Burst: 1000}, AcceptTotal: limits.Spec{Rate: 1, Burst: 1000}}

// Connections held open from one address stop at the per-address cap; a
// closed one makes room again.
func TestConnectionsPerAddressCapped(t *testing.T) {
	lim := generousRates
	lim.PerAddress, lim.Total = 2, 100
	f := newConnLimitFixture(t, lim)
	_, first := f.admitted()
	f.admitted()
	f.refused()
	f.refused()
	if got := f.metric("credbroker_connections_refused_total", "grpc", "per_address"); got != 2 {
		t.Errorf("refused per_address = %v, want 2", got)
	}
	if got := f.metric("credbroker_connections_open", "grpc"); got != 2 {
		t.Errorf("open = %v, want 2", got)
	}
	first.Close()
	first.Close() // a second Close gives nothing back twice
	f.admitted()
	f.refused()
}

// The total cap holds whatever the per-address cap allows.
func TestConnectionsTotalCapped(t *testing.T) {
	lim := generousRates
	lim.PerAddress, lim.Total = 100, 3
	f := newConnLimitFixture(t, lim)
	for range 3 {
		f.admitted()
	}
	f.refused()
	if got := f.metric("credbroker_connections_refused_total", "grpc", "total"); got != 1 {
		t.Errorf("refused total = %v, want 1", got)
	}
}

// Connections opened and closed at once still cost a handshake each: new
// connections are taken at the accept rate, per address, and refused past
// it until the bucket refills.
func TestConnectionsAcceptRateLimited(t *testing.T) {
	lim := broker.ConnLimits{PerAddress: 100, Total: 100, Accept: limits.Spec{Rate: 1, Burst: 3}, AcceptTotal: limits.Spec{Rate: 100, Burst: 100}}
	f := newConnLimitFixture(t, lim)
	for range 3 {
		c, s := f.admitted()
		c.Close()
		s.Close()
	}
	f.refused()
	if got := f.metric("credbroker_connections_refused_total", "grpc", "accept_rate"); got != 1 {
		t.Errorf("refused accept_rate = %v, want 1", got)
	}
	f.clock.Advance(time.Second)
	f.admitted()
	f.refused()
}

// Bad limits are an error, not an unlimited listener.
func TestConnectionLimitsValidated(t *testing.T) {
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	if _, err := broker.LimitConnections(raw, "grpc", broker.ConnLimits{PerAddress: 1, Total: 1}, broker.NewMetrics(prometheus.NewRegistry()), time.Now); err == nil {
		t.Fatal("limits without accept rates accepted")
	}
	noCap := generousRates
	noCap.Total = 1
	if _, err := broker.LimitConnections(raw, "grpc", noCap, broker.NewMetrics(prometheus.NewRegistry()), time.Now); err == nil {
		t.Fatal("limits without a per-address cap accepted")
	}
}
