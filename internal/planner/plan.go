package planner

import (
	"cmp"
	"slices"
	"time"
)

// Plan computes every agent's horizon, assumes the allocation changes into the model and
// returns them with the wait-reason changes since the previous Plan. Builds whose NotBefore
// is due by now are moved in first.
//
// Cost: O((total horizon capacity + classes) · log n + agents + changes). The queue itself
// is never scanned: each class heap is walked from its top, without popping, and the walk
// of a class stops as soon as no eligible agent has room.
func (p *Planner) Plan(now time.Time) Plan {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.now = nanos(now)
	p.flush()
	for len(p.deferred.items) > 0 && p.builds[p.deferred.items[0]].notBefore <= p.now {
		p.relocate(p.deferred.items[0])
	}

	sel, first := p.selectBuilds()
	assign := p.stick(sel, first)

	out := Plan{Horizons: make(map[string][]BuildKey, len(p.byAgent))}
	for name := range p.byAgent {
		out.Horizons[name] = nil
	}
	p.epoch++
	for k, bi := range sel {
		b := &p.builds[bi]
		b.epoch = p.epoch
		name := p.agents[assign[k]].name
		out.Horizons[name] = append(out.Horizons[name], b.key)
		if b.agent != name {
			out.Allocations = append(out.Allocations, Allocation{Key: b.key, Agent: name, Priority: b.eff})
			p.trackAlloc(bi, b.agent, name)
			held := b.agent != ""
			b.agent = name
			if !held {
				p.classes[b.class].heap.fix(b.heapPos)
			}
		}
	}
	withdrawn := p.keepOrWithdraw(out.Horizons)
	slices.SortFunc(withdrawn, func(a, b Allocation) int { return cmp.Compare(a.Key, b.Key) })
	out.Allocations = append(out.Allocations, withdrawn...)

	changed := p.dirty[:0] // the builds whose reason changed, in place of the dirty list
	for _, bi := range p.dirty {
		b := &p.builds[bi]
		if !b.live || !b.dirty {
			continue
		}
		b.dirty = false
		if r, _ := p.reasonOf(bi, false); r != b.reported {
			if b.reported != rNone {
				p.reported[b.reported]--
			}
			if r != rNone {
				p.reported[r]++
			}
			b.reported = r
			changed = append(changed, bi)
		}
	}
	if len(changed) > 0 {
		out.Waits = make([]Wait, len(changed))
		for k, bi := range changed {
			r, msg := p.reasonOf(bi, true)
			out.Waits[k] = Wait{Key: p.builds[bi].key, Reason: reasonNames[r], Message: msg}
		}
	}
	p.dirty = p.dirty[:0]
	slices.SortFunc(out.Waits, func(a, b Wait) int { return cmp.Compare(a.Key, b.Key) })

	if len(p.deferred.items) > 0 {
		out.NextWake = time.Unix(0, p.builds[p.deferred.items[0]].notBefore)
	}
	return out
}

// capacities is every agent's horizon room: HorizonFactor*Slots - Running, at least 0.
func (p *Planner) capacities() ([]int, int) {
	room := make([]int, len(p.agents))
	total := 0
	for ai := range p.agents {
		if st := &p.agents[ai]; st.live {
			room[ai] = max(0, p.factor*st.slots-st.running)
			total += room[ai]
		}
	}
	return room, total
}

// selectBuilds walks all class heaps merged in the global order (a small heap of frontier
// positions; the class heaps are not modified) and gives each build to the eligible agent
// with the most room, until no eligible agent has room. It decides which builds are in some
// horizon; stick then decides where.
func (p *Planner) selectBuilds() (sel, assign []int32) {
	room, total := p.capacities()
	if total == 0 {
		return nil, nil
	}
	pl := &placer{p: p, ah: p.agentHeaps(room), room: room,
		sel: make([]int32, 0, total), out: make([]int32, 0, total)}
	dead := make([]bool, len(p.classes))
	fr := frontier{p: p, items: make([]entry, 0, 2*total+len(p.classes))}
	for ci, c := range p.classes {
		if len(c.heap.items) > 0 && p.pickAgent(c, pl.ah, room) >= 0 {
			fr.push(c, int32(ci), 0)
		}
	}
	for len(fr.items) > 0 && total > 0 {
		e := fr.pop()
		if dead[e.ci] {
			continue
		}
		c := p.classes[e.ci]
		k := len(pl.sel)
		pl.sel, pl.out = append(pl.sel, e.bi), append(pl.out, -1)
		if ai := p.pickAgent(c, pl.ah, room); ai >= 0 {
			pl.put(k, ai)
		} else if !pl.displace(k, c) {
			pl.sel, pl.out = pl.sel[:k], pl.out[:k]
			dead[e.ci] = true
			continue
		}
		total--
		for _, child := range [2]int32{2*e.pos + 1, 2*e.pos + 2} {
			if int(child) < len(c.heap.items) {
				fr.push(c, e.ci, child)
			}
		}
	}
	return pl.sel, pl.out
}

// stick keeps every selected build on its current agent while that agent still qualifies
// and has room (best-ranked first), then places the others on the eligible agent with the
// most room left. If that cannot place everything even with displacement (overlapping
// capabilities), it falls back to the selection's own placement.
func (p *Planner) stick(sel, first []int32) []int32 {
	if len(sel) == 0 {
		return first
	}
	room, _ := p.capacities()
	out := make([]int32, len(sel))
	var rest []int
	for k, bi := range sel {
		b := &p.builds[bi]
		if b.agent != "" {
			if ai, ok := p.byAgent[b.agent]; ok && room[ai] > 0 && p.classes[b.class].covers[p.agents[ai].group] {
				out[k] = ai
				room[ai]--
				continue
			}
		}
		out[k] = -1
		rest = append(rest, k)
	}
	if len(rest) == 0 {
		return out
	}
	pl := &placer{p: p, ah: p.agentHeaps(room), room: room, sel: sel, out: out}
	for _, k := range rest {
		c := p.classes[p.builds[sel[k]].class]
		if ai := p.pickAgent(c, pl.ah, room); ai >= 0 {
			pl.put(k, ai)
		} else if !pl.displace(k, c) {
			return first
		}
	}
	return out
}

// placer records where selected builds go during one pass.
type placer struct {
	p        *Planner
	ah       *agentHeaps
	room     []int
	sel, out []int32 // out[k] is sel[k]'s agent, -1 not placed yet
	on       [][]int // agent -> indices placed on it, built on first displacement
}

func (pl *placer) put(k int, ai int32) {
	pl.ah.take(pl.p.agents[ai].group, pl.room)
	pl.out[k] = ai
	if pl.on != nil {
		pl.on[ai] = append(pl.on[ai], k)
	}
}

// displace places sel[k] on a full eligible agent by moving that agent's lowest-ranked build
// that fits elsewhere to an agent with room: one step of an augmenting path, so a conflict
// of overlapping capabilities (plain builds filling kvm agents) costs one extra move instead
// of a lost slot or a reshuffle.
func (pl *placer) displace(k int, c *class) bool {
	p := pl.p
	if pl.on == nil {
		// One backing array: an agent never holds more than its horizon capacity.
		caps, total := p.capacities()
		buf := make([]int, total)
		pl.on = make([][]int, len(p.agents))
		off := 0
		for ai, n := range caps {
			pl.on[ai] = buf[off : off : off+n]
			off += n
		}
		for k2, ai := range pl.out {
			if ai >= 0 {
				pl.on[ai] = append(pl.on[ai], k2)
			}
		}
	}
	noRoom := make([]bool, len(p.classes)) // classes already known to have no room left
	for _, gi := range c.groups {
		for _, ai := range p.groups[gi].agents {
			placed := pl.on[ai]
			for j := len(placed) - 1; j >= 0; j-- {
				k2 := placed[j]
				ci := p.builds[pl.sel[k2]].class
				if noRoom[ci] {
					continue
				}
				to := p.pickAgent(p.classes[ci], pl.ah, pl.room)
				if to < 0 {
					noRoom[ci] = true
					continue
				}
				placed[j] = k
				pl.out[k] = ai
				pl.put(k2, to)
				return true
			}
		}
	}
	return false
}

// agentHeaps is, per capability group, a heap of agents with room: most room first, then name.
type agentHeaps struct {
	p     *Planner
	heaps [][]int32
}

func (p *Planner) agentHeaps(room []int) *agentHeaps {
	ah := &agentHeaps{p: p, heaps: make([][]int32, len(p.groups))}
	for gi, g := range p.groups {
		var h []int32
		for _, ai := range g.agents {
			if room[ai] > 0 {
				h = append(h, ai)
			}
		}
		for i := len(h)/2 - 1; i >= 0; i-- {
			ah.down(h, i, room)
		}
		ah.heaps[gi] = h
	}
	return ah
}

func (ah *agentHeaps) less(a, b int32, room []int) bool {
	if room[a] != room[b] {
		return room[a] > room[b]
	}
	return ah.p.agents[a].name < ah.p.agents[b].name
}

func (ah *agentHeaps) down(h []int32, i int, room []int) {
	for {
		l := 2*i + 1
		if l >= len(h) {
			return
		}
		c := l
		if r := l + 1; r < len(h) && ah.less(h[r], h[l], room) {
			c = r
		}
		if !ah.less(h[c], h[i], room) {
			return
		}
		h[i], h[c] = h[c], h[i]
		i = c
	}
}

// take uses one unit of room of the group's top agent.
func (ah *agentHeaps) take(gi int32, room []int) {
	h := ah.heaps[gi]
	room[h[0]]--
	if room[h[0]] == 0 {
		h[0] = h[len(h)-1]
		h = h[:len(h)-1]
	}
	if len(h) > 0 {
		ah.down(h, 0, room)
	}
	ah.heaps[gi] = h
}

// pickAgent is the eligible agent with the most room (then name), -1 if none has room.
func (p *Planner) pickAgent(c *class, ah *agentHeaps, room []int) int32 {
	best := int32(-1)
	for _, gi := range c.groups {
		if h := ah.heaps[gi]; len(h) > 0 && (best < 0 || ah.less(h[0], best, room)) {
			best = h[0]
		}
	}
	return best
}

// frontier merges the class heaps: it holds the next candidate positions of each class.
// Entries carry a copy of the order key, so the walk rarely touches the builds array.
type entry struct {
	created     int64
	eff, cp     int32
	bi, ci, pos int32
	held        bool
}

type frontier struct {
	p     *Planner
	items []entry
}

func (f *frontier) less(a, b *entry) bool {
	switch {
	case a.eff != b.eff:
		return a.eff > b.eff
	case a.held != b.held:
		return a.held
	case a.cp != b.cp:
		return a.cp > b.cp
	case a.created != b.created:
		return a.created < b.created
	}
	return f.p.better(a.bi, b.bi)
}

func (f *frontier) push(c *class, ci, pos int32) {
	bi := c.heap.items[pos]
	b := &f.p.builds[bi]
	f.items = append(f.items, entry{created: b.created, eff: b.eff, cp: b.cp, bi: bi, ci: ci, pos: pos, held: b.agent != ""})
	i := len(f.items) - 1
	for i > 0 {
		parent := (i - 1) / 2
		if !f.less(&f.items[i], &f.items[parent]) {
			break
		}
		f.items[i], f.items[parent] = f.items[parent], f.items[i]
		i = parent
	}
}

func (f *frontier) pop() entry {
	top := f.items[0]
	last := len(f.items) - 1
	f.items[0] = f.items[last]
	f.items = f.items[:last]
	i := 0
	for {
		l := 2*i + 1
		if l >= len(f.items) {
			break
		}
		c := l
		if r := l + 1; r < len(f.items) && f.less(&f.items[r], &f.items[l]) {
			c = r
		}
		if !f.less(&f.items[c], &f.items[i]) {
			break
		}
		f.items[i], f.items[c] = f.items[c], f.items[i]
		i = c
	}
	return top
}

// Stats is a cheap summary for metrics.
type Stats struct {
	Pending         map[string]int     // non-running builds per system
	Running         int                // builds claimed by agents
	Ready           int                // offerable now (in some class heap)
	Waiting         map[WaitReason]int // by reason, as last reported by Plan
	Deferred        int                // NotBefore in the future
	Agents, Pools   int
	Slots           int
	HorizonCapacity int // sum of HorizonFactor*Slots - Running
	Derivations     int // modelled derivations (of builds, and their inputs)
}

// Stats summarises the model: O(classes + agents).
func (p *Planner) Stats() Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := Stats{
		Pending:     map[string]int{},
		Waiting:     map[WaitReason]int{},
		Deferred:    len(p.deferred.items),
		Agents:      len(p.byAgent),
		Pools:       len(p.pools),
		Derivations: len(p.byDrv),
	}
	for _, c := range p.classes {
		if c.pending > 0 {
			s.Pending[c.system] += c.pending
		}
		s.Running += c.running
		s.Ready += len(c.heap.items)
	}
	for r := rNoAgent; r < numReasons; r++ {
		if p.reported[r] > 0 {
			s.Waiting[reasonNames[r]] = p.reported[r]
		}
	}
	for ai := range p.agents {
		if st := &p.agents[ai]; st.live {
			s.Slots += st.slots
			s.HorizonCapacity += max(0, p.factor*st.slots-st.running)
		}
	}
	return s
}
