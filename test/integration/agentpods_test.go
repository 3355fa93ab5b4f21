package integration

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/guixfarm/guix-farm/agent/testbuilder"
	farmv1 "github.com/guixfarm/guix-farm/api/v1alpha1"
	"github.com/guixfarm/guix-farm/controllers/agentpool"
	"github.com/guixfarm/guix-farm/internal/agentlease"
	"github.com/guixfarm/guix-farm/internal/planner"
	"github.com/guixfarm/guix-farm/test/farm"
)

// TestAgentPoolPods runs two autoscaled pools as StatefulSets with the real kube-controller-manager
// and kube-scheduler, on Node objects of two architectures, their agents run as real processes by
// a process kubelet. It checks placement and the pod's shape, that 50 aarch64 builds scale the
// aarch64 pool to its max while the x86_64 pool stays at its min, that a template change rolls
// the agents while they build, that a scale-down drains agents while they build, that the pool
// returns to zero once its queue is empty, and, from the attempt history, that no build failed
// and none was interrupted.
func TestAgentPoolPods(t *testing.T) {
	ctx := context.Background()
	env.StartControlPlane(t)
	ns := env.Namespace(t, "pods")
	for i := range 2 {
		env.AddNode(t, fmt.Sprintf("%s-arm64-%d", ns, i), "arm64")
	}
	env.AddNode(t, ns+"-amd64-0", "amd64")
	if err := env.Client.Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "farm-agent", Namespace: ns}}); err != nil {
		t.Fatal(err)
	}

	drvs := farm.NewDrvs(t)
	env.StartController(t, ns, drvs.Dir, farm.ControllerOptions{Strategy: planner.Basic, AgentPods: agentpool.Defaults{
		AgentImage: "guix-farm-agent:test", DaemonImage: "guix-farm-test-daemon:test", ServiceAccount: "farm-agent",
		PublisherURL: "http://127.0.0.1:1", SystemArch: agentpool.DefaultSystemArch(),
	}})
	kubelet := &farm.ProcessKubelet{Env: env, Namespace: ns, Kubeconfig: env.Kubeconfig(t),
		// The test builder stands in for the daemon; no metrics port, no store to watch.
		Extra: []string{"--builder=test", "--metrics-bind-address=", "--store-path=", "--publisher-url=", "--lease-duration=6s"}}
	kubelet.Run(t)
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		var evs corev1.EventList
		_ = env.Client.List(context.Background(), &evs, client.InNamespace(ns))
		for _, e := range evs.Items {
			if e.Type == corev1.EventTypeWarning {
				t.Logf("event %s %s: %s", e.InvolvedObject.Name, e.Reason, e.Message)
			}
		}
		var pods corev1.PodList
		_ = env.Client.List(context.Background(), &pods, client.InNamespace(ns))
		for _, p := range pods.Items {
			t.Logf("pod %s node %q phase %s deleting %v", p.Name, p.Spec.NodeName, p.Status.Phase, p.DeletionTimestamp != nil)
		}
	})

	autoscaled := func(name, system string, minR, maxR int32) *farmv1.AgentPool {
		p := &farmv1.AgentPool{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Spec: farmv1.AgentPoolSpec{
			Systems: []string{system}, MaxParallelBuilds: 2, Replicas: ptr.To(minR), MinReplicas: ptr.To(minR), MaxReplicas: ptr.To(maxR),
			Autoscaling: &farmv1.Autoscaling{Enabled: true, StabilizationWindowSeconds: 8, IdleGraceSeconds: 2}}}
		if err := env.Client.Create(ctx, p); err != nil {
			t.Fatal(err)
		}
		return p
	}
	arm := autoscaled("arm", "aarch64-linux", 0, 4)
	x86 := autoscaled("x86", "x86_64-linux", 1, 3)

	// Placement and shape, on the x86_64 pool's first agent.
	waitFor(t, 60*time.Second, "the x86_64 pool's agent", func() (bool, string) {
		p := getPool(t, x86)
		return p.Status.ReadyAgents == 1, fmt.Sprintf("ready %d, conditions %v", p.Status.ReadyAgents, p.Status.Conditions)
	})
	nodeArch := func(pod *corev1.Pod) string { // nodes are named <ns>-<arch>-<i>
		if rest, ok := strings.CutPrefix(pod.Spec.NodeName, ns+"-"); ok {
			return strings.Split(rest, "-")[0]
		}
		return ""
	}
	for _, pod := range poolPods(t, ns, "x86") {
		if a := nodeArch(&pod); a != "amd64" {
			t.Errorf("x86_64 pod %s on node %q", pod.Name, pod.Spec.NodeName)
		}
		checkAgentPod(t, &pod)
	}

	const n = 50
	start := time.Now()
	for i := range n {
		b := farm.MakeBuild(fmt.Sprintf("a%02d", i), ns, drvs.Add(t, fmt.Sprintf("a%02d", i), "aarch64-linux", i)).
			Annotation(testbuilder.AnnotationDuration, "4s").Obj()
		if err := env.Client.Create(ctx, b); err != nil {
			t.Fatal(err)
		}
	}
	maxX86 := int32(0)
	watchX86 := func() {
		if r := ptr.Deref(getPool(t, x86).Spec.Replicas, 0); r > maxX86 {
			maxX86 = r
		}
	}
	waitFor(t, 60*time.Second, "the aarch64 pool at its max", func() (bool, string) {
		watchX86()
		p := getPool(t, arm)
		return ptr.Deref(p.Spec.Replicas, 0) == 4 && p.Status.ReadyAgents == 4,
			fmt.Sprintf("replicas %d, ready %d, claimable %d", ptr.Deref(p.Spec.Replicas, 0), p.Status.ReadyAgents, p.Status.ClaimableBuilds)
	})
	t.Logf("aarch64 pool at its max (4 agents) %s after the first of 50 builds was queued", time.Since(start).Round(100*time.Millisecond))
	for _, pod := range poolPods(t, ns, "arm") {
		if a := nodeArch(&pod); a != "arm64" {
			t.Errorf("aarch64 pod %s on node %q", pod.Name, pod.Spec.NodeName)
		}
		checkAgentPod(t, &pod)
	}

	// A template change while the agents build: they are drained and replaced one at a time.
	if err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur := getPool(t, arm)
		cur.Spec.Template = &corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Annotations: map[string]string{"rev": "2"}}}
		return env.Client.Update(ctx, cur)
	}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 60*time.Second, "an agent of the new template, while builds remain", func() (bool, string) {
		for _, pod := range poolPods(t, ns, "arm") {
			if pod.Annotations["rev"] == "2" && kubelet.Agent(&pod) != nil {
				return true, ""
			}
		}
		return false, "none yet"
	})
	if left := n - countPhase(t, ns, farmv1.BuildSucceeded); left == 0 {
		t.Errorf("the queue drained before any agent was replaced: the roll was not tested under load")
	} else {
		t.Logf("first agent of the new template running with %d builds left", left)
	}
	// A scale-down under load, during the roll: two agents are drained while builds remain.
	if err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur := getPool(t, arm)
		cur.Spec.Replicas, cur.Spec.MaxReplicas = ptr.To[int32](2), ptr.To[int32](2)
		return env.Client.Update(ctx, cur)
	}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 60*time.Second, "the aarch64 pool down to 2 agents", func() (bool, string) {
		pods := poolPods(t, ns, "arm")
		return len(pods) == 2, fmt.Sprintf("%d pods", len(pods))
	})
	if left := n - countPhase(t, ns, farmv1.BuildSucceeded); left == 0 {
		t.Errorf("the queue drained before the scale-down: it was not tested under load")
	} else {
		t.Logf("scaled down to 2 agents with %d builds left", left)
	}
	waitFor(t, 120*time.Second, "all 50 builds to succeed", func() (bool, string) {
		watchX86()
		done := 0
		for _, b := range listBuilds(t, ns) {
			if b.Status.Phase == farmv1.BuildSucceeded {
				done++
			}
		}
		return done == n, fmt.Sprint(done, " succeeded")
	})
	waitFor(t, 120*time.Second, "the aarch64 pool rolled out and back at zero", func() (bool, string) {
		watchX86()
		p := getPool(t, arm)
		pods := poolPods(t, ns, "arm")
		return ptr.Deref(p.Spec.Replicas, -1) == 0 && len(pods) == 0,
			fmt.Sprintf("replicas %d, pods %d, updated %d, draining %d", ptr.Deref(p.Spec.Replicas, -1), len(pods), p.Status.UpdatedReplicas, p.Status.DrainingAgents)
	})
	if maxX86 != 1 {
		t.Errorf("the x86_64 pool went to %d agents with no x86_64 build queued: want its min, 1", maxX86)
	}
	// Attempt history: one attempt each, none failed, none released or lost.
	for _, b := range listBuilds(t, ns) {
		if b.Status.Phase != farmv1.BuildSucceeded || b.Status.AttemptCount != 1 {
			t.Errorf("build %s: phase %s after %d attempts: want Succeeded in its first", b.Name, b.Status.Phase, b.Status.AttemptCount)
		}
	}
	for _, l := range listLeases(t, ns) {
		if l.Labels[agentlease.LabelPool] == "arm" {
			t.Errorf("Lease %s of a removed agent is left", l.Name)
		}
	}
}

func getPool(t testing.TB, p *farmv1.AgentPool) *farmv1.AgentPool {
	t.Helper()
	out := &farmv1.AgentPool{}
	if err := env.Client.Get(context.Background(), client.ObjectKeyFromObject(p), out); err != nil {
		t.Fatal(err)
	}
	return out
}

func poolPods(t testing.TB, ns, pool string) []corev1.Pod {
	t.Helper()
	var l corev1.PodList
	if err := env.Client.List(context.Background(), &l, client.InNamespace(ns), client.MatchingLabels(agentpool.Selector(pool))); err != nil {
		t.Fatal(err)
	}
	return l.Items
}

func listLeases(t testing.TB, ns string) []coordinationv1.Lease {
	t.Helper()
	var l coordinationv1.LeaseList
	if err := env.Client.List(context.Background(), &l, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	return l.Items
}

// checkAgentPod: the agent and its daemon sidecar share the store and the socket.
func checkAgentPod(t testing.TB, pod *corev1.Pod) {
	t.Helper()
	var daemon, agent *corev1.Container
	for i := range pod.Spec.InitContainers {
		if pod.Spec.InitContainers[i].Name == agentpool.DaemonContainer {
			daemon = &pod.Spec.InitContainers[i]
		}
	}
	for i := range pod.Spec.Containers {
		if pod.Spec.Containers[i].Name == agentpool.AgentContainer {
			agent = &pod.Spec.Containers[i]
		}
	}
	if daemon == nil || agent == nil {
		t.Fatalf("pod %s lacks the agent or the daemon sidecar", pod.Name)
	}
	mounted := func(c *corev1.Container, path string) bool {
		for _, m := range c.VolumeMounts {
			if m.MountPath == path {
				return true
			}
		}
		return false
	}
	for _, path := range []string{"/gnu/store", "/var/guix/daemon-socket"} {
		if !mounted(daemon, path) || !mounted(agent, path) {
			t.Errorf("pod %s: %s not shared by the agent and the daemon", pod.Name, path)
		}
	}
}

func countPhase(t testing.TB, ns string, phase farmv1.BuildPhase) int {
	n := 0
	for _, b := range listBuilds(t, ns) {
		if b.Status.Phase == phase {
			n++
		}
	}
	return n
}
