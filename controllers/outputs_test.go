package controllers

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	farmv1 "github.com/guixfarm/guix-farm/api/v1alpha1"
	"github.com/guixfarm/guix-farm/internal/derivation"
)

func storePath(name string) string { return "/gnu/store/" + strings.Repeat(name[:1], 32) + "-" + name }

// facts is a derivation source: each .drv with its inputs and one output "out".
type facts struct {
	inputs map[string][]string
	reads  atomic.Int32
}

func (f *facts) Get(_ context.Context, drv string) (derivation.Facts, error) {
	f.reads.Add(1)
	in, ok := f.inputs[drv]
	if !ok {
		return derivation.Facts{}, fmt.Errorf("%s: not in the bucket", drv)
	}
	out := strings.TrimSuffix(drv, ".drv") + "-out"
	return derivation.Facts{InputDrvs: in, Outputs: []derivation.OutputFact{{Name: "out", Path: out}}}, nil
}

func build_(name, drv string, phase farmv1.BuildPhase, outputs ...string) *farmv1.Build {
	b := &farmv1.Build{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name}, Spec: farmv1.BuildSpec{Derivation: drv}}
	b.Status.Phase = phase
	for i, o := range outputs {
		b.Status.Outputs = append(b.Status.Outputs, farmv1.Output{Name: fmt.Sprintf("out%d", i), Path: o})
	}
	return b
}

func fakeReader(t *testing.T, objs ...client.Object) client.Reader {
	t.Helper()
	scheme := runtime.NewScheme()
	if err := farmv1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	return fake.NewClientBuilder().WithScheme(scheme).WithObjects(objs...).Build()
}

// TestBuildRoots: live Builds keep their .drv, outputs and their inputs' outputs, succeeded (and skipped)
// ones their outputs and .drv, failed and canceled ones their .drv; a Build being deleted keeps
// nothing.
func TestBuildRoots(t *testing.T) {
	lib, tool, src := storePath("lib.drv"), storePath("tool.drv"), storePath("src.drv")
	pending, running, allocated := storePath("pending.drv"), storePath("running.drv"), storePath("allocated.drv")
	f := &facts{inputs: map[string][]string{
		pending: {lib, tool}, running: {lib}, allocated: {src},
		lib: {}, tool: {lib}, src: {},
	}}
	deleting := build_("deleting", storePath("deleting.drv"), farmv1.BuildPending)
	deleting.DeletionTimestamp = &metav1.Time{Time: time.Now()}
	deleting.Finalizers = []string{"test/keep"}
	skipped := build_("skipped", storePath("skipped.drv"), farmv1.BuildSucceeded, storePath("skipped-out"))
	skipped.Status.Conditions = []metav1.Condition{{Type: farmv1.BuildConditionSucceeded, Status: metav1.ConditionTrue, Reason: "OutputsAvailable"}}
	c := fakeReader(t,
		build_("pending", pending, farmv1.BuildPending, storePath("pending-own-out")),
		build_("new", pending, ""),
		build_("allocated", allocated, farmv1.BuildAllocated),
		build_("running", running, farmv1.BuildRunning),
		build_("succeeded", storePath("succeeded.drv"), farmv1.BuildSucceeded, storePath("succeeded-out"), storePath("succeeded-doc")),
		skipped,
		build_("failed", storePath("failed.drv"), farmv1.BuildFailed, storePath("failed-out")),
		build_("canceled", storePath("canceled.drv"), farmv1.BuildCanceled),
		deleting,
	)
	got, err := BuildRoots{Client: c, Facts: f, Workers: 2}.Roots(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(got)
	got = slices.Compact(got)
	want := []string{
		pending, allocated, running, storePath("pending-own-out"), // live .drvs and outputs
		strings.TrimSuffix(lib, ".drv") + "-out", strings.TrimSuffix(tool, ".drv") + "-out", strings.TrimSuffix(src, ".drv") + "-out",
		storePath("succeeded.drv"), storePath("succeeded-out"), storePath("succeeded-doc"),
		storePath("skipped.drv"), storePath("skipped-out"),
		storePath("failed.drv"), storePath("canceled.drv"),
	}
	slices.Sort(want)
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("roots (-want +got):\n%s", d)
	}
	// Each .drv is read once per call: 3 live ones, 3 inputs.
	if n := f.reads.Load(); n != 6 {
		t.Errorf("%d .drv reads, want 6", n)
	}
}

// TestBuildRootsErrors: a .drv that cannot be read (a live Build's or its input's) fails the
// whole, naming it and who needs it, never fewer roots.
func TestBuildRootsErrors(t *testing.T) {
	pending, gone := storePath("pending.drv"), storePath("gone.drv")
	cases := map[string]struct {
		facts *facts
		want  string
	}{
		"a live Build's .drv": {facts: &facts{inputs: map[string][]string{}},
			want: "reading " + pending + ", Build ns/pending"},
		"an input's .drv": {facts: &facts{inputs: map[string][]string{pending: {gone}}},
			want: "reading " + gone + ", the input of " + pending + " (Build ns/pending)"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			c := fakeReader(t, build_("pending", pending, farmv1.BuildPending))
			got, err := BuildRoots{Client: c, Facts: tc.facts}.Roots(context.Background())
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "GC run is skipped") {
				t.Fatalf("roots %v, err %v; want an error containing %q", got, err, tc.want)
			}
		})
	}
	c := fakeReader(t, build_("pending", pending, farmv1.BuildPending))
	if _, err := (BuildRoots{Client: c}).Roots(context.Background()); err == nil || !strings.Contains(err.Error(), "Facts is nil") {
		t.Errorf("no facts source: %v", err)
	}
}

// TestBuildRootsSelector: roots declared by tag are those of the matching Builds only.
func TestBuildRootsSelector(t *testing.T) {
	tagged := build_("tagged", storePath("tagged.drv"), farmv1.BuildSucceeded, storePath("tagged-out"))
	tagged.Labels = map[string]string{"release": "2026.1"}
	c := fakeReader(t, tagged, build_("other", storePath("other.drv"), farmv1.BuildSucceeded, storePath("other-out")))
	sel := client.MatchingLabelsSelector{Selector: labels.SelectorFromSet(labels.Set{"release": "2026.1"})}
	got, err := BuildRoots{Client: c, Selector: sel}.Roots(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff([]string{storePath("tagged.drv"), storePath("tagged-out")}, got); d != "" {
		t.Errorf("(-want +got):\n%s", d)
	}
}
