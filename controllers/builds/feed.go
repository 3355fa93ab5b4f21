package builds

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"sigs.k8s.io/controller-runtime/pkg/event"

	farmv1 "github.com/guixfarm/guix-farm/api/v1alpha1"
)

// The reconciler is also the predicate of its Build watch (as kueue's workload controller): it
// sees old and new objects, so it counts Builds by phase and records an Event for every phase
// transition, including those the agents write (agents may not create Events). The status write
// has already happened when the watch delivers it.

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
	return true
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

func (r *Reconciler) event(o, n *farmv1.Build) {
	if r.Recorder == nil {
		return
	}
	typ, note := corev1.EventTypeNormal, ""
	st := &n.Status
	switch st.Phase {
	case farmv1.BuildAllocated:
		if st.Allocation != nil {
			note = fmt.Sprintf("Offered to agent %s", st.Allocation.Agent)
		}
	case farmv1.BuildRunning:
		if st.Attempt != nil {
			note = fmt.Sprintf("Attempt %d claimed by agent %s", st.AttemptCount, st.Attempt.Agent)
		}
	case farmv1.BuildPending:
		note = "Waiting to be planned"
		if last := lastAttempt(n); last != nil && o.Status.Phase == farmv1.BuildRunning {
			typ = corev1.EventTypeWarning
			note = fmt.Sprintf("Attempt %d on agent %s ended: %s: %s; will retry", st.AttemptCount, last.Agent, last.Reason, last.Message)
		}
	case farmv1.BuildSucceeded:
		note = "Build succeeded"
	case farmv1.BuildFailed:
		typ = corev1.EventTypeWarning
		note = "Build failed: attempts exhausted"
		if last := lastAttempt(n); last != nil {
			note = fmt.Sprintf("Build failed after %d attempts; last: %s: %s", st.AttemptCount, last.Reason, last.Message)
		}
	case farmv1.BuildCanceled:
		note = "Build canceled"
	}
	if len(note) > 1024 {
		note = note[:1021] + "..."
	}
	r.Recorder.Eventf(n, nil, typ, string(st.Phase), "Transition", "%s", note)
}

func lastAttempt(b *farmv1.Build) *farmv1.AttemptRecord {
	if n := len(b.Status.Attempts); n > 0 {
		return &b.Status.Attempts[n-1]
	}
	return nil
}

func equalStatus(a, b *farmv1.Build) bool { return equality.Semantic.DeepEqual(a.Status, b.Status) }
