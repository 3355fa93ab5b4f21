package daemon

import (
	"context"
	"fmt"
	"io"
)

// Closure returns paths and everything they refer to, references first (each path after all of
// its references but itself), as the daemon reports them. It fails past max paths.
func (c *Conn) Closure(ctx context.Context, paths []string, max int) ([]PathInfo, error) {
	seen := map[string]bool{}
	var order []PathInfo
	var visit func(p string) error
	visit = func(p string) error {
		if seen[p] {
			return nil
		}
		if len(seen) >= max {
			return fmt.Errorf("closure of %v: more than %d paths", paths, max)
		}
		seen[p] = true
		info, err := c.QueryPathInfo(ctx, p)
		if err != nil {
			return err
		}
		for _, r := range info.References {
			if r != p {
				if err := visit(r); err != nil {
					return err
				}
			}
		}
		order = append(order, *info)
		return nil
	}
	for _, p := range paths {
		if err := visit(p); err != nil {
			return nil, err
		}
	}
	return order, nil
}

// OpenNar streams path's NAR on a connection of its own to the daemon at socket, closed with the
// stream: concurrent streams (parallel uploads) each need one, since a NAR keeps its Conn busy.
func OpenNar(ctx context.Context, socket, path string) (io.ReadCloser, error) {
	conn, err := Dial(ctx, socket)
	if err != nil {
		return nil, fmt.Errorf("connecting to the daemon for the nar of %s: %w", path, err)
	}
	r, err := conn.Nar(ctx, path)
	if err != nil {
		conn.Close()
		return nil, err
	}
	return narConn{r, conn}, nil
}

type narConn struct {
	io.ReadCloser
	conn *Conn
}

func (s narConn) Close() error {
	err := s.ReadCloser.Close()
	if cerr := s.conn.Close(); err == nil {
		err = cerr
	}
	return err
}
