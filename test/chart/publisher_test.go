package chart

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"

	"github.com/guixfarm/guix-farm/controllers/agentpool"
)

// publisherValues: agents building through their daemons, publishing through the controller's
// publisher service; the bucket's credentials and the signing keys are the controller's.
const publisherValues = `
controller:
  bucket: {endpoint: "http://minio.guix-farm:9000", name: farm-cache, credentialsSecret: farm-s3}
  publisher: {enabled: true, signingKeysSecret: farm-signing}
agent:
  builder: daemon
  trustedPublicKeys: ["farm-1:AAAA"]
  daemon: {authorizedKeys: ["(public-key (ecc (curve Ed25519) (q #0A#)))"]}
agentPools:
- {name: x86-64, systems: [x86_64-linux], maxParallelBuilds: 2}
- {name: arm, systems: [aarch64-linux]}
`

// secretsIn lists every way pod spec p refers to a Secret, or holds a key or a credential: secret
// volumes and projected secrets, env from secretKeyRef, envFrom secretRef, the AWS credential
// variables, key flags, and any mention of the named Secrets.
func secretsIn(p corev1.PodSpec, names ...string) []string {
	var found []string
	for _, v := range p.Volumes {
		if v.Secret != nil {
			found = append(found, fmt.Sprintf("volume %s: Secret %s", v.Name, v.Secret.SecretName))
		}
		if v.Projected != nil {
			for _, src := range v.Projected.Sources {
				if src.Secret != nil {
					found = append(found, fmt.Sprintf("volume %s: projected Secret %s", v.Name, src.Secret.Name))
				}
			}
		}
	}
	for _, c := range slices.Concat(p.InitContainers, p.Containers) {
		for _, e := range c.Env {
			if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
				found = append(found, fmt.Sprintf("container %s: env %s from Secret %s", c.Name, e.Name, e.ValueFrom.SecretKeyRef.Name))
			}
			if strings.HasPrefix(e.Name, "AWS_") {
				found = append(found, fmt.Sprintf("container %s: env %s", c.Name, e.Name))
			}
		}
		for _, e := range c.EnvFrom {
			if e.SecretRef != nil {
				found = append(found, fmt.Sprintf("container %s: envFrom Secret %s", c.Name, e.SecretRef.Name))
			}
		}
		for _, a := range slices.Concat(c.Command, c.Args) {
			if strings.Contains(a, "--signing-keys") || strings.Contains(a, "secret-key") {
				found = append(found, fmt.Sprintf("container %s: argument %q", c.Name, a))
			}
			for _, n := range names {
				if strings.Contains(a, n) {
					found = append(found, fmt.Sprintf("container %s: argument %q names %s", c.Name, a, n))
				}
			}
		}
	}
	return found
}

// TestAgentPodsHoldNoKeys: the pods the controller makes for the chart's AgentPools (from its
// rendered flags, with agentpool.PodTemplate) mount no signing key and no bucket credential, by no path (Secret volumes, projected Secrets, env, envFrom,
// arguments); they publish through the publisher Service with a token projected for its audience.
// The controller Deployment holds both, and serves the publisher.
func TestAgentPodsHoldNoKeys(t *testing.T) {
	h := newHelm(t)
	out, err := h.run(t, "lint", "--strict", chartDir, "--values", valuesFile(t, publisherValues))
	if err != nil || strings.Contains(out, "[WARNING]") || strings.Contains(out, "[ERROR]") {
		t.Errorf("helm lint with the publisher: %v\n%s", err, out)
	}
	objs := h.render(t, "guix-farm", publisherValues)
	pods := agentPods(t, objs)
	for name, pod := range pods {
		checkAgentPod(t, name, pod, "farm-s3", "farm-signing")
		spec := pod.Spec
		agent := container(spec.Containers, agentpool.AgentContainer)
		for _, want := range []string{"--builder=daemon", "--publisher-url=http://guix-farm-publisher.guix-farm.svc:8082",
			"--publisher-token-file=/var/run/secrets/guixfarm.io/publisher/token", "--bucket-url=http://minio.guix-farm:9000/farm-cache",
			"--trusted-public-keys=farm-1:AAAA"} {
			if !slices.Contains(agent.Args, want) {
				t.Errorf("AgentPool %s: agent args %q lack %s", name, agent.Args, want)
			}
		}
		var token *corev1.ServiceAccountTokenProjection
		for _, v := range spec.Volumes {
			if v.Projected != nil {
				for _, s := range v.Projected.Sources {
					if s.ServiceAccountToken != nil {
						token = s.ServiceAccountToken
					}
				}
			}
		}
		if token == nil || token.Audience != "guix-farm-publisher" {
			t.Errorf("AgentPool %s: projected token for the publisher %+v, want audience guix-farm-publisher", name, token)
		}
	}
	if len(pods) != 2 {
		t.Fatalf("%d AgentPools rendered, want 2", len(pods))
	}

	d := find[appsv1.Deployment](t, objs, "Deployment", "guix-farm-controller")
	found := secretsIn(d.Spec.Template.Spec)
	for _, want := range []string{"volume signing-keys: Secret farm-signing", "container controller: envFrom Secret farm-s3"} {
		if !slices.Contains(found, want) {
			t.Errorf("the controller lacks %q; it has %q", want, found)
		}
	}
	args := d.Spec.Template.Spec.Containers[0].Args
	for _, want := range []string{"--publisher-bind-address=:8082", "--signing-keys-dir=/etc/guix-farm/signing-keys",
		"--publisher-token-audience=guix-farm-publisher", "--publisher-agent-service-accounts=guix-farm-agent"} {
		if !slices.Contains(args, want) {
			t.Errorf("controller args %q lack %s", args, want)
		}
	}
	svc := find[corev1.Service](t, objs, "Service", "guix-farm-publisher")
	if len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].Port != 8082 || svc.Spec.Ports[0].TargetPort.String() != "publisher" {
		t.Errorf("publisher Service ports %+v", svc.Spec.Ports)
	}
	crb := find[rbacv1.ClusterRoleBinding](t, objs, "ClusterRoleBinding", "guix-farm-controller-auth-delegator")
	if crb.RoleRef.Name != "system:auth-delegator" || crb.Subjects[0].Name != "guix-farm-controller" {
		t.Errorf("TokenReview binding %+v", crb)
	}
}

// TestTemplateRefusesPublisherWithout: a daemon builder without the publisher, or a publisher
// without its keys or the bucket's credentials, is a values error (never an agent given keys).
func TestTemplateRefusesPublisherWithout(t *testing.T) {
	h := newHelm(t)
	bucket := "controller.bucket.endpoint=minio:9000,controller.bucket.name=c,controller.bucket.credentialsSecret=s3"
	pool := ",agentPools[0].name=p,agentPools[0].systems={x86_64-linux}"
	cases := map[string]struct{ set, want string }{
		"daemon builder, no publisher": {set: bucket + pool + ",agent.builder=daemon", want: "set controller.publisher.enabled"},
		"publisher without keys":       {set: bucket + ",controller.publisher.enabled=true", want: "signingKeysSecret"},
		"publisher without credentials": {set: "controller.bucket.endpoint=minio:9000,controller.bucket.name=c,controller.publisher.enabled=true,controller.publisher.signingKeysSecret=k",
			want: "credentialsSecret"},
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
