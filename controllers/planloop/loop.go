// Package planloop is the planning loop around the planner (internal/planner): it batches model
// changes, plans, remembers the allocations it decided (the planner assumes them at once, as kueue
// does) and hands the changed Builds to the Build reconciler, which writes them in its single status
// patch.
package planloop

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/utils/clock"

	"github.com/guixfarm/guix-farm/internal/metrics"
	"github.com/guixfarm/guix-farm/internal/planner"
)

// Intent is an allocation decided but maybe not yet written.
type Intent struct {
	Agent    string // "" = withdraw the allocation
	Priority int32
}

// Loop is a manager.Runnable that plans whenever the model changed.
type Loop struct {
	planner *planner.Planner
	clock   clock.Clock
	log     logr.Logger
	metrics *metrics.Metrics
	// notify tells the Build reconciler which Builds to write.
	notify func(planner.BuildKey)
	// Debounce batches the events of a burst into one pass.
	debounce time.Duration

	kick chan struct{}

	// Unresolved, when set, is handed the derivations the planner lists as unresolved after each
	// pass (Resolver.Resolve); it must not block on I/O.
	Unresolved func(ctx context.Context, drvs []string)
	// Loading, when set, holds every pass until the model is loaded (it kicks the loop then).
	Loading *Loading
	// AfterPlan, when set, is called after each pass (the pools that autoscale look at their
	// queue again); it must not block.
	AfterPlan func()

	// planned is set after the first pass over a loaded model: readiness waits for it.
	planned atomic.Bool

	mu      sync.Mutex
	intents map[planner.BuildKey]Intent
}

// New makes a loop around p; notify is called (outside any lock) for every Build whose allocation
// or wait reason changed.
func New(p *planner.Planner, clk clock.Clock, log logr.Logger, m *metrics.Metrics, debounce time.Duration, notify func(planner.BuildKey)) *Loop {
	return &Loop{planner: p, clock: clk, log: log, metrics: m, notify: notify, debounce: debounce,
		kick: make(chan struct{}, 1), intents: map[planner.BuildKey]Intent{}}
}

// Planned says whether the loop has planned over a loaded model at least once.
func (l *Loop) Planned() bool { return l.planned.Load() }

// Planner is the model the loop plans over; feed it, then Kick.
func (l *Loop) Planner() *planner.Planner { return l.planner }

// Kick asks for a planning pass soon.
func (l *Loop) Kick() {
	select {
	case l.kick <- struct{}{}:
	default:
	}
}

// NeedLeaderElection: only the leader plans.
func (l *Loop) NeedLeaderElection() bool { return true }

// Start plans until ctx ends.
func (l *Loop) Start(ctx context.Context) error {
	var wake <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-l.kick:
		case <-wake:
		}
		if l.debounce > 0 {
			select {
			case <-ctx.Done():
				return nil
			case <-l.clock.After(l.debounce):
			}
		}
		if !l.Loading.Loaded() {
			wake = nil
			continue
		}
		next := l.planOnce()
		l.planned.Store(true)
		if l.AfterPlan != nil {
			l.AfterPlan()
		}
		if l.Unresolved != nil {
			if drvs := l.planner.TakeUnresolved(); len(drvs) > 0 {
				l.Unresolved(ctx, drvs)
			}
		}
		wake = nil
		if !next.IsZero() {
			wake = l.clock.After(max(next.Sub(l.clock.Now()), 10*time.Millisecond))
		}
	}
}

// planOnce runs one pass and returns when the next one is due without new events.
func (l *Loop) planOnce() time.Time {
	start := l.clock.Now()
	plan := l.planner.Plan(start)
	l.metrics.PlanDuration.Observe(l.clock.Since(start).Seconds())

	changed := make(map[planner.BuildKey]struct{}, len(plan.Allocations)+len(plan.Waits))
	l.mu.Lock()
	for _, a := range plan.Allocations {
		l.intents[a.Key] = Intent{Agent: a.Agent, Priority: a.Priority}
		changed[a.Key] = struct{}{}
		kind := "allocate"
		if a.Agent == "" {
			kind = "withdraw"
		}
		l.metrics.Allocations.WithLabelValues(kind).Inc()
	}
	l.mu.Unlock()
	for _, w := range plan.Waits {
		changed[w.Key] = struct{}{}
		reason := string(w.Reason)
		if reason == "" {
			reason = "none"
		}
		l.metrics.WaitChanges.WithLabelValues(reason).Inc()
	}
	if len(changed) > 0 {
		l.log.V(2).Info("Planned", "allocations", len(plan.Allocations), "waits", len(plan.Waits), "duration", l.clock.Since(start))
	}
	for k := range changed {
		l.notify(k)
	}
	l.observe()
	return plan.NextWake
}

func (l *Loop) observe() {
	st := l.planner.Stats()
	l.metrics.QueueDepth.Reset()
	for sys, n := range st.Pending {
		l.metrics.QueueDepth.WithLabelValues(sys).Set(float64(n))
	}
	l.metrics.Waiting.Reset()
	for r, n := range st.Waiting {
		l.metrics.Waiting.WithLabelValues(string(r)).Set(float64(n))
	}
	l.metrics.Agents.Set(float64(st.Agents))
}

// Intent returns the allocation planned for k and not yet seen written.
func (l *Loop) Intent(k planner.BuildKey) (Intent, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	in, ok := l.intents[k]
	return in, ok
}

// Written drops the intent for k once the Build shows agent as its allocation.
func (l *Loop) Written(k planner.BuildKey, agent string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if in, ok := l.intents[k]; ok && in.Agent == agent {
		delete(l.intents, k)
	}
}

// Forget drops everything about k (the Build is gone or finished).
func (l *Loop) Forget(k planner.BuildKey) {
	l.mu.Lock()
	delete(l.intents, k)
	l.mu.Unlock()
	l.planner.RemoveBuild(k)
	l.Kick()
}
