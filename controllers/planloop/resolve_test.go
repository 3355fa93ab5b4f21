package planloop

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	farmv1 "github.com/guixfarm/guix-farm/api/v1alpha1"
	"github.com/guixfarm/guix-farm/internal/index"
	"github.com/guixfarm/guix-farm/internal/planner"
)

var now = time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)

func drvPath(name string) string {
	return "/gnu/store/" + strings.Repeat("a", 32) + "-" + name + ".drv"
}

func buildOf(name, drv string, phase farmv1.BuildPhase, completed time.Time) *farmv1.Build {
	b := &farmv1.Build{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name}, Spec: farmv1.BuildSpec{Derivation: drv}}
	b.Status.Phase = phase
	if !completed.IsZero() {
		t := metav1.NewTime(completed)
		b.Status.CompletionTime = &t
	}
	if phase == farmv1.BuildFailed {
		b.Status.Conditions = []metav1.Condition{{Type: farmv1.BuildConditionSucceeded, Status: metav1.ConditionFalse,
			Reason: farmv1.ReasonRetriesExceeded, Message: "3 of 3 attempts failed"}}
	}
	return b
}

// fakeOwner records what the resolver tells and asks the availability owner; successes older
// than an hour are refused, as the real owner refuses those past its TTL.
type fakeOwner struct {
	mu        sync.Mutex
	succeeded []string
	asked     []string
}

func (o *fakeOwner) Succeeded(drv string, _ []string, at time.Time) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	if now.Sub(at) > time.Hour {
		return false
	}
	o.succeeded = append(o.succeeded, drv)
	return true
}
func (o *fakeOwner) Peek(string) (bool, bool) { return false, false }
func (o *fakeOwner) Resolve(drvs []string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.asked = append(o.asked, drvs...)
}

// TestResolve: the Builds in the cache answer what they can (a recent success, a live Build, a
// failure named with its reason); the owner is asked the rest, including old successes.
func TestResolve(t *testing.T) {
	recent, old, live, failed, none := drvPath("recent"), drvPath("old"), drvPath("live"), drvPath("failed"), drvPath("none")
	scheme := runtime.NewScheme()
	if err := farmv1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	c := fake.NewClientBuilder().WithScheme(scheme).WithIndex(&farmv1.Build{}, index.BuildDerivation, index.Derivation).
		WithObjects(
			buildOf("recent", recent, farmv1.BuildSucceeded, now.Add(-time.Minute)),
			buildOf("old", old, farmv1.BuildSucceeded, now.Add(-48*time.Hour)),
			buildOf("live", live, farmv1.BuildPending, time.Time{}),
			buildOf("failed-1", failed, farmv1.BuildFailed, now.Add(-2*time.Hour)),
			buildOf("failed-2", failed, farmv1.BuildFailed, now.Add(-time.Hour)),
		).Build()

	// A planner where one Build needs all five.
	p := planner.New(planner.Options{Strategy: planner.DerivationOrdered})
	p.UpsertAgent(planner.Agent{Name: "a", Systems: []string{"x86_64-linux"}, Slots: 1})
	p.UpsertBuild(planner.Build{Key: "ns/top", UID: "u", Derivation: drvPath("top"), System: "x86_64-linux",
		Inputs: []string{recent, old, live, failed, none}})
	unresolved := p.TakeUnresolved()
	if len(unresolved) != 5 {
		t.Fatalf("unresolved %v, want the five inputs", unresolved)
	}
	owner := &fakeOwner{}
	kicked := false
	r := &Resolver{Client: c, Owner: owner, Planner: p, Kick: func() { kicked = true }, Log: logr.Discard()}
	r.Resolve(context.Background(), unresolved)

	if want := []string{recent}; !equalSet(owner.succeeded, want) {
		t.Errorf("successes told %v, want %v", owner.succeeded, want)
	}
	if want := []string{old, none}; !equalSet(owner.asked, want) {
		t.Errorf("asked of the bucket %v, want %v (the old success and the one without Builds)", owner.asked, want)
	}
	w, _ := p.CurrentWait("ns/top")
	if w.Reason != planner.InputFailed || !strings.Contains(w.Message, "ns/failed-2 ended Failed (RetriesExceeded: 3 of 3 attempts failed)") {
		t.Errorf("top waits %+v; want InputFailed naming the latest failed Build and its reason", w)
	}
	if !kicked {
		t.Error("no planning pass asked for after the answers")
	}
}

func equalSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	seen := map[string]int{}
	for _, x := range a {
		seen[x]++
	}
	for _, x := range b {
		if seen[x]--; seen[x] < 0 {
			return false
		}
	}
	return true
}
