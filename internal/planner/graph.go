package planner

import "slices"

// node is one interned derivation. Its edges are known once a Build of it has been seen, and
// kept while anything still needs them: builds of the node, or dependents that still point at
// it (so priorities flow through derivations that have no Build any more).
type node struct {
	drv     string
	inputs  []int32 // input derivations (deduplicated), valid when inputsKnown
	deps    []int32 // dependents: nodes whose inputs include this one
	first   int32   // first build of this node, -1 none
	nbuilds int32
	own     int32 // max priority of this node's builds (noPrio none)
	inh     int32 // max value inherited from demanding dependents (noPrio none)
	cp      int32 // longest chain of demanding dependents above this node
	missing int32 // inputs that hold it back (node.blocks)
	nfailed int32 // inputs whose last Build failed (node.failedInput)
	failMsg string

	// pendOld is the contribution this node's inputs still reflect while a change of it is
	// deferred (pending); see deferChange.
	pendOld contrib

	// available: the outputs are known to be available; checked: someone answered for them
	// (available or not); failed: the last Build failed; queued: in Planner.unresolved.
	available, checked, failed, queued bool
	inputsKnown, live, pending         bool
}

// contrib is what a node passes to each of its inputs: its value and its chain length.
type contrib struct{ v, c int32 }

// contribOf: a node demands its inputs if it has builds (pending or running), or if it is not
// available and some dependent demands it. An available node without builds needs nothing.
func (p *Planner) contribOf(ni int32) contrib {
	n := &p.nodes[ni]
	if n.nbuilds > 0 {
		return contrib{max(n.own, n.inh), n.cp + 1}
	}
	if !n.available && n.inh != noPrio {
		return contrib{n.inh, n.cp + 1}
	}
	return contrib{noPrio, 0}
}

func (p *Planner) internDrv(drv string) int32 {
	if ni, ok := p.byDrv[drv]; ok {
		return ni
	}
	var ni int32
	if k := len(p.freeNodes); k > 0 {
		ni = p.freeNodes[k-1]
		p.freeNodes = p.freeNodes[:k-1]
	} else {
		p.nodes = append(p.nodes, node{})
		ni = int32(len(p.nodes) - 1)
	}
	p.nodes[ni] = node{drv: drv, first: -1, own: noPrio, inh: noPrio, live: true}
	p.byDrv[drv] = ni
	p.lookup(&p.nodes[ni])
	return ni
}

// setInputs records a node's edges, the first time a Build of it is seen.
func (p *Planner) setInputs(ni int32, inputs []string) {
	ids := make([]int32, 0, len(inputs))
	for _, d := range inputs {
		if d != "" {
			ids = append(ids, p.internDrv(d))
		}
	}
	slices.Sort(ids)
	ids = slices.Compact(ids)
	if k, ok := slices.BinarySearch(ids, ni); ok { // a derivation is not its own input
		ids = slices.Delete(ids, k, k+1)
	}
	ids = slices.Clip(ids)
	missing, failed := int32(0), int32(0)
	for _, ii := range ids {
		in := &p.nodes[ii]
		in.deps = append(in.deps, ni)
		if in.blocks() {
			missing++
		}
		if in.failedInput() {
			failed++
		}
		p.noteUnresolved(ii)
	}
	n := &p.nodes[ni]
	n.inputs, n.inputsKnown, n.missing, n.nfailed = ids, true, missing, failed
	// The edges are new, their inputs reflect nothing of this node yet: the deferred change
	// raises every input to the node's value.
	p.deferChange(ni, contrib{})
	n.pendOld = contrib{v: noPrio}
}

// Deferred propagation. A node is pending when its contribution may differ from what its
// inputs reflect; pendOld is what they reflect. The invariant, at every moment: each node's
// inh and cp are the max over its dependents d of reflected(d), which is d.pendOld if d is
// pending and contribOf(d) otherwise. Settling a pending node updates its inputs, which may
// make them pending in turn; the order does not matter, so changes can wait for the next
// flush (Plan, Rank, Flush), where many of them cost one pass over their cone instead of one
// propagation each: loading a queue in informer order would otherwise raise the same chains
// again and again.

// deferChange records that node ni's contribution may change; old is its contribution now.
func (p *Planner) deferChange(ni int32, old contrib) {
	n := &p.nodes[ni]
	if n.pending {
		return // the inputs still reflect the first old
	}
	n.pending, n.pendOld = true, old
	p.pend = append(p.pend, ni)
}

// reflected is node ni's contribution as its inputs' values include it.
func (p *Planner) reflected(ni int32) contrib {
	if n := &p.nodes[ni]; n.pending {
		return n.pendOld
	}
	return p.contribOf(ni)
}

// flush settles every deferred change. Few changes are propagated one by one (cost
// proportional to the values that change); many are recomputed in one topological pass over
// the nodes below them.
func (p *Planner) flush() {
	if len(p.pend) == 0 {
		return
	}
	if len(p.pend) < p.batchMin || 64*len(p.pend) < len(p.byDrv) || !p.flushBatch() {
		for _, ni := range p.pend {
			p.propagate(ni)
		}
	}
	p.pend = p.pend[:0]
}

// saved is a node's state before flushBatch, restored if the cone has a cycle.
type saved struct {
	inh, cp int32
	pending bool
}

// flushBatch recomputes the inherited value and chain length of every node below a pending
// one, dependents before inputs (Kahn's order within that cone), so each node is computed
// once from its final dependents; nodes outside the cone have no dependent in it. Heaps whose
// keys changed are rebuilt once. If the cone has a cycle (impossible for real derivations),
// it restores the cone and reports false: the incremental path bounds cycles.
func (p *Planner) flushBatch() bool {
	// Scratch indexed by node, apart from the nodes so the passes stay in cache: cone
	// membership (marks[x] == mark) and dependents in the cone not yet recomputed (cnt).
	if len(p.marks) < len(p.nodes) {
		p.marks = append(p.marks, make([]uint32, len(p.nodes)-len(p.marks))...)
		p.cnt = append(p.cnt, make([]int32, len(p.nodes)-len(p.cnt))...)
	}
	marks, cnt := p.marks, p.cnt
	p.mark++
	if p.mark == 0 { // wrapped: clear stale marks
		clear(marks)
		p.mark = 1
	}
	cone := p.cone[:0]
	for _, ni := range p.pend {
		if p.nodes[ni].pending && marks[ni] != p.mark {
			marks[ni] = p.mark
			cone = append(cone, ni)
		}
	}
	for k := 0; k < len(cone); k++ {
		for _, ii := range p.nodes[cone[k]].inputs {
			cnt[ii]++
			if marks[ii] != p.mark {
				marks[ii] = p.mark
				cone = append(cone, ii)
			}
		}
	}
	save := p.saved[:0]
	queue := p.queue[:0]
	for _, ni := range cone {
		n := &p.nodes[ni]
		save = append(save, saved{n.inh, n.cp, n.pending})
		if cnt[ni] == 0 {
			queue = append(queue, ni)
		}
	}
	limit := int32(len(p.nodes) + 1)
	for k := 0; k < len(queue); k++ {
		ni := queue[k]
		p.recompute(ni, limit) // every dependent in the cone is settled
		n := &p.nodes[ni]
		n.pending = false
		for _, ii := range n.inputs {
			if cnt[ii]--; cnt[ii] == 0 {
				queue = append(queue, ii)
			}
		}
	}
	ok := len(queue) == len(cone)
	p.bulk = true
	for k, ni := range cone {
		n := &p.nodes[ni]
		cnt[ni] = 0
		switch s := save[k]; {
		case !ok:
			n.inh, n.cp, n.pending = s.inh, s.cp, s.pending
		case n.inh != s.inh || n.cp != s.cp:
			p.refreshKeys(ni)
		}
	}
	p.bulk = false
	for _, c := range p.classes {
		if c.stale {
			c.heap.init()
			c.stale = false
		}
	}
	p.cone, p.queue, p.saved = cone[:0], queue[:0], save[:0]
	return ok
}

// propagate settles node ni if it is pending, and transitively the inputs that this makes
// pending. Increases are a max; a decrease recomputes an input only when the old contribution
// may have been its maximum. Cost: O(edges of the nodes whose value changes).
func (p *Planner) propagate(ni int32) {
	stack := append(p.stack[:0], ni)
	limit := int32(len(p.nodes) + 1) // bounds chain lengths if the graph has a cycle
	for len(stack) > 0 {
		x := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		n := &p.nodes[x]
		if !n.pending {
			continue
		}
		n.pending = false
		old, cur := n.pendOld, p.contribOf(x)
		if cur == old {
			continue
		}
		cur.c = min(cur.c, limit)
		for _, ii := range n.inputs {
			in := &p.nodes[ii]
			oldI := p.contribOf(ii)
			oinh, ocp := in.inh, in.cp
			again := false
			if cur.v > in.inh {
				in.inh = cur.v
			} else if cur.v < old.v && in.inh == old.v {
				again = true
			}
			if cur.c > in.cp {
				in.cp = cur.c
			} else if cur.c < old.c && in.cp == old.c {
				again = true
			}
			if again {
				p.recompute(ii, limit)
			}
			if in.inh != oinh || in.cp != ocp {
				p.refreshKeys(ii)
				if !in.pending && p.contribOf(ii) != oldI {
					in.pending, in.pendOld = true, oldI
					stack = append(stack, ii)
				}
			}
		}
	}
	p.stack = stack[:0]
}

// recompute sets a node's inherited value and chain length from its dependents: O(deps).
func (p *Planner) recompute(ni int32, limit int32) {
	inh, cp := int32(noPrio), int32(0)
	for _, d := range p.nodes[ni].deps {
		c := p.reflected(d)
		inh, cp = max(inh, c.v), max(cp, c.c)
	}
	n := &p.nodes[ni]
	n.inh, n.cp = inh, min(cp, limit)
}

func (p *Planner) ownOf(ni int32) int32 {
	own := int32(noPrio)
	for bi := p.nodes[ni].first; bi >= 0; bi = p.builds[bi].nextSame {
		own = max(own, p.builds[bi].prio)
	}
	return own
}

// refreshKeys updates the cached order keys of a node's builds and fixes their heap positions.
func (p *Planner) refreshKeys(ni int32) {
	n := &p.nodes[ni]
	for bi := n.first; bi >= 0; bi = p.builds[bi].nextSame {
		b := &p.builds[bi]
		eff := max(b.prio, n.inh)
		if eff != b.eff || n.cp != b.cp {
			b.eff, b.cp = eff, n.cp
			if b.loc == locReady {
				if c := p.classes[b.class]; p.bulk {
					c.stale = true // flushBatch rebuilds the heap once
				} else {
					c.heap.fix(b.heapPos)
				}
			}
		}
	}
}

// maybeRelease drops the edges of nodes nothing needs any more (no builds, no dependents),
// cascading to their inputs, and forgets such nodes.
// A released node contributes nothing (it has no dependents and no builds), so dropping its
// edges changes no value.
func (p *Planner) maybeRelease(ni int32) {
	work := []int32{ni}
	for len(work) > 0 {
		x := work[len(work)-1]
		work = work[:len(work)-1]
		n := &p.nodes[x]
		if !n.live || n.nbuilds > 0 || len(n.deps) > 0 {
			continue
		}
		if n.pending { // its inputs must forget its old contribution before the edges go
			p.propagate(x)
		}
		for _, ii := range n.inputs {
			in := &p.nodes[ii]
			if k := slices.Index(in.deps, x); k >= 0 {
				last := len(in.deps) - 1
				in.deps[k] = in.deps[last]
				in.deps = in.deps[:last]
			}
			work = append(work, ii)
		}
		// Forgotten whatever its availability: the availability owner remembers that, and
		// Options.Lookup answers if the derivation is needed again.
		delete(p.byDrv, n.drv)
		*n = node{}
		p.freeNodes = append(p.freeNodes, x)
	}
}
