package controllers

import (
	"context"
	"fmt"

	"sigs.k8s.io/controller-runtime/pkg/client"

	farmv1 "github.com/guixfarm/guix-farm/api/v1alpha1"
	"github.com/guixfarm/guix-farm/internal/availability"
	"github.com/guixfarm/guix-farm/internal/gc"
)

// BuildRoots are the GC roots the farm itself holds: the outputs of every Build still in the
// cache, whatever its phase (finished Builds stay roots until their TTL deletes them).
type BuildRoots struct {
	Client client.Reader
	// Selector, when set, limits the roots to Builds with matching labels (tags), e.g. keep=true.
	Selector client.MatchingLabelsSelector
}

var _ gc.Roots = BuildRoots{}

// Roots lists the output paths of the Builds.
func (r BuildRoots) Roots(ctx context.Context) ([]string, error) {
	var list farmv1.BuildList
	var opts []client.ListOption
	if r.Selector.Selector != nil {
		opts = append(opts, r.Selector)
	}
	if err := r.Client.List(ctx, &list, opts...); err != nil {
		return nil, fmt.Errorf("listing builds for GC roots: %w", err)
	}
	var out []string
	for i := range list.Items {
		for _, o := range list.Items[i].Status.Outputs {
			out = append(out, o.Path)
		}
	}
	return out, nil
}

// OutputsDeleted returns the GC callback that tells the availability owner which outputs are
// gone, so nothing counts on them: it finds their derivations by its index of the outputs it has
// seen, and answers them absent to the planner.
func OutputsDeleted(owner *availability.Owner) func(paths []string) {
	return func(paths []string) { owner.PathsDeleted(paths, nil) }
}
