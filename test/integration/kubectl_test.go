package integration

import (
	"context"
	"strings"
	"testing"

	"sigs.k8s.io/controller-runtime/pkg/client"

	farmv1 "github.com/guixfarm/guix-farm/api/v1alpha1"
	"github.com/guixfarm/guix-farm/internal/planner"
	"github.com/guixfarm/guix-farm/test/farm"
)

// TestKubectl: what a user sees with kubectl: printer columns, a refused bad derivation path
// naming spec.derivation, and `kubectl scale agentpool`.
func TestKubectl(t *testing.T) {
	ns := env.Namespace(t, "kubectl")
	drvs := farm.NewDrvs(t)
	env.StartController(t, ns, drvs.Dir, farm.ControllerOptions{Strategy: planner.Basic})
	kc := env.Kubeconfig(t)
	drv := drvs.Add(t, "hello-2.12", "x86_64-linux", 1)

	manifest := `apiVersion: build.guixfarm.io/v1alpha1
kind: Build
metadata:
  name: hello
  namespace: ` + ns + `
  labels:
    tag: demo
spec:
  derivation: ` + drv + `
  priority: 7
`
	if out, err := env.Kubectl(t, kc, manifest, "apply", "-f", "-"); err != nil {
		t.Fatalf("kubectl apply: %v\n%s", err, out)
	}
	waitFor(t, 30*1e9, "the controller to read the derivation", func() (bool, string) {
		b := &farmv1.Build{}
		_ = env.Client.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "hello"}, b)
		return b.Status.System != "", "no status.system yet"
	})
	out, err := env.Kubectl(t, kc, "", "get", "builds", "-n", ns, "-l", "tag=demo", "-o", "wide")
	if err != nil {
		t.Fatalf("kubectl get builds: %v\n%s", err, out)
	}
	t.Logf("kubectl get builds:\n%s", out)
	for _, col := range []string{"NAME", "DERIVATION", "SYSTEM", "STATUS", "PRIORITY", "AGENT", "ATTEMPTS", "AGE", "REQUESTED", "hello-2.12", "x86_64-linux", "7"} {
		if !strings.Contains(out, col) {
			t.Errorf("kubectl get builds: no %q in\n%s", col, out)
		}
	}
	if out, err := env.Kubectl(t, kc, "", "get", "guixfarm", "-n", ns); err != nil || !strings.Contains(out, "hello") {
		t.Errorf("kubectl get guixfarm (category): %v\n%s", err, out)
	}

	bad := strings.Replace(manifest, "name: hello", "name: bad", 1)
	bad = strings.Replace(bad, drv, "/tmp/not-a-store-path.drv", 1)
	out, err = env.Kubectl(t, kc, bad, "apply", "-f", "-")
	if err == nil || !strings.Contains(out, "spec.derivation") {
		t.Errorf("kubectl apply of a bad derivation path: err %v; want a refusal naming spec.derivation, got:\n%s", err, out)
	} else {
		t.Logf("refused as expected:\n%s", out)
	}
	immut := strings.Replace(manifest, drv, drvs.Add(t, "other", "x86_64-linux", 2), 1)
	if out, err := env.Kubectl(t, kc, immut, "apply", "-f", "-"); err == nil || !strings.Contains(out, "immutable") {
		t.Errorf("changing spec.derivation: err %v; want a refusal saying it is immutable, got:\n%s", err, out)
	}

	pool := `apiVersion: build.guixfarm.io/v1alpha1
kind: AgentPool
metadata:
  name: x86
  namespace: ` + ns + `
spec:
  systems: [x86_64-linux]
  replicas: 1
  maxReplicas: 6
`
	if out, err := env.Kubectl(t, kc, pool, "apply", "-f", "-"); err != nil {
		t.Fatalf("kubectl apply pool: %v\n%s", err, out)
	}
	if out, err := env.Kubectl(t, kc, "", "scale", "agentpool", "x86", "-n", ns, "--replicas=5"); err != nil {
		t.Fatalf("kubectl scale: %v\n%s", err, out)
	}
	p := &farmv1.AgentPool{}
	if err := env.Client.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "x86"}, p); err != nil {
		t.Fatal(err)
	}
	if p.Spec.Replicas == nil || *p.Spec.Replicas != 5 {
		t.Errorf("after kubectl scale --replicas=5: spec.replicas = %v", p.Spec.Replicas)
	}
	if out, err := env.Kubectl(t, kc, "", "scale", "agentpool", "x86", "-n", ns, "--replicas=10"); err == nil || !strings.Contains(out, "maxReplicas") {
		t.Errorf("kubectl scale past maxReplicas: err %v; want a refusal naming maxReplicas, got:\n%s", err, out)
	}
	if out, err := env.Kubectl(t, kc, "", "get", "agentpools", "-n", ns); err != nil || !strings.Contains(out, "DESIRED") {
		t.Errorf("kubectl get agentpools: %v\n%s", err, out)
	} else {
		t.Logf("kubectl get agentpools:\n%s", out)
	}
}
