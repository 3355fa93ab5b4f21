package planloop

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"

	"github.com/guixfarm/guix-farm/internal/planner"
)

// Loading holds the planning loop's first pass until the model is loaded: every Build the cache
// held when it synced has been through the Build reconciler once (its facts read, and fed to the
// planner or found finished). Planning a partial model at start gave the agents' slots to the
// few Builds loaded first, whatever the priorities of the rest, and a claimed build cannot be
// taken back; later plans only withdrew and rewrote what the first ones did.
//
// Before that, the Build reconciler waits (WaitCapabilities) until the agents' Leases and the
// AgentPools the cache held have each been through their reconcilers once: a Build judged
// against a partial set of agents and pools is "not servable", a verdict that is undone a moment
// later, and at 10^4 Builds that undoing was a second reconcile of every Build.
type Loading struct {
	// List returns the keys of the Builds in the (synced) cache that are not finished.
	List func(ctx context.Context) ([]planner.BuildKey, error)
	// ListCapabilities, when set, returns the keys (CapabilityKey) of the agent Leases and
	// AgentPools in the (synced) cache.
	ListCapabilities func(ctx context.Context) ([]string, error)
	Clock            clock.Clock
	Log              logr.Logger
	// Kick is called once the model is loaded (the loop's Kick).
	Kick func()

	mu      sync.Mutex
	listed  bool
	seen    map[planner.BuildKey]struct{} // before the list: reconciles that came first
	pending map[planner.BuildKey]struct{} // after it: what is still to be seen
	loaded  bool

	capListed  bool
	capSeen    map[string]struct{} // before the list
	capPending map[string]struct{} // after it
	capsLoaded chan struct{}       // closed once every listed capability was seen (or on timeout)
}

// CapabilityTimeout bounds how long Builds wait for the agents and pools to load: a reconciler
// that never gets to one of them must not hold every Build.
const CapabilityTimeout = 10 * time.Second

// CapabilityKey names an agent Lease ("lease") or an AgentPool ("pool") for the gate.
func CapabilityKey(kind string, n types.NamespacedName) string { return kind + "/" + n.String() }

// NewLoading makes a gate; start it with the manager (Start).
func NewLoading(list func(ctx context.Context) ([]planner.BuildKey, error), c clock.Clock, log logr.Logger, kick func()) *Loading {
	return &Loading{List: list, Clock: c, Log: log, Kick: kick, seen: map[planner.BuildKey]struct{}{},
		capSeen: map[string]struct{}{}, capsLoaded: make(chan struct{})}
}

// Start lists the agents, pools and Builds to wait for (a manager Runnable: it runs once the
// caches have synced).
func (l *Loading) Start(ctx context.Context) error {
	start := l.Clock.Now()
	if err := l.listCapabilities(ctx); err != nil {
		return err
	}
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

// listCapabilities lists the agents and pools to wait for, and bounds the wait.
func (l *Loading) listCapabilities(ctx context.Context) error {
	var keys []string
	if l.ListCapabilities != nil {
		var err error
		if keys, err = l.ListCapabilities(ctx); err != nil {
			return fmt.Errorf("listing the agents and pools to load: %w", err)
		}
	}
	l.mu.Lock()
	l.capPending = make(map[string]struct{}, len(keys))
	for _, k := range keys {
		if _, ok := l.capSeen[k]; !ok {
			l.capPending[k] = struct{}{}
		}
	}
	l.capSeen, l.capListed = nil, true
	l.Log.Info("Loading the agents and pools before judging Builds", "capabilities", len(keys), "toLoad", len(l.capPending))
	l.capsCheckLocked()
	l.mu.Unlock()
	timeout := l.Clock.After(CapabilityTimeout)
	go func() {
		select {
		case <-timeout:
		case <-ctx.Done():
			return
		}
		l.mu.Lock()
		defer l.mu.Unlock()
		if !l.capsDone() {
			l.Log.Info("Agents and pools not all loaded in time; judging Builds anyway", "pending", len(l.capPending))
			l.capPending = nil
			l.capsCheckLocked()
		}
	}()
	return nil
}

// CapabilitySeen records that the agent or pool reconciler has been through key once (after it
// told the planner what it learned).
func (l *Loading) CapabilitySeen(key string) {
	if l == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.capsDone() {
		return
	}
	if !l.capListed {
		l.capSeen[key] = struct{}{}
		return
	}
	delete(l.capPending, key)
	l.capsCheckLocked()
}

func (l *Loading) capsDone() bool {
	select {
	case <-l.capsLoaded:
		return true
	default:
		return false
	}
}

func (l *Loading) capsCheckLocked() {
	if l.capListed && len(l.capPending) == 0 && !l.capsDone() {
		close(l.capsLoaded)
		l.Log.Info("Agents and pools loaded; judging Builds")
	}
}

// WaitCapabilities blocks until the agents and pools are loaded (at once afterwards).
func (l *Loading) WaitCapabilities(ctx context.Context) error {
	if l == nil {
		return nil
	}
	select {
	case <-l.capsLoaded:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
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
