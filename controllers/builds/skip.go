package builds

import (
	"context"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	farmv1 "github.com/guixfarm/guix-farm/api/v1alpha1"
	"github.com/guixfarm/guix-farm/internal/conditions"
)

// ReasonOutputsAvailable ends a Build with spec.skipIfOutputsAvailable whose outputs exist.
const ReasonOutputsAvailable = "OutputsAvailable"

// Retry bounds for a skip check the bucket could not answer: doubling with the time the
// condition has been False.
const (
	skipRetryMin = 2 * time.Second
	skipRetryMax = 5 * time.Minute
)

// reconcileSkip finishes a Build at once when it asked to skip and the bucket has its outputs
// now (the availability owner's CheckFresh: every output's narinfo and nar; never a remembered
// answer, which could end the Build Succeeded on outputs deleted since). When the bucket cannot answer, the Build says so (OutputsChecked=False,
// naming the error), is planned as usual, and the check is tried again after the returned delay.
func (r *Reconciler) reconcileSkip(ctx context.Context, s *scope) (done bool, retry time.Duration) {
	b := s.b
	if !b.Spec.SkipIfOutputsAvailable || b.Status.Phase == farmv1.BuildRunning || b.Status.AttemptCount > 0 {
		conditions.Remove(&b.Status.Conditions, farmv1.BuildConditionOutputsChecked)
		return false, 0
	}
	ok, err := r.Availability.CheckFresh(ctx, b.Spec.Derivation)
	if err != nil {
		retry := skipBackoff(b, s.now)
		s.log.Info("Cannot tell whether the outputs are available; will retry", "derivation", b.Spec.Derivation,
			"retryIn", retry, "error", err.Error())
		conditions.Set(&b.Status.Conditions, b.Generation, s.now, farmv1.BuildConditionOutputsChecked, metav1.ConditionFalse,
			"BucketError", "Checking whether the outputs are already in the bucket (spec.skipIfOutputsAvailable): "+err.Error())
		return false, retry
	}
	conditions.Remove(&b.Status.Conditions, farmv1.BuildConditionOutputsChecked)
	if !ok {
		return false, 0
	}
	b.Status.Phase = farmv1.BuildSucceeded
	b.Status.Allocation = nil
	t := metav1.NewTime(s.now)
	b.Status.CompletionTime = &t
	recordFacts(s, true) // the outputs it stands for: GC roots, and what `kubectl get` shows
	conditions.Set(&b.Status.Conditions, b.Generation, s.now, farmv1.BuildConditionSucceeded, metav1.ConditionTrue,
		ReasonOutputsAvailable, "Every output is already available; nothing to build")
	return true, 0
}

// skipBackoff doubles the wait with the time the bucket has been failing the check, within
// bounds, so an outage costs a lookup every few minutes per Build, never a hot loop.
func skipBackoff(b *farmv1.Build, now time.Time) time.Duration {
	for _, c := range b.Status.Conditions {
		if c.Type == farmv1.BuildConditionOutputsChecked {
			return min(max(now.Sub(c.LastTransitionTime.Time), skipRetryMin), skipRetryMax)
		}
	}
	return skipRetryMin
}
