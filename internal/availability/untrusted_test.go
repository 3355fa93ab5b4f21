package availability

import (
	"context"
	"fmt"
	"sync"
	"testing"
)

// untrustedStore answers like the bucket reader for outputs whose narinfo no trusted key signed.
type untrustedStore struct {
	*fakeStore
	bad map[string]bool
}

func (s untrustedStore) Present(ctx context.Context, p string) (bool, error) {
	if s.bad[p] {
		return false, fmt.Errorf("the narinfo of %s is not trusted: a bad signature: %w", p, ErrUntrusted)
	}
	return s.fakeStore.Present(ctx, p)
}

// TestUntrustedOutputsAreAbsent: an output whose narinfo is there but not trusted counts as
// absent (never available, and no lookup error holding things back), and OnUntrusted hears of it.
func TestUntrustedOutputsAreAbsent(t *testing.T) {
	fs := newStore()
	fs.set(true, out(1), lib(1), out(2), lib(2))
	store := untrustedStore{fakeStore: fs, bad: map[string]bool{lib(2): true}}
	var mu sync.Mutex
	var told []string
	w := newOwner(t, Options{Store: store, Outputs: outputsOf, OnUntrusted: func(drv, path string, err error) {
		mu.Lock()
		defer mu.Unlock()
		told = append(told, drv+" "+path)
	}})
	ctx := context.Background()
	if ok, err := w.CheckFresh(ctx, drv(1)); !ok || err != nil {
		t.Errorf("trusted outputs: %v, %v; want available", ok, err)
	}
	if ok, err := w.CheckFresh(ctx, drv(2)); ok || err != nil {
		t.Errorf("an untrusted output: %v, %v; want absent, no error", ok, err)
	}
	if ok, known := w.Peek(drv(2)); ok || !known {
		t.Errorf("Peek after the lookup: available %v known %v; want known absent", ok, known)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(told) != 1 || told[0] != drv(2)+" "+lib(2) {
		t.Errorf("OnUntrusted heard %q; want %s's %s", told, drv(2), lib(2))
	}
}
