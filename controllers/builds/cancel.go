package builds

import (
	farmv1 "github.com/guixfarm/guix-farm/api/v1alpha1"
	"github.com/guixfarm/guix-farm/internal/lifecycle"
)

// reconcileCancel ends a canceled Build that no agent runs. A running one is aborted by its agent,
// which watches the Build and reports Canceled; if that agent is lost, the agent controller
// ends the attempt and lifecycle turns it into Canceled.
func (r *Reconciler) reconcileCancel(s *scope) bool {
	b := s.b
	if !b.Spec.Canceled || b.Status.Phase == farmv1.BuildRunning {
		return false
	}
	lifecycle.Cancel(b, s.now)
	return true
}
