package controllers

import (
	"context"
	"fmt"

	"sigs.k8s.io/controller-runtime/pkg/client"

	farmv1 "github.com/guixfarm/guix-farm/api/v1alpha1"
	"github.com/guixfarm/guix-farm/controllers/planning"
	"github.com/guixfarm/guix-farm/internal/bucket"
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

// BucketOutputs tells the Build controller whether an output is in the bucket.
type BucketOutputs struct{ Reader *bucket.Reader }

// Available implements build.OutputChecker.
func (b BucketOutputs) Available(ctx context.Context, storePath string) (bool, error) {
	return b.Reader.Has(ctx, storePath)
}

// OutputsDeleted returns the GC callback that tells the farm outputs are gone, so nothing waits on
// them: the bucket reader forgets its cached answers and the planner stops counting the
// derivations of Builds that produced them as available.
func OutputsDeleted(c client.Reader, loop *planning.Loop, r *bucket.Reader) func([]string) {
	return func(paths []string) {
		if r != nil {
			r.Forget(paths...)
		}
		gone := make(map[string]struct{}, len(paths))
		for _, p := range paths {
			gone[p] = struct{}{}
		}
		var list farmv1.BuildList
		if err := c.List(context.Background(), &list); err != nil {
			return
		}
		for i := range list.Items {
			b := &list.Items[i]
			for _, o := range b.Status.Outputs {
				if _, ok := gone[o.Path]; ok {
					loop.Planner().SetAvailable(b.Spec.Derivation, false)
					break
				}
			}
		}
		loop.Kick()
	}
}
