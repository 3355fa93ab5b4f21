package builds

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/event"

	farmv1 "github.com/guixfarm/guix-farm/api/v1alpha1"
	"github.com/guixfarm/guix-farm/internal/planner"
)

// The reconciler is also the predicate of its Build watch (as kueue's workload controller): it
// sees old and new objects, so it counts Builds by phase and records an Event for the transitions
// a user must notice, including those the agents write (agents may not create Events). The status
// write has already happened when the watch delivers it.

// Create counts a new Build.
func (r *Reconciler) Create(e event.TypedCreateEvent[*farmv1.Build]) bool {
	r.count(e.Object, 1)
	return true
}

// Update records the transition, if any.
func (r *Reconciler) Update(e event.TypedUpdateEvent[*farmv1.Build]) bool {
	o, n := e.ObjectOld, e.ObjectNew
	if o.Status.Phase != n.Status.Phase || o.Status.System != n.Status.System {
		r.count(o, -1)
		r.count(n, 1)
	}
	if o.Status.Phase != n.Status.Phase && n.Status.Phase != "" {
		r.Metrics.Transitions.WithLabelValues(string(n.Status.Phase)).Inc()
		r.event(o, n)
	}
	if c := inputFailed(n); c != nil && inputFailed(o) == nil && r.Recorder != nil {
		r.Recorder.Eventf(n, nil, corev1.EventTypeWarning, string(planner.InputFailed), "Wait", "%s", c.Message)
	}
	// Our own status write coming back changes nothing the reconcile that made it did not know.
	return !r.ownWrite(types.NamespacedName{Namespace: n.Namespace, Name: n.Name}, o.ResourceVersion, n.ResourceVersion, &n.Status)
}

// inputFailed is b's InputsPending condition when an input's Build failed.
func inputFailed(b *farmv1.Build) *metav1.Condition {
	c := meta.FindStatusCondition(b.Status.Conditions, farmv1.BuildConditionInputsPending)
	if c == nil || c.Status != metav1.ConditionTrue || c.Reason != string(planner.InputFailed) {
		return nil
	}
	return c
}

// Delete uncounts the Build.
func (r *Reconciler) Delete(e event.TypedDeleteEvent[*farmv1.Build]) bool {
	r.count(e.Object, -1)
	return true
}

// Generic passes planner notifications through.
func (r *Reconciler) Generic(event.TypedGenericEvent[*farmv1.Build]) bool { return true }

func (r *Reconciler) count(b *farmv1.Build, d float64) {
	phase := b.Status.Phase
	if phase == "" {
		phase = farmv1.BuildPending
	}
	r.Metrics.Builds.WithLabelValues(string(phase), b.Status.System).Add(d)
}

// event records what a user must notice: an attempt that ended and will be retried (a failure, a
// lost agent) and a Build that failed for good. Routine moves (a new Build pending, an
// allocation, a claim, a success, a cancel) are in the status and its conditions only: an Event
// each was half of all writes on a cold start with a large queue, and the event broadcaster's
// memory with it.
func (r *Reconciler) event(o, n *farmv1.Build) {
	if r.Recorder == nil {
		return
	}
	st := &n.Status
	note := ""
	switch st.Phase {
	case farmv1.BuildPending:
		if last := lastAttempt(n); last != nil && o.Status.Phase == farmv1.BuildRunning && last.Result != farmv1.AttemptSucceeded {
			note = fmt.Sprintf("Attempt %d on agent %s ended: %s: %s; will retry", st.AttemptCount, last.Agent, last.Reason, last.Message)
		}
	case farmv1.BuildFailed:
		note = "Build failed: attempts exhausted"
		if last := lastAttempt(n); last != nil {
			note = fmt.Sprintf("Build failed after %d attempts; last: %s: %s", st.AttemptCount, last.Reason, last.Message)
		}
	}
	if note == "" {
		return
	}
	if len(note) > 1024 {
		note = note[:1021] + "..."
	}
	r.Recorder.Eventf(n, nil, corev1.EventTypeWarning, string(st.Phase), "Transition", "%s", note)
}

func lastAttempt(b *farmv1.Build) *farmv1.AttemptRecord {
	if n := len(b.Status.Attempts); n > 0 {
		return &b.Status.Attempts[n-1]
	}
	return nil
}

func equalStatus(a, b *farmv1.Build) bool { return equality.Semantic.DeepEqual(a.Status, b.Status) }
