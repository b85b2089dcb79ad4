package broker

import (
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/credbroker/credbroker/broker/config"
	"github.com/credbroker/credbroker/broker/limits"
)

// ConnLimits bound what connections alone cost the broker, before any
// request: every accepted TCP connection costs goroutines and buffers (an
// idle HTTP/2 connection ~50 KiB and three goroutines) and, on the mTLS
// listener, a TLS handshake. Without a bound anyone who reaches the port
// could hold connections open until memory or file descriptors run out, or
// make the broker sign handshakes without end.
type ConnLimits struct {
	// PerAddress and Total cap the connections open at once from one source
	// IP address and in all.
	PerAddress, Total int
	// Accept and AcceptTotal are the rates at which new connections are
	// taken, per source address and in all.
	Accept, AcceptTotal limits.Spec
}

// GRPCConnLimits are the mTLS listener's bounds as configured
// (limits.connections; its defaults leave room for a fleet of nodes and
// controllers, one connection each, with a NAT or load balancer in front of
// many of them).
func GRPCConnLimits(c config.Connections) ConnLimits {
	return ConnLimits{PerAddress: c.PerAddress, Total: c.Total, Accept: c.Accept.PerKey(), AcceptTotal: c.Accept.Total()}
}

// DefaultHTTPConnLimits bound the HTTP listener (health probes, metrics
// scrapes, OIDC discovery and JWKS fetches by cloud providers).
var DefaultHTTPConnLimits = ConnLimits{
	PerAddress: 64, Total: 1024,
	Accept:      limits.Spec{Rate: 20, Burst: 100},
	AcceptTotal: limits.Spec{Rate: 200, Burst: 1000},
}

// LimitConnections wraps lis so that a connection beyond lim — too many open
// from its address or in all, or arriving faster than its address's or the
// total accept rate — is closed as soon as it is accepted, before any byte
// of it is read, and counted in credbroker_connections_refused_total
// {listener, reason}. It never blocks Accept: a refused connection does not
// hold up anyone else's. now is the clock of the accept rates.
func LimitConnections(lis net.Listener, listener string, lim ConnLimits, m *Metrics, now func() time.Time) (net.Listener, error) {
	if lim.PerAddress < 1 || lim.Total < 1 {
		return nil, fmt.Errorf("connection limits of %s: per-address and total caps must be at least 1 (got %d, %d)", listener, lim.PerAddress, lim.Total)
	}
	rates, err := limits.NewBuckets(lim.Accept, &lim.AcceptTotal, 0)
	if err != nil {
		return nil, err
	}
	return &limitedListener{Listener: lis, name: listener, lim: lim, rates: rates, m: m, now: now, open: make(map[string]int)}, nil
}

type limitedListener struct {
	net.Listener
	name  string
	lim   ConnLimits
	rates *limits.Buckets
	m     *Metrics
	now   func() time.Time

	mu    sync.Mutex
	open  map[string]int // per source address; an address leaves when its count is 0
	total int
}

// Accept returns the next connection within the limits.
func (l *limitedListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		addr := sourceAddress(c.RemoteAddr())
		if reason := l.admit(addr); reason != "" {
			c.Close()
			l.m.connsRefused.WithLabelValues(l.name, reason).Inc()
			continue
		}
		l.m.connsOpen.WithLabelValues(l.name).Inc()
		return &limitedConn{Conn: c, release: func() { l.release(addr) }}, nil
	}
}

// admit reserves a place for a connection from addr, or says why not.
func (l *limitedListener) admit(addr string) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.total >= l.lim.Total:
		return "total"
	case l.open[addr] >= l.lim.PerAddress:
		return "per_address"
	}
	if ok, why := l.rates.Take(addr, l.now()); !ok {
		if why.Total {
			return "accept_rate_total"
		}
		return "accept_rate"
	}
	l.total++
	l.open[addr]++
	return ""
}

func (l *limitedListener) release(addr string) {
	l.mu.Lock()
	l.total--
	if l.open[addr]--; l.open[addr] <= 0 {
		delete(l.open, addr)
	}
	l.mu.Unlock()
	l.m.connsOpen.WithLabelValues(l.name).Dec()
}

// sourceAddress is the IP of a TCP peer (its port changes with every
// connection); other addresses count as themselves.
func sourceAddress(a net.Addr) string {
	if t, ok := a.(*net.TCPAddr); ok {
		return t.IP.String()
	}
	return a.String()
}

// limitedConn gives its place back once, on its first Close.
type limitedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

func connMetrics() (refused *prometheus.CounterVec, open *prometheus.GaugeVec) {
	return prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "credbroker_connections_refused_total",
			Help: "Connections closed as soon as accepted because they exceeded the listener's connection limits, by listener and reason (per_address, total, accept_rate, accept_rate_total).",
		}, []string{"listener", "reason"}),
		prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "credbroker_connections_open",
			Help: "Connections open on the listener within its limits, by listener.",
		}, []string{"listener"})
}
