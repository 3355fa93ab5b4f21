package builds

import (
	"context"
	"fmt"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	farmv1 "github.com/guixfarm/guix-farm/api/v1alpha1"
	"github.com/guixfarm/guix-farm/internal/buildname"
	"github.com/guixfarm/guix-farm/internal/index"
)

// reconcileMissingInputs acts on an agent's missing-input report (status.missingInputs), as the
// Guix Build Coordinator does, whatever the Build's spec says: each derivation that produces a
// missing path and has no Build gets one, named as `kubectl guixfarm submit` names it, so that
// concurrent dependents create it once; the planner then holds the dependent back until it is
// built. A derivation the farm counted available is lost (its outputs are gone from the bucket):
// the availability owner is told, and a finished Succeeded Build of it is replaced by a new one.
// A failed Build of it is left alone: the dependent waits, naming it (a new Build is the user's
// call). Paths no derivation produces (sources) are only named on the Build's InputsPending
// condition. It returns how soon to try again when the apiserver refused something.
func (r *Reconciler) reconcileMissingInputs(ctx context.Context, s *scope) time.Duration {
	b := s.b
	m := b.Status.MissingInputs
	if m == nil || b.Status.Phase == farmv1.BuildRunning || b.Spec.Canceled {
		return 0
	}
	// The report stands as of the release; a Build of the input that succeeded since answers it.
	reported := b.CreationTimestamp.Time
	if n := len(b.Status.Attempts); n > 0 && !b.Status.Attempts[n-1].End.IsZero() {
		reported = b.Status.Attempts[n-1].End.Time
	}
	why := fmt.Sprintf("agent %s could neither find nor substitute the outputs of %s's input", m.Agent, b.Name)
	var retry time.Duration
	for _, drv := range m.Derivations {
		if err := r.ensureBuildOf(ctx, s, drv, inputBuild{why: "missing", lostAt: reported, lostWhy: why}); err != nil {
			s.log.Error(err, "creating a build for a missing input", "input", drv)
			retry = inputBuildsRetry
		}
	}
	return retry
}

// inputBuild says why ensureBuildOf runs.
type inputBuild struct {
	why string // the metric's label: ensure (spec.ensureInputBuilds) or missing (an agent's report)
	// lostAt, when set, is when an agent reported the outputs missing (lostWhy says who): a
	// Succeeded Build of the derivation that completed before no longer stands for them.
	lostAt  time.Time
	lostWhy string
	// ensureInputs: the new Build asks the same for its own inputs.
	ensureInputs bool
}

// ensureBuildOf makes sure a Build of drv exists in the dependent's namespace: none (or, when
// its outputs were reported lost, only Succeeded ones that completed before the report: the
// availability owner is told) gets a new one, at the dependent's priority (the
// planner raises it to that of everything waiting on it) and without its requirements (a kvm
// test's compiler does not need kvm); a live or failed one is left as it is.
func (r *Reconciler) ensureBuildOf(ctx context.Context, s *scope, drv string, ib inputBuild) error {
	b := s.b
	var list farmv1.BuildList
	if err := r.Client.List(ctx, &list, client.InNamespace(b.Namespace), client.MatchingFields{index.BuildDerivation: drv}); err != nil {
		return fmt.Errorf("listing the builds of %s: %w", drv, err)
	}
	name, err := buildname.For(drv)
	if err != nil {
		return err
	}
	var stale *farmv1.Build // a Succeeded Build under the derivation's name, older than the report
	for i := range list.Items {
		x := &list.Items[i]
		switch {
		case x.Status.Phase != farmv1.BuildSucceeded || ib.lostAt.IsZero():
			return nil // being built, built, or failed (its dependents wait, naming it)
		case x.Status.CompletionTime != nil && !x.Status.CompletionTime.Time.Before(ib.lostAt):
			return nil // built again since the report
		case x.Name == name && x.DeletionTimestamp == nil:
			stale = x
		}
	}
	if !ib.lostAt.IsZero() {
		if avail, known := r.Availability.Peek(drv); known && avail {
			r.Availability.Gone(drv, ib.lostWhy)
		}
	}
	if x := stale; x != nil {
		// Succeeded, but its outputs are reported missing since: make room for a new Build under
		// the derivation's name. The next reconcile creates it once the old one is gone.
		if err := r.Client.Delete(ctx, x, client.Preconditions{UID: &x.UID}); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("deleting %s, whose outputs are lost, to build %s again: %w", x.Name, drv, err)
		}
		s.log.Info("Outputs lost: building the derivation again", "input", drv, "old", x.Name)
		// After the delete (the write this Event reports), on the Build that found the loss.
		r.Recorder.Eventf(b, x, "Warning", "OutputsLost", "Rebuild",
			"%s: the outputs of %s (Build %s) are gone from the bucket; building it again", ib.lostWhy, drv, x.Name)
		return nil
	}
	nb := &farmv1.Build{
		ObjectMeta: metav1.ObjectMeta{Namespace: b.Namespace, Name: name,
			Annotations: map[string]string{AnnotationCreatedFor: b.Name}},
		Spec: farmv1.BuildSpec{Derivation: drv, Priority: b.Spec.Priority, SkipIfOutputsAvailable: true,
			EnsureInputBuilds: ib.ensureInputs, Retry: b.Spec.Retry.DeepCopy()},
	}
	if err := r.Client.Create(ctx, nb); err != nil {
		if apierrors.IsAlreadyExists(err) {
			return nil
		}
		return fmt.Errorf("creating build %s for %s: %w", name, drv, err)
	}
	r.Metrics.InputBuilds.WithLabelValues(ib.why).Inc()
	s.log.Info("Created a build for an input", "input", drv, "build", name, "why", ib.why)
	return nil
}
