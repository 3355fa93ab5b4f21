package submit

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/guixfarm/guix-farm/internal/daemon"
	"github.com/guixfarm/guix-farm/internal/nar"
)

// Store is the submitter's local store, as submit needs it.
type Store interface {
	// Closure is paths and everything they refer to, recursively, references first, with what
	// the store knows of each; the error wraps daemon.ErrNotValid for a path it lacks.
	Closure(ctx context.Context, paths []string) ([]daemon.PathInfo, error)
	// ReadFile returns the contents of a store item that is a single regular file (a .drv).
	ReadFile(ctx context.Context, path string) ([]byte, error)
	// OpenNar streams path's NAR. It may be called concurrently, and again for the same path.
	OpenNar(ctx context.Context, path string) (io.ReadCloser, error)
}

// MaxDrvSize bounds a .drv read through the daemon (they are kilobytes; Guix's largest are
// a few hundred).
const MaxDrvSize = 16 << 20

// DaemonStore is a Store over a guix-daemon or nix-daemon socket. Queries share one connection
// (a connection runs one operation at a time, so they take turns); each NAR stream has a
// connection of its own, since a NAR keeps its connection busy until its end and the publisher
// uploads several at once.
type DaemonStore struct {
	// Socket is the daemon's Unix socket.
	Socket string

	mu   sync.Mutex
	conn *daemon.Conn
	nars *daemon.Pool // OpenNar's connections, made on first use
}

// Close closes the query connection and the idle nar connections.
func (s *DaemonStore) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var err error
	if s.conn != nil {
		err = s.conn.Close()
		s.conn = nil
	}
	if s.nars != nil {
		err = errors.Join(err, s.nars.Close())
		s.nars = nil
	}
	return err
}

func (s *DaemonStore) dial(ctx context.Context) (*daemon.Conn, error) {
	c, err := daemon.Dial(ctx, s.Socket)
	if err != nil {
		return nil, fmt.Errorf("connecting to the daemon at %s (--daemon-socket, or $GUIX_DAEMON_SOCKET): %w", s.Socket, err)
	}
	return c, nil
}

// query runs op on the shared connection, dialing it first if needed. A connection that failed
// other than by the daemon's own refusal is closed by the daemon package; it is dropped here so
// the next query dials afresh.
func (s *DaemonStore) query(ctx context.Context, op func(c *daemon.Conn) error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn == nil {
		c, err := s.dial(ctx)
		if err != nil {
			return err
		}
		s.conn = c
	}
	err := op(s.conn)
	var de *daemon.Error
	if err != nil && !errors.As(err, &de) && !errors.Is(err, daemon.ErrNotValid) {
		s.conn.Close()
		s.conn = nil
	}
	return err
}

// MaxClosure bounds the paths of a submitted closure (a distribution's .drv closure is some
// ten thousand).
const MaxClosure = 1_000_000

// Closure implements Store.
func (s *DaemonStore) Closure(ctx context.Context, paths []string) ([]daemon.PathInfo, error) {
	var infos []daemon.PathInfo
	err := s.query(ctx, func(c *daemon.Conn) (err error) {
		infos, err = c.Closure(ctx, paths, MaxClosure)
		if errors.Is(err, daemon.ErrNotValid) {
			// Nix's answer does not say which path: name the one the user gave.
			for _, p := range paths {
				if ok, verr := c.IsValidPath(ctx, p); verr == nil && !ok {
					return fmt.Errorf("%s: %w", p, err)
				}
			}
		}
		return err
	})
	return infos, err
}

// ReadFile implements Store: the daemon streams the item's NAR, which must hold one regular file.
func (s *DaemonStore) ReadFile(ctx context.Context, path string) ([]byte, error) {
	var data []byte
	err := s.query(ctx, func(c *daemon.Conn) error {
		r, err := c.Nar(ctx, path)
		if err != nil {
			return err
		}
		defer r.Close()
		if data, err = nar.ReadSingleFile(r, MaxDrvSize); err != nil {
			return err
		}
		// The NAR's closing tokens (and the daemon's checks of NarHash and NarSize) are still
		// on the wire: read them, or the connection is spoilt for the next query.
		_, err = io.Copy(io.Discard, r)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("reading %s through the daemon: %w", path, err)
	}
	return data, nil
}

// narPoolIdle is how many idle nar connections a DaemonStore keeps: more than Options.Uploads'
// default, so parallel uploads reuse them.
const narPoolIdle = 8

// OpenNar implements Store on a pooled connection of its own (a new connection costs the daemon
// a fork, a hundred times a small item's nar). Its one caller, the publisher, checks the NarHash
// of what it uploads, so the stream is not hashed twice.
func (s *DaemonStore) OpenNar(ctx context.Context, path string) (io.ReadCloser, error) {
	s.mu.Lock()
	if s.nars == nil {
		s.nars = daemon.NewPool(s.Socket, narPoolIdle)
	}
	nars := s.nars
	s.mu.Unlock()
	r, err := nars.OpenNar(ctx, path, daemon.CallerHashes())
	if err != nil {
		return nil, fmt.Errorf("streaming the NAR of %s from the daemon at %s: %w", path, s.Socket, err)
	}
	return r, nil
}
