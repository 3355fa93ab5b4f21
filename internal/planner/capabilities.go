package planner

import (
	"fmt"
	"slices"
	"strings"
)

// class is one (system, requirement set): builds in a class are interchangeable for
// eligibility, so each class has one heap of offerable builds.
type class struct {
	system     string
	reqs       []string // sorted, unique
	heap       buildHeap
	stale      bool    // keys changed during a batch flush: heap order to be restored
	members    []int32 // every build of the class, any state (for servability changes)
	pending    int     // non-running builds
	running    int
	groups     []int32 // capability groups that can serve this class
	covers     []bool  // indexed by group
	servable   bool    // some registered agent or pool can serve it
	noAgentMsg string
}

// group is one capability signature (systems, features) shared by agents and pools: planning
// picks agents per group, and servability is a class × group table.
type group struct {
	systems, features []string // sorted, unique
	agents            []int32
	pools             int
}

type agentState struct {
	name, pool     string
	group          int32
	pos            int32 // in group.agents
	slots, running int
	live           bool
}

func normalize(s []string) []string {
	if len(s) == 0 {
		return nil
	}
	out := slices.Clone(s)
	slices.Sort(out)
	out = slices.Compact(out)
	if len(out) > 0 && out[0] == "" {
		out = out[1:]
	}
	if len(out) == 0 {
		return nil
	}
	return slices.Clip(out)
}

func sortedHas(s []string, x string) bool {
	_, ok := slices.BinarySearch(s, x)
	return ok
}

func (g *group) serves(c *class) bool {
	if !sortedHas(g.systems, c.system) {
		return false
	}
	for _, r := range c.reqs {
		if !sortedHas(g.features, r) {
			return false
		}
	}
	return true
}

func (p *Planner) classFor(system string, reqs []string) int32 {
	if len(reqs) == 0 { // the common case: no key to build, nothing to allocate
		if ci, ok := p.plain[system]; ok {
			return ci
		}
	}
	reqs = normalize(reqs)
	key := system + "\x00" + strings.Join(reqs, "\x00")
	if ci, ok := p.byClass[key]; ok {
		return ci
	}
	c := &class{system: system, reqs: reqs, covers: make([]bool, len(p.groups)), heap: buildHeap{o: byRank{p}}}
	for gi, g := range p.groups {
		if g.serves(c) {
			c.covers[gi] = true
			c.groups = append(c.groups, int32(gi))
		}
	}
	p.classes = append(p.classes, c)
	ci := int32(len(p.classes) - 1)
	p.byClass[key] = ci
	if len(reqs) == 0 {
		p.plain[system] = ci
	}
	p.refreshClass(c)
	return ci
}

func (p *Planner) groupFor(systems, features []string) int32 {
	systems, features = normalize(systems), normalize(features)
	key := strings.Join(systems, "\x00") + "\x01" + strings.Join(features, "\x00")
	if gi, ok := p.byGroup[key]; ok {
		return gi
	}
	g := &group{systems: systems, features: features}
	p.groups = append(p.groups, g)
	gi := int32(len(p.groups) - 1)
	p.byGroup[key] = gi
	for _, c := range p.classes {
		s := g.serves(c)
		c.covers = append(c.covers, s)
		if s {
			c.groups = append(c.groups, gi)
		}
	}
	return gi
}

// refreshServable re-evaluates every class after agents or pools changed; a class whose
// servability flips marks all its builds for a wait-reason check.
func (p *Planner) refreshServable() {
	for _, c := range p.classes {
		was := c.servable
		p.refreshClass(c)
		if c.servable != was {
			for _, bi := range c.members {
				p.markDirty(bi)
			}
		}
	}
}

func (p *Planner) refreshClass(c *class) {
	c.servable = false
	for _, gi := range c.groups {
		if g := p.groups[gi]; len(g.agents) > 0 || g.pools > 0 {
			c.servable = true
			break
		}
	}
	c.noAgentMsg = ""
	if c.servable {
		return
	}
	// Name what is missing, against the closest registered capability for the system.
	var best []string
	found := false
	for _, g := range p.groups {
		if (len(g.agents) == 0 && g.pools == 0) || !sortedHas(g.systems, c.system) {
			continue
		}
		var miss []string
		for _, r := range c.reqs {
			if !sortedHas(g.features, r) {
				miss = append(miss, r)
			}
		}
		if !found || len(miss) < len(best) {
			best, found = miss, true
		}
	}
	switch {
	case !found && len(c.reqs) == 0:
		c.noAgentMsg = fmt.Sprintf("no agent or pool offers system %s", c.system)
	case !found:
		c.noAgentMsg = fmt.Sprintf("no agent or pool offers system %s (features required: %s)",
			c.system, strings.Join(c.reqs, ", "))
	default:
		c.noAgentMsg = fmt.Sprintf("no agent or pool for system %s offers features %s",
			c.system, strings.Join(best, ", "))
	}
}

// UpsertAgent adds or updates an agent (capabilities, slots, running count).
func (p *Planner) UpsertAgent(a Agent) {
	p.mu.Lock()
	defer p.mu.Unlock()
	gi := p.groupFor(a.Systems, a.Features)
	ai, ok := p.byAgent[a.Name]
	topology := false
	if !ok {
		if k := len(p.freeAgent); k > 0 {
			ai = p.freeAgent[k-1]
			p.freeAgent = p.freeAgent[:k-1]
		} else {
			p.agents = append(p.agents, agentState{})
			ai = int32(len(p.agents) - 1)
		}
		p.agents[ai] = agentState{name: a.Name, group: -1, live: true}
		p.byAgent[a.Name] = ai
	}
	st := &p.agents[ai]
	if st.group != gi {
		if st.group >= 0 {
			p.leaveGroup(ai)
		}
		g := p.groups[gi]
		st.group, st.pos = gi, int32(len(g.agents))
		g.agents = append(g.agents, ai)
		topology = true
	}
	st.pool, st.slots, st.running = a.Pool, a.Slots, a.Running
	if topology {
		p.refreshServable()
	}
}

func (p *Planner) leaveGroup(ai int32) {
	st := &p.agents[ai]
	g := p.groups[st.group]
	last := g.agents[len(g.agents)-1]
	g.agents[st.pos] = last
	p.agents[last].pos = st.pos
	g.agents = g.agents[:len(g.agents)-1]
	st.group = -1
}

// RemoveAgent forgets an agent; its allocated builds are withdrawn or moved by the next Plan.
func (p *Planner) RemoveAgent(name string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	ai, ok := p.byAgent[name]
	if !ok {
		return
	}
	p.leaveGroup(ai)
	p.agents[ai] = agentState{}
	delete(p.byAgent, name)
	p.freeAgent = append(p.freeAgent, ai)
	p.refreshServable()
}

// UpsertPool adds or updates what a pool could serve (even at zero replicas).
func (p *Planner) UpsertPool(pl Pool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	gi := p.groupFor(pl.Systems, pl.Features)
	if old, ok := p.pools[pl.Name]; ok {
		if old == gi {
			return
		}
		p.groups[old].pools--
	}
	p.pools[pl.Name] = gi
	p.groups[gi].pools++
	p.refreshServable()
}

// RemovePool forgets a pool.
func (p *Planner) RemovePool(name string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	gi, ok := p.pools[name]
	if !ok {
		return
	}
	delete(p.pools, name)
	p.groups[gi].pools--
	p.refreshServable()
}

// Claimable is the number of builds a pool's agents could claim now: offerable (inputs ready,
// not deferred, not running) and of a class the pool serves. Autoscaling follows it; a build
// that two pools could serve counts for both.
func (p *Planner) Claimable(pool string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	gi, ok := p.pools[pool]
	if !ok {
		return 0
	}
	n := 0
	for _, c := range p.classes {
		if int(gi) < len(c.covers) && c.covers[gi] {
			n += len(c.heap.items)
		}
	}
	return n
}

// Quiesced reports whether the planner offers an agent no slot and holds no build allocated to
// it (planned or written): an agent it does not know, or one registered with no slots (draining,
// unhealthy), gets nothing new. A draining agent may go once quiesced and running nothing.
func (p *Planner) Quiesced(agent string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.allocs[agent]) > 0 {
		return false
	}
	ai, ok := p.byAgent[agent]
	return !ok || p.agents[ai].slots == 0
}
