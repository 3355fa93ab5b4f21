package guixpeer

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

// Listen serves p on a Unix socket in a fresh temporary directory until
// the test ends, each connection concurrently (as guix-daemon forks one
// worker per connection), and returns the socket's path. Serve errors are
// logged with t.Logf. The directory is made with os.MkdirTemp rather than
// t.TempDir because a Unix socket path must stay under 108 bytes.
func Listen(t testing.TB, p *Peer) (socket string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "guixpeer")
	if err != nil {
		t.Fatalf("guixpeer: socket directory: %v", err)
	}
	socket = filepath.Join(dir, "socket")
	l, err := net.Listen("unix", socket)
	if err != nil {
		os.RemoveAll(dir)
		t.Fatalf("guixpeer: listening on %s: %v", socket, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			nc, err := l.Accept()
			if err != nil {
				return // closed at cleanup
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := p.Serve(ctx, nc); err != nil && !errors.Is(err, context.Canceled) {
					t.Logf("guixpeer: %v", err)
				}
			}()
		}
	}()
	t.Cleanup(func() {
		cancel()
		l.Close()
		wg.Wait()
		os.RemoveAll(dir)
	})
	return socket
}
