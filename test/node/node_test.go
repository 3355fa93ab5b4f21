// Package node runs pods on a real single node (test/testbed/node: kubelet, containerd and runc
// from the pinned sources) registered with the test bed's apiserver. See docs/node-test.md for
// what runs and what cannot on the test bed.
package node

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap/zapcore"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/guixfarm/guix-farm/test/farm"
	"github.com/guixfarm/guix-farm/test/testbed"
	"github.com/guixfarm/guix-farm/test/testbed/node"
)

var env *farm.Env

func TestMain(m *testing.M) {
	ctrllog.SetLogger(zap.New(zap.WriteTo(os.Stderr), zap.Level(zapcore.ErrorLevel)))
	// Pods get their ServiceAccount's token volume, as in a cluster: the agent is an in-cluster
	// client.
	e, skip, err := farm.StartEnvWith(farm.EnvOptions{ServiceAccountAdmission: true})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if e == nil {
		fmt.Fprintln(os.Stderr, "skipping node tests:", skip)
		os.Exit(0)
	}
	env = e
	code := m.Run()
	_ = e.Stop()
	os.Exit(code)
}

// busyboxImage is the test pods' image: the host's static busybox, no registry.
const busyboxImage = "guixfarm.test/busybox:1"

func writeBusyboxImage(t *testing.T) string {
	t.Helper()
	files, err := testbed.BusyboxFiles(testbed.Tool(t, "busybox", "nix"))
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "busybox.tar")
	if err := testbed.WriteOCIArchive(p, testbed.OCIImage{Ref: busyboxImage, Files: files}); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestHostNetworkPodWithSidecar runs, on the real node, a hostNetwork pod of a native sidecar (an
// init container with restartPolicy Always, whose startup probe the kubelet runs through the
// runtime's exec) and a main container running as 65532, sharing an emptyDir: each reads what the
// other wrote, the main container only once the sidecar has started, and the kubelet serves the
// main container's log to the apiserver.
func TestHostNetworkPodWithSidecar(t *testing.T) {
	ctx := context.Background()
	n := node.Start(t, env.Kubeconfig(t), writeBusyboxImage(t))
	ns := env.Namespace(t, "node")
	// The ServiceAccount admission plugin wants the pod's account to exist (no serviceaccount
	// controller makes "default" here), even with no token mounted.
	if err := env.Client.Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default", Namespace: ns}}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("creating the default ServiceAccount: %v", err)
	}

	const uid = 65532
	shared := corev1.VolumeMount{Name: "shared", MountPath: "/shared"}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "sidecar-pod", Namespace: ns},
		Spec: corev1.PodSpec{
			NodeName:                      n.Name, // no scheduler: the test bed runs none
			HostNetwork:                   true,
			AutomountServiceAccountToken:  ptr.To(false),
			TerminationGracePeriodSeconds: ptr.To[int64](2),
			Volumes:                       []corev1.Volume{{Name: "shared", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}},
			InitContainers: []corev1.Container{{
				Name: "sidecar", Image: busyboxImage, ImagePullPolicy: corev1.PullNever,
				RestartPolicy: ptr.To(corev1.ContainerRestartPolicyAlways),
				Command: []string{"sh", "-c", `echo sidecar > /shared/from-sidecar
until [ -s /shared/main-uid ]; do sleep 0.1; done
cp /shared/main-uid /shared/sidecar-saw
exec sleep 3600`},
				VolumeMounts: []corev1.VolumeMount{shared},
				StartupProbe: &corev1.Probe{
					ProbeHandler:  corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"test", "-s", "/shared/from-sidecar"}}},
					PeriodSeconds: 1, FailureThreshold: 30,
				},
			}},
			Containers: []corev1.Container{{
				Name: "main", Image: busyboxImage, ImagePullPolicy: corev1.PullNever,
				Command: []string{"sh", "-c", `id
cat /shared/from-sidecar > /shared/main-saw || echo "no file from the sidecar" > /shared/main-saw
id -u > /shared/main-uid.tmp && mv /shared/main-uid.tmp /shared/main-uid
exec sleep 3600`},
				VolumeMounts: []corev1.VolumeMount{shared},
				SecurityContext: &corev1.SecurityContext{
					RunAsUser: ptr.To[int64](uid), RunAsGroup: ptr.To[int64](uid), RunAsNonRoot: ptr.To(true),
				},
			}},
		},
	}
	if err := env.Client.Create(ctx, pod); err != nil {
		t.Fatalf("creating the pod: %v", err)
	}

	testbed.WaitFor(t, 2*time.Minute, "the pod's sidecar and main container to run", func() (bool, string) {
		if err := env.Client.Get(ctx, client.ObjectKeyFromObject(pod), pod); err != nil {
			return false, err.Error()
		}
		if pod.Status.Phase != corev1.PodRunning {
			return false, fmt.Sprintf("phase %s: %s", pod.Status.Phase, containerStates(pod))
		}
		return running(pod.Status.InitContainerStatuses, "sidecar") && running(pod.Status.ContainerStatuses, "main"), containerStates(pod)
	})
	vol := filepath.Join(n.PodDir(string(pod.UID)), "volumes", "kubernetes.io~empty-dir", "shared")
	read := func(name string) string {
		data, err := os.ReadFile(filepath.Join(vol, name))
		if err != nil {
			return ""
		}
		return strings.TrimSpace(string(data))
	}
	testbed.WaitFor(t, 30*time.Second, "both containers' files in the shared volume", func() (bool, string) {
		return read("main-saw") != "" && read("sidecar-saw") != "", fmt.Sprintf("main-saw %q, sidecar-saw %q", read("main-saw"), read("sidecar-saw"))
	})
	if got := read("main-saw"); got != "sidecar" {
		t.Errorf("the main container read %q from the sidecar's file, want sidecar: it started before the sidecar's startup probe passed, or the volume is not shared", got)
	}
	if got := read("main-uid"); got != fmt.Sprint(uid) {
		t.Errorf("the main container runs as uid %q, want %d", got, uid)
	}
	if got := read("sidecar-saw"); got != fmt.Sprint(uid) {
		t.Errorf("the sidecar read %q from the main container's file, want %d", got, uid)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(vol, "main-uid"), &st); err != nil || st.Uid != uid {
		t.Errorf("the main container's file on the node is owned by uid %d (%v), want %d", st.Uid, err, uid)
	}

	// The apiserver asks the kubelet, at the node's address, for the log.
	cs, err := n.Clientset()
	if err != nil {
		t.Fatal(err)
	}
	lctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	logs, err := cs.CoreV1().Pods(ns).GetLogs(pod.Name, &corev1.PodLogOptions{Container: "main"}).DoRaw(lctx)
	if err != nil {
		t.Errorf("the main container's log through the apiserver: %v %+v", err, apierrors.ReasonForError(err))
		if se, ok := err.(apierrors.APIStatus); ok && se.Status().Details != nil {
			t.Errorf("causes: %+v", se.Status().Details.Causes)
		}
	} else if want := fmt.Sprintf("uid=%d", uid); !strings.Contains(string(logs), want) {
		t.Errorf("the main container's log %q lacks %q", logs, want)
	}

	// Deleting the pod: the kubelet stops both containers and confirms.
	if err := env.Client.Delete(ctx, pod); err != nil {
		t.Fatalf("deleting the pod: %v", err)
	}
	testbed.WaitFor(t, time.Minute, "the kubelet to remove the deleted pod", func() (bool, string) {
		err := env.Client.Get(ctx, client.ObjectKeyFromObject(pod), &corev1.Pod{})
		return apierrors.IsNotFound(err), fmt.Sprint(err)
	})
}

func running(sts []corev1.ContainerStatus, name string) bool {
	for _, s := range sts {
		if s.Name == name {
			return s.State.Running != nil && s.Started != nil && *s.Started
		}
	}
	return false
}

func containerStates(p *corev1.Pod) string {
	var b strings.Builder
	for _, s := range append(append([]corev1.ContainerStatus{}, p.Status.InitContainerStatuses...), p.Status.ContainerStatuses...) {
		switch {
		case s.State.Running != nil:
			fmt.Fprintf(&b, "%s running; ", s.Name)
		case s.State.Waiting != nil:
			fmt.Fprintf(&b, "%s waiting (%s: %s); ", s.Name, s.State.Waiting.Reason, s.State.Waiting.Message)
		case s.State.Terminated != nil:
			fmt.Fprintf(&b, "%s terminated (%s, exit %d: %s); ", s.Name, s.State.Terminated.Reason, s.State.Terminated.ExitCode, s.State.Terminated.Message)
		}
	}
	for _, c := range p.Status.Conditions {
		if c.Status != corev1.ConditionTrue && c.Message != "" {
			fmt.Fprintf(&b, "%s: %s; ", c.Type, c.Message)
		}
	}
	return b.String()
}
