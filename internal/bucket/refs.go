package bucket

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/guixfarm/guix-farm/internal/storepath"
)

// ErrMissingReference is matched (errors.Is) by the error of a Publish or
// PublishClosure refused because a reference has no narinfo in the bucket
// and is not in the batch: a client could not fetch that narinfo's closure.
var ErrMissingReference = errors.New("reference not in the bucket")

// refCheckConcurrency is how many narinfo HEADs a reference check has in
// flight: a closure has hundreds of references, each a round trip of a
// few milliseconds, and the requests are tiny.
const refCheckConcurrency = 16

// baseNames turns store paths (in the publisher's store directory) or base
// names into sorted, deduplicated base names. what names the list in
// errors (e.g. "References").
func (p *Publisher) baseNames(what string, paths []string) ([]string, error) {
	seen := map[string]bool{}
	var out []string
	for _, r := range paths {
		base := r
		if strings.HasPrefix(r, "/") {
			sp, err := p.dir.Parse(r)
			if err != nil {
				return nil, fmt.Errorf("%s: %w (give store paths in %s or base names)", what, err, p.dir)
			}
			base = sp.Base()
		} else if _, _, err := storepath.ParseBase(r); err != nil {
			return nil, fmt.Errorf("%s: %w (give store paths in %s or base names)", what, err, p.dir)
		}
		if !seen[base] {
			seen[base] = true
			out = append(out, base)
		}
	}
	slices.Sort(out)
	return out, nil
}

// itemRefs are an item's references, checked before anything is read or
// uploaded, so that a bad reference never leaves an orphan nar behind.
type itemRefs struct {
	self     string   // the item's base name
	declared []string // References as base names, self included if given
}

// others returns refs without the item itself: a self-reference needs no
// other narinfo.
func (r itemRefs) others(refs []string) []string {
	return slices.DeleteFunc(slices.Clone(refs), func(b string) bool { return b == r.self })
}

// checkRefs validates item's References and ScanReferences (store paths
// of this store directory, or base names).
func (p *Publisher) checkRefs(item StoreItem, sp storepath.Path) (itemRefs, error) {
	declared, err := p.baseNames("References", item.References)
	if err != nil {
		return itemRefs{}, fmt.Errorf("publish %s: %w", item.StorePath, err)
	}
	// The scan reports candidates as given: the narinfo needs them as base
	// names after the upload, when it is too late to refuse cheaply.
	if _, err := p.baseNames("ScanReferences", item.ScanReferences); err != nil {
		return itemRefs{}, fmt.Errorf("publish %s: %w", item.StorePath, err)
	}
	return itemRefs{self: sp.Base(), declared: declared}, nil
}

// refChecker says which references have a narinfo in the bucket: HEADs of
// <hash>.narinfo, refCheckConcurrency at a time. Present answers are
// remembered for the checker's life, one Publish or PublishClosure call: a
// narinfo goes away only by GC, which keeps what live narinfos refer to.
// Absent answers are not: a reference may be published meanwhile.
type refChecker struct {
	p       *Publisher
	mu      sync.Mutex
	present map[string]bool // base name
}

func (p *Publisher) newRefChecker() *refChecker {
	return &refChecker{p: p, present: map[string]bool{}}
}

// missing returns, sorted, those of bases (base names) without a narinfo.
func (c *refChecker) missing(ctx context.Context, bases []string) ([]string, error) {
	c.mu.Lock()
	var ask []string
	asked := map[string]bool{}
	for _, b := range bases {
		if !c.present[b] && !asked[b] {
			asked[b] = true
			ask = append(ask, b)
		}
	}
	c.mu.Unlock()
	if len(ask) == 0 {
		return nil, nil
	}
	found := make([]bool, len(ask))
	errs := make([]error, len(ask))
	sem := make(chan struct{}, refCheckConcurrency)
	var wg sync.WaitGroup
	for i, b := range ask {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			found[i], errs[i] = c.p.hasNarInfo(ctx, b)
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	var out []string
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, b := range ask {
		if found[i] {
			c.present[b] = true
		} else {
			out = append(out, b)
		}
	}
	slices.Sort(out)
	return out, nil
}

// require fails, naming each missing reference, unless every one of refs
// (base names) has a narinfo in the bucket.
func (c *refChecker) require(ctx context.Context, refs []string) error {
	miss, err := c.missing(ctx, refs)
	if err != nil {
		return fmt.Errorf("checking that its references are in the bucket: %w", err)
	}
	return c.missingError(miss)
}

// missingError is the refusal of an item whose references miss have no
// narinfo (nil when there are none). Not retried: publishing the
// references is the fix.
func (c *refChecker) missingError(miss []string) error {
	if len(miss) == 0 {
		return nil
	}
	keys := make([]string, len(miss))
	for i, m := range miss {
		keys[i] = narInfoKeyOf(m)
	}
	return permanent(fmt.Errorf("not publishing a narinfo whose references a client cannot fetch: %s (no %s in bucket %s, and not in the batch): %w; publish them first, or in the same PublishClosure batch",
		strings.Join(miss, ", "), strings.Join(keys, ", "), c.p.cfg.Bucket, ErrMissingReference))
}

// hasNarInfo reports whether the narinfo of base (a store base name)
// exists.
func (p *Publisher) hasNarInfo(ctx context.Context, base string) (bool, error) {
	return exists(ctx, p.c, p.cfg, p.log, narInfoKeyOf(base))
}

// narInfoKeyOf is NarInfoKey for a base name checked by storepath.ParseBase.
func narInfoKeyOf(base string) string {
	return NarInfoKey(storepath.Path{Hash: base[:storepath.HashLen]})
}
