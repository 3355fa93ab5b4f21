package builds

import (
	"context"
	"time"

	farmv1 "github.com/guixfarm/guix-farm/api/v1alpha1"
)

// AnnotationCreatedFor marks a Build the farm created for a missing input, naming the first
// dependent (an annotation: a Build's name may be longer than a label value).
const AnnotationCreatedFor = "build.guixfarm.io/created-for"

// inputBuildsRetry is when creating input Builds is tried again after the apiserver refused one.
const inputBuildsRetry = 10 * time.Second

// reconcileInputBuilds honours spec.ensureInputBuilds: every input derivation without available
// outputs and without a Build gets one (ensureBuildOf), asking the same for its own inputs. A
// failed input Build is not replaced: a new one is the user's call (a retry of a build that
// fails is usually wasted). It returns how soon to try again when a Build could not be created;
// the dependent is planned meanwhile.
func (r *Reconciler) reconcileInputBuilds(ctx context.Context, s *scope) time.Duration {
	b := s.b
	if !b.Spec.EnsureInputBuilds || b.Status.AttemptCount > 0 || b.Status.Phase == farmv1.BuildRunning {
		return 0
	}
	for _, in := range s.facts.InputDrvs {
		if avail, known := r.Availability.Peek(in); known && avail {
			continue // an unknown one costs a List here, and a skip check in the Build it gets
		}
		if err := r.ensureBuildOf(ctx, s, in, inputBuild{why: "ensure", ensureInputs: true}); err != nil {
			s.log.Error(err, "creating a build for an input", "input", in)
			return inputBuildsRetry
		}
	}
	return 0
}
