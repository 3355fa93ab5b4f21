package lru

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Moved from internal/drvsource (TestLRUBound).
func TestBound(t *testing.T) {
	l := New[int](3)
	for i := range 10 {
		l.Add(fmt.Sprint(i), i)
	}
	l.Get("7") // 7 becomes most recent
	l.Add("10", 10)
	if l.Len() != 3 {
		t.Fatalf("len = %d", l.Len())
	}
	for k, want := range map[string]bool{"7": true, "9": true, "10": true, "8": false} {
		if _, ok := l.Get(k); ok != want {
			t.Errorf("Get(%s) present = %v, want %v", k, ok, want)
		}
	}
}

func TestEvictionOrder(t *testing.T) {
	var evicted []string
	l := NewWithEvict(3, func(k string, v int) {
		if fmt.Sprint(v) != k {
			t.Errorf("evicted %s with value %d", k, v)
		}
		evicted = append(evicted, k)
	})
	for i := range 3 {
		l.Add(fmt.Sprint(i), i) // recency, oldest first: 0 1 2
	}
	l.Get("0")    // 1 2 0
	l.Add("1", 1) // replaced, not evicted: 2 0 1
	l.Add("3", 3) // evicts 2
	l.Add("4", 4) // evicts 0
	l.Get("1")    // 3 4 1
	l.Add("5", 5) // evicts 3
	l.Remove("4") // no callback
	l.Add("6", 6) // 1 5 6: room, nothing evicted
	l.Add("7", 7) // evicts 1
	if want := []string{"2", "0", "3", "1"}; !slices.Equal(evicted, want) {
		t.Errorf("evicted %v, want %v", evicted, want)
	}
	if l.Len() != 3 {
		t.Errorf("len = %d, want 3", l.Len())
	}
}

func TestRemove(t *testing.T) {
	l := New[string](2)
	l.Add("a", "A")
	l.Add("b", "B")
	if !l.Remove("a") {
		t.Error("Remove(a) = false for a present key")
	}
	if l.Remove("a") {
		t.Error("Remove(a) = true twice")
	}
	if _, ok := l.Get("a"); ok {
		t.Error("a still there")
	}
	if l.Len() != 1 {
		t.Errorf("len = %d, want 1", l.Len())
	}
	// The freed slot is used: adding c evicts nothing.
	l.Add("c", "C")
	if v, ok := l.Get("b"); !ok || v != "B" {
		t.Errorf("Get(b) = %q, %v", v, ok)
	}
	if l.Len() != 2 {
		t.Errorf("len = %d, want 2", l.Len())
	}
}

// The eviction callback runs without the Cache's lock: it may use the Cache.
func TestEvictCallbackMayUseCache(t *testing.T) {
	var l *Cache[int]
	l = NewWithEvict(1, func(k string, v int) { l.Len(); l.Get(k) })
	l.Add("a", 1)
	done := make(chan struct{})
	go func() { l.Add("b", 2); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Add deadlocked in the eviction callback")
	}
}

func TestFlightCollapses(t *testing.T) {
	var g Flight[int]
	var calls atomic.Int32
	gate := make(chan struct{})
	var wg sync.WaitGroup
	const n = 100
	res := make([]int, n)
	for i := range n {
		wg.Go(func() {
			res[i], _ = g.Do(context.Background(), "k", func() (int, error) {
				calls.Add(1)
				<-gate
				return 42, nil
			})
		})
	}
	time.Sleep(20 * time.Millisecond)
	close(gate)
	wg.Wait()
	if c := calls.Load(); c < 1 || c > n {
		t.Fatalf("calls = %d", c)
	}
	for i, v := range res {
		if v != 42 {
			t.Fatalf("result %d = %d", i, v)
		}
	}
	// Once a call ended, the next Do runs fn again.
	v, err := g.Do(context.Background(), "k", func() (int, error) { return 7, nil })
	if v != 7 || err != nil {
		t.Errorf("after the flight: %d, %v", v, err)
	}
}

func TestFlightLeaderCancelled(t *testing.T) {
	var g Flight[int]
	leaderCtx, cancel := context.WithCancel(context.Background())
	started := make(chan struct{})
	leader := make(chan error, 1)
	go func() {
		_, err := g.Do(leaderCtx, "k", func() (int, error) {
			close(started)
			<-leaderCtx.Done()
			return 0, leaderCtx.Err()
		})
		leader <- err
	}()
	<-started
	waiter := make(chan int, 1)
	go func() {
		v, _ := g.Do(context.Background(), "k", func() (int, error) { return 1, nil })
		waiter <- v
	}()
	time.Sleep(10 * time.Millisecond)
	cancel()
	if err := <-leader; !errors.Is(err, context.Canceled) {
		t.Fatalf("leader err = %v", err)
	}
	if v := <-waiter; v != 1 {
		t.Errorf("waiter got %d, want 1 (it takes over)", v)
	}
}
