package planner

import (
	"fmt"
	"slices"
	"time"
)

// loc is where a build lives in the model.
type loc uint8

const (
	locNone     loc = iota
	locReady        // in its class heap: offerable
	locDeferred     // in the deferred heap: NotBefore in the future
	locInputs       // derivation-ordered, waiting for input derivations
	locRunning      // claimed by an agent
)

type reason uint8

const (
	rNone reason = iota
	rNoAgent
	rInputs
	rDeferred
	rInputFailed
	numReasons
)

var reasonNames = [numReasons]WaitReason{NotWaiting, NoAgentForSystem, InputsPending, Deferred, InputFailed}

// build is one Build in the model. Key fields (eff, cp, created, uid, key) are cached here
// so heap comparisons touch only this struct.
type build struct {
	key       BuildKey
	uid       string
	agent     string // current allocation or running agent, as in the model
	node      int32
	class     int32
	prio      int32
	eff       int32 // max(prio, node.inh)
	cp        int32 // node.cp
	created   int64
	notBefore int64
	nextSame  int32 // builds of the same node: doubly linked list
	prevSame  int32
	heapPos   int32 // in class heap, -1
	defPos    int32 // in deferred heap, -1
	classPos  int32 // in class.members
	epoch     uint32
	loc       loc
	reported  reason
	dirty     bool
	live      bool
}

// better is the total planning order: effective priority, then builds already allocated
// (stickiness: among equals, a horizon entry is not displaced by a newcomer), critical path,
// FIFO, UID, key.
func (p *Planner) better(i, j int32) bool {
	a, b := &p.builds[i], &p.builds[j]
	if a.eff != b.eff {
		return a.eff > b.eff
	}
	if ha, hb := a.agent != "", b.agent != ""; ha != hb {
		return ha
	}
	if a.cp != b.cp {
		return a.cp > b.cp
	}
	if a.created != b.created {
		return a.created < b.created
	}
	if a.uid != b.uid {
		return a.uid < b.uid
	}
	return a.key < b.key
}

// UpsertBuild adds a build or updates it (priority, NotBefore, Running, Agent). A change of
// derivation, system, requirements or UID replaces it.
func (p *Planner) UpsertBuild(in Build) {
	p.mu.Lock()
	defer p.mu.Unlock()
	prio := max(in.Priority, noPrio+1) // noPrio marks "no demand"
	if bi, ok := p.byKey[in.Key]; ok {
		b := &p.builds[bi]
		c := p.classes[b.class]
		if b.uid != in.UID || p.nodes[b.node].drv != in.Derivation || c.system != in.System ||
			!slices.Equal(c.reqs, normalize(in.Requirements)) {
			p.removeBuild(bi)
		} else {
			p.updateBuild(bi, in, prio)
			return
		}
	}
	p.addBuild(in, prio)
}

func (p *Planner) addBuild(in Build, prio int32) {
	var bi int32
	if n := len(p.freeBuilds); n > 0 {
		bi = p.freeBuilds[n-1]
		p.freeBuilds = p.freeBuilds[:n-1]
	} else {
		p.builds = append(p.builds, build{})
		bi = int32(len(p.builds) - 1)
	}
	ci := p.classFor(in.System, in.Requirements)
	c := p.classes[ci]
	ni := p.internDrv(in.Derivation)
	p.builds[bi] = build{
		key: in.Key, uid: in.UID, agent: in.Agent, node: ni, class: ci, prio: prio,
		created: nanos(in.Created), notBefore: nanos(in.NotBefore),
		nextSame: -1, prevSame: -1, heapPos: -1, defPos: -1,
		classPos: int32(len(c.members)), live: true,
	}
	p.byKey[in.Key] = bi
	c.members = append(c.members, bi)

	p.changeNode(ni, func(n *node) {
		if n.first >= 0 {
			p.builds[n.first].prevSame = bi
			p.builds[bi].nextSame = n.first
		}
		n.first = bi
		n.nbuilds++
		n.own = max(n.own, prio)
		n.failed, n.failMsg = false, "" // a new Build: its dependents wait for it instead
	})
	if n := &p.nodes[ni]; !n.inputsKnown {
		p.setInputs(ni, in.Inputs)
	}
	b := &p.builds[bi]
	b.eff, b.cp = max(prio, p.nodes[ni].inh), p.nodes[ni].cp

	if in.Running {
		b.loc = locRunning
		c.running++
	} else {
		c.pending++
		p.trackAlloc(bi, "", b.agent)
	}
	p.relocate(bi)
	if !p.skipInitial {
		p.markDirty(bi)
		return
	}
	// The caller reads the initial reason with CurrentWait; only later changes are reported.
	b = &p.builds[bi]
	if b.dirty { // relocate just appended it
		b.dirty = false
		p.dirty = p.dirty[:len(p.dirty)-1]
	}
	if b.reported, _ = p.reasonOf(bi, false); b.reported != rNone {
		p.reported[b.reported]++
	}
}

func (p *Planner) updateBuild(bi int32, in Build, prio int32) {
	b := &p.builds[bi]
	c := p.classes[b.class]
	wasRunning := b.loc == locRunning
	oldAgent := b.agent
	if !wasRunning {
		p.trackAlloc(bi, oldAgent, "")
	}
	b.agent = in.Agent
	b.notBefore = nanos(in.NotBefore)
	created := nanos(in.Created)
	if in.Running != wasRunning {
		if in.Running {
			p.unplace(bi)
			b.loc = locRunning
			c.running++
			c.pending--
		} else {
			b.loc = locNone
			c.running--
			c.pending++
		}
	}
	if !in.Running {
		p.trackAlloc(bi, "", b.agent)
	}
	if prio != b.prio || created != b.created {
		ni := b.node
		old := p.contribOf(ni)
		b.prio, b.created = prio, created
		p.nodes[ni].own = p.ownOf(ni)
		p.refreshKeys(ni) // this build's key, and the node's value if own changed
		p.deferChange(ni, old)
	}
	p.relocate(bi)
	if b := &p.builds[bi]; b.loc == locReady {
		p.classes[b.class].heap.fix(b.heapPos) // created and agent are part of the key too
	}
	p.markDirty(bi)
}

// RemoveBuild forgets a build (finished, canceled or deleted).
func (p *Planner) RemoveBuild(k BuildKey) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if bi, ok := p.byKey[k]; ok {
		p.removeBuild(bi)
	}
}

func (p *Planner) removeBuild(bi int32) {
	b := &p.builds[bi]
	c := p.classes[b.class]
	p.unplace(bi)
	if b.loc == locRunning {
		c.running--
	} else {
		c.pending--
		p.trackAlloc(bi, b.agent, "")
	}
	if b.reported != rNone {
		p.reported[b.reported]--
	}
	// class members: swap-remove
	last := c.members[len(c.members)-1]
	c.members[b.classPos] = last
	p.builds[last].classPos = b.classPos
	c.members = c.members[:len(c.members)-1]
	delete(p.byKey, b.key)

	ni := b.node
	prev, next := b.prevSame, b.nextSame
	*b = build{heapPos: -1, defPos: -1}
	p.freeBuilds = append(p.freeBuilds, bi)
	p.changeNode(ni, func(n *node) {
		if prev >= 0 {
			p.builds[prev].nextSame = next
		} else {
			n.first = next
		}
		if next >= 0 {
			p.builds[next].prevSame = prev
		}
		n.nbuilds--
		n.own = p.ownOf(ni)
		if n.nbuilds == 0 && !n.available {
			// How its last Build ended (succeeded, failed, deleted) is the caller's to say.
			n.checked = false
		}
	})
	p.maybeRelease(ni)
}

// trackAlloc moves a non-running build between agents' allocation sets.
func (p *Planner) trackAlloc(bi int32, from, to string) {
	if from == to {
		return
	}
	if from != "" {
		if s := p.allocs[from]; s != nil {
			delete(s, bi)
			if len(s) == 0 {
				delete(p.allocs, from)
			}
		}
	}
	if to != "" {
		s := p.allocs[to]
		if s == nil {
			s = map[int32]struct{}{}
			p.allocs[to] = s
		}
		s[bi] = struct{}{}
	}
}

func (p *Planner) markDirty(bi int32) {
	if b := &p.builds[bi]; !b.dirty {
		b.dirty = true
		p.dirty = append(p.dirty, bi)
	}
}

// desired is where a build belongs now.
func (p *Planner) desired(bi int32) loc {
	b := &p.builds[bi]
	switch {
	case b.loc == locRunning:
		return locRunning
	case b.notBefore > p.now:
		return locDeferred
	case p.strategy == DerivationOrdered && p.nodes[b.node].missing > 0:
		return locInputs
	}
	return locReady
}

// relocate moves a non-running build to where it belongs.
func (p *Planner) relocate(bi int32) {
	b := &p.builds[bi]
	want := p.desired(bi)
	if want == b.loc {
		if want == locDeferred {
			p.deferred.fix(b.defPos)
		}
		return
	}
	p.unplace(bi)
	c := p.classes[b.class]
	switch want {
	case locReady:
		c.heap.push(bi)
	case locDeferred:
		p.deferred.push(bi)
	}
	b.loc = want
	p.markDirty(bi)
}

// unplace takes a build out of the heaps (not out of the running state).
func (p *Planner) unplace(bi int32) {
	b := &p.builds[bi]
	switch b.loc {
	case locReady:
		p.classes[b.class].heap.remove(b.heapPos)
	case locDeferred:
		p.deferred.remove(b.defPos)
	}
	if b.loc != locRunning {
		b.loc = locNone
	}
}

// reasonOf is the build's current wait reason and its message.
func (p *Planner) reasonOf(bi int32, withMsg bool) (reason, string) {
	b := &p.builds[bi]
	c := p.classes[b.class]
	switch {
	case b.loc == locRunning:
		return rNone, ""
	case !c.servable:
		return rNoAgent, c.noAgentMsg
	case b.loc == locDeferred:
		if !withMsg {
			return rDeferred, ""
		}
		return rDeferred, "deferred until " + time.Unix(0, b.notBefore).UTC().Format(time.RFC3339)
	case b.loc == locInputs && p.nodes[b.node].nfailed > 0:
		if !withMsg {
			return rInputFailed, ""
		}
		return rInputFailed, p.failedInputMsg(b.node)
	case b.loc == locInputs:
		if !withMsg {
			return rInputs, ""
		}
		return rInputs, p.inputsMsg(b.node)
	}
	return rNone, ""
}

// inputsMsg is the InputsPending message; the few distinct ones are shared.
func (p *Planner) inputsMsg(ni int32) string {
	n := &p.nodes[ni]
	k := [2]int32{n.missing, int32(len(n.inputs))}
	if m, ok := p.msgs[k]; ok {
		return m
	}
	m := fmt.Sprintf("%d of %d input derivations not yet built", k[0], k[1])
	if len(p.msgs) < 4096 {
		p.msgs[k] = m
	}
	return m
}

// CurrentWait is a build's wait reason and message as of now (not only its last change).
func (p *Planner) CurrentWait(k BuildKey) (Wait, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	bi, ok := p.byKey[k]
	if !ok {
		return Wait{}, false
	}
	r, msg := p.reasonOf(bi, true)
	return Wait{Key: k, Reason: reasonNames[r], Message: msg}, true
}

// Rank is a build's effective priority and critical path.
func (p *Planner) Rank(k BuildKey) (Rank, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.flush()
	bi, ok := p.byKey[k]
	if !ok {
		return Rank{}, false
	}
	b := &p.builds[bi]
	return Rank{Priority: b.eff, CriticalPath: b.cp}, true
}
