package drvsource

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/guixfarm/guix-farm/internal/derivation"
)

// NewCached wraps src with a bounded LRU cache of file contents keyed by drv
// path. A .drv is content-addressed, so entries never go stale; errors are
// not cached. Concurrent reads of one path share a single src.Read.
// Callers must not modify the returned bytes.
func NewCached(src Source, maxEntries int) Source {
	return &cached{src: src, lru: newLRU[[]byte](maxEntries)}
}

type cached struct {
	src    Source
	lru    *lru[[]byte]
	flight flight[[]byte]
}

func (c *cached) Read(ctx context.Context, drvPath string) ([]byte, error) {
	if b, ok := c.lru.get(drvPath); ok {
		return b, nil
	}
	return c.flight.do(ctx, drvPath, func() ([]byte, error) {
		if b, ok := c.lru.get(drvPath); ok { // filled while we queued
			return b, nil
		}
		b, err := c.src.Read(ctx, drvPath)
		if err != nil {
			return nil, err
		}
		c.lru.add(drvPath, b)
		return b, nil
	})
}

// FactsCache is a bounded LRU of parsed derivation Facts keyed by drv path.
// Concurrent Gets of one path read and parse it once. Safe for concurrent use.
type FactsCache struct {
	src     Source
	maxSize int
	lru     *lru[derivation.Facts]
	flight  flight[derivation.Facts]
	hits    atomic.Uint64
	misses  atomic.Uint64
}

// CacheStats counts FactsCache lookups, for metrics.
type CacheStats struct {
	Hits    uint64 // answered from the cache
	Misses  uint64 // read and parsed (once per flight)
	Entries int
}

// NewFactsCache returns a FactsCache holding at most maxEntries Facts read
// from src (which needs no cache of its own).
func NewFactsCache(src Source, maxEntries int) *FactsCache {
	return &FactsCache{src: src, maxSize: derivation.DefaultMaxSize, lru: newLRU[derivation.Facts](maxEntries)}
}

// Get returns the Facts of drvPath, reading and parsing it on a miss. A file
// that does not parse gives an error wrapping ErrInvalid and the
// *derivation.ParseError. The returned slices are shared: do not modify them.
func (c *FactsCache) Get(ctx context.Context, drvPath string) (derivation.Facts, error) {
	if f, ok := c.lru.get(drvPath); ok {
		c.hits.Add(1)
		return f, nil
	}
	return c.flight.do(ctx, drvPath, func() (derivation.Facts, error) {
		if f, ok := c.lru.get(drvPath); ok {
			c.hits.Add(1)
			return f, nil
		}
		c.misses.Add(1)
		b, err := c.src.Read(ctx, drvPath)
		if err != nil {
			return derivation.Facts{}, err
		}
		d, err := derivation.ParseLimit(b, c.maxSize)
		if err != nil {
			return derivation.Facts{}, fmt.Errorf("derivation %s: %w: %w", drvPath, ErrInvalid, err)
		}
		f := derivation.FactsOf(d, drvPath)
		c.lru.add(drvPath, f)
		return f, nil
	})
}

// Stats returns the lookup counters and the current number of entries.
func (c *FactsCache) Stats() CacheStats {
	return CacheStats{Hits: c.hits.Load(), Misses: c.misses.Load(), Entries: c.lru.len()}
}

// lru is a mutex-guarded least-recently-used map of bounded length.
type lru[V any] struct {
	mu    sync.Mutex
	max   int
	order *list.List // front = most recent; values are *entry[V]
	items map[string]*list.Element
}

type entry[V any] struct {
	key string
	val V
}

func newLRU[V any](maxEntries int) *lru[V] {
	if maxEntries < 1 {
		maxEntries = 1
	}
	return &lru[V]{max: maxEntries, order: list.New(), items: map[string]*list.Element{}}
}

func (l *lru[V]) get(key string) (V, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if e, ok := l.items[key]; ok {
		l.order.MoveToFront(e)
		return e.Value.(*entry[V]).val, true
	}
	var zero V
	return zero, false
}

func (l *lru[V]) add(key string, val V) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if e, ok := l.items[key]; ok {
		e.Value.(*entry[V]).val = val
		l.order.MoveToFront(e)
		return
	}
	l.items[key] = l.order.PushFront(&entry[V]{key: key, val: val})
	for l.order.Len() > l.max {
		old := l.order.Back()
		l.order.Remove(old)
		delete(l.items, old.Value.(*entry[V]).key)
	}
}

func (l *lru[V]) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.order.Len()
}

// flight collapses concurrent calls for one key into one. Unlike
// x/sync/singleflight it honours each waiter's context: a waiter stops
// waiting when its own context ends, and if the leader's context was
// cancelled, a waiter whose context is still live takes over.
type flight[V any] struct {
	mu    sync.Mutex
	calls map[string]*call[V]
}

type call[V any] struct {
	done chan struct{}
	val  V
	err  error
}

func (g *flight[V]) do(ctx context.Context, key string, fn func() (V, error)) (V, error) {
	for {
		g.mu.Lock()
		if g.calls == nil {
			g.calls = map[string]*call[V]{}
		}
		if c, ok := g.calls[key]; ok {
			g.mu.Unlock()
			select {
			case <-c.done:
				if ctx.Err() == nil && (errors.Is(c.err, context.Canceled) || errors.Is(c.err, context.DeadlineExceeded)) {
					continue // the leader gave up, not us: try again
				}
				return c.val, c.err
			case <-ctx.Done():
				var zero V
				return zero, ctx.Err()
			}
		}
		// The error stands if fn panics, so waiters do not see a zero success.
		c := &call[V]{done: make(chan struct{}), err: fmt.Errorf("read of %s panicked", key)}
		g.calls[key] = c
		g.mu.Unlock()
		func() {
			defer func() {
				g.mu.Lock()
				delete(g.calls, key)
				g.mu.Unlock()
				close(c.done)
			}()
			c.val, c.err = fn()
		}()
		return c.val, c.err
	}
}
