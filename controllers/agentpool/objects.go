package agentpool

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	farmv1 "github.com/guixfarm/guix-farm/api/v1alpha1"
)

// annotationTemplateHash on the StatefulSet is the hash of the pod template last written: the
// apiserver fills defaults into the stored template, so comparing templates would always differ.
const annotationTemplateHash = "build.guixfarm.io/template-hash"

// statefulSet is the pool's StatefulSet: stable pod names (the agents' Lease names), one store
// claim per agent when the farm sizes stores, pods made in parallel, and replaced only by this
// controller (OnDelete) once drained.
func (r *Reconciler) statefulSet(pool *farmv1.AgentPool, tpl corev1.PodTemplateSpec, replicas int32) *appsv1.StatefulSet {
	sts := &appsv1.StatefulSet{
		ObjectMeta: metav1.ObjectMeta{Name: pool.Name, Namespace: pool.Namespace, Labels: Selector(pool.Name),
			Annotations: map[string]string{annotationTemplateHash: templateHash(tpl)}},
		Spec: appsv1.StatefulSetSpec{
			Replicas:            &replicas,
			Selector:            &metav1.LabelSelector{MatchLabels: Selector(pool.Name)},
			ServiceName:         pool.Name,
			PodManagementPolicy: appsv1.ParallelPodManagement,
			UpdateStrategy:      appsv1.StatefulSetUpdateStrategy{Type: appsv1.OnDeleteStatefulSetStrategyType},
			Template:            tpl,
			// A store claim outlives a scale-down: the agent that comes back finds its store warm.
			PersistentVolumeClaimRetentionPolicy: &appsv1.StatefulSetPersistentVolumeClaimRetentionPolicy{
				WhenDeleted: appsv1.DeletePersistentVolumeClaimRetentionPolicyType,
				WhenScaled:  appsv1.RetainPersistentVolumeClaimRetentionPolicyType,
			},
		},
	}
	if r.Defaults.StoreSize != "" {
		pvc := corev1.PersistentVolumeClaim{
			ObjectMeta: metav1.ObjectMeta{Name: volStore},
			Spec: corev1.PersistentVolumeClaimSpec{
				AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
				Resources:   corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse(r.Defaults.StoreSize)}},
			},
		}
		if r.Defaults.StoreClass != "" {
			pvc.Spec.StorageClassName = &r.Defaults.StoreClass
		}
		sts.Spec.VolumeClaimTemplates = []corev1.PersistentVolumeClaim{pvc}
	}
	_ = controllerutil.SetControllerReference(pool, sts, r.Client.Scheme())
	return sts
}

// ensureDaemonConfig writes the pool's daemon ConfigMap: the Guix ACL of the keys whose
// substitutes the daemon accepts (the farm's, then the pool's).
func (r *Reconciler) ensureDaemonConfig(ctx context.Context, pool *farmv1.AgentPool) error {
	keys := append([]string(nil), r.Defaults.AuthorizedKeys...)
	if pool.Spec.Daemon != nil {
		keys = append(keys, pool.Spec.Daemon.AuthorizedKeys...)
	}
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: daemonConfigName(pool.Name), Namespace: pool.Namespace}}
	_, err := controllerutil.CreateOrPatch(ctx, r.Client, cm, func() error {
		cm.Labels = Selector(pool.Name)
		cm.Data = map[string]string{ConfigKeyACL: guixACL(keys)}
		return controllerutil.SetControllerReference(pool, cm, r.Client.Scheme())
	})
	if err != nil {
		return fmt.Errorf("writing the daemon ConfigMap of pool %s: %w", pool.Name, err)
	}
	return nil
}

// ensureBudget keeps voluntary disruptions (node drains) to one agent of the pool at a time; the
// agent evicted releases its builds, which are retried elsewhere without spending an attempt.
func (r *Reconciler) ensureBudget(ctx context.Context, pool *farmv1.AgentPool) error {
	pdb := &policyv1.PodDisruptionBudget{ObjectMeta: metav1.ObjectMeta{Name: pool.Name, Namespace: pool.Namespace}}
	_, err := controllerutil.CreateOrPatch(ctx, r.Client, pdb, func() error {
		pdb.Labels = Selector(pool.Name)
		pdb.Spec.Selector = &metav1.LabelSelector{MatchLabels: Selector(pool.Name)}
		pdb.Spec.MaxUnavailable = ptr.To(intstr.FromInt32(1))
		return controllerutil.SetControllerReference(pool, pdb, r.Client.Scheme())
	})
	if err != nil {
		return fmt.Errorf("writing the PodDisruptionBudget of pool %s: %w", pool.Name, err)
	}
	return nil
}

// templateHash identifies a rendered pod template.
func templateHash(t corev1.PodTemplateSpec) string {
	b, _ := json.Marshal(t) // a PodTemplateSpec always marshals
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8])
}

// invalid turns the apiserver's rejection of the StatefulSet into a message naming the pool's
// fields: the pod template's paths are spec.template... in both objects.
func invalid(err error) (string, bool) {
	var se *apierrors.StatusError
	if !apierrors.IsInvalid(err) || !errors.As(err, &se) || se.ErrStatus.Details == nil {
		return "", false
	}
	var parts []string
	for _, c := range se.ErrStatus.Details.Causes {
		parts = append(parts, fmt.Sprintf("%s: %s", c.Field, c.Message))
	}
	if len(parts) == 0 {
		return se.ErrStatus.Message, true
	}
	return "the pod made from this pool is invalid: " + strings.Join(parts, "; "), true
}

// jsonValue renders a merge-patch value (nil deletes the key).
func jsonValue(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}
