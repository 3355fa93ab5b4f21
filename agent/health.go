package agent

import (
	"context"
	"time"
)

// unhealthyReason says why the agent claims nothing now, "" while it is healthy.
func (a *Agent) unhealthyReason() string {
	if r := a.unhealthy.Load(); r != nil {
		return *r
	}
	return ""
}

// setUnhealthy records the agent's health ("" = healthy) and, on a change, tells the planner
// through the Lease at once: an unhealthy agent offers no slots, so no Build is churned through it.
func (a *Agent) setUnhealthy(reason string) {
	old := a.unhealthy.Swap(&reason)
	was := ""
	if old != nil {
		was = *old
	}
	if was == reason {
		return
	}
	if reason == "" {
		a.log.Info("Agent healthy again")
	} else {
		a.log.Info("Agent unhealthy: claiming nothing", "reason", reason)
	}
	a.kickLease()
	a.kick()
}

// checkHealth runs the health check once.
func (a *Agent) checkHealth(ctx context.Context) {
	if a.health == nil {
		return
	}
	cctx, cancel := context.WithTimeout(ctx, max(a.cfg.HealthInterval, 5*time.Second))
	defer cancel()
	if err := a.health(cctx); err != nil {
		if ctx.Err() == nil {
			a.setUnhealthy(err.Error())
		}
		return
	}
	a.setUnhealthy("")
}

// watchHealth re-checks health until ctx ends. A step that fails as AgentUnhealthy marks the
// agent unhealthy at once; this loop is what makes it healthy again.
func (a *Agent) watchHealth(ctx context.Context) {
	if a.health == nil {
		return
	}
	t := a.clock.NewTicker(a.cfg.HealthInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C():
			a.checkHealth(ctx)
		}
	}
}
