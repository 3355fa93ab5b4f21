package build

import (
	"context"
	"errors"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"

	farmv1 "github.com/guixfarm/guix-farm/api/v1alpha1"
	"github.com/guixfarm/guix-farm/internal/conditions"
	"github.com/guixfarm/guix-farm/internal/drvsource"
)

// Retry bounds for an unreadable .drv: backoff doubles with the time the condition has been False.
const (
	factsRetryMin = 2 * time.Second
	factsRetryMax = 10 * time.Minute
)

// reconcileFacts reads the .drv (cached) and records its small facts in the status once. An
// unreadable or unparseable .drv sets DerivationReadable=False and retries with backoff.
func (r *Reconciler) reconcileFacts(ctx context.Context, s *scope) (ctrl.Result, bool) {
	b := s.b
	facts, err := r.Facts.Get(ctx, b.Spec.Derivation)
	if err != nil {
		reason := "Unreachable"
		switch {
		case errors.Is(err, drvsource.ErrNotFound):
			reason = "NotFound"
		case errors.Is(err, drvsource.ErrInvalid):
			reason = "Invalid"
		}
		conditions.Set(&b.Status.Conditions, b.Generation, s.now, farmv1.BuildConditionDerivationReadable,
			metav1.ConditionFalse, reason, "Reading spec.derivation: "+err.Error())
		if b.Status.Phase == "" {
			b.Status.Phase = farmv1.BuildPending
		}
		return ctrl.Result{RequeueAfter: factsBackoff(b, s.now)}, true
	}
	s.facts = facts
	conditions.Remove(&b.Status.Conditions, farmv1.BuildConditionDerivationReadable)
	if b.Status.System == "" {
		b.Status.System = facts.System
		b.Status.DerivationName = facts.Name
		b.Status.Outputs = make([]farmv1.Output, len(facts.Outputs))
		for i, o := range facts.Outputs {
			b.Status.Outputs[i] = farmv1.Output{Name: o.Name, Path: o.Path}
		}
	}
	if b.Status.Phase == "" {
		b.Status.Phase = farmv1.BuildPending
	}
	return ctrl.Result{}, false
}

// factsBackoff doubles the wait with the time the .drv has been unreadable, within bounds, so
// a missing .drv costs a read every few minutes, never a hot loop.
func factsBackoff(b *farmv1.Build, now time.Time) time.Duration {
	for _, c := range b.Status.Conditions {
		if c.Type == farmv1.BuildConditionDerivationReadable {
			return min(max(now.Sub(c.LastTransitionTime.Time), factsRetryMin), factsRetryMax)
		}
	}
	return factsRetryMin
}
