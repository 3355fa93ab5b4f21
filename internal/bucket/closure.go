package bucket

import (
	"context"
	"errors"
	"fmt"
	"path"
	"slices"
	"sync"
)

// DefaultClosureParallelism is how many items PublishClosure publishes at
// once when not told: one zstd stream keeps about one core busy, so two
// items use both cores of a small node while the upload overlaps.
const DefaultClosureParallelism = 2

// smallItemSize is the NarSize under which PublishClosure counts an item as small, and
// smallItemsPerSlot how many small items it publishes at once per slot of its parallelism.
const (
	smallItemSize     = 1 << 20
	smallItemsPerSlot = 4
)

// PublishClosure publishes items (typically a closure), up to parallel at
// a time (0 means DefaultClosureParallelism), and as many again times
// smallItemsPerSlot items whose NarSize is known and small. Before anything is uploaded,
// every item's references are checked: each must be in the batch or have
// a narinfo in the bucket, or the whole batch is refused
// (ErrMissingReference, naming each item and reference). Items start in
// dependency order (after the items of the batch that their References
// name), and an item's narinfo is written only once the narinfos of those
// references are: a client that finds a narinfo finds its whole closure,
// as when the items are published one by one in that order. Results are
// in the order of items. An item fails when a reference of the batch
// failed (its nar may be uploaded, never its narinfo); the errors are
// joined.
func (p *Publisher) PublishClosure(ctx context.Context, items []StoreItem, parallel int) ([]Result, error) {
	if parallel <= 0 {
		parallel = DefaultClosureParallelism
	}
	order, deps, index, err := closureOrder(items)
	if err != nil {
		return nil, err
	}
	refs := p.newRefChecker()
	if err := p.checkClosureRefs(ctx, items, index, refs); err != nil {
		return nil, err
	}
	position := make([]int, len(items)) // in order
	for k, i := range order {
		position[i] = k
	}
	results := make([]Result, len(items))
	errs := make([]error, len(items))
	done := make([]chan struct{}, len(items))
	for i := range done {
		done[i] = make(chan struct{})
	}
	// wait waits for item d and fails if it failed. Waiting only for items
	// that started earlier (deps, or earlier positions) cannot deadlock the
	// bounded pool: those hold a slot or are done, and never wait for a
	// later item.
	wait := func(ctx context.Context, d int) error {
		select {
		case <-done[d]:
		case <-ctx.Done():
			return ctx.Err()
		}
		if errs[d] != nil {
			return fmt.Errorf("not writing the narinfo: its reference %s failed to publish", items[d].StorePath)
		}
		return nil
	}
	// Small items are latency-bound (a few round trips to the bucket, little to compress): they
	// take slots of a wider pool, so a closure of many small items is not paced by round trips,
	// while large ones stay at parallel, what the cores can compress.
	heavy, light := make(chan struct{}, parallel), make(chan struct{}, parallel*smallItemsPerSlot)
	var wg sync.WaitGroup
	for _, i := range order {
		sem := heavy
		if n := items[i].NarSize; n > 0 && n < smallItemSize {
			sem = light
		}
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			errs[i] = fmt.Errorf("publish %s: %w", items[i].StorePath, ctx.Err())
			close(done[i])
			continue
		}
		wg.Go(func() {
			defer func() { <-sem }()
			defer close(done[i])
			beforeNarInfo := func(ctx context.Context, scanned []string) error {
				for _, d := range deps[i] {
					if err := wait(ctx, d); err != nil {
						return err
					}
				}
				// The scan found references the item did not declare.
				var outside []string
				for _, b := range scanned {
					d, ok := index[b]
					switch {
					case !ok:
						outside = append(outside, b)
					case position[d] > position[i]:
						return permanent(fmt.Errorf("the NAR refers to %s, which is in the batch but not in References, so it was not published first; list it in References", items[d].StorePath))
					default:
						if err := wait(ctx, d); err != nil {
							return err
						}
					}
				}
				return refs.require(ctx, outside)
			}
			results[i], errs[i] = p.publish(ctx, items[i], publishOpts{refs: refs, refsChecked: true, beforeNarInfo: beforeNarInfo})
		})
	}
	wg.Wait()
	return results, errors.Join(errs...)
}

// checkClosureRefs validates every item's references and checks that those
// outside the batch have narinfos, all HEADs at once: refs remembers them
// for the scan's findings later. It names every item refused.
func (p *Publisher) checkClosureRefs(ctx context.Context, items []StoreItem, index map[string]int, refs *refChecker) error {
	outside := make([][]string, len(items))
	var all []string
	var errs []error
	for i, it := range items {
		sp, err := p.dir.Parse(it.StorePath)
		if err != nil {
			errs = append(errs, fmt.Errorf("publish closure: item %d: %w", i, err))
			continue
		}
		r, err := p.checkRefs(it, sp)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, b := range r.others(r.declared) {
			if _, ok := index[b]; !ok {
				outside[i] = append(outside[i], b)
			}
		}
		all = append(all, outside[i]...)
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	miss, err := refs.missing(ctx, all)
	if err != nil {
		return fmt.Errorf("publish closure: checking that references are in the bucket: %w", err)
	}
	missing := map[string]bool{}
	for _, b := range miss {
		missing[b] = true
	}
	for i, it := range items {
		m := slices.DeleteFunc(outside[i], func(b string) bool { return !missing[b] })
		if err := refs.missingError(m); err != nil {
			errs = append(errs, fmt.Errorf("publish closure: %s: %w", it.StorePath, err))
		}
	}
	return errors.Join(errs...)
}

// closureOrder sorts items so that each comes after the items its
// References name (Kahn's algorithm, stable in the given order), and
// returns each item's references within the batch and the index of each
// item's base name.
func closureOrder(items []StoreItem) ([]int, [][]int, map[string]int, error) {
	index := map[string]int{}
	for i, it := range items {
		base := path.Base(it.StorePath)
		if j, dup := index[base]; dup {
			return nil, nil, nil, fmt.Errorf("publish closure: %s is given twice (items %d and %d)", it.StorePath, j, i)
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
				return nil, nil, nil, fmt.Errorf("publish closure: the references of %s form a cycle with other items; a store closure has none besides self-references", items[i].StorePath)
			}
		}
	}
	return order, deps, index, nil
}
