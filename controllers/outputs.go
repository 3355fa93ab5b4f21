package controllers

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"sigs.k8s.io/controller-runtime/pkg/client"

	farmv1 "github.com/guixfarm/guix-farm/api/v1alpha1"
	"github.com/guixfarm/guix-farm/controllers/builds"
	"github.com/guixfarm/guix-farm/internal/availability"
	"github.com/guixfarm/guix-farm/internal/derivation"
	"github.com/guixfarm/guix-farm/internal/gc"
)

// DefaultRootsWorkers bounds the .drv reads of one BuildRoots call.
const DefaultRootsWorkers = 8

// BuildRoots are the GC roots the farm itself holds: what its Builds need and what they
// produced. For every Build in the cache that is not being deleted:
//   - Pending, Allocated or Running (or no phase yet): spec.derivation, whose narinfo's
//     References hold the input .drvs and sources (so the .drv closure stays), and the outputs
//     of its input derivations, which the agent substitutes before building: deleting one would
//     make the Build wait for an input rebuild; and its own outputs, if the bucket has them
//     (a Build about to be skipped for them);
//   - Succeeded, skipped ones included (they record status.outputs too): status.outputs, and
//     spec.derivation;
//   - Failed or Canceled: spec.derivation, so a retry (a new Build) still finds it.
//
// Once a Build is gone (its TTL), only the bucket's other roots keep its outputs: with no keep
// policy declared the GC deletes no substitute at all (docs/gc.md).
type BuildRoots struct {
	Client client.Reader
	// Facts reads the .drv files (the controller's cached derivation source). Required when
	// any Build is live.
	Facts builds.FactsSource
	// Namespace, when set, limits the roots to its Builds (the controller's cache already is).
	Namespace string
	// Selector, when set, limits the roots to Builds with matching labels: roots declared by
	// tag, e.g. release=2026.1.
	Selector client.MatchingLabelsSelector
	// Workers bounds the .drv reads in flight (default DefaultRootsWorkers): a cold cache reads
	// each from the bucket.
	Workers int
}

var _ gc.Roots = BuildRoots{}

// Roots lists the roots of the Builds. An error listing Builds or reading a .drv fails the
// whole: a GC run on fewer roots than the farm needs would delete what a Build is about to use.
func (r BuildRoots) Roots(ctx context.Context) ([]string, error) {
	var list farmv1.BuildList
	var opts []client.ListOption
	if r.Namespace != "" {
		opts = append(opts, client.InNamespace(r.Namespace))
	}
	if r.Selector.Selector != nil {
		opts = append(opts, r.Selector)
	}
	if err := r.Client.List(ctx, &list, opts...); err != nil {
		return nil, fmt.Errorf("listing builds for GC roots: %w", err)
	}
	var out []string
	live := map[string]string{} // .drv of a live Build → the Build, for errors
	for i := range list.Items {
		b := &list.Items[i]
		if b.DeletionTimestamp != nil || b.Spec.Derivation == "" {
			continue
		}
		out = append(out, b.Spec.Derivation)
		if b.Status.Phase == farmv1.BuildFailed || b.Status.Phase == farmv1.BuildCanceled {
			continue
		}
		for _, o := range b.Status.Outputs {
			out = append(out, o.Path)
		}
		if b.Status.Phase != farmv1.BuildSucceeded {
			live[b.Spec.Derivation] = "Build " + b.Namespace + "/" + b.Name
		}
	}
	inputs, err := r.inputOutputs(ctx, live)
	if err != nil {
		return nil, err
	}
	return append(out, inputs...), nil
}

// inputOutputs returns the output paths of the input derivations of the live .drvs (each given
// with who needs it): the .drv facts give the input .drvs, their facts give their outputs.
func (r BuildRoots) inputOutputs(ctx context.Context, live map[string]string) ([]string, error) {
	if len(live) == 0 {
		return nil, nil
	}
	if r.Facts == nil {
		return nil, errors.New("GC roots: BuildRoots.Facts is nil: give it the controller's derivation source, " +
			"or live Builds' inputs would look like garbage")
	}
	inputs := map[string]string{} // input .drv → who needs it
	var mu sync.Mutex
	err := r.eachFacts(ctx, live, func(drv string, f derivation.Facts) {
		mu.Lock()
		defer mu.Unlock()
		for _, in := range f.InputDrvs {
			if _, seen := inputs[in]; !seen {
				inputs[in] = "the input of " + drv + " (" + live[drv] + ")"
			}
		}
	})
	if err != nil {
		return nil, err
	}
	var out []string
	err = r.eachFacts(ctx, inputs, func(_ string, f derivation.Facts) {
		mu.Lock()
		defer mu.Unlock()
		for _, o := range f.Outputs {
			out = append(out, o.Path)
		}
	})
	return out, err
}

// eachFacts reads the facts of every .drv of drvs (a .drv → who needs it, for the error), at
// most Workers at a time, and hands each to use. It returns the first error, naming the .drv,
// who needs it and what to do.
func (r BuildRoots) eachFacts(ctx context.Context, drvs map[string]string, use func(drv string, f derivation.Facts)) error {
	workers := r.Workers
	if workers <= 0 {
		workers = DefaultRootsWorkers
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	sem := make(chan struct{}, workers)
	var wg sync.WaitGroup
	for drv, who := range drvs {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			f, err := r.Facts.Get(ctx, drv)
			if err != nil {
				cancel(fmt.Errorf("GC roots: reading %s, %s: %w (the GC run is skipped, deleting nothing, until it is readable: "+
					"fix the derivation source or delete the Build)", drv, who, err))
				return
			}
			use(drv, f)
		}()
	}
	wg.Wait()
	return context.Cause(ctx)
}

// OutputsDeleted returns the GC callback that tells the availability owner which outputs are
// gone, with the derivers the narinfos named, so nothing counts on them: the owner finds their
// derivations by those derivers (even with no Build of them left) and by its index of the
// outputs it has seen, and answers them absent to the planner.
func OutputsDeleted(owner *availability.Owner) func(paths, derivers []string) {
	return owner.PathsDeleted
}
