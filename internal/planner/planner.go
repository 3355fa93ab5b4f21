// Package planner decides which pending Builds each agent should see next.
//
// It is a pure, in-memory model (stdlib only): the controller feeds it from informer events
// (UpsertBuild, SetAvailable, UpsertAgent, ...) and writes only the output of Plan to the
// apiserver. Plan costs O(total horizon capacity · log n), never O(pending queue): offerable
// builds live in one keyed heap per (system, requirements) class, derived priorities and
// missing-input counters are maintained incrementally as the model changes, and Plan walks
// the heaps' tops without popping them. See docs/planner.md.
//
// A Planner is safe for concurrent use: every method takes one internal mutex, so Plan sees a
// consistent model. Keep calls short (events from informers, one Plan per planning pass).
package planner

import (
	"math"
	"sync"
	"time"
)

// Strategy selects when a pending build may be offered to agents.
type Strategy string

const (
	// Basic offers every pending build at once; inputs are assumed substitutable.
	Basic Strategy = "basic"
	// DerivationOrdered offers a build only once every input derivation is available.
	DerivationOrdered Strategy = "derivation-ordered"
)

// BuildKey is a Build's "namespace/name".
type BuildKey string

// Build is the planner's view of one Build object.
type Build struct {
	Key          BuildKey
	UID          string
	Derivation   string   // .drv store path
	System       string   // e.g. x86_64-linux
	Requirements []string // system features the agent must offer (e.g. "kvm", "big-parallel")
	Priority     int32
	Created      time.Time // submission time (FIFO tie-break), then UID
	NotBefore    time.Time // deferUntil or retry backoff; zero = plannable now
	Inputs       []string  // input derivation paths, from the .drv
	// Running means claimed by an agent: not plannable, but still a pending dependent for
	// derived priorities.
	Running bool
	// Agent is the agent the build is currently allocated to or running on ("" none). The
	// planner keeps a build there while it can (stickiness).
	Agent string
}

// Agent is one registered build agent.
type Agent struct {
	Name, Pool        string
	Systems, Features []string
	Slots, Running    int
}

// Pool is what a pool of agents could serve, even at zero replicas; it only matters for
// deciding whether a build can ever run (NoAgentForSystem).
type Pool struct {
	Name              string
	Systems, Features []string
}

// Options configure a Planner.
type Options struct {
	Strategy Strategy // default Basic
	// HorizonFactor sizes each agent's horizon: HorizonFactor*Slots - Running. Default 2.
	HorizonFactor int
	// KeepFactor is the upper edge of the band in which an agent keeps allocations that better
	// builds pushed out of its horizon: up to KeepFactor*Slots - Running in all; only past it is
	// the lowest-ranked one withdrawn (keep.go). Default HorizonFactor+1; HorizonFactor (or
	// less) withdraws at once.
	KeepFactor int
	// ExpectedBuilds is a size hint (e.g. the Build count of the informer's initial list):
	// the model's tables are allocated for it up front instead of growing while loading.
	ExpectedBuilds int
	// SkipInitialWaits: the wait reason a Build has when UpsertBuild adds it is not reported
	// as a change by the next Plan, only later changes are. For callers that read it with
	// CurrentWait right after UpsertBuild (the controller's Build reconciler does): loading
	// a queue of 100k Builds then costs no 100k redundant notifications.
	SkipInitialWaits bool
	// Lookup tells what is known of a derivation's outputs when the planner first models it
	// (an input of a new Build): available or absent, or not known (then TakeUnresolved lists
	// it). Non-blocking (a cache read); called with the planner's lock held, so it must not call
	// the planner. Nil: every new input is unresolved.
	Lookup func(drv string) (available, known bool)
}

// Allocation is one change of a build's allocated agent.
type Allocation struct {
	Key   BuildKey
	Agent string // "" = withdraw
	// Priority is the effective (derived) priority, so the agent can order its horizon.
	Priority int32
}

// WaitReason says why a pending build is not offered.
type WaitReason string

const (
	NotWaiting       WaitReason = ""
	NoAgentForSystem WaitReason = "NoAgentForSystem"
	InputsPending    WaitReason = "InputsPending"
	// InputFailed: derivation-ordered, an input's last Build failed; a new Build of it (a
	// manual retry) lets the build proceed. The build never fails for it.
	InputFailed WaitReason = "InputFailed"
	Deferred    WaitReason = "Deferred"
)

// Wait is one change of a build's wait reason.
type Wait struct {
	Key     BuildKey
	Reason  WaitReason
	Message string // human; names the system/features or the missing input count
}

// Plan is the result of one planning pass.
type Plan struct {
	// Allocations are the changes against the model's Agent fields, new allocations in rank
	// order first, then withdrawals by key. The planner assumes them (updates its model).
	Allocations []Allocation
	// Waits are the changes of wait reason since the previous Plan, by key.
	Waits []Wait
	// Horizons is every registered agent's full horizon, best first.
	Horizons map[string][]BuildKey
	// NextWake is the earliest future NotBefore, zero if none: call Plan again then.
	NextWake time.Time
}

// Rank is a build's position in the order: effective priority, then critical path.
type Rank struct {
	Priority     int32 // max(own, every pending dependent's effective priority)
	CriticalPath int32 // longest chain of pending dependents above the build
}

const noPrio = math.MinInt32

// Planner is the in-memory planning model. Create it with New.
type Planner struct {
	mu       sync.Mutex
	strategy Strategy
	factor   int
	keep     int   // KeepFactor
	now      int64 // last Plan's clock (unix ns); builds with NotBefore > now are deferred

	// builds
	builds      []build
	freeBuilds  []int32
	byKey       map[BuildKey]int32
	deferred    defHeap
	dirty       []int32 // builds whose wait reason may have changed since the last Plan
	reported    [numReasons]int
	skipInitial bool
	msgs        map[[2]int32]string           // InputsPending messages by (missing, inputs)
	allocs      map[string]map[int32]struct{} // agent name -> non-running builds allocated to it
	epoch       uint32

	// derivation graph
	nodes      []node
	freeNodes  []int32
	byDrv      map[string]int32
	lookupFn   func(drv string) (available, known bool)
	unresolved []int32  // nodes that may be unresolved (node.queued)
	stack      []int32  // scratch for propagate
	pend       []int32  // nodes with a deferred contribution change (node.pending)
	batchMin   int      // fewest pending changes flushed in one batch pass
	bulk       bool     // in flushBatch: heap fixes are deferred to one rebuild per class
	mark       uint32   // flushBatch's cone marker
	marks      []uint32 // scratch for flushBatch, by node
	cnt        []int32  // scratch for flushBatch, by node
	cone       []int32  // scratch for flushBatch
	queue      []int32  // scratch for flushBatch
	saved      []saved  // scratch for flushBatch

	// classes and capabilities
	classes   []*class
	byClass   map[string]int32
	plain     map[string]int32 // system -> class without requirements (no key to build)
	agents    []agentState
	freeAgent []int32
	byAgent   map[string]int32
	groups    []*group
	byGroup   map[string]int32
	pools     map[string]int32 // pool name -> group
}

// New returns an empty Planner.
func New(o Options) *Planner {
	if o.Strategy == "" {
		o.Strategy = Basic
	}
	if o.HorizonFactor <= 0 {
		o.HorizonFactor = 2
	}
	if o.KeepFactor == 0 {
		o.KeepFactor = o.HorizonFactor + 1
	}
	n := max(o.ExpectedBuilds, 0)
	p := &Planner{
		strategy:    o.Strategy,
		factor:      o.HorizonFactor,
		keep:        max(o.KeepFactor, o.HorizonFactor),
		skipInitial: o.SkipInitialWaits,
		lookupFn:    o.Lookup,
		msgs:        map[[2]int32]string{},
		now:         math.MinInt64,
		builds:      make([]build, 0, n),
		byKey:       make(map[BuildKey]int32, n),
		allocs:      map[string]map[int32]struct{}{},
		// Derivations: one per build plus inputs that have no build (mostly available ones).
		nodes:   make([]node, 0, n+n/8),
		byDrv:   make(map[string]int32, n+n/8),
		byClass: map[string]int32{},
		plain:   map[string]int32{},
		byAgent: map[string]int32{},
		byGroup: map[string]int32{},
		pools:   map[string]int32{},
	}
	p.deferred.o = byNotBefore{p}
	p.batchMin = 256
	return p
}

// Flush applies the derived-priority changes deferred since the last Plan (Plan and Rank
// flush first anyway). A caller may flush after loading a queue to keep that work out of the
// first Plan.
func (p *Planner) Flush() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.flush()
}

// nanos maps a time to a comparable int64; the zero time sorts first.
func nanos(t time.Time) int64 {
	if t.IsZero() {
		return math.MinInt64
	}
	return t.UnixNano()
}
