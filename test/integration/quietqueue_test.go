package integration

import (
	"context"
	"fmt"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	farmv1 "github.com/guixfarm/guix-farm/api/v1alpha1"
	"github.com/guixfarm/guix-farm/internal/planner"
	"github.com/guixfarm/guix-farm/test/farm"
)

// TestQuietQueue: by default (docs/scale.md), a Build that only waits (for a free agent, for its
// inputs) keeps the status it was created with (phase Pending, from the CRD's default, in kubectl
// and the status.phase field selector too), while a Build a user must look at (no agent for its
// system) gets its condition at once; once agents come, the waiting Builds are allocated,
// written and built as usual.
func TestQuietQueue(t *testing.T) {
	ctx := context.Background()
	ns := env.Namespace(t, "quiet")
	drvs := farm.NewDrvs(t)
	env.StartController(t, ns, drvs.Dir, farm.ControllerOptions{Strategy: planner.DerivationOrdered})
	// A pool serves x86_64-linux at zero agents: its Builds wait for an agent, as a queue does.
	pool := &farmv1.AgentPool{ObjectMeta: metav1.ObjectMeta{Name: "x86", Namespace: ns},
		Spec: farmv1.AgentPoolSpec{Systems: []string{"x86_64-linux"}, Replicas: ptr.To[int32](0)}}
	if err := env.Client.Create(ctx, pool); err != nil {
		t.Fatal(err)
	}
	// The pool must be known to the planner first: a Build reconciled before it would be written
	// at once with NoAgentForSystem, a condition a user must see.
	waitFor(t, 30*time.Second, "the pool reconciled", func() (bool, string) {
		p := getPool(t, pool)
		return p.Status.ObservedGeneration == p.Generation, fmt.Sprintf("observed %d", p.Status.ObservedGeneration)
	})
	a := drvs.Add(t, "quiet-a", "x86_64-linux", 1)
	b := drvs.Add(t, "quiet-b", "x86_64-linux", 2, a)
	for name, drv := range map[string]string{"a": a, "b": b} {
		if err := env.Client.Create(ctx, farm.MakeBuild(name, ns, drv).Obj()); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(build2FactsDelay)
	// Created after a and b: once its condition is written, the controller has been through
	// the others too.
	if err := env.Client.Create(ctx, farm.MakeBuild("riscv", ns, drvs.Add(t, "quiet-riscv", "riscv64-linux", 3)).Obj()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "riscv's Schedulable=False", func() (bool, string) {
		for _, x := range listBuilds(t, ns) {
			if x.Name == "riscv" {
				c := meta.FindStatusCondition(x.Status.Conditions, farmv1.BuildConditionSchedulable)
				return c != nil && c.Status == metav1.ConditionFalse, fmt.Sprintf("%+v", x.Status)
			}
		}
		return false, "no riscv Build"
	})
	for _, x := range listBuilds(t, ns) {
		if x.Name != "riscv" && (x.Status.Phase != farmv1.BuildPending || len(x.Status.Conditions) > 0 || x.Status.System != "" || len(x.ManagedFields) != 1) {
			t.Errorf("waiting Build %s was written: %+v, managed by %d", x.Name, x.Status, len(x.ManagedFields))
		}
	}
	var pending farmv1.BuildList
	if err := env.Client.List(ctx, &pending, client.InNamespace(ns), client.MatchingFields{"status.phase": string(farmv1.BuildPending)}); err != nil {
		t.Fatal(err)
	}
	if len(pending.Items) != 3 {
		t.Errorf("status.phase=Pending selects %d Builds, want the 3 waiting", len(pending.Items))
	}
	env.StartAgent(t, env.Kubeconfig(t), ns, farm.AgentSpec{Name: "agent-0", Pool: "x86", Systems: []string{"x86_64-linux"},
		Slots: 2, TestDuration: 100 * time.Millisecond, LeaseDuration: 5 * time.Second})
	waitFor(t, time.Minute, "a and b to succeed", func() (bool, string) {
		done := map[string]farmv1.BuildStatus{}
		for _, x := range listBuilds(t, ns) {
			done[x.Name] = x.Status
		}
		ok := done["a"].Phase == farmv1.BuildSucceeded && done["b"].Phase == farmv1.BuildSucceeded
		return ok && done["b"].System == "x86_64-linux", fmt.Sprintf("a %s, b %s", done["a"].Phase, done["b"].Phase)
	})
}

// build2FactsDelay is past the controller's FactsDelay (2 s), after which a waiting Build would
// get its first status write with WriteQueueStatus.
const build2FactsDelay = 3 * time.Second
