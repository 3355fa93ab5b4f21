package build

import (
	"context"
	"fmt"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	farmv1 "github.com/guixfarm/guix-farm/api/v1alpha1"
	"github.com/guixfarm/guix-farm/internal/index"
)

// LabelCreatedFor marks a Build the farm created for a missing input, naming the first dependent.
const LabelCreatedFor = "build.guixfarm.io/created-for"

// reconcileInputBuilds honours spec.ensureInputBuilds: every input derivation without available
// outputs and without a live Build gets one, at this Build's priority, asking the same for its own
// inputs. The name is derived from the derivation, so concurrent dependents create it only once.
func (r *Reconciler) reconcileInputBuilds(ctx context.Context, s *scope) error {
	b := s.b
	if !b.Spec.EnsureInputBuilds || b.Status.AttemptCount > 0 || b.Status.Phase == farmv1.BuildRunning {
		return nil
	}
	p := r.Loop.Planner()
	for _, in := range s.facts.InputDrvs {
		if p.Available(in) {
			continue
		}
		var list farmv1.BuildList
		if err := r.Client.List(ctx, &list, client.InNamespace(b.Namespace), client.MatchingFields{index.BuildDerivation: in}); err != nil {
			return fmt.Errorf("listing builds of input %s: %w", in, err)
		}
		live := false
		for i := range list.Items {
			if ph := list.Items[i].Status.Phase; !ph.Finished() || ph == farmv1.BuildSucceeded {
				live = true
				break
			}
		}
		if live {
			continue
		}
		nb := &farmv1.Build{
			ObjectMeta: metav1.ObjectMeta{Namespace: b.Namespace, Name: inputBuildName(in, len(list.Items)),
				Labels: map[string]string{LabelCreatedFor: b.Name}},
			Spec: farmv1.BuildSpec{Derivation: in, Priority: b.Spec.Priority, EnsureInputBuilds: true,
				SkipIfOutputsAvailable: true, Retry: b.Spec.Retry.DeepCopy(), Requirements: nil},
		}
		if err := r.Client.Create(ctx, nb); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("creating a build for input %s: %w", in, err)
		}
	}
	return nil
}

// inputBuildName is deterministic per derivation and generation of attempts: "<hash>-<name>-<n>",
// within the 253-character name limit.
func inputBuildName(drv string, n int) string {
	base := drv[strings.LastIndexByte(drv, '/')+1:]
	base = strings.TrimSuffix(base, ".drv")
	name := strings.ToLower(strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '.' {
			return r
		}
		if r >= 'A' && r <= 'Z' {
			return r
		}
		return '-'
	}, base))
	if len(name) > 240 {
		name = name[:240]
	}
	return strings.Trim(fmt.Sprintf("%s-%d", name, n), "-.")
}
