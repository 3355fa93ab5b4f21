package chart

import (
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	farmv1 "github.com/guixfarm/guix-farm/api/v1alpha1"
	"github.com/guixfarm/guix-farm/controllers/agentpool"
)

// agentDefaults reads the agent-pod settings from the rendered controller's arguments as the
// controller does (agentpool.Flags on a FlagSet of their own; the controller's other flags are
// left out). The key files of --daemon-authorized-keys are read from the rendered ConfigMap
// mounted at their directory, written to a temporary directory.
func agentDefaults(t *testing.T, objs []*unstructured.Unstructured) agentpool.Defaults {
	t.Helper()
	d := find[appsv1.Deployment](t, objs, "Deployment", "guix-farm-controller")
	pod := d.Spec.Template.Spec
	c := pod.Containers[0]
	var f agentpool.Flags
	fs := flag.NewFlagSet("agent-pods", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	f.Bind(fs)
	var args []string
	for _, a := range c.Args {
		name, value, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if fs.Lookup(name) == nil {
			continue
		}
		if name == "daemon-authorized-keys" {
			value = localFiles(t, objs, pod, c, value)
		}
		args = append(args, "--"+name+"="+value)
	}
	if err := fs.Parse(args); err != nil {
		t.Fatalf("the controller's agent-pod flags %q: %v", args, err)
	}
	defaults, err := f.Defaults()
	if err != nil {
		t.Fatalf("the controller's agent-pod flags %q: %v", args, err)
	}
	return defaults
}

// localFiles writes the files of a comma-separated list of paths in container c, each in a
// ConfigMap volume of pod, to a temporary directory and returns their paths there.
func localFiles(t *testing.T, objs []*unstructured.Unstructured, pod corev1.PodSpec, c corev1.Container, paths string) string {
	t.Helper()
	// Not t.TempDir: its name comes from the test's, which may hold the commas the flag splits at.
	dir, err := os.MkdirTemp("", "guix-farm-keys-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	var out []string
	for i, p := range strings.Split(paths, ",") {
		var data *string
		for _, m := range c.VolumeMounts {
			rel, ok := strings.CutPrefix(p, m.MountPath+"/")
			if !ok {
				continue
			}
			for _, v := range pod.Volumes {
				if v.Name == m.Name && v.ConfigMap != nil {
					cm := find[corev1.ConfigMap](t, objs, "ConfigMap", v.ConfigMap.Name)
					if s, ok := cm.Data[rel]; ok {
						data = &s
					}
				}
			}
		}
		if data == nil {
			t.Fatalf("controller file %s: in no rendered ConfigMap mounted into the controller", p)
		}
		local := filepath.Join(dir, fmt.Sprintf("file-%d", i))
		if err := os.WriteFile(local, []byte(*data), 0o644); err != nil {
			t.Fatal(err)
		}
		out = append(out, local)
	}
	return strings.Join(out, ",")
}

// agentPods makes the pod of every rendered AgentPool as the controller would, by name.
func agentPods(t *testing.T, objs []*unstructured.Unstructured) map[string]corev1.PodTemplateSpec {
	t.Helper()
	d := agentDefaults(t, objs)
	if d.AgentImage == "" {
		t.Fatal("the controller has no --agent-image: it would make no agent pods")
	}
	pods := map[string]corev1.PodTemplateSpec{}
	for _, o := range objs {
		if o.GetKind() != "AgentPool" {
			continue
		}
		pool := find[farmv1.AgentPool](t, objs, "AgentPool", o.GetName())
		tpl, err := agentpool.PodTemplate(pool, d)
		if err != nil {
			t.Fatalf("AgentPool %s: the controller would make no pod: %v", pool.Name, err)
		}
		pods[pool.Name] = tpl
	}
	return pods
}

// checkAgentPod: the pod runs as the agents' ServiceAccount, its agent as non-root, it holds no
// key or credential, and its daemon sidecar shares the store and the socket with the agent.
func checkAgentPod(t *testing.T, name string, tpl corev1.PodTemplateSpec, secretNames ...string) {
	t.Helper()
	spec := tpl.Spec
	if spec.ServiceAccountName != "guix-farm-agent" {
		t.Errorf("AgentPool %s: pod runs as ServiceAccount %q, want guix-farm-agent", name, spec.ServiceAccountName)
	}
	if found := secretsIn(spec, secretNames...); len(found) > 0 {
		t.Errorf("AgentPool %s's pod holds keys or credentials:\n  %s", name, strings.Join(found, "\n  "))
	}
	agent, daemon := container(spec.Containers, agentpool.AgentContainer), container(spec.InitContainers, agentpool.DaemonContainer)
	if agent == nil || daemon == nil {
		t.Fatalf("AgentPool %s: pod lacks the agent (%v) or the daemon sidecar (%v): %+v", name, agent != nil, daemon != nil, spec)
	}
	if sc := agent.SecurityContext; sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.Privileged != nil && *sc.Privileged {
		t.Errorf("AgentPool %s: the agent may run as root: %+v", name, sc)
	}
	if daemon.RestartPolicy == nil || *daemon.RestartPolicy != corev1.ContainerRestartPolicyAlways {
		t.Errorf("AgentPool %s: the daemon is no native sidecar (restartPolicy %v)", name, daemon.RestartPolicy)
	}
	for _, path := range []string{"/gnu/store", "/var/guix/daemon-socket"} {
		a, d := mountAt(agent, path), mountAt(daemon, path)
		if a == "" || a != d {
			t.Errorf("AgentPool %s: %s is volume %q in the agent and %q in the daemon, want one shared volume", name, path, a, d)
		}
	}
}

func container(cs []corev1.Container, name string) *corev1.Container {
	for i := range cs {
		if cs[i].Name == name {
			return &cs[i]
		}
	}
	return nil
}

func mountAt(c *corev1.Container, path string) string {
	for _, m := range c.VolumeMounts {
		if m.MountPath == path {
			return m.Name
		}
	}
	return ""
}
