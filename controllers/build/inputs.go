package build

import (
	"context"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	farmv1 "github.com/guixfarm/guix-farm/api/v1alpha1"
	"github.com/guixfarm/guix-farm/internal/buildname"
	"github.com/guixfarm/guix-farm/internal/index"
)

// AnnotationCreatedFor marks a Build the farm created for a missing input, naming the first
// dependent (an annotation: a Build's name may be longer than a label value).
const AnnotationCreatedFor = "build.guixfarm.io/created-for"

// inputBuildsRetry is when creating input Builds is tried again after the apiserver refused one.
const inputBuildsRetry = 10 * time.Second

// reconcileInputBuilds honours spec.ensureInputBuilds: every input derivation without available
// outputs and without a Build gets one, at this Build's priority, asking the same for its own
// inputs. Its name is buildname.For the derivation, as `kubectl guixfarm submit` names it, so
// concurrent dependents and a submission find one Build. A failed input Build is not replaced:
// a new one is the user's call (a retry of a build that fails is usually wasted). It returns how
// soon to try again when a Build could not be created; the dependent is planned meanwhile.
func (r *Reconciler) reconcileInputBuilds(ctx context.Context, s *scope) time.Duration {
	b := s.b
	if !b.Spec.EnsureInputBuilds || b.Status.AttemptCount > 0 || b.Status.Phase == farmv1.BuildRunning {
		return 0
	}
	for _, in := range s.facts.InputDrvs {
		if avail, known := r.Availability.Peek(in); known && avail {
			continue // an unknown one costs a List here, and a skip check in the Build it gets
		}
		var list farmv1.BuildList
		if err := r.Client.List(ctx, &list, client.InNamespace(b.Namespace), client.MatchingFields{index.BuildDerivation: in}); err != nil {
			s.log.Error(err, "listing the builds of an input", "input", in)
			return inputBuildsRetry
		}
		if len(list.Items) > 0 {
			continue
		}
		name, err := buildname.For(in)
		if err != nil { // the facts parser accepted it as a store path: not expected
			s.log.Error(err, "naming a build for an input", "input", in)
			continue
		}
		nb := &farmv1.Build{
			ObjectMeta: metav1.ObjectMeta{Namespace: b.Namespace, Name: name,
				Annotations: map[string]string{AnnotationCreatedFor: b.Name}},
			Spec: farmv1.BuildSpec{Derivation: in, Priority: b.Spec.Priority, EnsureInputBuilds: true,
				SkipIfOutputsAvailable: true, Retry: b.Spec.Retry.DeepCopy()},
		}
		if err := r.Client.Create(ctx, nb); err != nil && !apierrors.IsAlreadyExists(err) {
			s.log.Error(err, "creating a build for an input", "input", in, "build", name)
			return inputBuildsRetry
		}
	}
	return 0
}
