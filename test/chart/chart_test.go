// Package chart tests the Helm chart in charts/guix-farm with the pinned helm: lint, template, no
// drift from the generated CRDs and RBAC (config/), and an install into a real apiserver.
package chart

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	goruntime "runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/yaml"

	farmv1 "github.com/guixfarm/guix-farm/api/v1alpha1"
	"github.com/guixfarm/guix-farm/controllers/agentpool"
	"github.com/guixfarm/guix-farm/test/testbed"
)

// root is the repository root.
func root() string {
	_, file, _, _ := goruntime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

var (
	chartDir = filepath.Join(root(), "charts", "guix-farm")
	// poolValues exercises every template: two AgentPools (one with its own pod template, isolation,
	// daemon and autoscaling), every agent-pod setting, the bucket, leader election and a
	// cluster-wide watch.
	poolValues = `
controller:
  replicas: 2
  strategy: derivation-ordered
  buildTTL: 1h
  watchAllNamespaces: true
  bucket: {endpoint: "http://minio.guix-farm:9000", name: farm-cache, credentialsSecret: farm-s3, gc: {interval: 6h}}
agent:
  builder: test
  extraArgs: [--lease-duration=1m]
  daemon:
    substituteURLs: [https://bordeaux.guix.gnu.org]
    authorizedKeys: ["(public-key (ecc (curve Ed25519) (q #0A#)))", "(public-key (ecc (curve Ed25519) (q #0B#)))"]
  systemArch: {riscv64-linux: arm64}
  store: {size: 50Gi, storageClassName: fast}
agentPools:
- name: helm-x86-64
  systems: [x86_64-linux, i686-linux]
  features: [kvm]
  replicas: 2
  minReplicas: 0
  maxReplicas: 4
  maxParallelBuilds: 2
  nodeSelector: {node.kubernetes.io/instance-type: c7i.4xlarge}
  tolerations: [{key: builds, operator: Exists, effect: NoSchedule}]
  resources: {daemon: {requests: {cpu: "4", memory: 8Gi}}}
- name: custom
  systems: [aarch64-linux]
  isolation: UserNamespace
  daemon: {args: [--cores=4]}
  autoscaling: {enabled: true, stabilizationWindowSeconds: 60}
  template:
    metadata: {labels: {team: arm}}
    spec:
      containers: [{name: agent, image: example.org/agent:1}]
      initContainers: [{name: daemon, env: [{name: GUIX_LOCPATH, value: /run/locale}]}]
`
)

// agentFlags are the agent-pod flags of the controller rendered from poolValues.
var agentFlags = []string{"--agent-image=ghcr.io/guixfarm/guix-farm-agent:v0.1.0", "--agent-service-account=guix-farm-agent",
	"--agent-args=--lease-duration=1m,--builder=test", "--agent-bucket-url=http://minio.guix-farm:9000/farm-cache",
	"--daemon-image=ghcr.io/guixfarm/guix-daemon:1.4.0", "--daemon-args=--build-users-group=guixbuild",
	"--daemon-substitute-urls=https://bordeaux.guix.gnu.org",
	"--daemon-authorized-keys=/etc/guix-farm/daemon-keys/key-0,/etc/guix-farm/daemon-keys/key-1",
	"--system-arch=riscv64-linux=arm64", "--agent-store-size=50Gi", "--agent-store-class=fast"}

// helm runs the pinned helm with its state under a temporary directory.
type helm struct {
	bin  string
	home string
}

func newHelm(t *testing.T) *helm {
	t.Helper()
	return &helm{bin: testbed.Tool(t, "helm", "helm"), home: t.TempDir()}
}

func (h *helm) run(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(h.bin, args...)
	cmd.Env = append(os.Environ(),
		"HELM_CACHE_HOME="+filepath.Join(h.home, "cache"),
		"HELM_CONFIG_HOME="+filepath.Join(h.home, "config"),
		"HELM_DATA_HOME="+filepath.Join(h.home, "data"))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if err != nil {
		err = fmt.Errorf("helm %s: %w\n%s", strings.Join(args, " "), err, out.String())
	}
	return out.String(), err
}

// valuesFile writes values to a file whose path has no comma (helm splits --values at commas, and
// t.TempDir's name comes from the test's).
func valuesFile(t *testing.T, values string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "guix-farm-chart-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	p := filepath.Join(dir, "values.yaml")
	if err := os.WriteFile(p, []byte(values), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// render runs helm template and decodes every document.
func (h *helm) render(t *testing.T, namespace, values string, set ...string) []*unstructured.Unstructured {
	t.Helper()
	args := []string{"template", "guix-farm", chartDir, "--namespace", namespace, "--values", valuesFile(t, values)}
	for _, s := range set {
		args = append(args, "--set", s)
	}
	out, err := h.run(t, args...)
	if err != nil {
		t.Fatal(err)
	}
	objs, err := decodeAll([]byte(out))
	if err != nil {
		t.Fatalf("decoding helm template output: %v\n%s", err, out)
	}
	return objs
}

func decodeAll(data []byte) ([]*unstructured.Unstructured, error) {
	d := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	var objs []*unstructured.Unstructured
	for {
		var m map[string]any
		if err := d.Decode(&m); err != nil {
			if errors.Is(err, io.EOF) {
				return objs, nil
			}
			return nil, err
		}
		if len(m) > 0 {
			objs = append(objs, &unstructured.Unstructured{Object: m})
		}
	}
}

func find[T any](t *testing.T, objs []*unstructured.Unstructured, kind, name string) *T {
	t.Helper()
	for _, o := range objs {
		if o.GetKind() == kind && o.GetName() == name {
			v := new(T)
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, v); err != nil {
				t.Fatalf("converting %s %s: %v", kind, name, err)
			}
			return v
		}
	}
	t.Fatalf("helm template rendered no %s %s", kind, name)
	return nil
}

func TestLint(t *testing.T) {
	h := newHelm(t)
	cases := map[string]struct{ values string }{
		"defaults":       {values: "{}"},
		"pools + bucket": {values: poolValues},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			out, err := h.run(t, "lint", "--strict", chartDir, "--values", valuesFile(t, c.values))
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(out, "[WARNING]") || strings.Contains(out, "[ERROR]") {
				t.Errorf("helm lint is not clean:\n%s", out)
			}
		})
	}
}

// TestTemplateFlags: values reach the controller's flags, the bindings follow the watch scope.
func TestTemplateFlags(t *testing.T) {
	h := newHelm(t)
	cases := map[string]struct {
		values       string
		set          []string
		wantArgs     []string
		wantBindKind string
		wantPools    []string
	}{
		"defaults": {
			values: "{}",
			wantArgs: []string{"--namespace=guix-farm", "--agent-namespace=guix-farm", "--strategy=basic", "--build-ttl=24h", "--drv-dir=/gnu/store",
				"--store-dir=/gnu/store", "--metrics-bind-address=:8080", "--health-probe-bind-address=:8081",
				"--leader-elect=false", "--zap-log-level=info"},
			wantBindKind: "RoleBinding",
		},
		"pools, bucket, cluster-wide, two replicas": {
			values: poolValues,
			wantArgs: slices.Concat([]string{"--namespace=", "--agent-namespace=guix-farm", "--strategy=derivation-ordered", "--build-ttl=1h", "--drv-dir=/gnu/store",
				"--store-dir=/gnu/store", "--bucket-endpoint=http://minio.guix-farm:9000", "--bucket=farm-cache",
				"--gc-interval=6h", "--gc-policy=orphans"}, agentFlags, []string{"--metrics-bind-address=:8080", "--health-probe-bind-address=:8081",
				"--leader-elect=true", "--zap-log-level=info"}),
			wantBindKind: "ClusterRoleBinding",
			wantPools:    []string{"custom", "helm-x86-64"},
		},
		"GC with a declared keep policy": {
			values: "{}",
			set: []string{"controller.bucket.endpoint=minio:9000", "controller.bucket.name=c", "controller.bucket.gc.interval=6h",
				"controller.bucket.gc.grace=12h", "controller.bucket.gc.policy=roots", "controller.bucket.gc.keep.rootsKey=gc/roots",
				"controller.bucket.gc.keep.buildSelector=release in (2026.1)", "controller.bucket.gc.keep.maxAge=720h",
				"controller.bucket.gc.keep.names={guile-*}", "controller.bucket.gc.dryRun=true"},
			wantArgs: []string{"--namespace=guix-farm", "--agent-namespace=guix-farm", "--strategy=basic", "--build-ttl=24h", "--drv-dir=/gnu/store",
				"--store-dir=/gnu/store", "--bucket-endpoint=minio:9000", "--bucket=c", "--gc-interval=6h", "--gc-grace=12h",
				"--gc-policy=roots", "--gc-roots-key=gc/roots", "--gc-keep-selector=release in (2026.1)", "--gc-keep-max-age=720h",
				"--gc-keep-name=guile-*", "--gc-dry-run", "--metrics-bind-address=:8080", "--health-probe-bind-address=:8081",
				"--leader-elect=false", "--zap-log-level=info"},
			wantBindKind: "RoleBinding",
		},
		"derivations from the bucket only": {
			values: "{}",
			set:    []string{"controller.drvSource.dir=", "controller.bucket.endpoint=minio:9000", "controller.bucket.name=c"},
			wantArgs: []string{"--namespace=guix-farm", "--agent-namespace=guix-farm", "--strategy=basic", "--build-ttl=24h", "--store-dir=/gnu/store",
				"--bucket-endpoint=minio:9000", "--bucket=c", "--gc-interval=0s", "--metrics-bind-address=:8080",
				"--health-probe-bind-address=:8081", "--leader-elect=false", "--zap-log-level=info"},
			wantBindKind: "RoleBinding",
		},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			objs := h.render(t, "guix-farm", c.values, c.set...)
			d := find[appsv1.Deployment](t, objs, "Deployment", "guix-farm-controller")
			if diff := cmp.Diff(c.wantArgs, d.Spec.Template.Spec.Containers[0].Args); diff != "" {
				t.Errorf("controller args (-want +got):\n%s", diff)
			}
			find[corev1.Service](t, objs, "Service", "guix-farm-controller-metrics")
			find[corev1.ServiceAccount](t, objs, "ServiceAccount", "guix-farm-controller")
			find[corev1.ServiceAccount](t, objs, "ServiceAccount", "guix-farm-agent")
			find[rbacv1.RoleBinding](t, objs, "RoleBinding", "guix-farm-agent")
			b := find[rbacv1.RoleBinding](t, objs, c.wantBindKind, "guix-farm-controller") // same shape as a ClusterRoleBinding
			if b.RoleRef.Name != "guix-farm-controller" || len(b.Subjects) != 1 || b.Subjects[0].Name != "guix-farm-controller" {
				t.Errorf("controller binding: roleRef %q, subjects %+v", b.RoleRef.Name, b.Subjects)
			}
			var pools []string
			if c.wantPools != nil {
				for name, pod := range agentPods(t, objs) {
					checkAgentPod(t, name, pod, "farm-s3")
					pools = append(pools, name)
				}
			}
			slices.Sort(pools)
			if diff := cmp.Diff(c.wantPools, pools); diff != "" {
				t.Errorf("AgentPools (-want +got):\n%s", diff)
			}
		})
	}
}

// TestAgentPoolPods: an agentPools entry's settings reach the pod the controller makes for it.
func TestAgentPoolPods(t *testing.T) {
	h := newHelm(t)
	pods := agentPods(t, h.render(t, "guix-farm", poolValues))
	x86, arm := pods["helm-x86-64"].Spec, pods["custom"]
	daemon := container(x86.InitContainers, agentpool.DaemonContainer)
	checks := map[string]struct{ got, want any }{
		"x86-64 architecture":         {x86.NodeSelector["kubernetes.io/arch"], "amd64"},
		"x86-64 nodeSelector":         {x86.NodeSelector["node.kubernetes.io/instance-type"], "c7i.4xlarge"},
		"x86-64 tolerations":          {len(x86.Tolerations), 1},
		"x86-64 daemon cpu request":   {daemon.Resources.Requests.Cpu().String(), "4"},
		"x86-64 agent's default cpu":  {container(x86.Containers, agentpool.AgentContainer).Resources.Requests.Cpu().String(), "100m"},
		"x86-64 daemon's pull policy": {daemon.ImagePullPolicy, corev1.PullIfNotPresent},
		"custom architecture":         {arm.Spec.NodeSelector["kubernetes.io/arch"], "arm64"},
		"custom user namespace":       {arm.Spec.HostUsers != nil && !*arm.Spec.HostUsers, true},
		"custom label":                {arm.Labels["team"], "arm"},
		"custom agent image":          {container(arm.Spec.Containers, agentpool.AgentContainer).Image, "example.org/agent:1"},
		"custom daemon args":          {slices.Contains(container(arm.Spec.InitContainers, agentpool.DaemonContainer).Args, "--cores=4"), true},
	}
	for what, c := range checks {
		if c.got != c.want {
			t.Errorf("%s: %v, want %v", what, c.got, c.want)
		}
	}
}

// TestTemplateServiceMonitor: the optional ServiceMonitor selects the metrics Service, and not the
// publisher's, which selects the same pods.
func TestTemplateServiceMonitor(t *testing.T) {
	h := newHelm(t)
	objs := h.render(t, "guix-farm", "{}", "controller.metrics.serviceMonitor.enabled=true", "controller.metrics.serviceMonitor.labels.release=prom")
	var sm *unstructured.Unstructured
	for _, o := range objs {
		if o.GetKind() == "ServiceMonitor" {
			sm = o
		}
	}
	if sm == nil || sm.GetAPIVersion() != "monitoring.coreos.com/v1" || sm.GetLabels()["release"] != "prom" {
		t.Fatalf("no monitoring.coreos.com/v1 ServiceMonitor labelled release=prom rendered: %v", sm)
	}
	sel, _, _ := unstructured.NestedStringMap(sm.Object, "spec", "selector", "matchLabels")
	svc := find[corev1.Service](t, objs, "Service", "guix-farm-controller-metrics")
	for k, v := range sel {
		if svc.Labels[k] != v {
			t.Errorf("the ServiceMonitor selects %s=%s; the metrics Service has labels %v", k, v, svc.Labels)
		}
	}
	if sel["app.kubernetes.io/component"] != "metrics" {
		t.Errorf("the ServiceMonitor's selector %v would also select the publisher Service", sel)
	}
	for _, o := range h.render(t, "guix-farm", "{}") {
		if o.GetKind() == "ServiceMonitor" {
			t.Error("a ServiceMonitor is rendered by default: it needs the Prometheus Operator's CRDs")
		}
	}
}

// TestTemplateRefusesNoDerivationSource: neither a .drv directory nor a bucket is a values error.
func TestTemplateRefusesNoDerivationSource(t *testing.T) {
	h := newHelm(t)
	out, err := h.run(t, "template", "guix-farm", chartDir, "--set", "controller.drvSource.dir=")
	if err == nil || !strings.Contains(out, "no derivation source") {
		t.Errorf("helm template without a derivation source: err %v, want a refusal naming it:\n%s", err, out)
	}
}

// TestTemplateRefusesGCPolicyMismatch: deleting substitutes takes a declared keep policy, and a
// keep policy with the orphans policy would be ignored: both are values errors.
func TestTemplateRefusesGCPolicyMismatch(t *testing.T) {
	h := newHelm(t)
	on := "controller.bucket.endpoint=minio:9000,controller.bucket.name=c,controller.bucket.gc.interval=6h"
	cases := map[string]struct{ set, want string }{
		"roots without keep": {set: on + ",controller.bucket.gc.policy=roots", want: "no keep policy is declared"},
		"keep with orphans":  {set: on + ",controller.bucket.gc.keep.maxAge=720h", want: "policy is orphans"},
		"an unknown policy":  {set: on + ",controller.bucket.gc.policy=age", want: `policy "age"`},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			out, err := h.run(t, "template", "guix-farm", chartDir, "--set", c.set)
			if err == nil || !strings.Contains(out, c.want) {
				t.Errorf("helm template: err %v, want a refusal containing %q:\n%s", err, c.want, out)
			}
		})
	}
}

// TestCRDsMatchConfig: the chart's crds/ are the generated config/crd/bases (make manifests copies them).
func TestCRDsMatchConfig(t *testing.T) {
	want := readDir(t, filepath.Join(root(), "config", "crd", "bases"))
	got := readDir(t, filepath.Join(chartDir, "crds"))
	if len(want) == 0 {
		t.Fatal("config/crd/bases holds no CRD: run make manifests")
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("charts/guix-farm/crds differ from config/crd/bases: run make manifests (-config +chart):\n%s", diff)
	}
}

func readDir(t *testing.T, dir string) map[string]string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		m[filepath.Base(f)] = string(b)
	}
	return m
}

// TestRBACMatchesConfig: the ClusterRoles the chart renders grant exactly the generated rules of
// config/rbac (from the +kubebuilder:rbac markers of the code).
func TestRBACMatchesConfig(t *testing.T) {
	h := newHelm(t)
	objs := h.render(t, "guix-farm", "{}")
	for _, who := range []string{"controller", "agent"} {
		t.Run(who, func(t *testing.T) {
			b, err := os.ReadFile(filepath.Join(root(), "config", "rbac", who, "role.yaml"))
			if err != nil {
				t.Fatal(err)
			}
			var want rbacv1.ClusterRole
			if err := yaml.UnmarshalStrict(b, &want); err != nil {
				t.Fatalf("config/rbac/%s/role.yaml: %v", who, err)
			}
			got := find[rbacv1.ClusterRole](t, objs, "ClusterRole", "guix-farm-"+who)
			if diff := cmp.Diff(want.Rules, got.Rules); diff != "" {
				t.Errorf("the chart's ClusterRole guix-farm-%s differs from config/rbac/%s/role.yaml: run make chart-rbac (-config +chart):\n%s", who, who, diff)
			}
		})
	}
}

// TestInstall installs the chart into a real apiserver (no kubelet: the Deployment stays without
// pods), checks what it created, dry-runs config/samples against the installed CRDs, and uninstalls.
func TestInstall(t *testing.T) {
	h := newHelm(t)
	api := startAPIServer(t)
	kubeconfig, c := api.kubeconfig, api.client
	ctx := context.Background()
	const ns = "guix-farm" // the namespace of config/samples

	// The apiserver validates the rendered AgentPools, every field of poolValues' included.
	out := api.install(t, h, ns, poolValues)
	if !strings.Contains(out, "STATUS: deployed") || !strings.Contains(out, "kubectl -n guix-farm get builds -w") ||
		!strings.Contains(out, "kubectl -n guix-farm get agentpools") || !strings.Contains(out, "--substitute-urls='http://minio.guix-farm:9000/farm-cache") {
		t.Errorf("helm install output lacks the status or the NOTES:\n%s", out)
	}
	d := &appsv1.Deployment{}
	if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: "guix-farm-controller"}, d); err != nil {
		t.Fatalf("the controller Deployment: %v", err)
	}
	for _, o := range []client.Object{
		&corev1.ServiceAccount{}, &corev1.Service{}, &rbacv1.ClusterRole{}, &rbacv1.RoleBinding{}, &farmv1.AgentPool{},
	} {
		key := map[string]client.ObjectKey{
			"*v1.ServiceAccount":  {Namespace: ns, Name: "guix-farm-agent"},
			"*v1.Service":         {Namespace: ns, Name: "guix-farm-controller-metrics"},
			"*v1.ClusterRole":     {Name: "guix-farm-agent"},
			"*v1.RoleBinding":     {Namespace: ns, Name: "guix-farm-agent"},
			"*v1alpha1.AgentPool": {Namespace: ns, Name: "helm-x86-64"},
		}[fmt.Sprintf("%T", o)]
		if err := c.Get(ctx, key, o); err != nil {
			t.Errorf("%T %s after helm install: %v", o, key, err)
		}
	}

	// The samples must pass the CRDs' validation (CEL rules included).
	samples, err := filepath.Glob(filepath.Join(root(), "config", "samples", "build_*.yaml"))
	if err != nil || len(samples) == 0 {
		t.Fatalf("no samples in config/samples: %v", err)
	}
	for _, f := range samples {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		objs, err := decodeAll(b)
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		for _, o := range objs {
			if err := c.Create(ctx, o, client.DryRunAll); err != nil {
				t.Errorf("%s: %s %s refused by the apiserver: %v", filepath.Base(f), o.GetKind(), o.GetName(), err)
			}
		}
	}

	if _, err := h.run(t, "uninstall", "guix-farm", "--kubeconfig", kubeconfig, "--namespace", ns, "--wait", "--timeout", "1m"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "helm uninstall to delete the Deployment", func() (bool, string) {
		err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: "guix-farm-controller"}, &appsv1.Deployment{})
		return apierrors.IsNotFound(err), fmt.Sprint(err)
	})
	// Helm keeps CRDs (and so every Build) on uninstall.
	if err := c.Get(ctx, client.ObjectKey{Name: "builds.build.guixfarm.io"}, &apiextensionsv1.CustomResourceDefinition{}); err != nil {
		t.Errorf("the Build CRD after helm uninstall: %v (helm must keep CRDs)", err)
	}

	// Without helm: the rendered manifests, server-side applied (as GitOps tools apply them).
	rendered, err := h.run(t, "template", "guix-farm", chartDir, "--namespace", ns, "--values", valuesFile(t, poolValues))
	if err != nil {
		t.Fatal(err)
	}
	manifests := filepath.Join(t.TempDir(), "rendered.yaml")
	if err := os.WriteFile(manifests, []byte(rendered), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := api.kubectl("apply", "--server-side", "--field-manager=guix-farm-ci", "-f", manifests); err != nil {
		t.Fatalf("server-side apply of the rendered chart: %v\n%s", err, out)
	}
	if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: "guix-farm-controller"}, &appsv1.Deployment{}); err != nil {
		t.Errorf("the controller Deployment after server-side apply: %v", err)
	}
}

// apiServer is a real etcd + kube-apiserver (envtest) without the farm's CRDs (helm installs them).
type apiServer struct {
	// kubeconfig is an admin's, for helm and kubectl.
	kubeconfig string
	// config and client are an admin's too; config's server and CA serve other identities.
	config *rest.Config
	client client.Client
	// kubectlBin is the pinned kubectl, of the same release as the apiserver.
	kubectlBin string
}

// startAPIServer starts an apiserver for one test; it stops when the test ends.
func startAPIServer(t *testing.T) *apiServer {
	t.Helper()
	assets := os.Getenv("KUBEBUILDER_ASSETS")
	if assets == "" {
		assets = testbed.ToolsBin()
	}
	for _, b := range []string{"kube-apiserver", "etcd", "kubectl"} {
		if _, err := os.Stat(filepath.Join(assets, b)); err != nil {
			msg := fmt.Sprintf("%s not in %s: run hack/tools.sh kube etcd", b, assets)
			if testbed.Required() {
				t.Fatal(msg)
			}
			t.Skip(msg)
		}
	}
	e := &envtest.Environment{BinaryAssetsDirectory: assets}
	cfg, err := e.Start()
	if err != nil {
		t.Fatalf("starting the apiserver: %v", err)
	}
	t.Cleanup(func() {
		if err := e.Stop(); err != nil {
			t.Errorf("stopping the apiserver: %v", err)
		}
	})
	user, err := e.ControlPlane.AddUser(envtest.User{Name: "chart-admin", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	kc, err := user.KubeConfig()
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(p, kc, 0o600); err != nil {
		t.Fatal(err)
	}
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{clientgoscheme.AddToScheme, farmv1.AddToScheme, apiextensionsv1.AddToScheme} {
		if err := add(s); err != nil {
			t.Fatal(err)
		}
	}
	c, err := client.New(cfg, client.Options{Scheme: s})
	if err != nil {
		t.Fatal(err)
	}
	return &apiServer{kubeconfig: p, config: cfg, client: c, kubectlBin: filepath.Join(assets, "kubectl")}
}

// install installs the chart as release guix-farm into namespace ns (created) with values, waits
// until its CRDs serve, and returns helm's output.
func (a *apiServer) install(t *testing.T, h *helm, ns, values string) string {
	t.Helper()
	out, err := h.run(t, "install", "guix-farm", chartDir, "--kubeconfig", a.kubeconfig, "--namespace", ns,
		"--create-namespace", "--values", valuesFile(t, values), "--timeout", "2m")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"builds.build.guixfarm.io", "agentpools.build.guixfarm.io"} {
		waitFor(t, 30*time.Second, "CRD "+name+" established", func() (bool, string) {
			crd := &apiextensionsv1.CustomResourceDefinition{}
			if err := a.client.Get(context.Background(), client.ObjectKey{Name: name}, crd); err != nil {
				return false, err.Error()
			}
			for _, cond := range crd.Status.Conditions {
				if cond.Type == apiextensionsv1.Established && cond.Status == apiextensionsv1.ConditionTrue {
					return true, ""
				}
			}
			return false, fmt.Sprintf("conditions %+v", crd.Status.Conditions)
		})
	}
	return out
}

// kubectl runs the pinned kubectl as the admin and returns its combined output.
func (a *apiServer) kubectl(args ...string) (string, error) {
	out, err := exec.Command(a.kubectlBin, append([]string{"--kubeconfig", a.kubeconfig}, args...)...).CombinedOutput()
	return string(out), err
}

func waitFor(t *testing.T, d time.Duration, what string, f func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		ok, why := f()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: %s", what, why)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
