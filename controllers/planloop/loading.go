package planloop

import (
	"context"
	"fmt"
	"sync"

	"github.com/go-logr/logr"
	"k8s.io/utils/clock"

	"github.com/guixfarm/guix-farm/internal/planner"
)

// Loading holds the planning loop's first pass until the model is loaded: every Build the cache
// held when it synced has been through the Build reconciler once (its facts read, and fed to the
// planner or found finished). Planning a partial model at start gave the agents' slots to the
// few Builds loaded first, whatever the priorities of the rest, and a claimed build cannot be
// taken back; later plans only withdrew and rewrote what the first ones did.
type Loading struct {
	// List returns the keys of the Builds in the (synced) cache that are not finished.
	List  func(ctx context.Context) ([]planner.BuildKey, error)
	Clock clock.Clock
	Log   logr.Logger
	// Kick is called once the model is loaded (the loop's Kick).
	Kick func()

	mu      sync.Mutex
	listed  bool
	seen    map[planner.BuildKey]struct{} // before the list: reconciles that came first
	pending map[planner.BuildKey]struct{} // after it: what is still to be seen
	loaded  bool
}

// NewLoading makes a gate; start it with the manager (Start).
func NewLoading(list func(ctx context.Context) ([]planner.BuildKey, error), c clock.Clock, log logr.Logger, kick func()) *Loading {
	return &Loading{List: list, Clock: c, Log: log, Kick: kick, seen: map[planner.BuildKey]struct{}{}}
}

// Start lists the Builds to wait for (a manager Runnable: it runs once the caches have synced).
func (l *Loading) Start(ctx context.Context) error {
	start := l.Clock.Now()
	keys, err := l.List(ctx)
	if err != nil {
		return fmt.Errorf("listing the Builds to load: %w", err)
	}
	l.mu.Lock()
	l.pending = make(map[planner.BuildKey]struct{}, len(keys))
	for _, k := range keys {
		if _, ok := l.seen[k]; !ok {
			l.pending[k] = struct{}{}
		}
	}
	l.seen, l.listed = nil, true
	l.Log.Info("Loading the planner's model before the first plan", "builds", len(keys), "toLoad", len(l.pending),
		"listed", l.Clock.Since(start))
	done := l.checkLocked()
	l.mu.Unlock()
	if done {
		l.Kick()
	}
	return nil
}

// NeedLeaderElection: the gate belongs to the planning loop, which only the leader runs.
func (l *Loading) NeedLeaderElection() bool { return true }

// Seen records that the Build reconciler has been through k once (whatever came of it).
func (l *Loading) Seen(k planner.BuildKey) {
	if l == nil {
		return
	}
	l.mu.Lock()
	if l.loaded {
		l.mu.Unlock()
		return
	}
	if !l.listed {
		l.seen[k] = struct{}{}
		l.mu.Unlock()
		return
	}
	delete(l.pending, k)
	done := l.checkLocked()
	l.mu.Unlock()
	if done {
		l.Kick()
	}
}

// checkLocked marks the model loaded once nothing is pending, and says whether it just did.
func (l *Loading) checkLocked() bool {
	if l.loaded || len(l.pending) > 0 {
		return false
	}
	l.loaded, l.pending = true, nil
	l.Log.Info("Planner's model loaded; planning starts")
	return true
}

// Loaded says whether the first plan may run.
func (l *Loading) Loaded() bool {
	if l == nil {
		return true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.loaded
}

// Pending is how many Builds are still to be loaded (for readiness messages).
func (l *Loading) Pending() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.listed {
		return -1
	}
	return len(l.pending)
}
