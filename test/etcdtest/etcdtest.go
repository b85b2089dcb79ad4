// Package etcdtest runs a real etcd inside the test process (the embed
// package of etcd's own server) on loopback: one member, or a cluster of
// several whose members a test can stop and restart on the same ports and
// data, to take the quorum away and give it back. Clients reach each member
// through a small TCP proxy that a stop cuts at once, so that the member
// does not wait seconds for their watch streams to drain; members reach each
// other through such proxies too, so that closing the cluster cuts every
// connection between them at once. Every port is picked before any is
// given up, so that no two members (or proxies) are handed the same one.
package etcdtest

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// readyTimeout bounds how long a member may take to join its cluster.
const readyTimeout = time.Minute

// TLSFiles are the PEM files of a member's TLS towards its clients.
type TLSFiles struct {
	// Cert and Key are the member's server certificate and key.
	Cert, Key string
	// ClientCA, when set, makes the member require client certificates
	// signed by it (etcd's --client-cert-auth).
	ClientCA string
}

// Cluster is an embedded etcd cluster of one or more members.
type Cluster struct {
	dir     string
	tls     *TLSFiles
	clients []url.URL
	peers   []url.URL
	initial string

	proxies []*proxy // in front of each member's client URL
	// peerProxies are in front of each member's peer URL, which the members
	// reach each other through, so that Close cuts the connections between
	// them too (a stopped member leaves some open, idle, until its peer's
	// read timeout).
	peerProxies []*proxy

	mu      sync.Mutex
	members []*embed.Etcd // nil while stopped
	// held keeps a stopped member's ports until it restarts, so that no
	// other listener or outgoing connection takes them meanwhile.
	held [][]net.Listener
}

// New starts an n-member cluster in a temporary directory and closes it when
// the test ends.
func New(t testing.TB, n int) *Cluster {
	t.Helper()
	c, err := Start(t.TempDir(), n)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// NewTLS starts an n-member cluster whose members serve their clients over
// TLS only (https:// endpoints), as files says (PKI makes them), and closes
// it when the test ends. The members reach each other without TLS.
func NewTLS(t testing.TB, n int, files TLSFiles) *Cluster {
	t.Helper()
	c, err := start(t.TempDir(), n, &files)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// Start starts an n-member cluster keeping its data under dir, and waits
// until it serves. Close it when done.
func Start(dir string, n int) (*Cluster, error) { return start(dir, n, nil) }

func start(dir string, n int, tls *TLSFiles) (*Cluster, error) {
	if n < 1 {
		return nil, errors.New("etcdtest: a cluster needs a member")
	}
	c := &Cluster{dir: dir, tls: tls, members: make([]*embed.Etcd, n), held: make([][]net.Listener, n)}
	// Every port is held until all are picked and the proxies listen, so
	// that no two of them (nor a proxy) are handed the same port.
	held, err := freeURLs(2 * n)
	if err != nil {
		return nil, err
	}
	var initial []string
	for i := range n {
		client, peer := held[2*i].url, held[2*i+1].url
		if tls != nil {
			client.Scheme = "https"
		}
		c.clients, c.peers = append(c.clients, client), append(c.peers, peer)
		px, err := newProxy(client.Host)
		if err != nil {
			_ = closeHeld(held)
			c.Close()
			return nil, err
		}
		c.proxies = append(c.proxies, px)
		ppx, err := newProxy(peer.Host)
		if err != nil {
			_ = closeHeld(held)
			c.Close()
			return nil, err
		}
		c.peerProxies = append(c.peerProxies, ppx)
		advertised := c.advertisedPeer(i)
		initial = append(initial, fmt.Sprintf("%s=%s", memberName(i), advertised.String()))
	}
	if err := closeHeld(held); err != nil {
		c.Close()
		return nil, err
	}
	c.initial = strings.Join(initial, ",")
	// Every member must be started before any can be ready: readiness needs
	// a quorum.
	for i := range n {
		if err := c.start(i); err != nil {
			c.Close()
			return nil, err
		}
	}
	for i := range n {
		if err := c.waitReady(i); err != nil {
			c.Close()
			return nil, err
		}
	}
	return c, nil
}

func memberName(i int) string { return fmt.Sprintf("m%d", i) }

// heldURL is an http URL on a loopback port, with the listener that holds
// the port until the member takes it.
type heldURL struct {
	url url.URL
	l   net.Listener
}

// freeURLs picks n distinct loopback ports, each held by its listener.
func freeURLs(n int) ([]heldURL, error) {
	var out []heldURL
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			_ = closeHeld(out)
			return nil, fmt.Errorf("etcdtest: pick a port: %w", err)
		}
		out = append(out, heldURL{url: url.URL{Scheme: "http", Host: l.Addr().String()}, l: l})
	}
	return out, nil
}

// closeHeld frees the held ports for the members.
func closeHeld(held []heldURL) error {
	var errs []error
	for _, h := range held {
		errs = append(errs, h.l.Close())
	}
	return errors.Join(errs...)
}

func (c *Cluster) config(i int) *embed.Config {
	cfg := embed.NewConfig()
	cfg.Name = memberName(i)
	cfg.Dir = filepath.Join(c.dir, cfg.Name)
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{c.clients[i]}, []url.URL{c.clients[i]}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{c.peers[i]}, []url.URL{c.advertisedPeer(i)}
	cfg.InitialCluster = c.initial
	cfg.InitialClusterToken = "credbroker-etcdtest"
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	// Members only ever stop gracefully here (their data is in the page
	// cache when they start again), and what the tests prove is the
	// broker's behaviour, not etcd's durability: without fsync a machine
	// busy with other work cannot stall a member's raft loop for seconds.
	cfg.UnsafeNoFsync = true
	if c.tls != nil {
		cfg.ClientTLSInfo.CertFile, cfg.ClientTLSInfo.KeyFile = c.tls.Cert, c.tls.Key
		cfg.ClientTLSInfo.TrustedCAFile, cfg.ClientTLSInfo.ClientCertAuth = c.tls.ClientCA, c.tls.ClientCA != ""
	}
	return cfg
}

// start starts member i (again, on its ports and data after a Stop).
func (c *Cluster) start(i int) error {
	c.release(i)
	e, err := embed.StartEtcd(c.config(i))
	if err != nil {
		return fmt.Errorf("etcdtest: start member %d: %w", i, err)
	}
	c.mu.Lock()
	c.members[i] = e
	c.mu.Unlock()
	return nil
}

func (c *Cluster) waitReady(i int) error {
	c.mu.Lock()
	e := c.members[i]
	c.mu.Unlock()
	select {
	case <-e.Server.ReadyNotify():
		return nil
	case err := <-e.Err():
		return fmt.Errorf("etcdtest: member %d: %w", i, err)
	case <-time.After(readyTimeout):
		return fmt.Errorf("etcdtest: member %d not ready after %s", i, readyTimeout)
	}
}

// advertisedPeer is member i's peer URL as the other members reach it:
// through its peer proxy.
func (c *Cluster) advertisedPeer(i int) url.URL {
	u := c.peers[i]
	u.Host = c.peerProxies[i].addr()
	return u
}

// Endpoints returns every member's client URL.
func (c *Cluster) Endpoints() []string {
	out := make([]string, len(c.clients))
	for i := range c.clients {
		out[i] = c.Endpoint(i)
	}
	return out
}

// Endpoint returns member i's client URL, as its clients reach it: through
// a proxy on loopback that Stop cuts.
func (c *Cluster) Endpoint(i int) string {
	u := c.clients[i]
	u.Host = c.proxies[i].addr()
	return u.String()
}

// DirectEndpoint returns member i's own client URL, which Disconnect does
// not cut.
func (c *Cluster) DirectEndpoint(i int) string { return c.clients[i].String() }

// Disconnect cuts the connections of member i's clients (those that reach
// it through Endpoint) and refuses new ones until Reconnect, while the
// member runs on: a network partition between them.
func (c *Cluster) Disconnect(i int) { c.proxies[i].setDown(true) }

// Reconnect lets member i's clients reach it again after Disconnect.
func (c *Cluster) Reconnect(i int) { c.proxies[i].setDown(false) }

// Stop stops member i; its data stays for Restart. Its clients'
// connections are cut first and refused until Restart, as a member that
// went away would leave them.
func (c *Cluster) Stop(i int) { c.stop(i, true) }

// stop stops member i and, with hold, keeps its ports for its restart.
func (c *Cluster) stop(i int, hold bool) {
	c.mu.Lock()
	e := c.members[i]
	c.members[i] = nil
	c.mu.Unlock()
	c.proxies[i].setDown(true)
	c.peerProxies[i].setDown(true)
	if e == nil {
		return
	}
	e.Close()
	if !hold {
		return
	}
	var ls []net.Listener
	for _, addr := range []string{c.clients[i].Host, c.peers[i].Host} {
		// A port taken in the moment since the member let it go cannot be
		// held; its restart then reports it in use.
		if l, err := net.Listen("tcp", addr); err == nil {
			ls = append(ls, l)
		}
	}
	c.mu.Lock()
	c.held[i] = ls
	c.mu.Unlock()
}

// release gives up member i's held ports.
func (c *Cluster) release(i int) {
	c.mu.Lock()
	ls := c.held[i]
	c.held[i] = nil
	c.mu.Unlock()
	for _, l := range ls {
		_ = l.Close()
	}
}

// Restart starts the stopped members in is again on their ports and data,
// and waits until they serve (which needs a quorum of the cluster running).
func (c *Cluster) Restart(is ...int) error {
	for _, i := range is {
		c.peerProxies[i].setDown(false)
		if err := c.start(i); err != nil {
			return err
		}
	}
	for _, i := range is {
		if err := c.waitReady(i); err != nil {
			return err
		}
		c.proxies[i].setDown(false)
	}
	return nil
}

// Close stops every member and the proxies.
func (c *Cluster) Close() {
	for i := range c.members {
		if i < len(c.peerProxies) {
			c.stop(i, false)
		}
		c.release(i)
	}
	for _, p := range append(c.proxies, c.peerProxies...) {
		p.close()
	}
}
