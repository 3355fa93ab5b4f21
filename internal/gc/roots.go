package gc

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"strings"
)

// Roots is a source of GC roots: store paths (or base names) whose closure
// must stay in the bucket. The controller implements one from its Builds
// (controllers.BuildRoots: what live Builds need and produced).
//
// A source that cannot answer must return an error, never a partial list:
// the collector does not run on a partial root set.
type Roots interface {
	Roots(ctx context.Context) ([]string, error)
}

// StaticRoots is a fixed list of roots.
type StaticRoots []string

// Roots returns a copy of the list.
func (s StaticRoots) Roots(context.Context) ([]string, error) {
	return append([]string(nil), s...), nil
}

// RootsFunc adapts a function to Roots.
type RootsFunc func(ctx context.Context) ([]string, error)

// Roots calls f.
func (f RootsFunc) Roots(ctx context.Context) ([]string, error) { return f(ctx) }

// MultiRoots is the union of several sources. Any source's error fails the
// whole: a missing source would make its roots look like garbage.
type MultiRoots []Roots

// Roots concatenates the sources' roots (duplicates are harmless).
func (m MultiRoots) Roots(ctx context.Context) ([]string, error) {
	var out []string
	for i, r := range m {
		if r == nil {
			continue
		}
		list, err := r.Roots(ctx)
		if err != nil {
			return nil, fmt.Errorf("gc: roots source %d (%T): %w", i, r, err)
		}
		out = append(out, list...)
	}
	return out, nil
}

// ParseRootsList reads a roots list: store paths or base names, one per
// line; blank lines and lines starting with # are ignored. source names
// the list in errors (a file, a bucket object). A line that is not a store
// path fails the whole list: a typo must not silently unroot a closure.
func ParseRootsList(r io.Reader, source string) ([]string, error) {
	var out []string
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if HashPart(line) == "" {
			return nil, fmt.Errorf("gc: roots list %s line %d: %q is not a store path or base name (want /gnu/store/<hash>-<name>, one per line)", source, n, line)
		}
		out = append(out, line)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("gc: reading roots list %s: %w", source, err)
	}
	return out, nil
}
