package etcdtest

import (
	"io"
	"net"
	"sync"
)

// proxy forwards a member's client connections, so that stopping the member
// can first cut them: an etcd member shutting down waits (its request
// timeout, seconds) for open client streams such as watches to end, and a
// client reconnecting at once would open new ones. While down, it accepts
// and closes at once, as a port with nobody behind it would refuse.
type proxy struct {
	l      net.Listener
	target string

	mu    sync.Mutex
	down  bool
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

func newProxy(target string) (*proxy, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &proxy{l: l, target: target, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.serve()
	return p, nil
}

func (p *proxy) addr() string { return p.l.Addr().String() }

func (p *proxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.l.Accept()
		if err != nil {
			return
		}
		if !p.track(c) {
			c.Close()
			continue
		}
		p.wg.Add(1)
		go p.pipe(c)
	}
}

// track remembers c, unless the proxy is down.
func (p *proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.down {
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *proxy) untrack(cs ...net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range cs {
		delete(p.conns, c)
		c.Close()
	}
}

func (p *proxy) pipe(c net.Conn) {
	defer p.wg.Done()
	u, err := net.Dial("tcp", p.target)
	if err != nil {
		p.untrack(c)
		return
	}
	if !p.track(u) {
		u.Close()
		p.untrack(c)
		return
	}
	var both sync.WaitGroup
	both.Add(2)
	go func() { defer both.Done(); _, _ = io.Copy(u, c); p.untrack(c, u) }()
	go func() { defer both.Done(); _, _ = io.Copy(c, u); p.untrack(c, u) }()
	both.Wait()
}

// setDown cuts every connection and, while down, refuses new ones.
func (p *proxy) setDown(down bool) {
	p.mu.Lock()
	p.down = down
	var open []net.Conn
	if down {
		for c := range p.conns {
			open = append(open, c)
		}
	}
	p.mu.Unlock()
	p.untrack(open...)
}

// close stops the proxy and waits for its goroutines.
func (p *proxy) close() {
	p.l.Close()
	p.setDown(true)
	p.wg.Wait()
}
