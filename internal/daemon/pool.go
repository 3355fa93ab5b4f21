package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
)

// Pool keeps a few idle connections to one daemon for callers that need a Conn of their own per
// operation, such as parallel NAR streams. A daemon forks a worker for each connection, which
// costs about 15 ms; the NAR of a small store item costs about 0.1 ms on an open one, so a
// closure of many small items is dominated by dials without a pool.
//
// Only a connection whose operation ended cleanly goes back to the pool. A pooled connection the
// daemon has since dropped (a restart) fails on its next use; that use is retried once on a new
// connection, unless the daemon itself answered with an error.
type Pool struct {
	socket  string
	maxIdle int

	mu     sync.Mutex
	idle   []*Conn
	closed bool
}

// NewPool returns a pool of connections to the daemon at socket keeping at most maxIdle idle ones
// (at least 1): the number of operations the caller runs in parallel is the right size.
func NewPool(socket string, maxIdle int) *Pool {
	return &Pool{socket: socket, maxIdle: max(maxIdle, 1)}
}

// get returns an idle connection (reused: true) or a new one.
func (p *Pool) get(ctx context.Context) (c *Conn, reused bool, err error) {
	p.mu.Lock()
	if n := len(p.idle); n > 0 && !p.closed {
		c = p.idle[n-1]
		p.idle = p.idle[:n-1]
	}
	p.mu.Unlock()
	if c != nil {
		return c, true, nil
	}
	c, err = Dial(ctx, p.socket)
	return c, false, err
}

// put returns a connection whose last operation ended cleanly; beyond maxIdle, or after Close,
// it is closed.
func (p *Pool) put(c *Conn) {
	if c.brokenErr() != nil {
		return
	}
	p.mu.Lock()
	if !p.closed && len(p.idle) < p.maxIdle {
		p.idle = append(p.idle, c)
		c = nil
	}
	p.mu.Unlock()
	if c != nil {
		c.Close()
	}
}

// Close closes the idle connections; connections in use are closed when they come back.
func (p *Pool) Close() error {
	p.mu.Lock()
	idle := p.idle
	p.idle, p.closed = nil, true
	p.mu.Unlock()
	var errs []error
	for _, c := range idle {
		errs = append(errs, c.Close())
	}
	return errors.Join(errs...)
}

// OpenNar is Conn.Nar on a pooled connection, which goes back to the pool when the stream has
// been read to its end and closed. Closing the stream earlier closes the connection.
func (p *Pool) OpenNar(ctx context.Context, path string, opts ...NarOption) (io.ReadCloser, error) {
	for {
		c, reused, err := p.get(ctx)
		if err != nil {
			return nil, fmt.Errorf("connecting to the daemon for the nar of %s: %w", path, err)
		}
		r, err := c.Nar(ctx, path, opts...)
		if err == nil {
			return &pooledNar{r: r, c: c, p: p}, nil
		}
		var derr *Error
		if reused && !errors.As(err, &derr) && !errors.Is(err, ErrNotValid) && ctx.Err() == nil {
			c.Close() // dropped while idle: once more on a new connection
			continue
		}
		p.put(c) // a daemon's answer leaves the connection usable
		return nil, err
	}
}

// pooledNar is a NAR stream on a pooled connection.
type pooledNar struct {
	r    io.ReadCloser
	c    *Conn
	p    *Pool
	once sync.Once
	eof  bool
}

func (s *pooledNar) Read(b []byte) (int, error) {
	n, err := s.r.Read(b)
	if err == io.EOF {
		s.eof = true
	}
	return n, err
}

func (s *pooledNar) Close() error {
	var err error
	s.once.Do(func() {
		err = s.r.Close()
		if s.eof {
			s.p.put(s.c)
		} else {
			s.c.Close()
		}
	})
	return err
}
