package builds

import (
	"fmt"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	farmv1 "github.com/guixfarm/guix-farm/api/v1alpha1"
	"github.com/guixfarm/guix-farm/internal/conditions"
	"github.com/guixfarm/guix-farm/internal/planner"
)

// reconcileAllocation feeds the Build to the planner and writes what the planner decided for
// it: its allocation, and why it waits (no agent for its system, inputs not built yet).
func (r *Reconciler) reconcileAllocation(s *scope) {
	b := s.b
	intent, hasIntent := r.Loop.Intent(s.key)
	agent := ""
	switch {
	case b.Status.Attempt != nil:
		agent = b.Status.Attempt.Agent
	case hasIntent:
		agent = intent.Agent
	case b.Status.Allocation != nil:
		agent = b.Status.Allocation.Agent
	}
	p := r.Loop.Planner()
	p.UpsertBuild(planner.Build{
		Key: s.key, UID: string(b.UID), Derivation: b.Spec.Derivation, System: s.facts.System,
		Requirements: b.Spec.Requirements, Priority: b.Spec.Priority, Created: b.CreationTimestamp.Time,
		NotBefore: notBefore(b), Inputs: s.facts.InputDrvs, Running: b.Status.Phase == farmv1.BuildRunning, Agent: agent,
	})
	r.Loop.Kick()
	if b.Status.Phase == farmv1.BuildRunning {
		return
	}

	if hasIntent {
		if intent.Agent == "" {
			b.Status.Allocation = nil
			b.Status.Phase = farmv1.BuildPending
			conditions.Remove(&b.Status.Conditions, farmv1.BuildConditionAllocated)
		} else if b.Status.Allocation == nil || b.Status.Allocation.Agent != intent.Agent {
			b.Status.Allocation = &farmv1.Allocation{Agent: intent.Agent, Priority: intent.Priority, PlannedAt: metav1.NewTime(s.now.Truncate(time.Second))}
			b.Status.Phase = farmv1.BuildAllocated
			conditions.Set(&b.Status.Conditions, b.Generation, s.now, farmv1.BuildConditionAllocated, metav1.ConditionTrue,
				"Planned", fmt.Sprintf("Offered to agent %s", intent.Agent))
		}
	}

	w, _ := p.CurrentWait(s.key)
	setWait(b, s.now, w)
}

// setWait mirrors the planner's wait reason in conditions, touching them only when it changes.
func setWait(b *farmv1.Build, now time.Time, w planner.Wait) {
	switch w.Reason {
	case planner.NoAgentForSystem:
		conditions.Set(&b.Status.Conditions, b.Generation, now, farmv1.BuildConditionSchedulable, metav1.ConditionFalse,
			string(w.Reason), "Waiting: "+w.Message)
	default:
		conditions.Remove(&b.Status.Conditions, farmv1.BuildConditionSchedulable)
	}
	switch m := b.Status.MissingInputs; {
	case w.Reason == planner.InputsPending || w.Reason == planner.InputFailed:
		conditions.Set(&b.Status.Conditions, b.Generation, now, farmv1.BuildConditionInputsPending, metav1.ConditionTrue,
			string(w.Reason), w.Message)
	case m != nil && b.Status.Phase != farmv1.BuildRunning:
		conditions.Set(&b.Status.Conditions, b.Generation, now, farmv1.BuildConditionInputsPending, metav1.ConditionTrue,
			farmv1.ReasonMissingInputs, missingMessage(b))
	default:
		conditions.Remove(&b.Status.Conditions, farmv1.BuildConditionInputsPending)
	}
}

// missingMessage says what an agent could not find, and how often in a row.
func missingMessage(b *farmv1.Build) string {
	m := b.Status.MissingInputs
	what := strings.Join(m.Paths, ", ")
	if m.More > 0 {
		what += fmt.Sprintf(" and %d more", m.More)
	}
	msg := fmt.Sprintf("Agent %s could neither find nor substitute %s", m.Agent, what)
	if m.Releases > 1 {
		msg += fmt.Sprintf(" (%d attempts in a row released for the same inputs)", m.Releases)
	}
	if b.Status.RetryAfter != nil {
		msg += "; offered again from " + b.Status.RetryAfter.UTC().Format(time.RFC3339)
	}
	return msg
}

// notBefore is the later of spec.deferUntil and the retry backoff.
func notBefore(b *farmv1.Build) time.Time {
	var t time.Time
	if b.Spec.DeferUntil != nil {
		t = b.Spec.DeferUntil.Time
	}
	if b.Status.RetryAfter != nil && b.Status.RetryAfter.After(t) {
		t = b.Status.RetryAfter.Time
	}
	return t
}
