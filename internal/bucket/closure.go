package bucket

import (
	"context"
	"errors"
	"fmt"
	"path"
	"sync"
)

// DefaultClosureParallelism is how many items PublishClosure publishes at
// once when not told: one zstd stream keeps about one core busy, so two
// items use both cores of a small node while the upload overlaps.
const DefaultClosureParallelism = 2

// PublishClosure publishes items (typically a closure), up to parallel at
// a time (0 means DefaultClosureParallelism). Items start in dependency
// order (after the items of the batch that their References name), and an
// item's narinfo is written only once the narinfos of those references
// are: a client that finds a narinfo finds its whole closure, as when the
// items are published one by one in that order. Results are in the order
// of items. An item fails when a reference of the batch failed (its nar
// may be uploaded, never its narinfo); the errors are joined.
func (p *Publisher) PublishClosure(ctx context.Context, items []StoreItem, parallel int) ([]Result, error) {
	if parallel <= 0 {
		parallel = DefaultClosureParallelism
	}
	order, deps, err := closureOrder(items)
	if err != nil {
		return nil, err
	}
	results := make([]Result, len(items))
	errs := make([]error, len(items))
	done := make([]chan struct{}, len(items))
	for i := range done {
		done[i] = make(chan struct{})
	}
	sem := make(chan struct{}, parallel)
	var wg sync.WaitGroup
	for _, i := range order {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			errs[i] = fmt.Errorf("publish %s: %w", items[i].StorePath, ctx.Err())
			close(done[i])
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			defer close(done[i])
			// Deps started earlier and never wait for a later item, so
			// waiting here cannot deadlock the bounded pool.
			waitRefs := func(ctx context.Context) error {
				for _, d := range deps[i] {
					select {
					case <-done[d]:
					case <-ctx.Done():
						return ctx.Err()
					}
					if errs[d] != nil {
						return fmt.Errorf("not writing the narinfo: its reference %s failed to publish", items[d].StorePath)
					}
				}
				return nil
			}
			results[i], errs[i] = p.publish(ctx, items[i], waitRefs)
		}()
	}
	wg.Wait()
	return results, errors.Join(errs...)
}

// closureOrder sorts items so that each comes after the items its
// References name (Kahn's algorithm, stable in the given order), and
// returns each item's references within the batch.
func closureOrder(items []StoreItem) ([]int, [][]int, error) {
	index := map[string]int{}
	for i, it := range items {
		base := path.Base(it.StorePath)
		if j, dup := index[base]; dup {
			return nil, nil, fmt.Errorf("publish closure: %s is given twice (items %d and %d)", it.StorePath, j, i)
		}
		index[base] = i
	}
	deps := make([][]int, len(items))
	users := make([][]int, len(items))
	pending := make([]int, len(items))
	for i, it := range items {
		seen := map[int]bool{}
		for _, r := range it.References {
			if j, ok := index[path.Base(r)]; ok && j != i && !seen[j] {
				seen[j] = true
				deps[i] = append(deps[i], j)
				users[j] = append(users[j], i)
				pending[i]++
			}
		}
	}
	var order, ready []int
	for i := range items {
		if pending[i] == 0 {
			ready = append(ready, i)
		}
	}
	for len(ready) > 0 {
		i := ready[0]
		ready = ready[1:]
		order = append(order, i)
		for _, u := range users[i] {
			if pending[u]--; pending[u] == 0 {
				ready = append(ready, u)
			}
		}
	}
	if len(order) != len(items) {
		for i := range items {
			if pending[i] > 0 {
				return nil, nil, fmt.Errorf("publish closure: the references of %s form a cycle with other items; a store closure has none besides self-references", items[i].StorePath)
			}
		}
	}
	return order, deps, nil
}
