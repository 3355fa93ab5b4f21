// Package submit is `kubectl guixfarm submit`: it publishes the closure of derivations (the .drv
// files and their sources) from a local store to the farm's bucket, where the controller and the
// agents read them, then creates one Build per derivation, named after it (internal/buildname),
// so that submitting again finds the Builds already there.
package submit

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	farmv1 "github.com/guixfarm/guix-farm/api/v1alpha1"
	"github.com/guixfarm/guix-farm/internal/bucket"
	"github.com/guixfarm/guix-farm/internal/buildname"
	"github.com/guixfarm/guix-farm/internal/daemon"
	"github.com/guixfarm/guix-farm/internal/derivation"
	"github.com/guixfarm/guix-farm/internal/storepath"
)

// Bucket is the farm's bucket as submit needs it: bucket.Reader's Has and
// bucket.Publisher's PublishClosure.
type Bucket interface {
	Has(ctx context.Context, storePath string) (bool, error)
	PublishClosure(ctx context.Context, items []bucket.StoreItem, parallel int) ([]bucket.Result, error)
}

// Options are what the user asked for.
type Options struct {
	Namespace string
	Priority  int32
	Labels    map[string]string
	// TimeoutSeconds and MaxSilentSeconds, when set, go to spec.timeoutSeconds and
	// spec.maxSilentSeconds.
	TimeoutSeconds, MaxSilentSeconds *int32
	// AllMissing also creates Builds for every input derivation, recursively, whose outputs
	// the bucket lacks (through inputs whose outputs it lacks: an available input's own inputs
	// are not needed).
	AllMissing bool
	// Lookups is how many bucket lookups and Build creations are in flight (default 16).
	Lookups int
	// Uploads is how many NARs upload at once (default bucket.DefaultClosureParallelism).
	Uploads int
}

// Submitter submits derivations from Store to Bucket and the apiserver.
type Submitter struct {
	Store  Store
	Bucket Bucket
	Client client.Client
	// StoreDir is the store directory of the derivations (default /gnu/store).
	StoreDir storepath.Dir
	// Out gets one line per Build: "build/<name> created|unchanged <drv>".
	Out io.Writer
	// Progress gets what happens on the way (the upload); nil discards it.
	Progress io.Writer
}

// Outcome of a Build.
type Outcome string

const (
	Created   Outcome = "created"
	Unchanged Outcome = "unchanged"
)

// Result is one Build submitted.
type Result struct {
	Name       string
	Derivation string
	Outcome    Outcome
}

// ConflictError: a Build with the derivation's name exists for another derivation.
type ConflictError struct {
	Name, Namespace, Existing, Wanted string
}

func (e *ConflictError) Error() string {
	return fmt.Sprintf("build/%s in namespace %s is for %s, not %s: the two derivations share their name and the first %d characters of their hash; delete that Build (kubectl delete build %s -n %s) once it is done, or create a Build for %s by hand under another name",
		e.Name, e.Namespace, e.Existing, e.Wanted, buildname.HashLen, e.Name, e.Namespace, e.Wanted)
}

// Submit publishes the closure of drvs and creates their Builds (and, with AllMissing, those of
// their missing inputs), writing one line per Build to Out in the order they were created:
// inputs before the Builds that need them. Publishing comes first: a Build whose .drv the bucket
// lacks could not be planned. A conflicting Build fails its derivation (a *ConflictError) and
// the others still go ahead; the errors are joined.
func (s *Submitter) Submit(ctx context.Context, drvs []string, o Options) ([]Result, error) {
	if len(drvs) == 0 {
		return nil, errors.New("no derivation given: name one or more .drv store paths (e.g. $(guix build -d hello))")
	}
	if o.Lookups <= 0 {
		o.Lookups = 16
	}
	dir := s.StoreDir
	if dir == "" {
		dir = storepath.DefaultDir
	}
	var tops []string
	for _, d := range drvs {
		p, err := dir.ParseDerivation(d)
		if err != nil {
			return nil, fmt.Errorf("%w (with --store-dir %s)", err, dir)
		}
		if !slices.Contains(tops, p.String()) {
			tops = append(tops, p.String())
		}
	}
	infos, err := s.closure(ctx, tops)
	if err != nil {
		return nil, err
	}
	targets, deps := tops, map[string][]string(nil)
	if o.AllMissing {
		if targets, deps, err = s.missingBuilds(ctx, tops, o.Lookups); err != nil {
			return nil, err
		}
	}
	if err := s.publish(ctx, infos, o); err != nil {
		return nil, err
	}
	return s.createBuilds(ctx, targets, deps, tops, o)
}

// closure is the paths drvs refer to, recursively, with what the store knows of them, references
// first.
func (s *Submitter) closure(ctx context.Context, drvs []string) ([]daemon.PathInfo, error) {
	infos, err := s.Store.Closure(ctx, drvs)
	if errors.Is(err, daemon.ErrNotValid) {
		return nil, fmt.Errorf("reading the closure of the derivations from the local store: %w; instantiate them there first (guix build -d, nix-instantiate), or give the daemon whose store has them with --daemon-socket", err)
	}
	if err != nil {
		return nil, fmt.Errorf("reading the closure of the derivations from the local store: %w", err)
	}
	return infos, nil
}

// publish uploads the items of the closure the bucket lacks. Asking first (HEADs, many at once)
// is cheaper than letting PublishClosure find each one present (a GET and a HEAD, two at a
// time), and a submit of a distribution's closure mostly finds it there.
func (s *Submitter) publish(ctx context.Context, infos []daemon.PathInfo, o Options) error {
	have := make([]bool, len(infos))
	err := parallel(ctx, len(infos), o.Lookups, func(ctx context.Context, i int) error {
		var err error
		have[i], err = s.Bucket.Has(ctx, infos[i].Path)
		return err
	})
	if err != nil {
		return fmt.Errorf("looking the .drv closure up in the bucket: %w", err)
	}
	var items []bucket.StoreItem
	var size uint64
	for i, info := range infos {
		if have[i] {
			continue
		}
		items = append(items, bucket.StoreItem{
			StorePath: info.Path, References: info.References, Deriver: info.Deriver, CA: info.CA,
			NarHash: info.NarHash, NarSize: info.NarSize,
			Open: func(ctx context.Context) (io.ReadCloser, error) { return s.Store.OpenNar(ctx, info.Path) },
		})
		size += info.NarSize
	}
	s.progress("%d of %d store paths of the .drv closure are in the bucket; publishing %d (%d bytes of NAR)",
		len(infos)-len(items), len(infos), len(items), size)
	if len(items) == 0 {
		return nil
	}
	if _, err := s.Bucket.PublishClosure(ctx, items, o.Uploads); err != nil {
		return fmt.Errorf("publishing the .drv closure to the bucket: %w", err)
	}
	return nil
}

// missingBuilds is tops and every input derivation reachable through inputs whose outputs the
// bucket lacks, inputs before the derivations that need them (depth-first post-order), with,
// for each, its inputs among them: the Builds are created in an order the farm can build them.
func (s *Submitter) missingBuilds(ctx context.Context, tops []string, lookups int) ([]string, map[string][]string, error) {
	g := &drvGraph{s: s, parsed: map[string]*derivation.Derivation{}, missing: map[string]bool{}}
	visited := map[string]bool{}
	deps := map[string][]string{}
	var order []string
	var visit func(drv string) error
	visit = func(drv string) error {
		visited[drv] = true
		d, err := g.read(ctx, drv)
		if err != nil {
			return err
		}
		inputs := d.InputDerivations()
		if err := g.check(ctx, inputs, lookups); err != nil {
			return err
		}
		for _, in := range inputs {
			if !g.isMissing(in) {
				continue
			}
			deps[drv] = append(deps[drv], in)
			if !visited[in] {
				if err := visit(in); err != nil {
					return err
				}
			}
		}
		order = append(order, drv)
		return nil
	}
	for _, t := range tops {
		if !visited[t] {
			if err := visit(t); err != nil {
				return nil, nil, err
			}
		}
	}
	return order, deps, nil
}

// drvGraph reads each .drv once and asks the bucket about each derivation's outputs once.
type drvGraph struct {
	s       *Submitter
	mu      sync.Mutex
	parsed  map[string]*derivation.Derivation
	missing map[string]bool // derivation -> the bucket lacks one of its outputs
}

func (g *drvGraph) read(ctx context.Context, drv string) (*derivation.Derivation, error) {
	g.mu.Lock()
	d, ok := g.parsed[drv]
	g.mu.Unlock()
	if ok {
		return d, nil
	}
	data, err := g.s.Store.ReadFile(ctx, drv)
	if err != nil {
		return nil, err
	}
	if d, err = derivation.Parse(data); err != nil {
		return nil, fmt.Errorf("%s: %w", drv, err)
	}
	g.mu.Lock()
	g.parsed[drv] = d
	g.mu.Unlock()
	return d, nil
}

func (g *drvGraph) isMissing(drv string) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.missing[drv]
}

// check finds out, for the derivations not asked about yet, whether the bucket lacks one of
// their outputs.
func (g *drvGraph) check(ctx context.Context, drvs []string, lookups int) error {
	var ask []string
	g.mu.Lock()
	for _, d := range drvs {
		if _, ok := g.missing[d]; !ok {
			ask = append(ask, d)
		}
	}
	g.mu.Unlock()
	return parallel(ctx, len(ask), lookups, func(ctx context.Context, i int) error {
		d, err := g.read(ctx, ask[i])
		if err != nil {
			return err
		}
		missing := false
		for _, out := range d.Outputs {
			if out.Path == "" { // a floating content-addressed output: unknown until built
				missing = true
				break
			}
			ok, err := g.s.Bucket.Has(ctx, out.Path)
			if err != nil {
				return fmt.Errorf("looking up output %s of %s in the bucket: %w", out.Name, ask[i], err)
			}
			if !ok {
				missing = true
				break
			}
		}
		g.mu.Lock()
		g.missing[ask[i]] = missing
		g.mu.Unlock()
		return nil
	})
}

// createBuilds creates the Builds of drvs, Lookups at a time, each after the Builds of its deps
// (whether they could be created or not): the planner then sees a Build's inputs before it.
// Each line is printed in the order of drvs as soon as the ones before it are.
func (s *Submitter) createBuilds(ctx context.Context, drvs []string, deps map[string][]string, tops []string, o Options) ([]Result, error) {
	index := make(map[string]int, len(drvs))
	for i, d := range drvs {
		index[d] = i
	}
	results := make([]Result, len(drvs))
	errs := make([]error, len(drvs))
	done := make([]chan struct{}, len(drvs))
	for i := range done {
		done[i] = make(chan struct{})
	}
	printed := make(chan struct{})
	go func() {
		defer close(printed)
		for i := range drvs {
			<-done[i]
			if errs[i] == nil && s.Out != nil {
				fmt.Fprintf(s.Out, "build/%s %s %s\n", results[i].Name, results[i].Outcome, results[i].Derivation)
			}
		}
	}()
	sem := make(chan struct{}, o.Lookups)
	var wg sync.WaitGroup
	for i, drv := range drvs {
		wg.Go(func() {
			defer close(done[i])
			// Waiting before taking a slot cannot deadlock: deps come earlier in drvs (a
			// post-order) and never wait for i.
			for _, d := range deps[drv] {
				select {
				case <-done[index[d]]:
				case <-ctx.Done():
				}
			}
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				errs[i] = fmt.Errorf("creating the Build of %s: %w", drv, ctx.Err())
				return
			}
			defer func() { <-sem }()
			results[i], errs[i] = s.createBuild(ctx, drv, !slices.Contains(tops, drv), o)
		})
	}
	wg.Wait()
	<-printed
	var out []Result
	for i := range results {
		if errs[i] == nil {
			out = append(out, results[i])
		}
	}
	return out, errors.Join(errs...)
}

// createBuild creates the Build of drv, or finds it there. An input's Build (created for
// AllMissing) skips building when its outputs turned up meanwhile; a derivation the user named
// is built as asked.
func (s *Submitter) createBuild(ctx context.Context, drv string, input bool, o Options) (Result, error) {
	name, err := buildname.For(drv)
	if err != nil {
		return Result{}, err
	}
	res := Result{Name: name, Derivation: drv, Outcome: Created}
	b := &farmv1.Build{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: o.Namespace, Labels: o.Labels},
		Spec: farmv1.BuildSpec{
			Derivation: drv, Priority: o.Priority, SkipIfOutputsAvailable: input,
			TimeoutSeconds: o.TimeoutSeconds, MaxSilentSeconds: o.MaxSilentSeconds,
		},
	}
	// Two tries: a Build found present may be gone (deleted at its TTL) by the time it is read.
	for range 2 {
		err := s.Client.Create(ctx, b.DeepCopy())
		if err == nil {
			return res, nil
		}
		if !apierrors.IsAlreadyExists(err) {
			return Result{}, fmt.Errorf("creating build/%s for %s in namespace %s: %w", name, drv, o.Namespace, err)
		}
		var have farmv1.Build
		err = s.Client.Get(ctx, client.ObjectKey{Namespace: o.Namespace, Name: name}, &have)
		if apierrors.IsNotFound(err) {
			continue
		}
		if err != nil {
			return Result{}, fmt.Errorf("reading build/%s in namespace %s: %w", name, o.Namespace, err)
		}
		if have.Spec.Derivation != drv {
			return Result{}, &ConflictError{Name: name, Namespace: o.Namespace, Existing: have.Spec.Derivation, Wanted: drv}
		}
		res.Outcome = Unchanged
		return res, nil
	}
	return Result{}, fmt.Errorf("creating build/%s for %s in namespace %s: it keeps being deleted as it is created; try again", name, drv, o.Namespace)
}

func (s *Submitter) progress(format string, args ...any) {
	if s.Progress != nil {
		fmt.Fprintf(s.Progress, format+"\n", args...)
	}
}

// parallel runs fn for 0..n-1, at most limit at a time, and returns the first error (after
// which no new call starts).
func parallel(ctx context.Context, n, limit int, fn func(ctx context.Context, i int) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	sem := make(chan struct{}, max(limit, 1))
	var wg sync.WaitGroup
	for i := range n {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		wg.Go(func() {
			defer func() { <-sem }()
			if err := fn(ctx, i); err != nil {
				cancel(err)
			}
		})
	}
	wg.Wait()
	if err := context.Cause(ctx); err != nil {
		return err
	}
	return nil
}
