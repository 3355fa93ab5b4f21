package planner

// What the planner knows of a derivation's outputs, and how that holds back its dependents under
// DerivationOrdered. The planner does not own availability (the controller's availability owner
// does): it keeps what it was told for the derivations it models, asks Options.Lookup when one
// appears, and lists those nobody has answered for yet (TakeUnresolved), so the caller can ask
// the bucket and the Builds and tell it (SetAvailable, SetFailed). A derivation nothing needs is
// forgotten whatever its availability, so the model stays as small as its queue.

// blocks says whether node n holds back its dependents: its outputs are not available, and a
// Build of it will produce them, nobody has said yet whether they exist, or its last Build
// failed (the dependents wait for a new one, named in their reason). An input known to be absent
// that no Build produces holds nothing back: the agent that claims the dependent reports it
// missing, and the farm builds it then.
func (n *node) blocks() bool { return !n.available && (n.nbuilds > 0 || !n.checked || n.failed) }

// failedInput says whether n holds back its dependents because its last Build failed.
func (n *node) failedInput() bool { return !n.available && n.failed && n.nbuilds == 0 }

// unresolved says whether nobody has answered for n yet and something waits on the answer.
func (n *node) unresolved() bool {
	return !n.available && !n.checked && n.nbuilds == 0 && len(n.deps) > 0
}

// changeNode applies fn to node ni and carries the consequences: its contribution to its
// inputs' derived priorities, its dependents' counters (and so where their builds wait, and
// why), and the list of unresolved derivations.
func (p *Planner) changeNode(ni int32, fn func(n *node)) {
	n := &p.nodes[ni]
	old := p.contribOf(ni)
	wasBlocking, wasFailed := n.blocks(), n.failedInput()
	fn(n)
	n = &p.nodes[ni]
	if p.contribOf(ni) != old {
		p.deferChange(ni, old)
	}
	isBlocking, isFailed := n.blocks(), n.failedInput()
	if wasBlocking != isBlocking || wasFailed != isFailed {
		for _, d := range n.deps {
			dn := &p.nodes[d]
			if wasBlocking != isBlocking {
				if isBlocking {
					dn.missing++
				} else {
					dn.missing--
				}
			}
			if wasFailed != isFailed {
				if isFailed {
					dn.nfailed++
				} else {
					dn.nfailed--
				}
			}
			for bi := dn.first; bi >= 0; bi = p.builds[bi].nextSame {
				p.relocate(bi)
				p.markDirty(bi) // the reason's message names the failed input
			}
		}
	}
	p.noteUnresolved(ni)
}

// noteUnresolved queues node ni for TakeUnresolved if it is unresolved and not queued.
func (p *Planner) noteUnresolved(ni int32) {
	if n := &p.nodes[ni]; !n.queued && n.unresolved() {
		n.queued = true
		p.unresolved = append(p.unresolved, ni)
	}
}

// lookup fills a newly interned node's availability from Options.Lookup.
func (p *Planner) lookup(n *node) {
	if p.lookupFn == nil {
		return
	}
	if avail, known := p.lookupFn(n.drv); known {
		n.available, n.checked = avail, true
	}
}

// TakeUnresolved returns the derivations that some modelled Build needs and that nobody has
// answered for yet (no Build of them, not known available or absent), each once until it is
// unresolved again. The caller answers with SetAvailable or SetFailed; until then they hold
// their dependents back.
func (p *Planner) TakeUnresolved() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	for _, ni := range p.unresolved {
		n := &p.nodes[ni]
		n.queued = false
		if n.live && n.unresolved() {
			out = append(out, n.drv)
		}
	}
	p.unresolved = p.unresolved[:0]
	return out
}

// SetAvailable records whether a derivation's outputs are available (a succeeded Build, or
// every output in the bucket with its nar); false means absent (never built, or lost: GC, a
// deleted nar). A derivation the planner does not model is ignored: Options.Lookup answers when
// it appears. Cost O(dependents) plus the derived-priority change it causes.
func (p *Planner) SetAvailable(drv string, ok bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	ni, exists := p.byDrv[drv]
	if !exists {
		return
	}
	p.changeNode(ni, func(n *node) {
		n.available, n.checked = ok, true
		if ok {
			n.failed, n.failMsg = false, ""
		}
	})
	if !ok {
		p.maybeRelease(ni)
	}
}

// SetFailed records that the last Build of a derivation failed (message says which and why):
// its dependents wait for a new Build of it, and their reason names it. A new Build clears it.
func (p *Planner) SetFailed(drv, message string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if ni, exists := p.byDrv[drv]; exists {
		p.changeNode(ni, func(n *node) { n.available, n.checked, n.failed, n.failMsg = false, true, true, message })
	}
}

// Available reports whether a modelled derivation's outputs are known to be available.
func (p *Planner) Available(drv string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	ni, ok := p.byDrv[drv]
	return ok && p.nodes[ni].available
}

// failedInputMsg is the InputFailed message of node ni: the first failed input's.
func (p *Planner) failedInputMsg(ni int32) string {
	for _, ii := range p.nodes[ni].inputs {
		if in := &p.nodes[ii]; in.failedInput() {
			return "input " + in.drv + " cannot be built yet: " + in.failMsg + "; a new Build of it lets this one proceed"
		}
	}
	return "an input derivation failed"
}
