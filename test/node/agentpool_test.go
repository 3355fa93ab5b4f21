package node

import (
	"bytes"
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	farmv1 "github.com/guixfarm/guix-farm/api/v1alpha1"
	"github.com/guixfarm/guix-farm/controllers/agentpool"
	"github.com/guixfarm/guix-farm/internal/agentlease"
	"github.com/guixfarm/guix-farm/internal/drvsource"
	"github.com/guixfarm/guix-farm/internal/planner"
	"github.com/guixfarm/guix-farm/test/farm"
	"github.com/guixfarm/guix-farm/test/testbed"
	"github.com/guixfarm/guix-farm/test/testbed/node"
)

// imagesDir holds the images `make images` writes (hack/ocibuild); GUIXFARM_IMAGES_DIR overrides.
func imagesDir() string {
	if d := os.Getenv("GUIXFARM_IMAGES_DIR"); d != "" {
		return d
	}
	return filepath.Join(farm.Root(), "bin", "images")
}

// imageArchive returns the oci-archive name of `make images` and the image's name, skipping the
// test (failing it under GUIXFARM_REQUIRE_TESTBED=1) when it is missing.
func imageArchive(t *testing.T, name string) (archive, ref string) {
	t.Helper()
	archive = filepath.Join(imagesDir(), name)
	if _, err := os.Stat(archive); err != nil {
		msg := fmt.Sprintf("image %s is missing: run make images (or set GUIXFARM_IMAGES_DIR)", archive)
		if testbed.Required() {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	ref, err := testbed.OCIArchiveRef(archive)
	if err != nil {
		t.Fatal(err)
	}
	return archive, ref
}

// TestAgentPoolBuildsOnNode: an AgentPool's pod, as the controller makes it (its StatefulSet
// through the real kube-controller-manager, placed by the real kube-scheduler), runs on the real
// node from the project's images: the agent as 65532 and the test daemon (nix-daemon) as its
// native sidecar, sharing the store. The agent authenticates in-cluster with its pod's
// ServiceAccount token, substitutes the submitted derivation's closure from the farm's bucket into
// its daemon, builds it there, and publishes the output through the controller's publisher
// service with its pod-bound token; a fresh nix-daemon then substitutes the output from the
// bucket, signed by the farm.
func TestAgentPoolBuildsOnNode(t *testing.T) {
	agentTar, agentRef := imageArchive(t, "guix-farm-agent.tar")
	daemonTar, daemonRef := imageArchive(t, "guix-farm-test-daemon.tar")
	ctx := context.Background()
	start := time.Now()

	env.StartControlPlane(t, "node-lifecycle-controller", "root-ca-certificate-publisher-controller")
	n := node.Start(t, env.Kubeconfig(t), agentTar, daemonTar)
	ns := env.Namespace(t, "pool")
	env.BindAgentRole(t, ns)
	b := farm.NewBucket(t, "farm-cache")

	// The derivation, instantiated in a submitter's store: busybox is its only input.
	submitter := testbed.StartNixDaemon(t, testbed.NixOptions{})
	bb := submitter.AddBusybox(t)
	want := "built on node1 " + strconv.FormatInt(time.Now().UnixNano(), 36)
	drv := submitter.Instantiate(t, "on-node", fmt.Sprintf(`let bb = builtins.storePath %s; in
derivation { name = "built-on-node"; system = builtins.currentSystem; builder = "${bb}/bin/busybox";
  args = [ "sh" "-c" "echo %s > $out" ]; }`, testbed.NixString(bb), want))

	publisherAddr := fmt.Sprintf("127.0.0.1:%d", testbed.FreePort(t))
	env.RunController(t, ns, "", farm.ControllerOptions{Strategy: planner.Basic,
		Facts: drvsource.NewFactsCache(b.Reader, 100), Bucket: b.Reader,
		Publisher: env.PublisherOptions(b), PublisherAddr: publisherAddr,
		AgentPods: agentpool.Defaults{AgentImage: agentRef, DaemonImage: daemonRef, ServiceAccount: farm.AgentServiceAccount,
			PublisherURL: "http://" + publisherAddr, TokenAudience: farm.PublisherAudience, BucketURL: b.URL,
			TrustedPublicKeys: []string{b.NixPublic}, SystemArch: agentpool.DefaultSystemArch()}})

	api, err := url.Parse(env.Config.Host)
	if err != nil {
		t.Fatalf("the apiserver's address %q: %v", env.Config.Host, err)
	}
	pool := &farmv1.AgentPool{ObjectMeta: metav1.ObjectMeta{Name: "x86", Namespace: ns}, Spec: farmv1.AgentPoolSpec{
		Systems: []string{"x86_64-linux"}, MaxParallelBuilds: 1, Replicas: ptr.To[int32](1),
		// What the test bed needs of the pod, through the pool's template: the host network
		// (there is no pod network to reach the loopback apiserver, MinIO and publisher, nor a
		// kube-proxy for the kubernetes Service), the images as imported (there is no registry),
		// no metrics port on the host, and the apiserver at its loopback address rather than the
		// Service's ClusterIP.
		Template: &corev1.PodTemplateSpec{Spec: corev1.PodSpec{
			HostNetwork:    true,
			InitContainers: []corev1.Container{{Name: agentpool.DaemonContainer, ImagePullPolicy: corev1.PullNever}},
			Containers: []corev1.Container{{Name: agentpool.AgentContainer, ImagePullPolicy: corev1.PullNever,
				Args: []string{"--metrics-bind-address="},
				Env: []corev1.EnvVar{{Name: "KUBERNETES_SERVICE_HOST", Value: api.Hostname()},
					{Name: "KUBERNETES_SERVICE_PORT", Value: api.Port()}}}},
		}},
	}}
	if err := env.Client.Create(ctx, pool); err != nil {
		t.Fatalf("creating the AgentPool: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			reportPods(t, n, ns)
		}
	})

	var pod corev1.Pod
	testbed.WaitFor(t, 3*time.Minute, "the pool's pod to run its daemon and agent on node1", func() (bool, string) {
		var pods corev1.PodList
		if err := env.Client.List(ctx, &pods, client.InNamespace(ns), client.MatchingLabels(agentpool.Selector(pool.Name))); err != nil {
			return false, err.Error()
		}
		if len(pods.Items) != 1 {
			// A template the apiserver refuses shows in the pool's TemplateValid condition.
			var p farmv1.AgentPool
			_ = env.Client.Get(ctx, client.ObjectKeyFromObject(pool), &p)
			return false, fmt.Sprintf("%d pods; pool conditions %+v", len(pods.Items), p.Status.Conditions)
		}
		pod = pods.Items[0]
		return pod.Spec.NodeName == n.Name && running(pod.Status.InitContainerStatuses, agentpool.DaemonContainer) &&
			running(pod.Status.ContainerStatuses, agentpool.AgentContainer), fmt.Sprintf("on %q: %s", pod.Spec.NodeName, containerStates(&pod))
	})
	t.Logf("pod %s running on %s %s after the start", pod.Name, pod.Spec.NodeName, time.Since(start).Round(100*time.Millisecond))
	testbed.WaitFor(t, time.Minute, "the agent's Lease", func() (bool, string) {
		var leases coordinationv1.LeaseList
		if err := env.Client.List(ctx, &leases, client.InNamespace(ns), client.MatchingLabels{agentlease.LabelAgent: "true"}); err != nil {
			return false, err.Error()
		}
		for _, l := range leases.Items {
			if l.Name == pod.Name {
				return true, ""
			}
		}
		return false, fmt.Sprintf("%d agent Leases, none named %s", len(leases.Items), pod.Name)
	})

	// Submitted as a user does: the .drv closure published to the bucket, a Build created.
	submit := exec.Command(farm.Binary(t, "kubectl-guixfarm"), "--kubeconfig", env.Kubeconfig(t), "-n", ns, "submit",
		"--daemon-socket", submitter.Socket, "--bucket-endpoint", b.MinIO.URL, "--bucket", b.Config.Bucket,
		"--signing-keys", strings.Join(b.KeyFiles, ","), drv)
	submit.Env = append(os.Environ(), "AWS_ACCESS_KEY_ID="+b.Config.AccessKey, "AWS_SECRET_ACCESS_KEY="+b.Config.SecretKey)
	out, err := submit.CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl-guixfarm submit: %v\n%s", err, out)
	}
	submitted := time.Now()
	var build farmv1.Build
	testbed.WaitFor(t, 3*time.Minute, "the Build to succeed on the pool's agent", func() (bool, string) {
		var builds farmv1.BuildList
		if err := env.Client.List(ctx, &builds, client.InNamespace(ns)); err != nil || len(builds.Items) != 1 {
			return false, fmt.Sprintf("%d Builds (%v)", len(builds.Items), err)
		}
		build = builds.Items[0]
		if build.Status.Phase == farmv1.BuildFailed {
			t.Fatalf("the Build failed: %+v", build.Status)
		}
		return build.Status.Phase == farmv1.BuildSucceeded, fmt.Sprintf("phase %s, %d attempts", build.Status.Phase, build.Status.AttemptCount)
	})
	t.Logf("built and published %s after it was submitted", time.Since(submitted).Round(100*time.Millisecond))
	if as := build.Status.Attempts; len(as) != 1 || as[0].Agent != pod.Name {
		t.Errorf("the Build's attempts %+v: want one, by the pool's pod %s", as, pod.Name)
	}

	// What the farm published is what nix substitutes: a fresh daemon trusting only the farm's
	// key realises the output from the bucket.
	if len(build.Status.Outputs) != 1 || build.Status.Outputs[0].NarHash == "" {
		t.Fatalf("the Build's outputs %+v: want one, published", build.Status.Outputs)
	}
	outPath := build.Status.Outputs[0].Path
	user := testbed.StartNixDaemon(t, testbed.NixOptions{Substituters: []string{b.URL}, TrustedPublicKeys: []string{b.NixPublic}})
	user.MustRun(t, "nix-store", "--realise", outPath)
	got, err := os.ReadFile(user.HostPath(outPath))
	if err != nil || strings.TrimSpace(string(got)) != want {
		t.Errorf("the output substituted from the bucket holds %q (%v), want %q", got, err, want)
	}
}

// reportPods logs, for a failed test, the pods of ns, their containers' logs from the node and
// the namespace's warnings.
func reportPods(t *testing.T, n *node.Node, ns string) {
	ctx := context.Background()
	var pods corev1.PodList
	_ = env.Client.List(ctx, &pods, client.InNamespace(ns))
	for i := range pods.Items {
		p := &pods.Items[i]
		t.Logf("pod %s on %q: phase %s, %s", p.Name, p.Spec.NodeName, p.Status.Phase, containerStates(p))
		logs := n.ContainerLogs(ns, p.Name, 3000)
		names := make([]string, 0, len(logs))
		for c := range logs {
			names = append(names, c)
		}
		sort.Strings(names)
		for _, c := range names {
			t.Logf("pod %s container %s log ends:\n%s", p.Name, c, logs[c])
		}
	}
	var evs corev1.EventList
	_ = env.Client.List(ctx, &evs, client.InNamespace(ns))
	var b bytes.Buffer
	for _, e := range evs.Items {
		if e.Type == corev1.EventTypeWarning {
			fmt.Fprintf(&b, "%s %s: %s\n", e.InvolvedObject.Name, e.Reason, e.Message)
		}
	}
	t.Logf("warnings in %s:\n%s", ns, b.String())
}
