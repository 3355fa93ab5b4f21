// Package lifecycle holds the transitions of a Build's status, as pure functions shared by the
// controller and the agents, so both sides move a Build the same way whoever writes it.
// Each function changes the Build in memory; the caller writes it with optimistic concurrency.
package lifecycle

import (
	"errors"
	"fmt"
	"slices"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	farmv1 "github.com/guixfarm/guix-farm/api/v1alpha1"
	"github.com/guixfarm/guix-farm/internal/conditions"
)

// Defaults of the retry policy when a Build does not set one (the schema defaults them too).
const (
	DefaultMaxAttempts       = 3
	DefaultBackoffSeconds    = 10
	DefaultMaxBackoffSeconds = 3600
)

// ErrNotClaimable means the Build is not allocated to this agent or not waiting to run.
var ErrNotClaimable = errors.New("build is not claimable")

// ErrNotHolder means the agent no longer holds the attempt it reports on.
var ErrNotHolder = errors.New("agent does not hold the build's attempt")

// Claim starts an attempt of b on agent, in the term of its Lease whose UID is lease (the attempt's
// owner token). Only a Build allocated to agent, pending, not canceled and not held back by a
// retry backoff can be claimed.
func Claim(b *farmv1.Build, agent string, lease types.UID, now time.Time) error {
	st := &b.Status
	switch {
	case b.Spec.Canceled:
		return fmt.Errorf("%w: canceled", ErrNotClaimable)
	case st.Phase != farmv1.BuildAllocated && st.Phase != farmv1.BuildPending:
		return fmt.Errorf("%w: phase %s", ErrNotClaimable, st.Phase)
	case st.Allocation == nil || st.Allocation.Agent != agent:
		return fmt.Errorf("%w: not allocated to %s", ErrNotClaimable, agent)
	case st.Attempt != nil:
		return fmt.Errorf("%w: attempt in flight on %s", ErrNotClaimable, st.Attempt.Agent)
	case st.RetryAfter != nil && now.Before(st.RetryAfter.Time):
		return fmt.Errorf("%w: retry backoff until %s", ErrNotClaimable, st.RetryAfter.Time.Format(time.RFC3339))
	}
	t := metav1.NewTime(now.Truncate(time.Second))
	st.Phase = farmv1.BuildRunning
	st.Attempt = &farmv1.Attempt{Agent: agent, Started: metav1.NewTime(now), LeaseUID: string(lease)}
	st.AttemptCount++
	st.RetryAfter = nil
	// MissingInputs stays while this attempt runs: if it is released for the same paths again,
	// the repeat is counted (ReleaseMissing).
	if st.StartTime == nil {
		st.StartTime = &t
	}
	gen := b.Generation
	conditions.Set(&st.Conditions, gen, now, farmv1.BuildConditionRunning, metav1.ConditionTrue, "Claimed",
		fmt.Sprintf("Attempt %d running on agent %s", st.AttemptCount, agent))
	conditions.Remove(&st.Conditions, farmv1.BuildConditionInputsPending)
	conditions.Remove(&st.Conditions, farmv1.BuildConditionSchedulable)
	return nil
}

// Holds reports whether agent runs b's attempt in flight.
func Holds(b *farmv1.Build, agent string) bool {
	return b.Status.Phase == farmv1.BuildRunning && b.Status.Attempt != nil && b.Status.Attempt.Agent == agent
}

// Owns reports whether the attempt in flight is the one agent claimed as number attempt in the
// Lease term lease: the fresh check an agent makes before it publishes or reports. An attempt
// claimed before owner tokens existed carries no LeaseUID and is judged on agent and number alone.
func Owns(b *farmv1.Build, agent string, lease types.UID, attempt int32) bool {
	return Holds(b, agent) && b.Status.AttemptCount == attempt &&
		(b.Status.Attempt.LeaseUID == "" || b.Status.Attempt.LeaseUID == string(lease))
}

// FromEarlierTerm reports whether b's attempt in flight was claimed by agent under a Lease other
// than the one whose UID is lease: the agent was declared lost since (its Lease deleted), so the
// attempt belongs to nobody and is ended as lost.
func FromEarlierTerm(b *farmv1.Build, agent string, lease types.UID) bool {
	return Holds(b, agent) && b.Status.Attempt.LeaseUID != "" && b.Status.Attempt.LeaseUID != string(lease)
}

// Succeed ends the attempt in flight successfully; outputs carry the published NarHashes.
func Succeed(b *farmv1.Build, agent string, now time.Time, outputs []farmv1.Output) error {
	if !Holds(b, agent) {
		return ErrNotHolder
	}
	endAttempt(b, now, farmv1.AttemptSucceeded, farmv1.ReasonSucceeded, "")
	b.Status.MissingInputs = nil
	if len(outputs) > 0 {
		b.Status.Outputs = outputs
	}
	finish(b, now, farmv1.BuildSucceeded, metav1.ConditionTrue, farmv1.ReasonSucceeded,
		fmt.Sprintf("Built on agent %s in attempt %d", agent, b.Status.AttemptCount))
	return nil
}

// Fail ends the attempt in flight as failed, whoever reports it (the agent, or the controller for a
// lost agent). The Build returns to Pending with a backoff while attempts remain, else it fails.
// A canceled Build ends Canceled instead. It never touches the Builds that depend on this one.
func Fail(b *farmv1.Build, agent string, now time.Time, reason, message string) error {
	if !Holds(b, agent) {
		return ErrNotHolder
	}
	endAttempt(b, now, farmv1.AttemptFailed, reason, message)
	b.Status.MissingInputs = nil // the attempt found its inputs
	requeueOrFinish(b, now, reason, message, true)
	return nil
}

// Lose ends the attempt in flight as lost to the farm's own fault (its agent was lost or
// restarted): it is retried like a failure, but counted in status.lostAttempts, not against the
// user's spec.retry.maxAttempts, up to farmv1.MaxLostAttempts.
func Lose(b *farmv1.Build, agent string, now time.Time, message string) error {
	if !Holds(b, agent) {
		return ErrNotHolder
	}
	endAttempt(b, now, farmv1.AttemptFailed, farmv1.ReasonAgentLost, message)
	b.Status.LostAttempts++
	if b.Status.LostAttempts >= farmv1.MaxLostAttempts && !b.Spec.Canceled {
		finish(b, now, farmv1.BuildFailed, metav1.ConditionFalse, farmv1.ReasonAgentLost,
			fmt.Sprintf("%d attempts lost to agent failures; last: %s", b.Status.LostAttempts, message))
		return nil
	}
	requeueOrFinish(b, now, farmv1.ReasonAgentLost, message, true)
	return nil
}

// FailFinal ends the attempt in flight as failed and the Build with it, whatever attempts remain:
// for failures another attempt would only repeat (a timeout, a log past its limit). reason is the
// Succeeded condition's reason, so `kubectl get` shows why.
func FailFinal(b *farmv1.Build, agent string, now time.Time, reason, message string) error {
	if !Holds(b, agent) {
		return ErrNotHolder
	}
	endAttempt(b, now, farmv1.AttemptFailed, reason, message)
	b.Status.MissingInputs = nil
	if b.Spec.Canceled {
		Cancel(b, now)
		return nil
	}
	finish(b, now, farmv1.BuildFailed, metav1.ConditionFalse, reason,
		fmt.Sprintf("Attempt %d: %s: %s", b.Status.AttemptCount, reason, message))
	return nil
}

// FailUnstarted ends a Build no agent holds as failed, whatever attempts remain: for a Build that
// can never succeed (its .drv is invalid). It refuses a Build with an attempt in flight, whose
// agent reports its end.
func FailUnstarted(b *farmv1.Build, now time.Time, reason, message string) error {
	if b.Status.Attempt != nil || b.Status.Phase == farmv1.BuildRunning {
		return fmt.Errorf("build has an attempt in flight on %s: its agent ends it", attemptAgent(b))
	}
	finish(b, now, farmv1.BuildFailed, metav1.ConditionFalse, reason, message)
	return nil
}

func attemptAgent(b *farmv1.Build) string {
	if b.Status.Attempt != nil {
		return b.Status.Attempt.Agent
	}
	return "an agent"
}

// Release gives a claimed Build back without counting the attempt against the retry budget
// (the agent is shutting down or could not set up). It is planned again at once.
func Release(b *farmv1.Build, agent string, now time.Time, reason, message string) error {
	if !Holds(b, agent) {
		return ErrNotHolder
	}
	endAttempt(b, now, farmv1.AttemptFailed, reason, message)
	b.Status.AttemptCount--
	requeueOrFinish(b, now, reason, message, false)
	return nil
}

// Retry bounds for a Build released for missing inputs: the wait doubles with each release in a
// row for the same paths, so a path that never appears costs a claim every 10 minutes at most.
const (
	missingRetryBase = 5 * time.Second
	missingRetryMax  = 10 * time.Minute
)

// ReleaseMissing gives a claimed Build back for the missing inputs m, without spending an
// attempt, and holds it back (retryAfter) for MissingInputsBackoff of the releases in a row for
// the same paths, which m.Releases then counts.
func ReleaseMissing(b *farmv1.Build, agent string, now time.Time, reason, message string, m *farmv1.MissingInputs) error {
	prev := b.Status.MissingInputs
	if err := Release(b, agent, now, reason, message); err != nil {
		return err
	}
	m.Releases = 1
	if prev != nil && sameMissing(prev, m) {
		m.Releases = prev.Releases + 1
	}
	b.Status.MissingInputs = m
	if b.Status.Phase.Finished() { // canceled meanwhile
		return nil
	}
	t := metav1.NewTime(now.Add(MissingInputsBackoff(m.Releases)).Truncate(time.Second))
	b.Status.RetryAfter = &t
	return nil
}

// MissingInputsBackoff is the wait after the n-th release in a row for the same missing inputs.
func MissingInputsBackoff(n int32) time.Duration {
	return Backoff(missingRetryBase, missingRetryMax, n)
}

func sameMissing(a, b *farmv1.MissingInputs) bool {
	return slices.Equal(a.Paths, b.Paths) && slices.Equal(a.Derivations, b.Derivations) && a.More == b.More
}

// Cancel ends a canceled Build: at once when it is not running, or with the attempt in flight
// when its agent reports the abort.
func Cancel(b *farmv1.Build, now time.Time) {
	if b.Status.Attempt != nil {
		endAttempt(b, now, farmv1.AttemptCanceled, farmv1.ReasonCanceled, "")
	}
	b.Status.Allocation = nil
	finish(b, now, farmv1.BuildCanceled, metav1.ConditionFalse, farmv1.ReasonCanceled, "Canceled by spec.canceled")
}

func requeueOrFinish(b *farmv1.Build, now time.Time, reason, message string, backoff bool) {
	if b.Spec.Canceled {
		Cancel(b, now)
		return
	}
	maxAttempts, base, maxBackoff := retryPolicy(b.Spec.Retry)
	// The user's budget: attempts lost to the farm's faults (Lose) do not count.
	if spent := b.Status.AttemptCount - b.Status.LostAttempts; spent >= maxAttempts {
		finish(b, now, farmv1.BuildFailed, metav1.ConditionFalse, farmv1.ReasonRetriesExceeded,
			fmt.Sprintf("%d of %d attempts failed; last: %s: %s", spent, maxAttempts, reason, message))
		return
	}
	b.Status.Phase = farmv1.BuildPending
	b.Status.Allocation = nil
	b.Status.RetryAfter = nil
	if backoff {
		d := Backoff(base, maxBackoff, b.Status.AttemptCount)
		if d > 0 {
			t := metav1.NewTime(now.Add(d).Truncate(time.Second))
			b.Status.RetryAfter = &t
		}
	}
	conditions.Remove(&b.Status.Conditions, farmv1.BuildConditionAllocated)
}

// Backoff is the wait after the n-th failed attempt: base doubled per further attempt, capped.
func Backoff(base, maxBackoff time.Duration, n int32) time.Duration {
	d := base
	for i := int32(1); i < n && d < maxBackoff; i++ {
		d *= 2
	}
	return min(d, maxBackoff)
}

func retryPolicy(p *farmv1.RetryPolicy) (maxAttempts int32, base, maxBackoff time.Duration) {
	maxAttempts, baseS, maxS := int32(DefaultMaxAttempts), int32(DefaultBackoffSeconds), int32(DefaultMaxBackoffSeconds)
	if p != nil {
		if p.MaxAttempts > 0 {
			maxAttempts = p.MaxAttempts
		}
		baseS = p.BackoffSeconds
		if p.MaxBackoffSeconds > 0 {
			maxS = p.MaxBackoffSeconds
		}
	}
	return maxAttempts, time.Duration(baseS) * time.Second, time.Duration(maxS) * time.Second
}

func endAttempt(b *farmv1.Build, now time.Time, result farmv1.AttemptResult, reason, message string) {
	st := &b.Status
	if len(message) > 512 {
		message = message[:509] + "..."
	}
	rec := farmv1.AttemptRecord{Agent: st.Attempt.Agent, Start: st.Attempt.Started, End: metav1.NewTime(now), Result: result, Reason: reason, Message: message}
	st.Attempts = append(st.Attempts, rec)
	if n := len(st.Attempts); n > farmv1.MaxAttemptHistory {
		st.Attempts = append(st.Attempts[:0:0], st.Attempts[n-farmv1.MaxAttemptHistory:]...)
	}
	st.Attempt = nil
	conditions.Remove(&st.Conditions, farmv1.BuildConditionRunning)
}

func finish(b *farmv1.Build, now time.Time, phase farmv1.BuildPhase, status metav1.ConditionStatus, reason, message string) {
	st := &b.Status
	st.Phase = phase
	st.Allocation = nil
	st.RetryAfter = nil
	t := metav1.NewTime(now.Truncate(time.Second))
	st.CompletionTime = &t
	for _, c := range []string{farmv1.BuildConditionAllocated, farmv1.BuildConditionRunning, farmv1.BuildConditionInputsPending, farmv1.BuildConditionSchedulable} {
		conditions.Remove(&st.Conditions, c)
	}
	conditions.Set(&st.Conditions, b.Generation, now, farmv1.BuildConditionSucceeded, status, reason, message)
}
