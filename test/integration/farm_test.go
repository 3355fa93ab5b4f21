package integration

import (
	"context"
	"fmt"
	"math/rand"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/guixfarm/guix-farm/agent/testbuilder"
	farmv1 "github.com/guixfarm/guix-farm/api/v1alpha1"
	"github.com/guixfarm/guix-farm/internal/planner"
	"github.com/guixfarm/guix-farm/test/farm"
)

// TestFarm: 200 Builds of mixed priorities and systems, 3 agent processes, one killed with SIGKILL
// mid-build. Every build ends Succeeded, no attempt runs on two agents at once, builds whose first
// attempt fails succeed on retry, a canceled build is never started, and builds for a system no
// agent serves wait with a clear condition.
func TestFarm(t *testing.T) {
	ctx := context.Background()
	ns := env.Namespace(t, "farm")
	drvs := farm.NewDrvs(t)
	env.StartController(t, ns, drvs.Dir, farm.ControllerOptions{Strategy: planner.Basic})
	kc := env.Kubeconfig(t)
	record := filepath.Join(t.TempDir(), "attempts.jsonl")

	for _, p := range []*farmv1.AgentPool{
		{ObjectMeta: metav1.ObjectMeta{Name: "x86", Namespace: ns}, Spec: farmv1.AgentPoolSpec{Systems: []string{"x86_64-linux"}, Replicas: ptr.To[int32](2), MaxParallelBuilds: 2}},
		{ObjectMeta: metav1.ObjectMeta{Name: "arm", Namespace: ns}, Spec: farmv1.AgentPoolSpec{Systems: []string{"aarch64-linux"}, Replicas: ptr.To[int32](1), MaxParallelBuilds: 2}},
	} {
		if err := env.Client.Create(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	spec := func(name, pool string, systems ...string) farm.AgentSpec {
		return farm.AgentSpec{Name: name, Pool: pool, Systems: systems, Slots: 2, TestDuration: 150 * time.Millisecond,
			LeaseDuration: 3 * time.Second, Record: record}
	}
	// The victim's builds take long, so the kill lands mid-build rather than between two builds.
	slow := spec("agent-a", "x86", "x86_64-linux")
	slow.TestDuration = 3 * time.Second
	victim := env.StartAgent(t, kc, ns, slow)
	env.StartAgent(t, kc, ns, spec("agent-b", "x86", "x86_64-linux"))
	env.StartAgent(t, kc, ns, spec("agent-c", "arm", "aarch64-linux"))

	rng := rand.New(rand.NewSource(1))
	systems := []string{"x86_64-linux", "aarch64-linux"}
	failFirst := map[string]bool{}
	for i := range 200 {
		sys := systems[i%2]
		w := farm.MakeBuild(fmt.Sprintf("b%03d", i), ns, drvs.Add(t, fmt.Sprintf("pkg%03d", i), sys, i)).
			Priority(int32(rng.Intn(5))).Retry(3, 1).Label("tag", fmt.Sprintf("batch%d", i%4))
		if i%10 == 3 {
			w.Annotation(testbuilder.AnnotationFailAttempts, "1")
			failFirst[w.Name] = true
		}
		if i%25 == 7 {
			w.Annotation(testbuilder.AnnotationDuration, "3s") // long enough to be mid-build at the kill
		}
		if err := env.Client.Create(ctx, w.Obj()); err != nil {
			t.Fatal(err)
		}
	}
	// A canceled build: deferred so it cannot start before the cancel lands.
	canceled := farm.MakeBuild("canceled", ns, drvs.Add(t, "canceled", "x86_64-linux", 1000)).
		DeferUntil(metav1.NewTime(time.Now().Add(time.Hour))).Obj()
	unserved := farm.MakeBuild("riscv", ns, drvs.Add(t, "riscv-pkg", "riscv64-linux", 1001)).Obj()
	for _, b := range []*farmv1.Build{canceled, unserved} {
		if err := env.Client.Create(ctx, b); err != nil {
			t.Fatal(err)
		}
	}
	patch := client.MergeFrom(canceled.DeepCopy())
	canceled.Spec.Canceled = true
	if err := env.Client.Patch(ctx, canceled, patch); err != nil {
		t.Fatal(err)
	}

	// Kill agent-a while it runs a build.
	waitFor(t, 60*time.Second, "agent-a to run a build", func() (bool, string) {
		for _, b := range listBuilds(t, ns) {
			if b.Status.Attempt != nil && b.Status.Attempt.Agent == "agent-a" {
				return true, ""
			}
		}
		return false, fmt.Sprint(phases(listBuilds(t, ns)))
	})
	victim.Kill()
	killedAt := time.Now()

	waitFor(t, 4*time.Minute, "every build to succeed", func() (bool, string) {
		n := 0
		for _, b := range listBuilds(t, ns) {
			if b.Status.Phase == farmv1.BuildSucceeded {
				n++
			}
		}
		return n == 200, fmt.Sprintf("%d of 200 succeeded; phases %v", n, phases(listBuilds(t, ns)))
	})

	builds := listBuilds(t, ns)
	byName := map[string]farmv1.Build{}
	lost := 0
	for _, b := range builds {
		byName[b.Name] = b
		for _, a := range b.Status.Attempts {
			if a.Reason == farmv1.ReasonAgentLost {
				lost++
				if a.Agent != "agent-a" {
					t.Errorf("build %s: attempt on %s marked AgentLost, only agent-a was killed", b.Name, a.Agent)
				}
			}
		}
		if failFirst[b.Name] && b.Status.Phase == farmv1.BuildSucceeded && b.Status.AttemptCount < 2 {
			t.Errorf("build %s was set to fail its first attempt but succeeded in %d attempts", b.Name, b.Status.AttemptCount)
		}
	}
	if lost == 0 {
		t.Errorf("no attempt was recorded as AgentLost after killing agent-a")
	}
	if c := byName["canceled"]; c.Status.Phase != farmv1.BuildCanceled || c.Status.AttemptCount != 0 {
		t.Errorf("canceled build: phase %s, %d attempts; want Canceled, 0", c.Status.Phase, c.Status.AttemptCount)
	}
	r := byName["riscv"]
	cond := meta.FindStatusCondition(r.Status.Conditions, farmv1.BuildConditionSchedulable)
	if r.Status.Phase != farmv1.BuildPending || cond == nil || cond.Status != metav1.ConditionFalse || cond.Reason != string(planner.NoAgentForSystem) {
		t.Errorf("riscv build: phase %s, condition %+v; want Pending with Schedulable=False/NoAgentForSystem", r.Status.Phase, cond)
	} else {
		t.Logf("unserved build waits: %s", cond.Message)
	}

	checkRecords(t, record, killedAt, byName)
}

// checkRecords proves from the test builder's records that no build ever had two attempts running
// at once, and that the canceled build never started.
func checkRecords(t *testing.T, path string, killedAt time.Time, byName map[string]farmv1.Build) {
	t.Helper()
	recs, err := testbuilder.ReadRecords(path)
	if err != nil {
		t.Fatal(err)
	}
	type span struct {
		agent      string
		start, end time.Time
	}
	open := map[string]map[int32]*span{}
	spans := map[string][]*span{}
	for _, r := range recs {
		if open[r.Build] == nil {
			open[r.Build] = map[int32]*span{}
		}
		switch r.Event {
		case "start":
			s := &span{agent: r.Agent, start: r.Time}
			open[r.Build][r.Attempt] = s
			spans[r.Build] = append(spans[r.Build], s)
		case "end":
			if s := open[r.Build][r.Attempt]; s != nil {
				s.end = r.Time
			}
		}
		if r.Build == byName["canceled"].Namespace+"/canceled" {
			t.Errorf("the canceled build was started on %s", r.Agent)
		}
	}
	for uid, ss := range spans {
		for _, s := range ss {
			if s.end.IsZero() {
				if s.agent != "agent-a" {
					t.Errorf("build %s: attempt on %s never ended", uid, s.agent)
				}
				s.end = killedAt
			}
		}
		sort.Slice(ss, func(i, j int) bool { return ss[i].start.Before(ss[j].start) })
		for i := 1; i < len(ss); i++ {
			if ss[i].start.Before(ss[i-1].end) {
				t.Errorf("build %s: attempt on %s started at %s while the one on %s ran until %s",
					uid, ss[i].agent, ss[i].start.Format(time.StampMicro), ss[i-1].agent, ss[i-1].end.Format(time.StampMicro))
			}
		}
	}
	t.Logf("%d attempt records checked for overlap", len(recs))
}
