package farm

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// AgentServiceAccount is the ServiceAccount agent identities are made for.
const AgentServiceAccount = "guix-farm-agent"

// AgentIdentity gives an agent the identity a pod of an AgentPool has: a Pod object named as the
// agent (it never runs: envtest has no kubelet), running as AgentServiceAccount in namespace, and
// a ServiceAccount token bound to that Pod (a TokenRequest, as the kubelet makes for a projected
// volume), meant for audiences (none: the apiserver's). It returns the token's file. The
// publisher service authenticates agents by such tokens; nothing in the service treats tests
// differently.
func (e *Env) AgentIdentity(t testing.TB, namespace, agent string, audiences ...string) string {
	t.Helper()
	ctx := context.Background()
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: AgentServiceAccount, Namespace: namespace}}
	if err := e.Client.Create(ctx, sa); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("creating ServiceAccount %s/%s: %v", namespace, AgentServiceAccount, err)
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: agent, Namespace: namespace, Labels: map[string]string{"app.kubernetes.io/name": "guix-farm-agent"}},
		Spec: corev1.PodSpec{ServiceAccountName: AgentServiceAccount, AutomountServiceAccountToken: ptr.To(false),
			Containers: []corev1.Container{{Name: "agent", Image: "guix-farm-agent:test"}}},
	}
	if err := e.Client.Create(ctx, pod); err != nil {
		t.Fatalf("creating the agent's Pod %s/%s: %v", namespace, agent, err)
	}
	return e.podToken(t, namespace, pod, audiences)
}

// UnboundToken is a token of the agents' ServiceAccount, meant for audiences, bound to no Pod (as
// a legacy token Secret, or a static token file, gives): it names no agent.
func (e *Env) UnboundToken(t testing.TB, namespace string, audiences ...string) string {
	t.Helper()
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: AgentServiceAccount, Namespace: namespace}}
	if err := e.Client.Create(context.Background(), sa); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	return e.podToken(t, namespace, nil, audiences)
}

func (e *Env) podToken(t testing.TB, namespace string, pod *corev1.Pod, audiences []string) string {
	t.Helper()
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: AgentServiceAccount, Namespace: namespace}}
	tr := &authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{Audiences: audiences, ExpirationSeconds: ptr.To[int64](3600)}}
	name := "unbound"
	if pod != nil {
		tr.Spec.BoundObjectRef = &authnv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID}
		name = pod.Name
	}
	if err := e.Client.SubResource("token").Create(context.Background(), sa, tr); err != nil {
		t.Fatalf("requesting a token of %s/%s for %s: %v", namespace, sa.Name, name, err)
	}
	p := filepath.Join(t.TempDir(), name+".token")
	if err := os.WriteFile(p, []byte(tr.Status.Token), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}
