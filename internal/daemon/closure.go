package daemon

import (
	"context"
	"fmt"
)

// Closure returns paths and everything they refer to, references first (each path after all of
// its references but itself), as the daemon reports them. It fails past max paths.
func (c *Conn) Closure(ctx context.Context, paths []string, max int) ([]PathInfo, error) {
	seen := map[string]bool{}
	var order []PathInfo
	var visit func(p string) error
	visit = func(p string) error {
		if seen[p] {
			return nil
		}
		if len(seen) >= max {
			return fmt.Errorf("closure of %v: more than %d paths", paths, max)
		}
		seen[p] = true
		info, err := c.QueryPathInfo(ctx, p)
		if err != nil {
			return err
		}
		for _, r := range info.References {
			if r != p {
				if err := visit(r); err != nil {
					return err
				}
			}
		}
		order = append(order, *info)
		return nil
	}
	for _, p := range paths {
		if err := visit(p); err != nil {
			return nil, err
		}
	}
	return order, nil
}
