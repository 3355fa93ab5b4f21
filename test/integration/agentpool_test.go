package integration

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/guixfarm/guix-farm/agent/testbuilder"
	farmv1 "github.com/guixfarm/guix-farm/api/v1alpha1"
	"github.com/guixfarm/guix-farm/internal/metrics"
	"github.com/guixfarm/guix-farm/internal/planner"
	"github.com/guixfarm/guix-farm/test/farm"
)

// TestAgentPoolStatus: a pool's status follows its agents and its queue. With no agent it is not
// Ready and its queue holds the builds for its systems; an agent of the pool makes it Ready and
// its running builds show; when the agent stops, the pool has no ready agent again. The
// controller's metrics tell the same story.
func TestAgentPoolStatus(t *testing.T) {
	ctx := context.Background()
	ns := env.Namespace(t, "pool")
	drvs := farm.NewDrvs(t)
	reg := prometheus.NewRegistry()
	env.StartController(t, ns, drvs.Dir, farm.ControllerOptions{Strategy: planner.Basic, Metrics: metrics.New(reg)})
	// waitMetrics waits until every named series has its value.
	waitMetrics := func(what string, want map[string]float64) {
		t.Helper()
		waitFor(t, 30*time.Second, what, func() (bool, string) {
			got := gather(t, reg)
			for k, v := range want {
				if got[k] != v {
					return false, fmt.Sprintf("%s = %v, want %v", k, got[k], v)
				}
			}
			return true, ""
		})
	}
	const sys = "x86_64-linux"
	const builds = 3
	for i := range builds {
		b := farm.MakeBuild(fmt.Sprintf("p%d", i), ns, drvs.Add(t, fmt.Sprintf("p%d", i), sys, i)).
			Annotation(testbuilder.AnnotationDuration, "2s").Obj()
		if err := env.Client.Create(ctx, b); err != nil {
			t.Fatal(err)
		}
	}
	// An aarch64 build is not in this pool's queue.
	other := farm.MakeBuild("arm", ns, drvs.Add(t, "arm", "aarch64-linux", 0)).Obj()
	if err := env.Client.Create(ctx, other); err != nil {
		t.Fatal(err)
	}
	// The controller knows the builds' systems once it has written their facts.
	waitFor(t, 30*time.Second, "the builds' facts", func() (bool, string) {
		known := 0
		for _, b := range listBuilds(t, ns) {
			if b.Status.System != "" {
				known++
			}
		}
		return known == builds+1, fmt.Sprint(known, " builds with a system")
	})

	pool := &farmv1.AgentPool{ObjectMeta: metav1.ObjectMeta{Name: "x86", Namespace: ns},
		Spec: farmv1.AgentPoolSpec{Systems: []string{sys}, Replicas: ptr.To[int32](1), MaxParallelBuilds: 2}}
	if err := env.Client.Create(ctx, pool); err != nil {
		t.Fatal(err)
	}
	waitPool := func(what string, want func(*farmv1.AgentPoolStatus) bool) {
		t.Helper()
		waitFor(t, 45*time.Second, what, func() (bool, string) {
			p := &farmv1.AgentPool{}
			if err := env.Client.Get(ctx, client.ObjectKeyFromObject(pool), p); err != nil {
				return false, err.Error()
			}
			st := &p.Status
			ready := meta.FindStatusCondition(st.Conditions, farmv1.AgentPoolConditionReady)
			msg := fmt.Sprintf("ready agents %d, running %d, queue %d, Ready %v", st.ReadyAgents, st.RunningBuilds, st.QueueDepth, ready)
			return ready != nil && ready.ObservedGeneration == p.Generation && want(st), msg
		})
	}
	waitPool("a pool without agents", func(st *farmv1.AgentPoolStatus) bool {
		return st.ReadyAgents == 0 && st.QueueDepth == builds &&
			meta.IsStatusConditionFalse(st.Conditions, farmv1.AgentPoolConditionReady)
	})

	a := env.StartAgent(t, env.Kubeconfig(t), ns, farm.AgentSpec{Name: "x86-0", Pool: "x86", Systems: []string{sys},
		Slots: 2, LeaseDuration: 10 * time.Second, Record: filepath.Join(t.TempDir(), "r.jsonl")})
	waitPool("the agent to run two builds", func(st *farmv1.AgentPoolStatus) bool {
		return st.ReadyAgents == 1 && st.Replicas == 1 && st.RunningBuilds == 2 &&
			meta.IsStatusConditionTrue(st.Conditions, farmv1.AgentPoolConditionReady)
	})
	waitFor(t, time.Minute, "the pool's builds to succeed", func() (bool, string) {
		p := phases(listBuilds(t, ns))
		return p[farmv1.BuildSucceeded] == builds, fmt.Sprint(p)
	})
	waitPool("an idle pool", func(st *farmv1.AgentPoolStatus) bool {
		return st.ReadyAgents == 1 && st.RunningBuilds == 0
	})
	waitMetrics("the controller's metrics of a built pool", map[string]float64{
		`guixfarm_builds{phase="Succeeded",system="x86_64-linux"}`: builds,
		`guixfarm_builds{phase="Pending",system="aarch64-linux"}`:  1,
		`guixfarm_build_transitions_total{phase="Succeeded"}`:      builds,
		`guixfarm_build_transitions_total{phase="Running"}`:        builds,
		`guixfarm_queue_depth{system="aarch64-linux"}`:             1,
		`guixfarm_agents`: 1,
	})
	if n := gather(t, reg)["guixfarm_controller_plan_duration_seconds_count"]; n == 0 {
		t.Error("no planning pass was timed")
	}

	a.Stop() // drops its Lease
	waitPool("the pool to lose its agent", func(st *farmv1.AgentPoolStatus) bool {
		return st.ReadyAgents == 0 && meta.IsStatusConditionFalse(st.Conditions, farmv1.AgentPoolConditionReady)
	})
	waitMetrics("no agents", map[string]float64{`guixfarm_agents`: 0})
}

// gather reads every series of reg as name{label="value",...} (labels sorted by name, as the
// registry returns them); a histogram gives its _count.
func gather(t testing.TB, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, f := range fams {
		for _, m := range f.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
			}
			name := f.GetName()
			if len(labels) > 0 {
				name += "{" + strings.Join(labels, ",") + "}"
			}
			switch {
			case m.GetGauge() != nil:
				out[name] = m.GetGauge().GetValue()
			case m.GetCounter() != nil:
				out[name] = m.GetCounter().GetValue()
			case m.GetHistogram() != nil:
				out[name+"_count"] = float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return out
}
