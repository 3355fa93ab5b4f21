package builds

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"

	farmv1 "github.com/guixfarm/guix-farm/api/v1alpha1"
	"github.com/guixfarm/guix-farm/internal/conditions"
	"github.com/guixfarm/guix-farm/internal/derivation"
	"github.com/guixfarm/guix-farm/internal/drvsource"
	"github.com/guixfarm/guix-farm/internal/lifecycle"
)

// Retry bounds for an unreadable .drv: backoff doubles with the time the condition has been False.
const (
	factsRetryMin = 2 * time.Second
	factsRetryMax = 10 * time.Minute
)

// reconcileFacts reads the .drv (cached) and records its small facts in the status once. An
// unreadable .drv sets DerivationReadable=False and retries with backoff (it may be uploaded
// later, the bucket may come back); an invalid one ends the Build Failed, since no retry can
// help.
func (r *Reconciler) reconcileFacts(ctx context.Context, s *scope) (ctrl.Result, bool) {
	b := s.b
	facts, err := r.Facts.Get(ctx, b.Spec.Derivation)
	if err == nil {
		err = checkFacts(facts)
	}
	if errors.Is(err, drvsource.ErrInvalid) && b.Status.Attempt == nil && b.Status.Phase != farmv1.BuildRunning {
		conditions.Set(&b.Status.Conditions, b.Generation, s.now, farmv1.BuildConditionDerivationReadable,
			metav1.ConditionFalse, "Invalid", "Reading spec.derivation: "+err.Error())
		if ferr := lifecycle.FailUnstarted(b, s.now, farmv1.ReasonInvalidDerivation,
			"spec.derivation cannot be built: "+err.Error()+"; fix the .drv (or the Build's spec.derivation) and create the Build again"); ferr == nil {
			s.log.Info("Invalid derivation; build failed", "derivation", b.Spec.Derivation, "error", err.Error())
			r.Loop.Forget(s.key)
			return ctrl.Result{}, true
		}
	}
	if err != nil {
		reason := "Unreachable"
		switch {
		case errors.Is(err, drvsource.ErrNotFound):
			reason = "NotFound"
		case errors.Is(err, drvsource.ErrInvalid):
			reason = "Invalid"
		}
		s.log.Info("Cannot read the derivation; will retry", "derivation", b.Spec.Derivation, "reason", reason, "error", err.Error())
		conditions.Set(&b.Status.Conditions, b.Generation, s.now, farmv1.BuildConditionDerivationReadable,
			metav1.ConditionFalse, reason, "Reading spec.derivation: "+err.Error())
		if b.Status.Phase == "" {
			b.Status.Phase = farmv1.BuildPending
		}
		return ctrl.Result{RequeueAfter: factsBackoff(b, s.now)}, true
	}
	s.facts = facts
	conditions.Remove(&b.Status.Conditions, farmv1.BuildConditionDerivationReadable)
	return ctrl.Result{}, false
}

// FactsDelay is how long a new Build may stay without any status: most are planned within it,
// and then one write carries the facts and the allocation together.
const FactsDelay = 2 * time.Second

// recordFacts writes the derivation's small facts into the status: always the phase, system and
// name (for kubectl's columns), and the outputs once the Build is planned, so a Build waiting in
// a queue of 10^5 stays small in etcd.
func recordFacts(s *scope, withOutputs bool) {
	b := s.b
	if b.Status.Phase == "" {
		b.Status.Phase = farmv1.BuildPending
	}
	if b.Status.System == "" {
		b.Status.System = s.facts.System
		b.Status.DerivationName = s.facts.Name
	}
	if withOutputs && len(b.Status.Outputs) == 0 {
		b.Status.Outputs = make([]farmv1.Output, len(s.facts.Outputs))
		for i, o := range s.facts.Outputs {
			b.Status.Outputs[i] = farmv1.Output{Name: o.Name, Path: o.Path}
		}
	}
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

// systemRE is what a system name may be: Nix's and Guix's are like x86_64-linux, i586-gnu,
// aarch64-darwin.
var systemRE = regexp.MustCompile(`^[A-Za-z0-9_.+-]+$`)

// checkFacts refuses a .drv the API cannot hold (drvsource.ErrInvalid, naming the field and the
// limit): otherwise every status write of its Build would fail, and retry, for ever.
func checkFacts(f derivation.Facts) error {
	invalid := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", drvsource.ErrInvalid, fmt.Sprintf(format, args...))
	}
	switch {
	case f.System == "" || len(f.System) > farmv1.MaxSystemLength || !systemRE.MatchString(f.System):
		return invalid("system %q: want 1 to %d letters, digits and _.+- (e.g. x86_64-linux)", f.System, farmv1.MaxSystemLength)
	case len(f.Outputs) == 0 || len(f.Outputs) > farmv1.MaxOutputs:
		return invalid("%d outputs: the farm builds derivations with 1 to %d", len(f.Outputs), farmv1.MaxOutputs)
	}
	for _, o := range f.Outputs {
		switch {
		case o.Name == "" || len(o.Name) > farmv1.MaxOutputNameLength:
			return invalid("output name %q: want 1 to %d characters", o.Name, farmv1.MaxOutputNameLength)
		case len(o.Path) > farmv1.MaxStorePathLength:
			return invalid("output %s: its path has %d characters, more than the %d the farm holds", o.Name, len(o.Path), farmv1.MaxStorePathLength)
		}
	}
	return nil
}
