package integration

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	farmv1 "github.com/guixfarm/guix-farm/api/v1alpha1"
	"github.com/guixfarm/guix-farm/internal/agentlease"
	"github.com/guixfarm/guix-farm/internal/planner"
	"github.com/guixfarm/guix-farm/test/farm"
)

// TestBoundsOfWhatOthersWrite: a Lease announcing 10^12 slots is ignored (an Event says why)
// and crashes nothing; a derivation with 40 outputs and one whose output path has 255 characters
// (the longest store name Nix allows) build, their outputs in the status; one with 70 outputs
// fails at once (InvalidDerivation, naming the limit), never a status-patch loop.
func TestBoundsOfWhatOthersWrite(t *testing.T) {
	ctx := context.Background()
	ns := env.Namespace(t, "bounds")
	drvs := farm.NewDrvs(t)
	const sys = "x86_64-linux"
	outputs := func(n int) []string {
		var o []string
		for i := range n {
			o = append(o, fmt.Sprintf("out%d", i))
		}
		o[0] = "out"
		return o
	}
	forty := drvs.AddOutputs(t, "forty-outputs", sys, 1, outputs(40))
	// The .drv's own name has at most 211 characters, ".drv" included; its "doc" output's path
	// name is "<name>-doc", 211 characters: a 255-character path in /gnu/store.
	long := drvs.AddOutputs(t, strings.Repeat("n", 207), sys, 2, []string{"out", "doc"})
	seventy := drvs.AddOutputs(t, "seventy-outputs", sys, 3, outputs(70))
	env.StartController(t, ns, drvs.Dir, farm.ControllerOptions{Strategy: planner.Basic})

	huge := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: "hostile", Namespace: ns}}
	agentlease.Apply(huge, agentlease.Info{Name: "hostile", Systems: []string{sys}, Slots: 1, FreeSlots: 1}, time.Now(), time.Minute)
	huge.Annotations[agentlease.AnnotationSlots] = "1000000000000"
	if err := env.Client.Create(ctx, huge); err != nil {
		t.Fatal(err)
	}
	for name, drv := range map[string]string{"forty": forty, "long": long, "seventy": seventy} {
		if err := env.Client.Create(ctx, farm.MakeBuild(name, ns, drv).Obj()); err != nil {
			t.Fatalf("creating %s: %v", name, err)
		}
	}
	env.StartAgent(t, env.Kubeconfig(t), ns, farm.AgentSpec{Name: "bounds-0", Systems: []string{sys}, Slots: 2,
		TestDuration: 20 * time.Millisecond, LeaseDuration: 5 * time.Second, Record: filepath.Join(t.TempDir(), "r.jsonl")})
	get := func(name string) *farmv1.Build {
		b := &farmv1.Build{}
		if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, b); err != nil {
			t.Fatal(err)
		}
		return b
	}
	waitFor(t, time.Minute, "the builds to end", func() (bool, string) {
		f, l, s := get("forty"), get("long"), get("seventy")
		return f.Status.Phase.Finished() && l.Status.Phase.Finished() && s.Status.Phase.Finished(),
			fmt.Sprintf("forty %s, long %s, seventy %s %+v", f.Status.Phase, l.Status.Phase, s.Status.Phase, s.Status.Conditions)
	})
	if b := get("forty"); b.Status.Phase != farmv1.BuildSucceeded || len(b.Status.Outputs) != 40 {
		t.Errorf("forty: %s with %d outputs, want Succeeded with 40", b.Status.Phase, len(b.Status.Outputs))
	}
	if b := get("long"); b.Status.Phase != farmv1.BuildSucceeded || len(b.Status.Outputs) != 2 || len(b.Status.Outputs[0].Path) != 255 {
		t.Errorf("long: %s, outputs %+v; want Succeeded with a 255-character path", b.Status.Phase, b.Status.Outputs)
	}
	b := get("seventy")
	c := b.Status.Conditions
	if b.Status.Phase != farmv1.BuildFailed || b.Status.AttemptCount != 0 || !strings.Contains(fmt.Sprint(c), "70 outputs") {
		t.Errorf("seventy: %s after %d attempts, conditions %+v; want Failed at once, naming its 70 outputs", b.Status.Phase, b.Status.AttemptCount, c)
	}
	var evs []string
	waitFor(t, 10*time.Second, "an Event on the malformed Lease", func() (bool, string) {
		var list eventsv1.EventList
		if err := env.Client.List(ctx, &list, client.InNamespace(ns)); err != nil {
			t.Fatal(err)
		}
		evs = evs[:0]
		for _, e := range list.Items {
			evs = append(evs, e.Reason+": "+e.Note)
			if e.Regarding.Name == "hostile" && e.Reason == "MalformedLease" {
				return true, ""
			}
		}
		return false, strings.Join(evs, "; ")
	})
}

// TestRunningOnAnUnknownAgentReturns: a Build left Running on an agent whose Lease is gone (it
// vanished while the controller was down: no Lease event will ever come) is found through the
// Build itself, checked on a fresh read, and returned as AgentLost, not left Running for ever.
func TestRunningOnAnUnknownAgentReturns(t *testing.T) {
	ctx := context.Background()
	ns := env.Namespace(t, "ghost")
	drvs := farm.NewDrvs(t)
	b := farm.MakeBuild("orphan", ns, drvs.Add(t, "orphan", "x86_64-linux", 1)).Obj()
	if err := env.Client.Create(ctx, b); err != nil {
		t.Fatal(err)
	}
	b.Status.Phase = farmv1.BuildRunning
	b.Status.AttemptCount = 1
	b.Status.Allocation = &farmv1.Allocation{Agent: "ghost", PlannedAt: metav1.Now()}
	b.Status.Attempt = &farmv1.Attempt{Agent: "ghost", Started: metav1.Now()}
	if err := env.Client.Status().Update(ctx, b); err != nil {
		t.Fatal(err)
	}
	env.StartController(t, ns, drvs.Dir, farm.ControllerOptions{Strategy: planner.Basic})
	waitFor(t, 20*time.Second, "the orphaned attempt to be returned", func() (bool, string) {
		got := &farmv1.Build{}
		if err := env.Client.Get(ctx, client.ObjectKeyFromObject(b), got); err != nil {
			t.Fatal(err)
		}
		st := got.Status
		done := st.Phase != farmv1.BuildRunning && len(st.Attempts) == 1 && st.Attempts[0].Reason == farmv1.ReasonAgentLost
		return done, fmt.Sprintf("%s, attempts %+v", st.Phase, st.Attempts)
	})
}

// TestAgentExpiryOnTheControllersClock: an agent whose clock runs an hour behind renews its Lease
// with renewTimes an hour old; it is not declared lost while it renews (expiry is judged from when
// the controller saw each renewal), and it is once it stops.
func TestAgentExpiryOnTheControllersClock(t *testing.T) {
	ctx := context.Background()
	ns := env.Namespace(t, "skew")
	drvs := farm.NewDrvs(t)
	env.StartController(t, ns, drvs.Dir, farm.ControllerOptions{Strategy: planner.Basic})
	skew := -time.Hour
	l := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: "skewed", Namespace: ns}}
	agentlease.Apply(l, agentlease.Info{Name: "skewed", Systems: []string{"x86_64-linux"}, Slots: 1, FreeSlots: 0},
		time.Now().Add(skew), 3*time.Second)
	if err := env.Client.Create(ctx, l); err != nil {
		t.Fatal(err)
	}
	b := farm.MakeBuild("on-skewed", ns, drvs.Add(t, "on-skewed", "x86_64-linux", 1)).Obj()
	if err := env.Client.Create(ctx, b); err != nil {
		t.Fatal(err)
	}
	b.Status.Phase, b.Status.AttemptCount = farmv1.BuildRunning, 1
	b.Status.Allocation = &farmv1.Allocation{Agent: "skewed", PlannedAt: metav1.Now()}
	b.Status.Attempt = &farmv1.Attempt{Agent: "skewed", Started: metav1.Now()}
	if err := env.Client.Status().Update(ctx, b); err != nil {
		t.Fatal(err)
	}
	phase := func() farmv1.BuildPhase {
		got := &farmv1.Build{}
		if err := env.Client.Get(ctx, client.ObjectKeyFromObject(b), got); err != nil {
			t.Fatal(err)
		}
		return got.Status.Phase
	}
	for range 8 { // renewing every second for 8 s: more than twice the 3 s term
		time.Sleep(time.Second)
		if err := env.Client.Get(ctx, client.ObjectKeyFromObject(l), l); err != nil {
			t.Fatal(err)
		}
		agentlease.Apply(l, agentlease.Info{Name: "skewed", Systems: []string{"x86_64-linux"}, Slots: 1, FreeSlots: 0},
			time.Now().Add(skew), 3*time.Second)
		if err := env.Client.Update(ctx, l); err != nil {
			t.Fatal(err)
		}
		if p := phase(); p != farmv1.BuildRunning {
			t.Fatalf("the Build of an agent that renews its Lease went %s: its clock's skew was taken for expiry", p)
		}
	}
	waitFor(t, 15*time.Second, "the agent to be declared lost once it stopped renewing", func() (bool, string) {
		p := phase()
		return p != farmv1.BuildRunning, string(p)
	})
}
