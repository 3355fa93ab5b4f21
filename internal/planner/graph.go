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
	missing int32 // inputs not available

	available, inputsKnown, live bool
}

// contrib is what a node passes to each of its inputs: its value and its chain length.
type contrib struct{ v, c int32 }

type change struct {
	n   int32
	old contrib
}

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
	return ni
}

// setInputs records a node's edges, the first time a Build of it is seen.
func (p *Planner) setInputs(ni int32, inputs []string) {
	ids := make([]int32, 0, len(inputs))
	self := p.nodes[ni].drv
	for _, d := range inputs {
		if d != self && d != "" {
			ids = append(ids, p.internDrv(d))
		}
	}
	slices.Sort(ids)
	ids = slices.Clip(slices.Compact(ids))
	missing := int32(0)
	for _, ii := range ids {
		in := &p.nodes[ii]
		in.deps = append(in.deps, ni)
		if !in.available {
			missing++
		}
	}
	n := &p.nodes[ni]
	n.inputs, n.inputsKnown, n.missing = ids, true, missing
}

// propagate pushes a change of node ni's contribution (from old to its current one) down to
// its inputs, transitively. Increases are a max; a decrease recomputes an input only when the
// old contribution may have been its maximum. Cost: O(edges of the nodes whose value changes).
func (p *Planner) propagate(ni int32, old contrib) {
	stack := append(p.stack[:0], change{ni, old})
	limit := int32(len(p.nodes) + 1) // bounds chain lengths if the graph has a cycle
	for len(stack) > 0 {
		ch := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		cur := p.contribOf(ch.n)
		if cur == ch.old {
			continue
		}
		cur.c = min(cur.c, limit)
		for _, ii := range p.nodes[ch.n].inputs {
			in := &p.nodes[ii]
			oldI := p.contribOf(ii)
			oinh, ocp := in.inh, in.cp
			again := false
			if cur.v > in.inh {
				in.inh = cur.v
			} else if cur.v < ch.old.v && in.inh == ch.old.v {
				again = true
			}
			if cur.c > in.cp {
				in.cp = cur.c
			} else if cur.c < ch.old.c && in.cp == ch.old.c {
				again = true
			}
			if again {
				p.recompute(ii, limit)
			}
			if in.inh != oinh || in.cp != ocp {
				p.refreshKeys(ii)
				if p.contribOf(ii) != oldI {
					stack = append(stack, change{ii, oldI})
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
		c := p.contribOf(d)
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
				p.classes[b.class].heap.fix(p, b.heapPos)
			}
		}
	}
}

// maybeRelease drops the edges of nodes nothing needs any more (no builds, no dependents),
// cascading to their inputs, and forgets such nodes unless their outputs are available.
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
		for _, ii := range n.inputs {
			in := &p.nodes[ii]
			if k := slices.Index(in.deps, x); k >= 0 {
				last := len(in.deps) - 1
				in.deps[k] = in.deps[last]
				in.deps = in.deps[:last]
			}
			work = append(work, ii)
		}
		n.inputs, n.inputsKnown, n.missing = nil, false, 0
		n.inh, n.cp = noPrio, 0
		if !n.available {
			delete(p.byDrv, n.drv)
			*n = node{}
			p.freeNodes = append(p.freeNodes, x)
		}
	}
}

// SetAvailable records whether a derivation's outputs are available (a succeeded build, or a
// narinfo in the bucket); false means they were deleted (GC). Cost O(dependents) plus the
// derived-priority change it causes.
func (p *Planner) SetAvailable(drv string, ok bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	ni, exists := p.byDrv[drv]
	if !exists {
		if !ok {
			return
		}
		ni = p.internDrv(drv)
	}
	n := &p.nodes[ni]
	if n.available == ok {
		return
	}
	old := p.contribOf(ni)
	n.available = ok
	for _, d := range n.deps {
		dn := &p.nodes[d]
		if ok {
			dn.missing--
		} else {
			dn.missing++
		}
		if (ok && dn.missing == 0) || (!ok && dn.missing == 1) {
			for bi := dn.first; bi >= 0; bi = p.builds[bi].nextSame {
				p.relocate(bi)
			}
		}
	}
	p.propagate(ni, old)
	if !ok {
		p.maybeRelease(ni)
	}
}

// Available reports whether a derivation's outputs are known to be available.
func (p *Planner) Available(drv string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	ni, ok := p.byDrv[drv]
	return ok && p.nodes[ni].available
}
