package testbed

import (
	"io"
	"net"
	"sync"
	"testing"
)

// Proxy is a TCP proxy on loopback in front of a server (the apiserver, MinIO) that can cut its
// clients off on demand, simulating a network partition between them and the server while the
// server stays up for everyone else.
//
// Partition closes every proxied connection (both sides see them end) and, until Heal, accepts new
// connections and holds them open without forwarding a byte: a client's dial succeeds and its
// request times out, as across a real partition where packets vanish (not a refused connection,
// which a client notices at once). Heal closes the held connections (their clients retry) and
// forwards again. Refuse makes the partition refuse connections instead (the listener closes, so
// a dial fails at once), as a host whose firewall rejects.
type Proxy struct {
	// Addr is the proxy's host:port; Target the server's.
	Addr, Target string

	mu          sync.Mutex
	l           net.Listener
	partitioned bool
	refuse      bool
	conns       map[net.Conn]struct{} // proxied, both sides
	held        map[net.Conn]struct{} // accepted during a partition
	closed      bool
}

// StartProxy listens on a free loopback port and forwards to target (host:port); it is closed
// when the test ends.
func StartProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("testbed: proxy listen: %v", err)
	}
	p := &Proxy{Addr: l.Addr().String(), Target: target, l: l, conns: map[net.Conn]struct{}{}, held: map[net.Conn]struct{}{}}
	go p.serve(l)
	t.Cleanup(p.Close)
	return p
}

func (p *Proxy) serve(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return // closed: Close, or a refusing partition
		}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			c.Close()
			return
		}
		if p.partitioned {
			p.held[c] = struct{}{}
			p.mu.Unlock()
			go func() { // a held client may give up: forget it then
				_, _ = io.Copy(io.Discard, c)
				p.mu.Lock()
				delete(p.held, c)
				p.mu.Unlock()
				c.Close()
			}()
			continue
		}
		p.mu.Unlock()
		go p.forward(c)
	}
}

func (p *Proxy) forward(c net.Conn) {
	s, err := net.Dial("tcp", p.Target)
	if err != nil {
		c.Close()
		return
	}
	p.mu.Lock()
	if p.partitioned || p.closed {
		p.mu.Unlock()
		c.Close()
		s.Close()
		return
	}
	p.conns[c], p.conns[s] = struct{}{}, struct{}{}
	p.mu.Unlock()
	var wg sync.WaitGroup
	wg.Add(2)
	pipe := func(dst, src net.Conn) {
		defer wg.Done()
		_, _ = io.Copy(dst, src)
		// One direction ended: end both, as a server closing its side would.
		dst.Close()
		src.Close()
	}
	go pipe(s, c)
	go pipe(c, s)
	wg.Wait()
	p.mu.Lock()
	delete(p.conns, c)
	delete(p.conns, s)
	p.mu.Unlock()
}

// Partition cuts the proxy's clients off the target until Heal (see Proxy).
func (p *Proxy) Partition() { p.partition(false) }

// Refuse is Partition with connections refused rather than held.
func (p *Proxy) Refuse() { p.partition(true) }

func (p *Proxy) partition(refuse bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.partitioned || p.closed {
		return
	}
	p.partitioned, p.refuse = true, refuse
	for c := range p.conns {
		c.Close()
	}
	if refuse {
		p.l.Close()
	}
}

// Heal ends a partition: held connections are closed, new ones are forwarded again. It fails the
// process only if the proxy's port was taken while refusing (it reports that by panicking: a
// test bed on loopback should never see it).
func (p *Proxy) Heal() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.partitioned || p.closed {
		return
	}
	for c := range p.held {
		c.Close()
	}
	p.held = map[net.Conn]struct{}{}
	if p.refuse {
		l, err := net.Listen("tcp", p.Addr)
		if err != nil {
			panic("testbed: proxy cannot listen on " + p.Addr + " again: " + err.Error())
		}
		p.l = l
		go p.serve(l)
	}
	p.partitioned, p.refuse = false, false
}

// Partitioned says whether a partition is on.
func (p *Proxy) Partitioned() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.partitioned
}

// Close stops the proxy and closes every connection.
func (p *Proxy) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return
	}
	p.closed = true
	p.l.Close()
	for c := range p.conns {
		c.Close()
	}
	for c := range p.held {
		c.Close()
	}
}
