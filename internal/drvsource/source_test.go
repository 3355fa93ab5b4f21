package drvsource

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/guixfarm/guix-farm/internal/derivation"
	"github.com/guixfarm/guix-farm/internal/storepath"
)

const (
	demoDrv = "/gnu/store/5mr3q377sm4i7kmy0s0gai2dxxq0lkhh-demo.drv"
	depDrv  = "/gnu/store/yqwr9cvqpqvsw7cn7nlmvp5f6d3gsmm3-dep.drv"
	absent  = "/gnu/store/00000000000000000000000000000000-absent.drv"
)

// storeDir copies the real .drv files of internal/derivation/testdata into a
// temp dir under their store base names, like a store directory.
func storeDir(t *testing.T) string {
	t.Helper()
	const td = "../derivation/testdata"
	manifest, err := os.ReadFile(filepath.Join(td, "paths.txt"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, line := range strings.Split(strings.TrimSpace(string(manifest)), "\n") {
		f := strings.Fields(line)
		b, err := os.ReadFile(filepath.Join(td, f[0]+".drv"))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, filepath.Base(f[1])), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestDirRead(t *testing.T) {
	root := storeDir(t)
	big := "/gnu/store/11111111111111111111111111111111-big.drv"
	if err := os.WriteFile(filepath.Join(root, filepath.Base(big)), make([]byte, 301), 0o644); err != nil {
		t.Fatal(err)
	}
	src := &Dir{Root: root, Store: storepath.DefaultDir, MaxSize: 300}
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	cases := map[string]struct {
		ctx     context.Context
		path    string
		wantErr error
		want    string // prefix of the contents
	}{
		"found":        {path: demoDrv, want: `Derive([("out","/gnu/store/b0hs05w9rzk5r6zrg7dmhjn2950lz9yz-demo"`},
		"absent":       {path: absent, wantErr: ErrNotFound},
		"not a drv":    {path: "/gnu/store/5mr3q377sm4i7kmy0s0gai2dxxq0lkhh-demo", wantErr: ErrInvalid},
		"other store":  {path: "/nix/store/5mr3q377sm4i7kmy0s0gai2dxxq0lkhh-demo.drv", wantErr: ErrInvalid},
		"traversal":    {path: "/gnu/store/../../etc/passwd.drv", wantErr: ErrInvalid},
		"too large":    {path: big, wantErr: ErrInvalid},
		"cancelled":    {ctx: cancelled, path: demoDrv, wantErr: context.Canceled},
		"empty string": {path: "", wantErr: ErrInvalid},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			ctx := tc.ctx
			if ctx == nil {
				ctx = context.Background()
			}
			b, err := src.Read(ctx, tc.path)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("Read(%q) error = %v, want %v", tc.path, err, tc.wantErr)
				}
				if IsTransient(err) {
					t.Errorf("IsTransient(%v) = true", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(string(b), tc.want) {
				t.Errorf("Read = %.80q", b)
			}
		})
	}
	if !IsTransient(errors.New("connection reset")) || IsTransient(nil) {
		t.Error("IsTransient misclassifies")
	}
}

// counting wraps a Source, counting reads and optionally blocking them.
type counting struct {
	src   Source
	reads atomic.Int64
	gate  chan struct{} // if non-nil, each Read waits for it to close
	fail  atomic.Int64  // fail this many reads with a transient error
}

func (c *counting) Read(ctx context.Context, p string) ([]byte, error) {
	c.reads.Add(1)
	if c.gate != nil {
		select {
		case <-c.gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if c.fail.Add(-1) >= 0 {
		return nil, errors.New("transient failure")
	}
	return c.src.Read(ctx, p)
}

func TestFactsCacheSingleflight(t *testing.T) {
	src := &counting{src: NewDir(storeDir(t), storepath.DefaultDir), gate: make(chan struct{})}
	fc := NewFactsCache(src, 10)
	const n = 1000
	var wg sync.WaitGroup
	results := make([]derivation.Facts, n)
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() { results[i], errs[i] = fc.Get(context.Background(), depDrv) })
	}
	time.Sleep(50 * time.Millisecond) // let the Gets pile up behind the gate
	close(src.gate)
	wg.Wait()
	if got := src.reads.Load(); got != 1 {
		t.Errorf("%d Gets caused %d reads, want 1", n, got)
	}
	for i := range n {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		if diff := cmp.Diff(results[0], results[i]); diff != "" {
			t.Fatal(diff)
		}
	}
	if results[0].Name != "dep" || len(results[0].Outputs) != 2 || len(results[0].InputDrvs) != 2 {
		t.Errorf("facts = %+v", results[0])
	}
	if st := fc.Stats(); st.Misses != 1 || st.Entries != 1 || st.Hits+st.Misses > n {
		t.Errorf("stats = %+v", st)
	}
}

func TestFactsCacheErrors(t *testing.T) {
	root := storeDir(t)
	garbage := "/gnu/store/22222222222222222222222222222222-garbage.drv"
	if err := os.WriteFile(filepath.Join(root, filepath.Base(garbage)), []byte("Derive(nope"), 0o644); err != nil {
		t.Fatal(err)
	}
	src := &counting{src: NewDir(root, storepath.DefaultDir)}
	fc := NewFactsCache(src, 10)
	ctx := context.Background()

	_, err := fc.Get(ctx, garbage)
	var pe *derivation.ParseError
	if !errors.Is(err, ErrInvalid) || !errors.As(err, &pe) {
		t.Errorf("garbage: err = %v, want ErrInvalid wrapping a ParseError", err)
	}
	if _, err := fc.Get(ctx, absent); !errors.Is(err, ErrNotFound) {
		t.Errorf("absent: err = %v, want ErrNotFound", err)
	}
	// A transient error is returned, not cached: the next Get succeeds.
	src.fail.Store(1)
	if _, err := fc.Get(ctx, demoDrv); err == nil || !IsTransient(err) {
		t.Fatalf("want a transient error, got %v", err)
	}
	if _, err := fc.Get(ctx, demoDrv); err != nil {
		t.Fatalf("retry: %v", err)
	}
}

func TestLeaderCancelled(t *testing.T) {
	src := &counting{src: NewDir(storeDir(t), storepath.DefaultDir), gate: make(chan struct{})}
	fc := NewFactsCache(src, 10)
	leaderCtx, cancel := context.WithCancel(context.Background())
	leaderErr := make(chan error, 1)
	go func() { _, err := fc.Get(leaderCtx, demoDrv); leaderErr <- err }()
	for src.reads.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	waiter := make(chan error, 1)
	go func() { _, err := fc.Get(context.Background(), demoDrv); waiter <- err }()
	time.Sleep(20 * time.Millisecond)
	cancel()
	if err := <-leaderErr; !errors.Is(err, context.Canceled) {
		t.Fatalf("leader err = %v", err)
	}
	close(src.gate)
	if err := <-waiter; err != nil {
		t.Fatalf("waiter should take over after the leader's cancellation, got %v", err)
	}
	// A waiter whose own context ends stops waiting.
	blocked := &counting{src: src, gate: make(chan struct{})}
	fc2 := NewFactsCache(blocked, 10)
	go func() { _, _ = fc2.Get(context.Background(), depDrv) }()
	ctx, cancel2 := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel2()
	if _, err := fc2.Get(ctx, depDrv); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("waiter err = %v, want DeadlineExceeded", err)
	}
	close(blocked.gate)
}

func TestCachedLRU(t *testing.T) {
	src := &counting{src: NewDir(storeDir(t), storepath.DefaultDir)}
	c := NewCached(src, 1)
	ctx := context.Background()
	read := func(p string) {
		t.Helper()
		if _, err := c.Read(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	read(demoDrv)
	read(demoDrv)
	if got := src.reads.Load(); got != 1 {
		t.Fatalf("reads = %d after a repeat, want 1", got)
	}
	read(depDrv) // evicts demo
	read(demoDrv)
	if got := src.reads.Load(); got != 3 {
		t.Fatalf("reads = %d, want 3 (demo evicted by dep)", got)
	}
	if _, err := c.Read(ctx, absent); !errors.Is(err, ErrNotFound) {
		t.Fatalf("absent through cache: %v", err)
	}
}

func BenchmarkFactsCacheHit(b *testing.B) {
	root := b.TempDir()
	data, err := os.ReadFile("../derivation/testdata/dep.drv")
	if err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, filepath.Base(depDrv)), data, 0o644); err != nil {
		b.Fatal(err)
	}
	fc := NewFactsCache(NewDir(root, storepath.DefaultDir), 100)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := fc.Get(ctx, depDrv); err != nil {
			b.Fatal(err)
		}
	}
}
