package planner

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

const (
	x86  = "x86_64-linux"
	arm  = "aarch64-linux"
	i686 = "i686-linux"
)

// bld is a terse test build: created at t0+created seconds, derivation "/gnu/store/<key>.drv".
func bld(key string, prio int32, created int, inputs ...string) Build {
	var in []string
	for _, i := range inputs {
		in = append(in, drv(i))
	}
	return Build{
		Key: BuildKey(key), UID: "uid-" + key, Derivation: drv(key), System: x86, Priority: prio,
		Created: t0.Add(time.Duration(created) * time.Second), Inputs: in,
	}
}

func drv(name string) string { return "/gnu/store/" + name + ".drv" }

func agent(name string, slots int, systems ...string) Agent {
	if len(systems) == 0 {
		systems = []string{x86}
	}
	return Agent{Name: name, Systems: systems, Slots: slots}
}

func keys(ks ...string) []BuildKey {
	out := make([]BuildKey, len(ks))
	for i, k := range ks {
		out[i] = BuildKey(k)
	}
	return out
}

func TestHorizons(t *testing.T) {
	withSys := func(b Build, sys string, reqs ...string) Build {
		b.System, b.Requirements = sys, reqs
		return b
	}
	sameTime := func(b Build, uid string) Build { b.UID = uid; return b }
	cases := map[string]struct {
		agents []Agent
		builds []Build
		want   map[string][]BuildKey
	}{
		"priority first": {
			agents: []Agent{agent("a", 1)},
			builds: []Build{bld("low", 0, 0), bld("high", 5, 1), bld("mid", 3, 2)},
			want:   map[string][]BuildKey{"a": keys("high", "mid")},
		},
		"fifo among equal priorities": {
			agents: []Agent{agent("a", 1)},
			builds: []Build{bld("second", 0, 2), bld("first", 0, 1), bld("third", 0, 3)},
			want:   map[string][]BuildKey{"a": keys("first", "second")},
		},
		"uid breaks a tie of creation time": {
			agents: []Agent{agent("a", 1)},
			builds: []Build{sameTime(bld("p", 0, 0), "2"), sameTime(bld("q", 0, 0), "1"), sameTime(bld("r", 0, 0), "3")},
			want:   map[string][]BuildKey{"a": keys("q", "p")},
		},
		"fair across agents, most room first": {
			agents: []Agent{agent("a", 2), agent("b", 2)},
			builds: []Build{bld("1", 0, 1), bld("2", 0, 2), bld("3", 0, 3), bld("4", 0, 4), bld("5", 0, 5), bld("6", 0, 6)},
			want:   map[string][]BuildKey{"a": keys("1", "3", "5"), "b": keys("2", "4", "6")},
		},
		"running reduces the horizon": {
			agents: []Agent{{Name: "a", Systems: []string{x86}, Slots: 2, Running: 3}, agent("b", 1)},
			builds: []Build{bld("1", 0, 1), bld("2", 0, 2), bld("3", 0, 3), bld("4", 0, 4)},
			want:   map[string][]BuildKey{"a": keys("2"), "b": keys("1", "3")},
		},
		"systems": {
			agents: []Agent{agent("intel", 1, x86, i686), agent("arm", 1, arm)},
			builds: []Build{
				withSys(bld("x", 0, 1), x86), withSys(bld("y", 0, 2), arm), withSys(bld("z", 0, 3), i686),
				withSys(bld("w", 0, 4), "riscv64-linux"),
			},
			want: map[string][]BuildKey{"intel": keys("x", "z"), "arm": keys("y")},
		},
		"overlapping capabilities: a plain build makes way on the kvm agent": {
			agents: []Agent{
				{Name: "kvm", Systems: []string{x86}, Features: []string{"kvm"}, Slots: 1},
				{Name: "plain", Systems: []string{x86}, Slots: 1, Running: 1},
			},
			builds: []Build{bld("p1", 0, 1), bld("p2", 0, 2), withSys(bld("v", 0, 3), x86, "kvm")},
			want:   map[string][]BuildKey{"kvm": keys("p1", "v"), "plain": keys("p2")},
		},
		"requirements": {
			agents: []Agent{{Name: "kvm", Systems: []string{x86}, Features: []string{"kvm", "big-parallel"}, Slots: 1}, agent("plain", 2)},
			builds: []Build{
				withSys(bld("vm-test", 0, 5), x86, "kvm"), bld("p1", 0, 1), bld("p2", 0, 2),
				withSys(bld("needs-both", 0, 6), x86, "big-parallel", "kvm"), withSys(bld("never", 9, 0), x86, "nested"),
			},
			want: map[string][]BuildKey{"kvm": keys("vm-test", "needs-both"), "plain": keys("p1", "p2")},
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			p := New(Options{})
			for _, a := range tc.agents {
				p.UpsertAgent(a)
			}
			for _, b := range tc.builds {
				p.UpsertBuild(b)
			}
			got := p.Plan(t0).Horizons
			if diff := cmp.Diff(tc.want, got, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("horizons (-want +got):\n%s", diff)
			}
			checkInvariants(t, p)
		})
	}
}

// TestStickiness: after one event, a re-plan changes O(1) allocations, not the whole set.
func TestStickiness(t *testing.T) {
	setup := func() (*Planner, Plan) {
		p := New(Options{})
		for i := range 10 {
			p.UpsertAgent(agent(fmt.Sprintf("a%d", i), 2))
		}
		for i := range 200 {
			p.UpsertBuild(bld(fmt.Sprintf("b%03d", i), int32(i%3), i))
		}
		first := p.Plan(t0)
		if len(first.Allocations) != 40 {
			t.Fatalf("first plan: %d allocations, want 40", len(first.Allocations))
		}
		return p, first
	}
	cases := map[string]struct {
		event       func(p *Planner, first Plan)
		wantChanges int
	}{
		"nothing changed": {event: func(*Planner, Plan) {}, wantChanges: 0},
		"agent claims its best build": {
			event: func(p *Planner, first Plan) {
				p.UpsertBuild(runningCopy(first.Horizons["a3"][0], "a3"))
				p.UpsertAgent(Agent{Name: "a3", Systems: []string{x86}, Slots: 2, Running: 1})
			},
			wantChanges: 0,
		},
		"one running build finished": {
			event: func(p *Planner, first Plan) {
				k := first.Horizons["a3"][0]
				p.UpsertBuild(runningCopy(k, "a3"))
				p.UpsertAgent(Agent{Name: "a3", Systems: []string{x86}, Slots: 2, Running: 1})
				p.Plan(t0)
				p.RemoveBuild(k)
				p.UpsertAgent(Agent{Name: "a3", Systems: []string{x86}, Slots: 2, Running: 0})
			},
			wantChanges: 1,
		},
		"urgent build submitted": {
			event: func(p *Planner, _ Plan) { p.UpsertBuild(bld("urgent", 100, 1000)) },
			// It is allocated; the lowest-ranked entry it pushed out of a horizon stays
			// allocated in its agent's keep band (keep.go).
			wantChanges: 1,
		},
		"urgent builds past the keep band": {
			event: func(p *Planner, _ Plan) {
				for i := range 25 {
					p.UpsertBuild(bld(fmt.Sprintf("urgent%02d", i), 100, 1000+i))
				}
			},
			// 25 allocated, 25 old entries pushed out; each agent keeps 2 beyond its horizon
			// of 4 (KeepFactor 3), 20 in all, so the 5 lowest are withdrawn.
			wantChanges: 30,
		},
		"agent removed": {
			event: func(p *Planner, _ Plan) { p.RemoveAgent("a7") },
			// a7's builds that still rank in the top 36 move to the agents whose lowest
			// entries lost their place (those are kept, in the band); a7's lowest is withdrawn.
			wantChanges: 4,
		},
		"agent added": {
			event:       func(p *Planner, _ Plan) { p.UpsertAgent(agent("a99", 2)) },
			wantChanges: 4, // the next four builds go to it
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			p, first := setup()
			tc.event(p, first)
			got := p.Plan(t0)
			if len(got.Allocations) != tc.wantChanges {
				t.Errorf("%d allocation changes, want %d: %+v", len(got.Allocations), tc.wantChanges, got.Allocations)
			}
			checkInvariants(t, p)
		})
	}
}

// runningCopy is the informer's view of build k after agent claimed it.
func runningCopy(k BuildKey, agent string) Build {
	var n int
	fmt.Sscanf(string(k), "b%d", &n)
	b := bld(string(k), int32(n%3), n)
	b.Running, b.Agent = true, agent
	return b
}

func TestNoAgentForSystem(t *testing.T) {
	p := New(Options{})
	armB := bld("arm", 0, 0)
	armB.System = arm
	kvmB := bld("vm", 0, 1)
	kvmB.Requirements = []string{"kvm"}
	p.UpsertBuild(armB)
	p.UpsertBuild(kvmB)
	p.UpsertAgent(agent("intel", 1))

	steps := []struct {
		name  string
		event func()
		want  []Wait
		alloc []Allocation
	}{
		{
			name:  "no agent nor pool",
			event: func() {},
			want: []Wait{
				{Key: "arm", Reason: NoAgentForSystem, Message: "no agent or pool offers system aarch64-linux"},
				{Key: "vm", Reason: NoAgentForSystem, Message: "no agent or pool for system x86_64-linux offers features kvm"},
			},
		},
		{name: "unchanged", event: func() {}},
		{
			name:  "a pool at zero replicas clears the wait",
			event: func() { p.UpsertPool(Pool{Name: "arm-pool", Systems: []string{arm}}) },
			want:  []Wait{{Key: "arm"}},
		},
		{
			name:  "pool removed",
			event: func() { p.RemovePool("arm-pool") },
			want:  []Wait{{Key: "arm", Reason: NoAgentForSystem, Message: "no agent or pool offers system aarch64-linux"}},
		},
		{
			name:  "an agent with the feature clears it and gets the build",
			event: func() { p.UpsertAgent(Agent{Name: "kvm", Systems: []string{x86}, Features: []string{"kvm"}, Slots: 1}) },
			want:  []Wait{{Key: "vm"}},
			alloc: []Allocation{{Key: "vm", Agent: "kvm"}},
		},
		{
			name:  "that agent leaves again",
			event: func() { p.RemoveAgent("kvm") },
			want:  []Wait{{Key: "vm", Reason: NoAgentForSystem, Message: "no agent or pool for system x86_64-linux offers features kvm"}},
			alloc: []Allocation{{Key: "vm"}},
		},
	}
	for _, s := range steps {
		s.event()
		got := p.Plan(t0)
		if diff := cmp.Diff(s.want, got.Waits, cmpopts.EquateEmpty()); diff != "" {
			t.Errorf("%s: waits (-want +got):\n%s", s.name, diff)
		}
		if diff := cmp.Diff(s.alloc, got.Allocations, cmpopts.EquateEmpty()); diff != "" {
			t.Errorf("%s: allocations (-want +got):\n%s", s.name, diff)
		}
		checkInvariants(t, p)
	}
	if got := p.Stats().Waiting; got[NoAgentForSystem] != 2 {
		t.Errorf("Stats.Waiting = %v, want 2 NoAgentForSystem", got)
	}
}

// known is an Options.Lookup answering from a map (what the availability owner knows).
func known(m map[string]bool) func(string) (bool, bool) {
	return func(d string) (bool, bool) {
		avail, ok := m[d]
		return avail, ok
	}
}

// TestDerivationOrdered walks a chain lib <- app <- test through builds, a failed input, a GC
// and an input nobody has answered for.
func TestDerivationOrdered(t *testing.T) {
	p := New(Options{Strategy: DerivationOrdered, Lookup: known(map[string]bool{drv("glibc"): true})})
	p.UpsertAgent(agent("a", 4))
	p.UpsertBuild(bld("lib", 0, 0, "glibc"))
	p.UpsertBuild(bld("app", 0, 1, "lib", "glibc"))
	p.UpsertBuild(bld("test", 0, 2, "app", "lib"))
	libAgain := bld("lib-again", 0, 3, "glibc")
	libAgain.Derivation = drv("lib")

	steps := []struct {
		name       string
		event      func()
		horizon    []BuildKey
		waits      []Wait
		unresolved []string
	}{
		{
			name:    "only the build whose inputs are available is offered",
			event:   func() {},
			horizon: keys("lib"),
			waits: []Wait{
				{Key: "app", Reason: InputsPending, Message: "1 of 2 input derivations not yet built"},
				{Key: "test", Reason: InputsPending, Message: "2 of 2 input derivations not yet built"},
			},
		},
		{
			name: "lib's Build failed: its dependents wait for a new one, named",
			event: func() {
				p.RemoveBuild("lib")
				p.SetFailed(drv("lib"), "Build lib failed: BuildFailed")
			},
			waits: []Wait{
				{Key: "app", Reason: InputFailed, Message: "input " + drv("lib") + " cannot be built yet: Build lib failed: BuildFailed; a new Build of it lets this one proceed"},
				{Key: "test", Reason: InputFailed, Message: "input " + drv("lib") + " cannot be built yet: Build lib failed: BuildFailed; a new Build of it lets this one proceed"},
			},
		},
		{
			name:    "a new Build of lib: they wait for it",
			event:   func() { p.UpsertBuild(libAgain) },
			horizon: keys("lib-again"),
			waits: []Wait{
				{Key: "app", Reason: InputsPending, Message: "1 of 2 input derivations not yet built"},
				{Key: "test", Reason: InputsPending, Message: "2 of 2 input derivations not yet built"},
			},
		},
		{
			name:    "lib built",
			event:   func() { p.RemoveBuild("lib-again"); p.SetAvailable(drv("lib"), true) },
			horizon: keys("app"),
			waits:   []Wait{{Key: "app"}},
		},
		{
			name:    "lib's outputs lost, nobody answered yet: app waits, lib is listed unresolved",
			event:   func() { p.RemoveBuild("app"); p.UpsertBuild(bld("app", 0, 1, "lib", "glibc")); p.forget(drv("lib")) },
			horizon: nil,
			waits: []Wait{
				{Key: "app", Reason: InputsPending, Message: "1 of 2 input derivations not yet built"},
			},
			unresolved: []string{drv("lib")},
		},
		{
			name:    "absent, and no Build of it: app is offered (its agent will report lib missing)",
			event:   func() { p.SetAvailable(drv("lib"), false) },
			horizon: keys("app"),
			waits:   []Wait{{Key: "app"}},
		},
		{
			name:    "app built, test runs",
			event:   func() { p.RemoveBuild("app"); p.SetAvailable(drv("app"), true); p.SetAvailable(drv("lib"), true) },
			horizon: keys("test"),
			waits:   []Wait{{Key: "test"}},
		},
	}
	for _, s := range steps {
		s.event()
		got := p.Plan(t0)
		if diff := cmp.Diff(s.horizon, got.Horizons["a"], cmpopts.EquateEmpty()); diff != "" {
			t.Errorf("%s: horizon (-want +got):\n%s", s.name, diff)
		}
		if diff := cmp.Diff(s.waits, got.Waits, cmpopts.EquateEmpty()); diff != "" {
			t.Errorf("%s: waits (-want +got):\n%s", s.name, diff)
		}
		if diff := cmp.Diff(s.unresolved, p.TakeUnresolved(), cmpopts.EquateEmpty()); diff != "" {
			t.Errorf("%s: unresolved (-want +got):\n%s", s.name, diff)
		}
		checkInvariants(t, p)
	}
}

// forget makes the model forget what it knew of a derivation's outputs, as a new model would
// after a restart.
func (p *Planner) forget(drv string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if ni, ok := p.byDrv[drv]; ok {
		p.changeNode(ni, func(n *node) { n.available, n.checked = false, false })
	}
}

// TestNodeRelease: derivations nothing needs are forgotten, available ones too (the
// availability owner remembers them; Lookup answers when they are needed again).
func TestNodeRelease(t *testing.T) {
	avail := map[string]bool{drv("glibc"): true}
	p := New(Options{Strategy: DerivationOrdered, Lookup: known(avail)})
	p.UpsertAgent(agent("a", 1))
	p.UpsertBuild(bld("app", 0, 0, "lib", "glibc"))
	if got := p.Stats().Derivations; got != 3 {
		t.Fatalf("Derivations = %d, want 3", got)
	}
	if got := p.TakeUnresolved(); !slices.Equal(got, []string{drv("lib")}) {
		t.Errorf("unresolved %v, want lib only (glibc is known)", got)
	}
	p.RemoveBuild("app")
	if got := p.Stats().Derivations; got != 0 {
		t.Errorf("after removal Derivations = %d, want 0", got)
	}
	p.UpsertBuild(bld("app2", 0, 0, "glibc"))
	if w, _ := p.CurrentWait("app2"); w.Reason != NotWaiting {
		t.Errorf("app2 waits %+v, want nothing (Lookup knows glibc)", w)
	}
	if got := p.TakeUnresolved(); len(got) != 0 {
		t.Errorf("unresolved %v, want none", got)
	}
	checkInvariants(t, p)
}

// TestIncrementalMatchesRecompute drives random events and checks every derived value
// against a from-scratch computation over the same edges, with deferred changes flushed one
// by one (incremental) or in one pass (batch), after every event or after several.
func TestIncrementalMatchesRecompute(t *testing.T) {
	modes := map[string]struct {
		batchMin int
		every    int // check (and so flush) after this many events
	}{
		"incremental":       {batchMin: math.MaxInt, every: 1},
		"incremental, lazy": {batchMin: math.MaxInt, every: 7},
		"batch":             {batchMin: 0, every: 1},
		"batch, lazy":       {batchMin: 0, every: 7},
	}
	for name, m := range modes {
		t.Run(name, func(t *testing.T) { randomEvents(t, m.batchMin, m.every) })
	}
}

func randomEvents(t *testing.T, batchMin, every int) {
	for seed := range uint64(400) {
		rng := rand.New(rand.NewPCG(seed, 7))
		p := New(Options{Strategy: DerivationOrdered})
		p.batchMin = batchMin
		p.UpsertAgent(agent("a", 3))
		p.UpsertAgent(Agent{Name: "k", Systems: []string{x86}, Features: []string{"kvm"}, Slots: 1})
		const n = 60
		inputs := make([][]string, n)
		for i := range n {
			for range rng.IntN(4) {
				if i > 0 {
					inputs[i] = append(inputs[i], fmt.Sprintf("d%d", rng.IntN(i)))
				}
			}
		}
		for step := range 400 {
			i := rng.IntN(n)
			k := fmt.Sprintf("d%d", i)
			switch op := rng.IntN(10); {
			case op < 4:
				b := bld(k, int32(rng.IntN(5)), step, inputs[i]...)
				b.Running = rng.IntN(5) == 0
				if rng.IntN(4) == 0 {
					b.Requirements = []string{"kvm"}
				}
				if rng.IntN(6) == 0 {
					b.NotBefore = t0.Add(time.Duration(rng.IntN(3)-1) * time.Minute)
				}
				if rng.IntN(2) == 0 {
					b.Key += "-retry"
					b.UID += "-retry"
				}
				p.UpsertBuild(b)
			case op < 6:
				p.RemoveBuild(BuildKey(k))
			case op < 8:
				p.SetAvailable(drv(k), rng.IntN(3) > 0)
			default:
				checkPlan(t, p, p.Plan(t0))
			}
			if step%every == 0 {
				checkInvariants(t, p)
			}
			if t.Failed() {
				t.Fatalf("seed %d step %d", seed, step)
			}
		}
	}
}

// checkPlan: every horizon fits its agent, holds eligible offerable builds, and agrees with
// the model's (assumed) allocations.
func checkPlan(t *testing.T, p *Planner, plan Plan) {
	t.Helper()
	seen := map[BuildKey]bool{}
	for name, h := range plan.Horizons {
		st := p.agents[p.byAgent[name]]
		if len(h) > max(0, p.keep*st.slots-st.running) {
			t.Errorf("agent %s: horizon of %d exceeds its capacity", name, len(h))
		}
		for _, k := range h {
			if seen[k] {
				t.Errorf("build %s in two horizons", k)
			}
			seen[k] = true
			b := &p.builds[p.byKey[k]]
			if b.loc != locReady || b.agent != name || !p.classes[b.class].covers[st.group] {
				t.Errorf("build %s in %s's horizon: loc %d, agent %q", k, name, b.loc, b.agent)
			}
		}
	}
	for _, s := range p.allocs {
		for bi := range s {
			if !seen[p.builds[bi].key] {
				t.Errorf("build %s allocated but in no horizon", p.builds[bi].key)
			}
		}
	}
}

// checkInvariants recomputes derived priorities, chain lengths, missing counters and heap
// order from scratch and compares them with the incremental state.
//
// Derived values are deferred until a flush (Plan, Rank, Flush); it checks the flushed model.
func checkInvariants(t *testing.T, p *Planner) {
	t.Helper()
	p.Flush()
	type val struct{ inh, cp int32 }
	memo := map[int32]val{}
	var get func(ni int32) val
	contrib := func(ni int32, v val) contrib {
		n := &p.nodes[ni]
		if n.nbuilds > 0 {
			return contribOfVals(max(n.own, v.inh), v.cp+1)
		}
		if !n.available && v.inh != noPrio {
			return contribOfVals(v.inh, v.cp+1)
		}
		return contribOfVals(noPrio, 0)
	}
	get = func(ni int32) val {
		if v, ok := memo[ni]; ok {
			return v
		}
		v := val{noPrio, 0}
		for _, d := range p.nodes[ni].deps {
			c := contrib(d, get(d))
			v.inh, v.cp = max(v.inh, c.v), max(v.cp, c.c)
		}
		memo[ni] = v
		return v
	}
	for ni := range p.nodes {
		n := &p.nodes[ni]
		if !n.live {
			continue
		}
		if v := get(int32(ni)); v.inh != n.inh || v.cp != n.cp {
			t.Errorf("node %s: inh,cp = %d,%d, recomputed %d,%d", n.drv, n.inh, n.cp, v.inh, v.cp)
		}
		var missing, failed int32
		for _, ii := range n.inputs {
			if p.nodes[ii].blocks() {
				missing++
			}
			if p.nodes[ii].failedInput() {
				failed++
			}
			if !containsInt(p.nodes[ii].deps, int32(ni)) {
				t.Errorf("node %s: input %s lacks the back edge", n.drv, p.nodes[ii].drv)
			}
		}
		if missing != n.missing || failed != n.nfailed {
			t.Errorf("node %s: missing %d, failed %d, recomputed %d, %d", n.drv, n.missing, n.nfailed, missing, failed)
		}
		if n.own != p.ownOf(int32(ni)) {
			t.Errorf("node %s: own %d, recomputed %d", n.drv, n.own, p.ownOf(int32(ni)))
		}
	}
	for k, bi := range p.byKey {
		b := &p.builds[bi]
		n := &p.nodes[b.node]
		if b.eff != max(b.prio, n.inh) || b.cp != n.cp {
			t.Errorf("build %s: key %d/%d, want %d/%d", k, b.eff, b.cp, max(b.prio, n.inh), n.cp)
		}
		if want := p.desired(bi); b.loc != want {
			t.Errorf("build %s: loc %d, want %d", k, b.loc, want)
		}
	}
	allocated := 0
	for k, bi := range p.byKey {
		b := &p.builds[bi]
		if b.loc == locRunning || b.agent == "" {
			continue
		}
		allocated++
		if _, ok := p.allocs[b.agent][bi]; !ok {
			t.Errorf("build %s allocated to %s is missing from the allocation index", k, b.agent)
		}
	}
	indexed := 0
	for _, s := range p.allocs {
		indexed += len(s)
	}
	if indexed != allocated {
		t.Errorf("allocation index holds %d builds, model %d", indexed, allocated)
	}
	for _, c := range p.classes {
		for i, bi := range c.heap.items {
			if p.builds[bi].heapPos != int32(i) {
				t.Errorf("heap position of %s: %d, is at %d", p.builds[bi].key, p.builds[bi].heapPos, i)
			}
			if i > 0 && p.better(bi, c.heap.items[(i-1)/2]) {
				t.Errorf("heap order broken at %s", p.builds[bi].key)
			}
		}
	}
}

func contribOfVals(v, c int32) contrib { return contrib{v, c} }

func containsInt(s []int32, x int32) bool {
	for _, y := range s {
		if y == x {
			return true
		}
	}
	return false
}

// TestSkipInitialWaits: a new build's reason is read with CurrentWait, not reported by Plan;
// a later change is.
func TestSkipInitialWaits(t *testing.T) {
	deferred := bld("later", 0, 2)
	deferred.NotBefore = t0.Add(time.Hour)
	armB := bld("arm", 0, 3)
	armB.System = arm
	cases := map[string]struct {
		build   Build
		initial Wait               // CurrentWait right after UpsertBuild
		event   func(p *Planner)   // then
		waits   []Wait             // reported by the Plan after the event
		stats   map[WaitReason]int // Stats().Waiting after that Plan
	}{
		"inputs pending, then built": {
			build:   bld("app", 0, 1, "lib"),
			initial: Wait{Key: "app", Reason: InputsPending, Message: "1 of 1 input derivations not yet built"},
			event:   func(p *Planner) { p.SetAvailable(drv("lib"), true) },
			waits:   []Wait{{Key: "app"}},
		},
		"inputs pending, unchanged": {
			build:   bld("app", 0, 1, "lib"),
			initial: Wait{Key: "app", Reason: InputsPending, Message: "1 of 1 input derivations not yet built"},
			event:   func(*Planner) {},
			stats:   map[WaitReason]int{InputsPending: 1},
		},
		"no agent, then a pool": {
			build:   armB,
			initial: Wait{Key: "arm", Reason: NoAgentForSystem, Message: "no agent or pool offers system aarch64-linux"},
			event:   func(p *Planner) { p.UpsertPool(Pool{Name: "arm", Systems: []string{arm}}) },
			waits:   []Wait{{Key: "arm"}},
		},
		"deferred, still at the first Plan": {
			build:   deferred,
			initial: Wait{Key: "later", Reason: Deferred, Message: "deferred until 2026-01-01T01:00:00Z"},
			event:   func(*Planner) {},
			stats:   map[WaitReason]int{Deferred: 1},
		},
		"offerable, then its input's Build fails": {
			build:   bld("app", 0, 1, "glibc"),
			initial: Wait{Key: "app"},
			event:   func(p *Planner) { p.SetFailed(drv("glibc"), "Build glibc failed") },
			waits: []Wait{{Key: "app", Reason: InputFailed,
				Message: "input " + drv("glibc") + " cannot be built yet: Build glibc failed; a new Build of it lets this one proceed"}},
			stats: map[WaitReason]int{InputFailed: 1},
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			p := New(Options{Strategy: DerivationOrdered, SkipInitialWaits: true, Lookup: known(map[string]bool{drv("glibc"): true})})
			p.UpsertAgent(agent("a", 1))
			p.UpsertBuild(tc.build)
			if got, _ := p.CurrentWait(tc.build.Key); got != tc.initial {
				t.Errorf("CurrentWait = %+v, want %+v", got, tc.initial)
			}
			tc.event(p)
			got := p.Plan(t0)
			if diff := cmp.Diff(tc.waits, got.Waits, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("waits (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.stats, p.Stats().Waiting, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("Stats.Waiting (-want +got):\n%s", diff)
			}
			checkInvariants(t, p)
		})
	}
}

// TestCycle: a dependency cycle (impossible for real derivations, possible in hand-made
// Builds) neither hangs nor breaks planning, with either kind of flush.
func TestCycle(t *testing.T) {
	cases := map[string]int{"incremental": math.MaxInt, "batch": 0}
	for name, batchMin := range cases {
		t.Run(name, func(t *testing.T) {
			p := New(Options{})
			p.batchMin = batchMin
			p.UpsertAgent(agent("a", 2))
			p.UpsertBuild(bld("x", 0, 0, "y"))
			p.UpsertBuild(bld("y", 7, 1, "x"))
			p.UpsertBuild(bld("z", 0, 2, "x"))
			got := p.Plan(t0).Horizons["a"]
			if len(got) != 3 {
				t.Errorf("horizon %v, want all three builds", got)
			}
			if r, _ := p.Rank("x"); r.Priority != 7 {
				t.Errorf("x inherits %d, want 7 from y", r.Priority)
			}
			p.RemoveBuild("y")
			p.RemoveBuild("x")
			p.Plan(t0)
			if r, _ := p.Rank("z"); r != (Rank{}) {
				t.Errorf("z rank %+v after the cycle's builds left, want zero", r)
			}
		})
	}
}
