package drvsource

import (
	"context"
	"fmt"
	"sync/atomic"

	"github.com/guixfarm/guix-farm/internal/derivation"
	"github.com/guixfarm/guix-farm/internal/lru"
)

// NewCached wraps src with a bounded LRU cache of file contents keyed by drv
// path. A .drv is content-addressed, so entries never go stale; errors are
// not cached. Concurrent reads of one path share a single src.Read.
// Callers must not modify the returned bytes.
func NewCached(src Source, maxEntries int) Source {
	return &cached{src: src, lru: lru.New[[]byte](maxEntries)}
}

type cached struct {
	src    Source
	lru    *lru.Cache[[]byte]
	flight lru.Flight[[]byte]
}

func (c *cached) Read(ctx context.Context, drvPath string) ([]byte, error) {
	if b, ok := c.lru.Get(drvPath); ok {
		return b, nil
	}
	return c.flight.Do(ctx, drvPath, func() ([]byte, error) {
		if b, ok := c.lru.Get(drvPath); ok { // filled while we queued
			return b, nil
		}
		b, err := c.src.Read(ctx, drvPath)
		if err != nil {
			return nil, err
		}
		c.lru.Add(drvPath, b)
		return b, nil
	})
}

// FactsCache is a bounded LRU of parsed derivation Facts keyed by drv path.
// Concurrent Gets of one path read and parse it once. Safe for concurrent use.
type FactsCache struct {
	src     Source
	maxSize int
	lru     *lru.Cache[derivation.Facts]
	flight  lru.Flight[derivation.Facts]
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
	return &FactsCache{src: src, maxSize: derivation.DefaultMaxSize, lru: lru.New[derivation.Facts](maxEntries)}
}

// Get returns the Facts of drvPath, reading and parsing it on a miss. A file
// that does not parse gives an error wrapping ErrInvalid and the
// *derivation.ParseError. The returned slices are shared: do not modify them.
func (c *FactsCache) Get(ctx context.Context, drvPath string) (derivation.Facts, error) {
	if f, ok := c.lru.Get(drvPath); ok {
		c.hits.Add(1)
		return f, nil
	}
	return c.flight.Do(ctx, drvPath, func() (derivation.Facts, error) {
		if f, ok := c.lru.Get(drvPath); ok {
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
		c.lru.Add(drvPath, f)
		return f, nil
	})
}

// Stats returns the lookup counters and the current number of entries.
func (c *FactsCache) Stats() CacheStats {
	return CacheStats{Hits: c.hits.Load(), Misses: c.misses.Load(), Entries: c.lru.Len()}
}
