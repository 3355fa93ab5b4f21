package build

import (
	"context"
	"fmt"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	farmv1 "github.com/guixfarm/guix-farm/api/v1alpha1"
	"github.com/guixfarm/guix-farm/internal/conditions"
)

// ReasonOutputsAvailable ends a Build with spec.skipIfOutputsAvailable whose outputs exist.
const ReasonOutputsAvailable = "OutputsAvailable"

// reconcileSkip finishes a Build at once when it asked to skip and its outputs are already
// available: from a succeeded Build the planner remembers, or from the bucket.
func (r *Reconciler) reconcileSkip(ctx context.Context, s *scope) (bool, error) {
	b := s.b
	if !b.Spec.SkipIfOutputsAvailable || b.Status.Phase == farmv1.BuildRunning || b.Status.AttemptCount > 0 {
		return false, nil
	}
	ok, err := r.outputsAvailable(ctx, s)
	if err != nil || !ok {
		return false, err
	}
	b.Status.Phase = farmv1.BuildSucceeded
	b.Status.Allocation = nil
	t := metav1.NewTime(s.now)
	b.Status.CompletionTime = &t
	conditions.Set(&b.Status.Conditions, b.Generation, s.now, farmv1.BuildConditionSucceeded, metav1.ConditionTrue,
		ReasonOutputsAvailable, "Every output is already available; nothing to build")
	return true, nil
}

// outputsAvailable reports whether every output of the derivation is available.
func (r *Reconciler) outputsAvailable(ctx context.Context, s *scope) (bool, error) {
	if r.Loop.Planner().Available(s.b.Spec.Derivation) {
		return true, nil
	}
	if r.Outputs == nil {
		return false, nil
	}
	for _, o := range s.facts.Outputs {
		ok, err := r.Outputs.Available(ctx, o.Path)
		if err != nil {
			return false, fmt.Errorf("checking output %s of %s: %w", o.Name, s.b.Spec.Derivation, err)
		}
		if !ok {
			return false, nil
		}
	}
	return true, nil
}
