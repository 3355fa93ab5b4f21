package farm

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	farmv1 "github.com/guixfarm/guix-farm/api/v1alpha1"
)

// BuildWrapper builds Build objects for tests: MakeBuild("b", ns, drv).Priority(5).Obj().
type BuildWrapper struct{ farmv1.Build }

// MakeBuild starts a Build for drv.
func MakeBuild(name, namespace, drv string) *BuildWrapper {
	return &BuildWrapper{farmv1.Build{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace},
		Spec:       farmv1.BuildSpec{Derivation: drv},
	}}
}

// Priority sets spec.priority.
func (w *BuildWrapper) Priority(p int32) *BuildWrapper { w.Spec.Priority = p; return w }

// Retry sets the retry policy.
func (w *BuildWrapper) Retry(maxAttempts, backoffSeconds int32) *BuildWrapper {
	w.Spec.Retry = &farmv1.RetryPolicy{MaxAttempts: maxAttempts, BackoffSeconds: backoffSeconds, MaxBackoffSeconds: 60}
	return w
}

// Annotation sets an annotation (the test builder reads some).
func (w *BuildWrapper) Annotation(k, v string) *BuildWrapper {
	if w.Annotations == nil {
		w.Annotations = map[string]string{}
	}
	w.Annotations[k] = v
	return w
}

// Label sets a label (tags are labels).
func (w *BuildWrapper) Label(k, v string) *BuildWrapper {
	if w.Labels == nil {
		w.Labels = map[string]string{}
	}
	w.Labels[k] = v
	return w
}

// DeferUntil sets spec.deferUntil.
func (w *BuildWrapper) DeferUntil(t metav1.Time) *BuildWrapper { w.Spec.DeferUntil = &t; return w }

// Obj returns the Build.
func (w *BuildWrapper) Obj() *farmv1.Build { return w.Build.DeepCopy() }
