package submit

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"testing"

	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	farmv1 "github.com/guixfarm/guix-farm/api/v1alpha1"
	"github.com/guixfarm/guix-farm/internal/bucket"
	"github.com/guixfarm/guix-farm/internal/buildname"
	"github.com/guixfarm/guix-farm/internal/daemon"
	"github.com/guixfarm/guix-farm/internal/derivation"
	"github.com/guixfarm/guix-farm/internal/storepath"
)

const src = "/gnu/store/0ga1ynkzg5mb6rzx6nb7r8yv9d5vsgvh-builder.sh"

// fakeStore holds .drv files (their references: input .drvs and sources) and sources.
type fakeStore struct {
	files map[string][]byte
	refs  map[string][]string
}

func newFakeStore() *fakeStore {
	return &fakeStore{files: map[string][]byte{src: []byte("echo hi > $out")}, refs: map[string][]string{src: nil}}
}

// add writes a derivation named name with the "out" outputs of inputs and returns its path.
func (s *fakeStore) add(t *testing.T, name string, inputs ...string) string {
	t.Helper()
	d := &derivation.Derivation{
		Outputs: []derivation.Output{{Name: "out"}}, System: "x86_64-linux", Builder: "/bin/sh",
		Args: []string{src}, InputSrcs: []string{src},
		Env: []derivation.EnvVar{{Key: "name", Value: name}, {Key: "out", Value: ""}},
	}
	for _, in := range inputs {
		d.InputDrvs = append(d.InputDrvs, derivation.InputDrv{Path: in, Outputs: []string{"out"}})
	}
	d.Canonicalize()
	resolve := func(p string) (*derivation.Derivation, error) { return derivation.Parse(s.files[p]) }
	if err := d.FillOutputPaths(storepath.DefaultDir, name, resolve); err != nil {
		t.Fatal(err)
	}
	p, err := d.DrvPath(storepath.DefaultDir, name)
	if err != nil {
		t.Fatal(err)
	}
	s.files[p], s.refs[p] = d.Bytes(), append(slices.Clone(inputs), src)
	return p
}

func (s *fakeStore) out(t *testing.T, drv string) string {
	t.Helper()
	d, err := derivation.Parse(s.files[drv])
	if err != nil {
		t.Fatal(err)
	}
	return d.OutputPaths()["out"]
}

func (s *fakeStore) Closure(ctx context.Context, paths []string) ([]daemon.PathInfo, error) {
	seen := map[string]bool{}
	var order []daemon.PathInfo
	var visit func(p string) error
	visit = func(p string) error {
		if seen[p] {
			return nil
		}
		seen[p] = true
		refs, ok := s.refs[p]
		if !ok {
			return fmt.Errorf("%w", daemon.ErrNotValid)
		}
		for _, r := range refs {
			if err := visit(r); err != nil {
				return err
			}
		}
		order = append(order, daemon.PathInfo{Path: p, References: refs, NarSize: uint64(len(s.files[p]))})
		return nil
	}
	for _, p := range paths {
		if err := visit(p); err != nil {
			return nil, err
		}
	}
	return order, nil
}

func (s *fakeStore) ReadFile(ctx context.Context, path string) ([]byte, error) {
	if b, ok := s.files[path]; ok {
		return b, nil
	}
	return nil, fmt.Errorf("%s: %w", path, daemon.ErrNotValid)
}

func (s *fakeStore) OpenNar(ctx context.Context, path string) (io.ReadCloser, error) {
	return io.NopCloser(bytes.NewReader(s.files[path])), nil
}

// fakeBucket remembers what it has and what was published, refusing a batch whose references
// are neither in it nor in the bucket, as PublishClosure does.
type fakeBucket struct {
	mu        sync.Mutex
	has       map[string]bool
	published []string
	fail      error
}

func (b *fakeBucket) Has(ctx context.Context, p string) (bool, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.has[p], nil
}

func (b *fakeBucket) PublishClosure(ctx context.Context, items []bucket.StoreItem, parallel int) ([]bucket.Result, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.fail != nil {
		return nil, b.fail
	}
	batch := map[string]bool{}
	for _, it := range items {
		batch[it.StorePath] = true
	}
	for _, it := range items {
		for _, r := range it.References {
			if !batch[r] && !b.has[r] {
				return nil, fmt.Errorf("%s: %w: %s", it.StorePath, bucket.ErrMissingReference, r)
			}
		}
		rc, err := it.Open(ctx)
		if err != nil {
			return nil, err
		}
		rc.Close()
	}
	for _, it := range items {
		b.has[it.StorePath] = true
		b.published = append(b.published, it.StorePath)
	}
	return make([]bucket.Result, len(items)), nil
}

func newClient(t *testing.T, objs ...client.Object) client.Client {
	return newRecordingClient(t, nil, objs...)
}

// newRecordingClient appends the derivation of each Build created to created.
func newRecordingClient(t *testing.T, created *[]string, objs ...client.Object) client.Client {
	t.Helper()
	s := runtime.NewScheme()
	if err := farmv1.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	return fake.NewClientBuilder().WithScheme(s).WithObjects(objs...).WithInterceptorFuncs(interceptor.Funcs{
		Create: func(ctx context.Context, c client.WithWatch, obj client.Object, opts ...client.CreateOption) error {
			err := c.Create(ctx, obj, opts...)
			if b, ok := obj.(*farmv1.Build); ok && err == nil && created != nil {
				mu.Lock()
				*created = append(*created, b.Spec.Derivation)
				mu.Unlock()
			}
			return err
		},
	}).Build()
}

func name(t *testing.T, drv string) string {
	t.Helper()
	n, err := buildname.For(drv)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// dag: top needs mid and base, mid needs base and lib. base's output is in the bucket, lib's not.
type dag struct {
	store               *fakeStore
	base, lib, mid, top string
}

func newDAG(t *testing.T) dag {
	s := newFakeStore()
	base := s.add(t, "base-1.0")
	lib := s.add(t, "lib_x-2")
	mid := s.add(t, "mid", base, lib)
	top := s.add(t, "Top-3.1", mid, base)
	return dag{s, base, lib, mid, top}
}

func TestSubmit(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name       string
		allMissing bool
		want       func(d dag) []string // the derivations of the Builds, in order
	}{
		{"only the given", false, func(d dag) []string { return []string{d.top} }},
		// lib before mid (an input first), both before top; not base, whose output is there.
		{"all missing", true, func(d dag) []string { return []string{d.lib, d.mid, d.top} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := newDAG(t)
			b := &fakeBucket{has: map[string]bool{d.store.out(t, d.base): true, src: true}}
			var created []string
			cl := newRecordingClient(t, &created)
			var out, progress bytes.Buffer
			s := &Submitter{Store: d.store, Bucket: b, Client: cl, Out: &out, Progress: &progress}
			timeout := int32(3600)
			o := Options{Namespace: "farm", Priority: 5, Labels: map[string]string{"tag": "t"}, TimeoutSeconds: &timeout, AllMissing: tc.allMissing}
			res, err := s.Submit(ctx, []string{d.top}, o)
			if err != nil {
				t.Fatal(err)
			}
			want := tc.want(d)
			var lines strings.Builder
			for _, drv := range want {
				fmt.Fprintf(&lines, "build/%s created %s\n", name(t, drv), drv)
			}
			if out.String() != lines.String() {
				t.Errorf("printed:\n%s\nwant:\n%s", out.String(), lines.String())
			}
			if len(res) != len(want) {
				t.Errorf("results %+v", res)
			}
			// Each Build after those of its inputs, whatever the concurrency.
			if !slices.Equal(created, want) {
				t.Errorf("created %v, want %v", created, want)
			}
			// The .drv closure but busybox's stand-in, already there; references first.
			if !slices.Equal(b.published, []string{d.base, d.lib, d.mid, d.top}) {
				t.Errorf("published %v", b.published)
			}
			for _, drv := range want {
				var got farmv1.Build
				if err := cl.Get(ctx, client.ObjectKey{Namespace: "farm", Name: name(t, drv)}, &got); err != nil {
					t.Fatal(err)
				}
				input := drv != d.top
				if got.Spec.Derivation != drv || got.Spec.Priority != 5 || got.Labels["tag"] != "t" ||
					*got.Spec.TimeoutSeconds != 3600 || got.Spec.SkipIfOutputsAvailable != input {
					t.Errorf("build/%s: %+v %+v", got.Name, got.Labels, got.Spec)
				}
			}

			// Again: nothing published, every Build unchanged.
			out.Reset()
			b.published = nil
			if _, err := s.Submit(ctx, []string{d.top}, o); err != nil {
				t.Fatal(err)
			}
			if want := strings.ReplaceAll(lines.String(), " created ", " unchanged "); out.String() != want {
				t.Errorf("re-submit printed:\n%s\nwant:\n%s", out.String(), want)
			}
			if len(b.published) != 0 {
				t.Errorf("re-submit published %v", b.published)
			}
		})
	}
}

func TestSubmitConflict(t *testing.T) {
	d := newDAG(t)
	taken := &farmv1.Build{Spec: farmv1.BuildSpec{Derivation: d.base}}
	taken.Name, taken.Namespace = name(t, d.top), "farm"
	b := &fakeBucket{has: map[string]bool{}}
	cl := newClient(t, taken)
	var out bytes.Buffer
	s := &Submitter{Store: d.store, Bucket: b, Client: cl, Out: &out}
	_, err := s.Submit(context.Background(), []string{d.top}, Options{Namespace: "farm", AllMissing: true})
	var ce *ConflictError
	if !errors.As(err, &ce) || !strings.Contains(err.Error(), d.base) || !strings.Contains(err.Error(), d.top) {
		t.Fatalf("error %v, want a ConflictError naming %s and %s", err, d.base, d.top)
	}
	// The other Builds went ahead, and only their lines were printed.
	if strings.Contains(out.String(), d.top) || strings.Count(out.String(), " created ") != 3 {
		t.Errorf("printed:\n%s", out.String())
	}
}

func TestSubmitRefuses(t *testing.T) {
	d := newDAG(t)
	missing := "/gnu/store/1ga1ynkzg5mb6rzx6nb7r8yv9d5vsgvh-absent.drv"
	for _, tc := range []struct {
		name string
		drvs []string
		fail error
		want string
	}{
		{"nothing", nil, nil, "no derivation given"},
		{"not a derivation", []string{src}, nil, "does not end in .drv"},
		{"other store", []string{"/nix/store/0ga1ynkzg5mb6rzx6nb7r8yv9d5vsgvh-x.drv"}, nil, "--store-dir"},
		{"not in the store", []string{missing}, nil, "instantiate"},
		// A failed upload creates no Build: it could not be planned without its .drv.
		{"upload fails", []string{d.top}, errors.New("access denied"), "access denied"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cl := newClient(t)
			s := &Submitter{Store: d.store, Bucket: &fakeBucket{has: map[string]bool{}, fail: tc.fail}, Client: cl}
			_, err := s.Submit(context.Background(), tc.drvs, Options{Namespace: "farm"})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one saying %q", err, tc.want)
			}
			var l farmv1.BuildList
			if err := cl.List(context.Background(), &l); err != nil || len(l.Items) != 0 {
				t.Errorf("Builds %v (%v), want none", l.Items, err)
			}
		})
	}
}
