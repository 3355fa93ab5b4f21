// Package lru holds two small concurrency helpers shared by the
// controller's caches: Cache, a mutex-guarded least-recently-used map of
// bounded length, and Flight, which collapses concurrent calls for one key
// into one while honouring each caller's context.
package lru

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"sync"
)

// Cache is a least-recently-used map from string keys to values of type V,
// holding at most a fixed number of entries. Safe for concurrent use; the
// zero value is not usable, make one with New or NewWithEvict.
type Cache[V any] struct {
	mu      sync.Mutex
	max     int
	order   *list.List // front = most recent; values are *entry[V]
	items   map[string]*list.Element
	onEvict func(key string, val V)
}

type entry[V any] struct {
	key string
	val V
}

// New returns a Cache holding at most maxEntries entries (at least 1).
func New[V any](maxEntries int) *Cache[V] {
	return NewWithEvict[V](maxEntries, nil)
}

// NewWithEvict is New with a callback told of every entry Add pushes out to
// stay within the bound (not of entries replaced by Add or dropped by
// Remove: their caller already knows). The callback runs on the goroutine
// that called Add, after the Cache's lock is released, so it may use the
// Cache; an owner that must keep a side index consistent with the Cache
// calls Add under its own lock and so runs the callback under it too.
func NewWithEvict[V any](maxEntries int, onEvict func(key string, val V)) *Cache[V] {
	if maxEntries < 1 {
		maxEntries = 1
	}
	return &Cache[V]{max: maxEntries, order: list.New(), items: map[string]*list.Element{}, onEvict: onEvict}
}

// Get returns the value of key and marks it most recently used.
func (c *Cache[V]) Get(key string) (V, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.items[key]; ok {
		c.order.MoveToFront(e)
		return e.Value.(*entry[V]).val, true
	}
	var zero V
	return zero, false
}

// Add sets the value of key, marks it most recently used and, when the
// Cache is over its bound, evicts the least recently used entry.
func (c *Cache[V]) Add(key string, val V) {
	var evicted *entry[V]
	c.mu.Lock()
	if e, ok := c.items[key]; ok {
		e.Value.(*entry[V]).val = val
		c.order.MoveToFront(e)
		c.mu.Unlock()
		return
	}
	c.items[key] = c.order.PushFront(&entry[V]{key: key, val: val})
	// The bound never changes, so one Add evicts at most one entry.
	if c.order.Len() > c.max {
		old := c.order.Back()
		c.order.Remove(old)
		evicted = old.Value.(*entry[V])
		delete(c.items, evicted.key)
	}
	c.mu.Unlock()
	if evicted != nil && c.onEvict != nil {
		c.onEvict(evicted.key, evicted.val)
	}
}

// Remove drops key, reporting whether it was there. The eviction callback
// is not called.
func (c *Cache[V]) Remove(key string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.items[key]
	if ok {
		c.order.Remove(e)
		delete(c.items, key)
	}
	return ok
}

// Len returns the number of entries.
func (c *Cache[V]) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.order.Len()
}

// Flight collapses concurrent calls for one key into one. Unlike
// x/sync/singleflight it honours each waiter's context: a waiter stops
// waiting when its own context ends, and if the leader's call ended with
// its context's cancellation, a waiter whose context is still live takes
// over. The zero value is ready to use; a Flight must not be copied.
type Flight[V any] struct {
	mu    sync.Mutex
	calls map[string]*call[V]
}

type call[V any] struct {
	done chan struct{}
	val  V
	err  error
}

// Do runs fn for key unless a call for key is already running, in which
// case it waits for that call and returns its result. fn should use the
// ctx given to Do (it is the leader's). Results are not remembered once the
// call ends: caching is the caller's business (typically fn checks a Cache
// again first, in case it was filled while the caller queued).
func (g *Flight[V]) Do(ctx context.Context, key string, fn func() (V, error)) (V, error) {
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
		c := &call[V]{done: make(chan struct{}), err: fmt.Errorf("call for %s panicked", key)}
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
