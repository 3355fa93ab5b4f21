package agentpool

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	farmv1 "github.com/guixfarm/guix-farm/api/v1alpha1"
	"github.com/guixfarm/guix-farm/internal/agentlease"
	"github.com/guixfarm/guix-farm/internal/index"
)

// members pairs the pool's pods with their agents: whether each runs the current template, is
// ready, registered, drained, and holds or runs builds.
func (r *Reconciler) members(ctx context.Context, pool *farmv1.AgentPool, sts *appsv1.StatefulSet, pods []corev1.Pod, agents map[string]agentlease.Info) ([]member, error) {
	p := r.Loop.Planner()
	var out []member
	for i := range pods {
		pod := &pods[i]
		if !metav1.IsControlledBy(pod, sts) {
			continue
		}
		ord, err := ordinal(pod.Name, sts.Name)
		if err != nil {
			continue
		}
		m := member{Name: pod.Name, Ordinal: ord, Failed: pod.Status.Phase == corev1.PodFailed,
			Current: sts.Status.UpdateRevision != "" && pod.Labels[appsv1.ControllerRevisionHashLabelKey] == sts.Status.UpdateRevision}
		if sts.Status.UpdateRevision == "" {
			m.Current = true // no revision yet: nothing to roll
		}
		for _, c := range pod.Status.Conditions {
			if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
				m.ReadySince = c.LastTransitionTime.Time
			}
		}
		if info, ok := agents[pod.Name]; ok {
			m.HasLease, m.Drain = true, info.Drain
			m.Busy = info.FreeSlots < info.Slots
		}
		if !m.Busy {
			var held farmv1.BuildList
			if err := r.Client.List(ctx, &held, client.InNamespace(pool.Namespace), client.MatchingFields{index.BuildAttemptAgent: pod.Name}); err != nil {
				return nil, fmt.Errorf("listing the builds agent %s runs: %w", pod.Name, err)
			}
			for j := range held.Items {
				if !held.Items[j].Status.Phase.Finished() {
					m.Busy = true
					break
				}
			}
		}
		m.Quiesced = p.Quiesced(pod.Name)
		out = append(out, m)
	}
	return out, nil
}

// applyDrains sets the drain annotation on the Leases of the agents in drain and removes it from
// the others (a scale-up can cancel a drain). The agent reconciler reads it and offers the agent
// nothing more; the agent's renewals keep it.
func (r *Reconciler) applyDrains(ctx context.Context, pool *farmv1.AgentPool, members []member, drain map[string]string) error {
	for _, m := range members {
		want := drain[m.Name]
		if !m.HasLease || m.Drain == want {
			continue
		}
		l := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: m.Name, Namespace: pool.Namespace}}
		var value any = want
		if want == "" {
			value = nil
		}
		body := fmt.Sprintf(`{"metadata":{"annotations":{%q:%s}}}`, agentlease.AnnotationDrain, jsonValue(value))
		if err := r.Client.Patch(ctx, l, client.RawPatch(types.MergePatchType, []byte(body))); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("marking agent %s drain=%q: %w", m.Name, want, err)
		}
		ctrl.LoggerFrom(ctx).Info("Agent drain changed", "agent", m.Name, "drain", want)
	}
	return nil
}

// deletePod deletes a drained pod of an older template (the StatefulSet makes it again from the
// current one); the UID precondition spares a pod of the same name made meanwhile.
func (r *Reconciler) deletePod(ctx context.Context, ns, name string, pods []corev1.Pod) error {
	for i := range pods {
		if pods[i].Name != name || pods[i].DeletionTimestamp != nil {
			continue
		}
		uid := pods[i].UID
		if err := r.Client.Delete(ctx, &pods[i], client.Preconditions{UID: &uid}); err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			return fmt.Errorf("deleting drained agent pod %s: %w", name, err)
		}
		ctrl.LoggerFrom(ctx).Info("Replaced drained agent", "pod", name)
	}
	return nil
}

// ordinal is a StatefulSet pod's index.
func ordinal(pod, set string) (int, error) {
	s, ok := strings.CutPrefix(pod, set+"-")
	if !ok {
		return 0, fmt.Errorf("pod %s is not of StatefulSet %s", pod, set)
	}
	return strconv.Atoi(s)
}
