package planloop

import (
	"context"
	"fmt"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/apimachinery/pkg/api/meta"
	"sigs.k8s.io/controller-runtime/pkg/client"

	farmv1 "github.com/guixfarm/guix-farm/api/v1alpha1"
	"github.com/guixfarm/guix-farm/internal/index"
	"github.com/guixfarm/guix-farm/internal/planner"
)

// Availability is the farm's one owner of output availability (internal/availability), as the
// planning loop asks it: Peek for the planner's Lookup, Resolve to ask the bucket (its answers
// reach the planner through the owner's OnAnswer).
type Availability interface {
	Successes
	Peek(drv string) (available, known bool)
	Resolve(drvs []string)
}

// Successes is how the availability owner learns of succeeded Builds.
type Successes interface {
	Succeeded(drv string, outputs []string, at time.Time) bool
}

// SucceededBuild tells the availability owner of a succeeded Build, as of its completion; it
// reports false when the success is too old to say anything of the bucket now.
func SucceededBuild(a Successes, b *farmv1.Build) bool {
	outputs := make([]string, len(b.Status.Outputs))
	for i, o := range b.Status.Outputs {
		outputs[i] = o.Path
	}
	at := b.CreationTimestamp.Time
	if b.Status.CompletionTime != nil {
		at = b.Status.CompletionTime.Time
	}
	return a.Succeeded(b.Spec.Derivation, outputs, at)
}

// Resolver answers the derivations the planner lists as unresolved: inputs some Build needs,
// that no modelled Build produces and of which nobody has said whether their outputs exist. The
// Builds in the cache answer first (a succeeded one: available; a live one: it is about to be
// modelled; only failed ones: the input failed, and its dependents say which); the availability
// owner answers the rest from the bucket.
type Resolver struct {
	Client  client.Reader // the manager's cache
	Owner   Availability  // nil: no bucket, so what no Build produced is absent
	Planner *planner.Planner
	// Kick asks for a planning pass after answers changed the model.
	Kick func()
	Log  logr.Logger
}

// Resolve answers drvs, the planner's unresolved derivations.
func (r *Resolver) Resolve(ctx context.Context, drvs []string) {
	var ask []string
	changed := false
	for _, drv := range drvs {
		var list farmv1.BuildList
		if err := r.Client.List(ctx, &list, client.MatchingFields{index.BuildDerivation: drv}); err != nil {
			r.Log.Error(err, "listing the builds of an input", "derivation", drv)
			ask = append(ask, drv) // the bucket can still answer
			continue
		}
		switch verdict, b, why := judgeBuilds(list.Items); verdict {
		case buildsSucceeded:
			switch {
			case r.Owner == nil:
				r.Planner.SetAvailable(drv, true)
				changed = true
			case !SucceededBuild(r.Owner, b): // too old to trust: the bucket answers
				ask = append(ask, drv)
			} // else the owner tells the planner
		case buildsLive:
			// Its reconcile models it shortly; the derivation stays unresolved, and so holds its
			// dependents back, until then.
		case buildsFailed:
			r.Planner.SetFailed(drv, why)
			changed = true
		default:
			ask = append(ask, drv)
		}
	}
	switch {
	case len(ask) == 0:
	case r.Owner != nil:
		r.Owner.Resolve(ask)
	default:
		for _, drv := range ask {
			r.Planner.SetAvailable(drv, false)
		}
		changed = true
	}
	if changed && r.Kick != nil {
		r.Kick()
	}
}

type buildsVerdict int

const (
	noBuilds buildsVerdict = iota
	buildsSucceeded
	buildsLive
	buildsFailed
)

// judgeBuilds says what the Builds of one derivation tell of its outputs: for a succeeded one,
// which Build; for failed ones, which and why.
func judgeBuilds(bs []farmv1.Build) (buildsVerdict, *farmv1.Build, string) {
	var failed *farmv1.Build
	for i := range bs {
		b := &bs[i]
		switch {
		case b.Status.Phase == farmv1.BuildSucceeded:
			return buildsSucceeded, b, ""
		case b.DeletionTimestamp != nil: // going: it neither builds nor tells
		case !b.Status.Phase.Finished():
			return buildsLive, nil, ""
		case failed == nil || b.Status.CompletionTime != nil && failed.Status.CompletionTime != nil &&
			b.Status.CompletionTime.After(failed.Status.CompletionTime.Time):
			failed = b // the latest one says why
		}
	}
	if failed == nil {
		return noBuilds, nil, ""
	}
	why := fmt.Sprintf("Build %s/%s ended %s", failed.Namespace, failed.Name, failed.Status.Phase)
	if c := meta.FindStatusCondition(failed.Status.Conditions, farmv1.BuildConditionSucceeded); c != nil {
		why += fmt.Sprintf(" (%s: %s)", c.Reason, c.Message)
	}
	return buildsFailed, failed, why
}
