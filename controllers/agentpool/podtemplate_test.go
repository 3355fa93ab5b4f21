package agentpool

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	farmv1 "github.com/guixfarm/guix-farm/api/v1alpha1"
)

func testDefaults() Defaults {
	return Defaults{AgentImage: "agent:dev", DaemonImage: "guix-daemon:1", ServiceAccount: "farm-agent",
		PublisherURL: "http://pub:8082", TokenAudience: "guix-farm-publisher", BucketURL: "http://minio:9000/farm",
		SystemArch: DefaultSystemArch()}
}

func testPool(systems ...string) *farmv1.AgentPool {
	return &farmv1.AgentPool{ObjectMeta: metav1.ObjectMeta{Name: "arm", Namespace: "farm"},
		Spec: farmv1.AgentPoolSpec{Systems: systems, MaxParallelBuilds: 2}}
}

func container(cs []corev1.Container, name string) *corev1.Container {
	for i := range cs {
		if cs[i].Name == name {
			return &cs[i]
		}
	}
	return nil
}

func TestPodTemplateSharesStoreAndSocket(t *testing.T) {
	tpl, err := PodTemplate(testPool("aarch64-linux"), testDefaults())
	if err != nil {
		t.Fatal(err)
	}
	s := tpl.Spec
	if s.NodeSelector[labelArch] != "arm64" {
		t.Errorf("nodeSelector %v: want arch arm64", s.NodeSelector)
	}
	d, a := container(s.InitContainers, DaemonContainer), container(s.Containers, AgentContainer)
	if d == nil || a == nil {
		t.Fatalf("want a daemon sidecar and an agent: %+v", s)
	}
	if d.RestartPolicy == nil || *d.RestartPolicy != corev1.ContainerRestartPolicyAlways {
		t.Error("the daemon is not a native sidecar")
	}
	mounts := func(c *corev1.Container) map[string]corev1.VolumeMount {
		m := map[string]corev1.VolumeMount{}
		for _, v := range c.VolumeMounts {
			m[v.Name] = v
		}
		return m
	}
	dm, am := mounts(d), mounts(a)
	for _, v := range []string{volStore, volSocket} {
		if dm[v].MountPath == "" || dm[v].MountPath != am[v].MountPath {
			t.Errorf("volume %s: daemon at %q, agent at %q: want shared", v, dm[v].MountPath, am[v].MountPath)
		}
	}
	if !am[volStore].ReadOnly || dm[volStore].ReadOnly {
		t.Error("the agent reads the store, the daemon writes it")
	}
	if !strings.Contains(strings.Join(a.Args, " "), "--daemon-socket="+socketPath) {
		t.Errorf("agent args %v lack the socket", a.Args)
	}
	if a.SecurityContext.RunAsNonRoot == nil || !*a.SecurityContext.RunAsNonRoot {
		t.Error("the agent must run as non-root")
	}
	if d.SecurityContext.Privileged == nil || !*d.SecurityContext.Privileged {
		t.Error("the default isolation is a privileged daemon")
	}
	if tpl.Labels["build.guixfarm.io/pool"] != "arm" || s.ServiceAccountName != "farm-agent" {
		t.Errorf("labels %v, service account %q", tpl.Labels, s.ServiceAccountName)
	}
}

func TestPodTemplateUserNamespace(t *testing.T) {
	p := testPool("x86_64-linux", "i686-linux")
	p.Spec.Isolation = farmv1.IsolationUserNamespace
	tpl, err := PodTemplate(p, testDefaults())
	if err != nil {
		t.Fatal(err)
	}
	if tpl.Spec.HostUsers == nil || *tpl.Spec.HostUsers || tpl.Spec.NodeSelector[labelArch] != "amd64" {
		t.Errorf("hostUsers %v, nodeSelector %v", tpl.Spec.HostUsers, tpl.Spec.NodeSelector)
	}
	d := container(tpl.Spec.InitContainers, DaemonContainer)
	if d.SecurityContext.Privileged != nil || len(d.SecurityContext.Capabilities.Add) == 0 {
		t.Errorf("daemon security %+v: want capabilities, not privileged", d.SecurityContext)
	}
}

func TestPodTemplateMergesTemplate(t *testing.T) {
	p := testPool("aarch64-linux")
	p.Spec.Template = &corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"team": "arm"}},
		Spec: corev1.PodSpec{
			HostNetwork: true,
			Tolerations: []corev1.Toleration{{Key: "arm", Operator: corev1.TolerationOpExists}},
			Containers: []corev1.Container{{Name: AgentContainer, ImagePullPolicy: corev1.PullNever,
				Env: []corev1.EnvVar{{Name: "X", Value: "1"}}}},
			Volumes: []corev1.Volume{{Name: "extra"}},
		},
	}
	tpl, err := PodTemplate(p, testDefaults())
	if err != nil {
		t.Fatal(err)
	}
	a := container(tpl.Spec.Containers, AgentContainer)
	if a.Image != "agent:dev" || a.ImagePullPolicy != corev1.PullNever || a.Env[len(a.Env)-1].Name != "X" {
		t.Errorf("merged agent %+v", a)
	}
	if !tpl.Spec.HostNetwork || len(tpl.Spec.Tolerations) != 1 || tpl.Labels["team"] != "arm" || tpl.Spec.Volumes[0].Name != "extra" {
		t.Errorf("template lost: %+v", tpl)
	}
	if len(tpl.Spec.Containers) != 1 {
		t.Errorf("containers %d: want the agent once", len(tpl.Spec.Containers))
	}
}

func TestPodTemplateErrorsNameTheField(t *testing.T) {
	for _, tc := range []struct {
		name, field string
		mod         func(*farmv1.AgentPool, *Defaults)
	}{
		{"mixed architectures", "spec.systems", func(p *farmv1.AgentPool, _ *Defaults) { p.Spec.Systems = []string{"x86_64-linux", "aarch64-linux"} }},
		{"unknown system", "spec.systems", func(p *farmv1.AgentPool, _ *Defaults) { p.Spec.Systems = []string{"vax-vms"} }},
		{"no daemon image", "spec.daemon.image", func(_ *farmv1.AgentPool, d *Defaults) { d.DaemonImage = "" }},
		{"sandbox off", "spec.daemon.args", func(p *farmv1.AgentPool, _ *Defaults) {
			p.Spec.Daemon = &farmv1.DaemonSpec{Args: []string{"--disable-chroot"}}
		}},
		{"bad key", "spec.daemon.authorizedKeys[0]", func(p *farmv1.AgentPool, _ *Defaults) {
			p.Spec.Daemon = &farmv1.DaemonSpec{AuthorizedKeys: []string{"nix:abc"}}
		}},
		{"volume clash", "spec.template.spec.volumes[0].name", func(p *farmv1.AgentPool, _ *Defaults) {
			p.Spec.Template = &corev1.PodTemplateSpec{Spec: corev1.PodSpec{Volumes: []corev1.Volume{{Name: volStore}}}}
		}},
		{"daemon privileges", "spec.template.spec.initContainers[0].securityContext", func(p *farmv1.AgentPool, _ *Defaults) {
			p.Spec.Template = &corev1.PodTemplateSpec{Spec: corev1.PodSpec{InitContainers: []corev1.Container{
				{Name: DaemonContainer, SecurityContext: &corev1.SecurityContext{}}}}}
		}},
		{"userns with host users", "spec.template.spec.hostUsers", func(p *farmv1.AgentPool, _ *Defaults) {
			p.Spec.Isolation = farmv1.IsolationUserNamespace
			yes := true
			p.Spec.Template = &corev1.PodTemplateSpec{Spec: corev1.PodSpec{HostUsers: &yes}}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, d := testPool("aarch64-linux"), testDefaults()
			tc.mod(p, &d)
			_, err := PodTemplate(p, d)
			if err == nil || err.Field != tc.field {
				t.Fatalf("error %v: want one naming %s", err, tc.field)
			}
		})
	}
}

func TestGuixACL(t *testing.T) {
	acl := guixACL([]string{"(public-key (ecc (curve Ed25519) (q #AB#)))\n"})
	if !strings.HasPrefix(acl, "(acl\n (entry\n  (public-key") || !strings.Contains(acl, "(guix import)") || strings.Count(acl, "(") != strings.Count(acl, ")") {
		t.Errorf("acl:\n%s", acl)
	}
}
