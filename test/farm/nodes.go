package farm

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/guixfarm/guix-farm/test/testbed"
)

// StartControlPlane runs the real kube-controller-manager (its StatefulSet controller) and
// kube-scheduler against the test apiserver, so StatefulSets make pods and pods are placed on
// nodes by their selectors. They stop when the test ends. It skips the test when the binaries
// are missing and the test bed is not required. More controllers can be named: a real kubelet
// (test/node) needs the node lifecycle controller to lift the not-ready taint it registers its
// node with, and the root CA publisher for the kube-root-ca.crt its pods' API access mounts.
func (e *Env) StartControlPlane(t testing.TB, moreControllers ...string) {
	t.Helper()
	bin := testbed.ToolsBin()
	for _, b := range []string{"kube-controller-manager", "kube-scheduler"} {
		if _, err := os.Stat(filepath.Join(bin, b)); err != nil {
			msg := fmt.Sprintf("%s not in %s: run hack/tools.sh kube-control-plane (or make test)", b, bin)
			if testbed.Required() {
				t.Fatal(msg)
			}
			t.Skip(msg)
		}
	}
	kubeconfig := e.Kubeconfig(t)
	dir := t.TempDir()
	// Only the controllers the pools need: the node lifecycle controller would taint the
	// kubelet-less nodes as unreachable and evict their pods.
	e.daemon(t, "kube-controller-manager", filepath.Join(bin, "kube-controller-manager"),
		"--kubeconfig="+kubeconfig, "--leader-elect=false", "--bind-address=127.0.0.1",
		fmt.Sprintf("--secure-port=%d", freePort(t)), "--cert-dir="+filepath.Join(dir, "kcm"),
		"--controllers="+strings.Join(append([]string{"statefulset-controller", "disruption-controller"}, moreControllers...), ","),
		"--use-service-account-credentials=false")
	e.daemon(t, "kube-scheduler", filepath.Join(bin, "kube-scheduler"),
		"--kubeconfig="+kubeconfig, "--leader-elect=false", "--bind-address=127.0.0.1",
		fmt.Sprintf("--secure-port=%d", freePort(t)), "--cert-dir="+filepath.Join(dir, "scheduler"))
}

// daemon runs a control-plane process until the test ends, printing its log if the test failed.
func (e *Env) daemon(t testing.TB, name, bin string, args ...string) {
	t.Helper()
	logf, err := os.Create(filepath.Join(t.TempDir(), name+".log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// A test killed (a timeout's panic, SIGKILL) takes it along rather than leaving it running.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			data, _ := os.ReadFile(logf.Name())
			t.Logf("%s log:\n%s", name, tail(string(data), 3000))
		}
	})
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// AddNode registers a Node object of an architecture, ready and roomy. No kubelet runs behind it:
// a ProcessKubelet plays that part for the farm's agent pods.
func (e *Env) AddNode(t testing.TB, name, arch string) {
	t.Helper()
	ctx := context.Background()
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{
		"kubernetes.io/arch": arch, "kubernetes.io/os": "linux", "kubernetes.io/hostname": name}}}
	if err := e.Client.Create(ctx, n); err != nil {
		t.Fatalf("creating node %s: %v", name, err)
	}
	room := corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("64"), corev1.ResourceMemory: resource.MustParse("256Gi"),
		corev1.ResourcePods: resource.MustParse("110")}
	n.Status = corev1.NodeStatus{Capacity: room, Allocatable: room,
		Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady",
			LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now()}}}
	if err := e.Client.Status().Update(ctx, n); err != nil {
		t.Fatalf("readying node %s: %v", name, err)
	}
	// The apiserver taints a new node not-ready; the node lifecycle controller, which does not
	// run here (it would find no kubelet), is what lifts the taint from a ready node.
	n.Spec.Taints = nil
	if err := e.Client.Update(ctx, n); err != nil {
		t.Fatalf("untainting node %s: %v", name, err)
	}
	t.Cleanup(func() { _ = e.Client.Delete(context.Background(), n) })
}

// ProcessKubelet plays the kubelet of the nodes AddNode made, for the agent pods of one
// namespace: a pod placed on a node gets its agent container run as a real agent process (with
// the pod's own arguments and downward-API environment, plus Extra), and is marked Running and
// Ready; a pod being deleted gets SIGTERM, as a kubelet sends, and is removed once its agent has
// exited (having released or finished its builds).
type ProcessKubelet struct {
	Env        *Env
	Namespace  string
	Kubeconfig string
	// Extra arguments every agent gets after the pod's (later flags win).
	Extra []string

	mu     sync.Mutex
	agents map[types.UID]*AgentProcess
	// Started counts the agent processes started, by pod name.
	started map[string]int
}

// Run plays the kubelet until the test ends.
func (k *ProcessKubelet) Run(t testing.TB) {
	t.Helper()
	k.agents, k.started = map[types.UID]*AgentProcess{}, map[string]int{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			k.sync(ctx, t)
			select {
			case <-ctx.Done():
			case <-time.After(200 * time.Millisecond):
			}
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
}

// Agent returns the process running pod's agent, if any.
func (k *ProcessKubelet) Agent(pod *corev1.Pod) *AgentProcess {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.agents[pod.UID]
}

func (k *ProcessKubelet) sync(ctx context.Context, t testing.TB) {
	var pods corev1.PodList
	if err := k.Env.Client.List(ctx, &pods, client.InNamespace(k.Namespace)); err != nil {
		return
	}
	for i := range pods.Items {
		pod := &pods.Items[i]
		if pod.Spec.NodeName == "" {
			continue
		}
		k.mu.Lock()
		p, running := k.agents[pod.UID]
		k.mu.Unlock()
		switch {
		case pod.DeletionTimestamp != nil:
			if running {
				p.Stop() // SIGTERM, then wait: the agent releases what it holds and deletes its Lease
				k.mu.Lock()
				delete(k.agents, pod.UID)
				k.mu.Unlock()
			}
			uid := pod.UID
			_ = k.Env.Client.Delete(ctx, pod, client.GracePeriodSeconds(0), client.Preconditions{UID: &uid})
		case !running:
			k.start(ctx, t, pod)
		}
	}
}

// start runs the pod's agent container and reports the pod Running and Ready.
func (k *ProcessKubelet) start(ctx context.Context, t testing.TB, pod *corev1.Pod) {
	var args []string
	for _, c := range pod.Spec.Containers {
		if c.Name == "agent" {
			args = append(args, c.Args...)
		}
	}
	args = append(args, "--kubeconfig="+k.Kubeconfig)
	args = append(args, k.Extra...)
	env := []string{"AGENT_NAME=" + pod.Name, "POD_NAMESPACE=" + pod.Namespace}
	p := startAgentProcess(t, pod.Name, AgentBinary(t), args, env, 3000)
	k.mu.Lock()
	k.agents[pod.UID] = p
	k.started[pod.Name]++
	k.mu.Unlock()
	now := metav1.Now()
	pod.Status.Phase = corev1.PodRunning
	pod.Status.StartTime = &now
	pod.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
		{Type: corev1.ContainersReady, Status: corev1.ConditionTrue, LastTransitionTime: now}}
	if err := k.Env.Client.Status().Update(ctx, pod); err != nil && !strings.Contains(err.Error(), "not found") {
		t.Logf("marking pod %s running: %v", pod.Name, err)
	}
}
