package chart

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	farmv1 "github.com/guixfarm/guix-farm/api/v1alpha1"
	"github.com/guixfarm/guix-farm/controllers"
	"github.com/guixfarm/guix-farm/internal/agentlease"
	"github.com/guixfarm/guix-farm/internal/lifecycle"
	"github.com/guixfarm/guix-farm/test/farm"
)

// policyDenial is how every refusal of the agent identity policy starts; RBAC's refusals say
// "cannot <verb> resource" instead, so a test tells the two apart.
const policyDenial = "guix-farm agent identity: "

// TestAgentIdentityPolicyMatchesConfig: the chart's policy is config/agent's (make chart-rbac copies
// it), its binding is config/agent's, and with the default values both name the same agents.
func TestAgentIdentityPolicyMatchesConfig(t *testing.T) {
	h := newHelm(t)
	objs := h.render(t, "guix-farm", "{}")
	policy := readConfig[admissionregistrationv1.ValidatingAdmissionPolicy](t, "identity-policy.yaml")
	got := find[admissionregistrationv1.ValidatingAdmissionPolicy](t, objs, "ValidatingAdmissionPolicy", "guix-farm-agent-identity")
	if diff := cmp.Diff(policy.Spec, got.Spec); diff != "" {
		t.Errorf("the chart's agent identity policy differs from config/agent/identity-policy.yaml: run make chart-rbac (-config +chart):\n%s", diff)
	}
	binding := readConfig[admissionregistrationv1.ValidatingAdmissionPolicyBinding](t, "identity-policy-binding.yaml")
	gotBinding := find[admissionregistrationv1.ValidatingAdmissionPolicyBinding](t, objs, "ValidatingAdmissionPolicyBinding", "guix-farm-agent-identity")
	if diff := cmp.Diff(binding.Spec, gotBinding.Spec); diff != "" {
		t.Errorf("the chart's agent identity binding differs from config/agent/identity-policy-binding.yaml (-config +chart):\n%s", diff)
	}
}

func readConfig[T any](t *testing.T, name string) *T {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root(), "config", "agent", name))
	if err != nil {
		t.Fatal(err)
	}
	v := new(T)
	if err := yaml.UnmarshalStrict(b, v); err != nil {
		t.Fatalf("config/agent/%s: %v", name, err)
	}
	return v
}

// TestTemplateAgentIdentityPolicy: the policy names the agents' ServiceAccount as the values make
// it, and can be left out.
func TestTemplateAgentIdentityPolicy(t *testing.T) {
	h := newHelm(t)
	objs := h.render(t, "guix-farm", "{}", "farm.namespace=builders", "serviceAccount.agent.name=builder",
		"fullnameOverride=farm")
	p := find[admissionregistrationv1.ValidatingAdmissionPolicy](t, objs, "ValidatingAdmissionPolicy", "farm-agent-identity")
	want := []admissionregistrationv1.MatchCondition{{Name: "farm-agent-service-account",
		Expression: "request.userInfo.username == 'system:serviceaccount:builders:builder'"}}
	if diff := cmp.Diff(want, p.Spec.MatchConditions); diff != "" {
		t.Errorf("matchConditions (-want +got):\n%s", diff)
	}
	b := find[admissionregistrationv1.ValidatingAdmissionPolicyBinding](t, objs, "ValidatingAdmissionPolicyBinding", "farm-agent-identity")
	if b.Spec.PolicyName != "farm-agent-identity" {
		t.Errorf("the binding enforces policy %q, want farm-agent-identity", b.Spec.PolicyName)
	}

	for _, o := range h.render(t, "guix-farm", "{}", "agentIdentityPolicy.enabled=false") {
		if strings.HasPrefix(o.GetKind(), "ValidatingAdmissionPolicy") {
			t.Errorf("agentIdentityPolicy.enabled=false rendered %s %s", o.GetKind(), o.GetName())
		}
	}
}

// TestAgentIdentity installs the chart into a real apiserver (RBAC authorization and ServiceAccount
// token signing on, as envtest configures it) and checks what an agent may do: what RBAC grants its
// ServiceAccount (kubectl auth can-i), then what the identity policy lets through of requests made
// with tokens bound to two agent pods, as the kubelet projects them. The apiserver evaluates every
// validation of the policy on each request it matches and refuses on any error (failurePolicy
// Fail), so the writes expected to pass also show each expression evaluates on real Leases and
// Builds: envtest runs no kube-controller-manager to report type-checking in the policy's status.
func TestAgentIdentity(t *testing.T) {
	h := newHelm(t)
	api := startAPIServer(t)
	const ns = "guix-farm"
	api.install(t, h, ns, "{}")
	const sa = "guix-farm-agent"

	t.Run("RBAC", func(t *testing.T) {
		cases := []struct {
			verb, resource, subresource string
			want                        bool
		}{
			{"get", "builds.build.guixfarm.io", "", true},
			{"list", "builds.build.guixfarm.io", "", true},
			{"watch", "builds.build.guixfarm.io", "", true},
			{"update", "builds.build.guixfarm.io", "status", true},
			{"create", "builds.build.guixfarm.io", "", false},
			{"update", "builds.build.guixfarm.io", "", false},
			{"patch", "builds.build.guixfarm.io", "", false},
			{"delete", "builds.build.guixfarm.io", "", false},
			{"update", "agentpools.build.guixfarm.io", "", false},
			{"create", "leases.coordination.k8s.io", "", true},
			{"update", "leases.coordination.k8s.io", "", true},
			{"list", "leases.coordination.k8s.io", "", false},
			{"get", "secrets", "", false},
			{"list", "secrets", "", false},
			{"create", "pods", "", false},
		}
		for _, c := range cases {
			args := []string{"auth", "can-i", c.verb, c.resource, "--namespace", ns,
				"--as", "system:serviceaccount:" + ns + ":" + sa}
			if c.subresource != "" {
				args = append(args, "--subresource", c.subresource)
			}
			// can-i answers yes with exit status 0, no with 1.
			out, err := api.kubectl(args...)
			got := strings.TrimSpace(out)
			if got != "yes" && got != "no" {
				t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
			}
			want := "no"
			if c.want {
				want = "yes"
			}
			if got != want {
				t.Errorf("kubectl %s: %s, want %s", strings.Join(args, " "), got, want)
			}
		}
	})

	t.Run("own token", func(t *testing.T) {
		ctx := context.Background()
		admin := api.client
		agentA := agentPodClient(t, api, ns, sa, "agent-a")
		agentB := agentPodClient(t, api, ns, sa, "agent-b")
		waitForAgentIdentityPolicy(t, agentA, ns)

		// Leases: each agent writes its own; nobody else's, nor the controller's election Lease.
		leaseA := renewAgentLease(t, agentA, ns, "agent-a", nil)
		leaseA = renewAgentLease(t, agentA, ns, "agent-a", leaseA)
		leaseB := renewAgentLease(t, agentB, ns, "agent-b", nil)
		leaseB.Annotations[agentlease.AnnotationFreeSlots] = "0"
		wantPolicyDenial(t, "agent-a updating agent-b's Lease", agentA.Update(ctx, leaseB), "may write only its own Lease")
		wantPolicyDenial(t, "agent-a deleting agent-b's Lease", agentA.Delete(ctx, leaseB), "may write only its own Lease")
		other := agentLease(ns, "agent-c")
		wantPolicyDenial(t, "agent-a creating a Lease for another name", agentA.Create(ctx, other), "may write only its own Lease")
		election := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: controllers.LeaderElectionID},
			Spec: coordinationv1.LeaseSpec{HolderIdentity: ptr.To("guix-farm-controller-0")}}
		if err := admin.Create(ctx, election); err != nil {
			t.Fatalf("creating the leader-election Lease: %v", err)
		}
		election.Spec.HolderIdentity = ptr.To("agent-a")
		wantPolicyDenial(t, "agent-a taking the leader-election Lease", agentA.Update(ctx, election), "may write only its own Lease")
		wantPolicyDenial(t, "agent-a deleting the leader-election Lease", agentA.Delete(ctx, election), "may write only its own Lease")
		unlabelled := leaseA.DeepCopy()
		delete(unlabelled.Labels, agentlease.LabelAgent)
		wantPolicyDenial(t, "agent-a dropping its Lease's agent label", agentA.Update(ctx, unlabelled), "labelled build.guixfarm.io/agent=true")
		if err := agentA.Delete(ctx, leaseA); err != nil {
			t.Errorf("agent-a deleting its own Lease (as at shutdown): %v", err)
		}

		// A token bound to no pod names no agent.
		unbound := agentClient(t, api, ns, sa, nil)
		wantPolicyDenial(t, "a token bound to no pod creating a Lease", unbound.Create(ctx, agentLease(ns, "agent-a")), "not bound to a pod")

		// Builds: an agent claims and reports on what the planner gave it, and nothing else.
		buildA := allocatedBuild(t, admin, ns, "build-a", "agent-a")
		buildB := allocatedBuild(t, admin, ns, "build-b", "agent-b")
		buildA2 := allocatedBuild(t, admin, ns, "build-a2", "agent-a")

		claimed := claim(t, agentA, buildA, "agent-a")
		if err := lifecycle.Succeed(claimed, "agent-a", time.Now(), nil); err != nil {
			t.Fatal(err)
		}
		if err := agentA.Status().Update(ctx, claimed); err != nil {
			t.Errorf("agent-a reporting success of the Build it holds: %v", err)
		}
		claim(t, agentB, buildB, "agent-b") // the other agent's claim goes through: refusals below are about identity

		stolen := readBuild(t, agentA, buildB)
		stolen.Status.Attempt = &farmv1.Attempt{Agent: "agent-a", Started: metav1.Now()}
		wantPolicyDenial(t, "agent-a taking agent-b's Build", agentA.Status().Update(ctx, stolen), "only while it is allocated to it or it holds its attempt")
		failed := readBuild(t, agentA, buildB)
		if err := lifecycle.Fail(failed, "agent-b", time.Now(), farmv1.ReasonAgentLost, "forged by agent-a"); err != nil {
			t.Fatal(err)
		}
		wantPolicyDenial(t, "agent-a failing agent-b's attempt", agentA.Status().Update(ctx, failed), "only while it is allocated to it or it holds its attempt")
		handed := readBuild(t, agentA, buildA2)
		handed.Status.Allocation.Agent = "agent-b"
		wantPolicyDenial(t, "agent-a handing its Build to agent-b", agentA.Status().Update(ctx, handed), "may not hand Build")

		// What RBAC keeps from every agent whatever its Builds.
		spec := readBuild(t, agentA, buildA2)
		spec.Spec.Priority = 1000
		wantRBACDenial(t, "agent-a writing a Build's spec", agentA.Update(ctx, spec))
		wantRBACDenial(t, "agent-a deleting a Build", agentA.Delete(ctx, spec))
		wantRBACDenial(t, "agent-a creating a Build", agentA.Create(ctx, farm.MakeBuild("forged", ns, buildA.Spec.Derivation).Obj()))
		secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "guix-farm-signing"}, StringData: map[string]string{"key": "secret"}}
		if err := admin.Create(ctx, secret); err != nil {
			t.Fatal(err)
		}
		wantRBACDenial(t, "agent-a reading a Secret", agentA.Get(ctx, client.ObjectKeyFromObject(secret), &corev1.Secret{}))
		wantRBACDenial(t, "agent-a listing Secrets", agentA.List(ctx, &corev1.SecretList{}, client.InNamespace(ns)))
	})
}

// agentPodClient creates a Pod for the agent name (it never runs: there is no kubelet; the token
// is bound to it) and returns a client using that pod's token, the agent's identity.
func agentPodClient(t *testing.T, api *apiServer, ns, sa, name string) client.Client {
	t.Helper()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: corev1.PodSpec{ServiceAccountName: sa,
			Containers: []corev1.Container{{Name: "agent", Image: "ghcr.io/guixfarm/guix-farm-agent:never-pulled"}}},
	}
	if err := api.client.Create(context.Background(), pod); err != nil {
		t.Fatalf("creating agent pod %s: %v", name, err)
	}
	return agentClient(t, api, ns, sa, pod)
}

// agentClient returns a client authenticated with a token of the ServiceAccount sa, bound to pod
// (nil: to no object) through the TokenRequest API.
func agentClient(t *testing.T, api *apiServer, ns, sa string, pod *corev1.Pod) client.Client {
	t.Helper()
	tr := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr.To[int64](3600)}}
	if pod != nil {
		tr.Spec.BoundObjectRef = &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID}
	}
	boundTo := "no pod"
	if pod != nil {
		boundTo = "pod " + pod.Name
	}
	account := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: sa}}
	if err := api.client.SubResource("token").Create(context.Background(), account, tr); err != nil {
		t.Fatalf("requesting a token of ServiceAccount %s/%s bound to %s: %v", ns, sa, boundTo, err)
	}
	cfg := rest.AnonymousClientConfig(api.config)
	cfg.BearerToken = tr.Status.Token
	c, err := client.New(cfg, client.Options{Scheme: api.client.Scheme()})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// waitForAgentIdentityPolicy waits until the apiserver enforces the policy: it registers and
// type-checks a new policy asynchronously, and until then every agent write gets through.
func waitForAgentIdentityPolicy(t *testing.T, agent client.Client, ns string) {
	t.Helper()
	probe := agentLease(ns, "identity-policy-probe")
	waitFor(t, 30*time.Second, "the agent identity policy to refuse a write to another Lease", func() (bool, string) {
		err := agent.Create(context.Background(), probe.DeepCopy(), client.DryRunAll)
		return err != nil && strings.Contains(err.Error(), policyDenial), fmt.Sprintf("a dry-run create of Lease %s: %v", probe.Name, err)
	})
}

// agentLease is the Lease an agent named name writes (internal/agentlease), not yet created.
func agentLease(ns, name string) *coordinationv1.Lease {
	l := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	agentlease.Apply(l, agentlease.Info{Name: name, Pool: "x86-64", Systems: []string{"x86_64-linux"}, Slots: 1, FreeSlots: 1},
		time.Now(), time.Minute)
	return l
}

// renewAgentLease creates the agent's Lease (prev nil) or renews prev, as the agent does, and
// fails the test when refused.
func renewAgentLease(t *testing.T, agent client.Client, ns, name string, prev *coordinationv1.Lease) *coordinationv1.Lease {
	t.Helper()
	if prev == nil {
		l := agentLease(ns, name)
		if err := agent.Create(context.Background(), l); err != nil {
			t.Fatalf("agent %s creating its own Lease: %v", name, err)
		}
		return l
	}
	l := prev.DeepCopy()
	agentlease.Apply(l, agentlease.Info{Name: name, Pool: "x86-64", Systems: []string{"x86_64-linux"}, Slots: 1}, time.Now(), time.Minute)
	if err := agent.Update(context.Background(), l); err != nil {
		t.Fatalf("agent %s renewing its own Lease: %v", name, err)
	}
	return l
}

// allocatedBuild creates a Build and allocates it to agent as the planner does (controllers/builds).
func allocatedBuild(t *testing.T, admin client.Client, ns, name, agent string) *farmv1.Build {
	t.Helper()
	ctx := context.Background()
	b := farm.MakeBuild(name, ns, "/gnu/store/00000000000000000000000000000000-"+name+".drv").Obj()
	if err := admin.Create(ctx, b); err != nil {
		t.Fatalf("creating Build %s: %v", name, err)
	}
	b.Status.Phase = farmv1.BuildAllocated
	b.Status.Allocation = &farmv1.Allocation{Agent: agent, PlannedAt: metav1.NewTime(time.Now().Truncate(time.Second))}
	if err := admin.Status().Update(ctx, b); err != nil {
		t.Fatalf("allocating Build %s to %s: %v", name, agent, err)
	}
	return b
}

// claim reads b as agent sees it and claims it with internal/lifecycle, as the agent does, failing
// the test when refused.
func claim(t *testing.T, agent client.Client, b *farmv1.Build, name string) *farmv1.Build {
	t.Helper()
	cur := readBuild(t, agent, b)
	if err := lifecycle.Claim(cur, name, "", time.Now()); err != nil {
		t.Fatalf("agent %s claiming Build %s: %v", name, b.Name, err)
	}
	if err := agent.Status().Update(context.Background(), cur); err != nil {
		t.Fatalf("agent %s claiming Build %s allocated to it: %v", name, b.Name, err)
	}
	return cur
}

// readBuild reads b afresh as c sees it.
func readBuild(t *testing.T, c client.Client, b *farmv1.Build) *farmv1.Build {
	t.Helper()
	cur := &farmv1.Build{}
	if err := c.Get(context.Background(), client.ObjectKeyFromObject(b), cur); err != nil {
		t.Fatalf("reading Build %s: %v", b.Name, err)
	}
	return cur
}

// wantPolicyDenial fails unless err is the identity policy's refusal and says want.
func wantPolicyDenial(t *testing.T, what string, err error, want string) {
	t.Helper()
	if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), policyDenial) || !strings.Contains(err.Error(), want) {
		t.Errorf("%s: got %v, want the agent identity policy's refusal saying %q", what, err, want)
	}
}

// wantRBACDenial fails unless err is RBAC's refusal.
func wantRBACDenial(t *testing.T, what string, err error) {
	t.Helper()
	if !apierrors.IsForbidden(err) || strings.Contains(err.Error(), policyDenial) {
		t.Errorf("%s: got %v, want RBAC's refusal", what, err)
	}
}
