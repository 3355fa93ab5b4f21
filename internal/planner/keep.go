package planner

// Allocation hysteresis. The selection gives each agent the best HorizonFactor*Slots builds it
// can take; an allocation the selection left out is not withdrawn at once. A withdrawal is a
// status write, and its allocation is often written again a moment later: a priority moved by a
// little and back, a burst of urgent builds ran. So an agent keeps what it was given, best-ranked
// first, up to KeepFactor*Slots - Running entries in all; only past that band, or when the build
// can no longer go to that agent (not ready, capabilities changed, agent gone or draining), is it
// withdrawn. A better build never waits for a kept one: it is selected into a horizon, and an
// agent claims its highest-priority allocation first.

import "slices"

// keepOrWithdraw settles the allocations the current selection did not renew (epoch behind):
// it keeps the best of each agent's within the band, appending them to its horizon, and
// withdraws the rest, which it returns.
func (p *Planner) keepOrWithdraw(horizons map[string][]BuildKey) []Allocation {
	var withdrawn []Allocation
	var left []int32
	for name, set := range p.allocs {
		left = left[:0]
		for bi := range set {
			if p.builds[bi].epoch != p.epoch {
				left = append(left, bi)
			}
		}
		if len(left) == 0 {
			continue
		}
		slices.SortFunc(left, func(a, b int32) int {
			if p.better(a, b) {
				return -1
			}
			return 1
		})
		ai, room := p.keepRoom(name, len(horizons[name]))
		for _, bi := range left {
			b := &p.builds[bi]
			if room > 0 && b.loc == locReady && p.classes[b.class].covers[p.agents[ai].group] {
				room--
				b.epoch = p.epoch
				horizons[name] = append(horizons[name], b.key)
				continue
			}
			withdrawn = append(withdrawn, Allocation{Key: b.key, Priority: b.eff})
			b.agent = ""
			if b.loc == locReady {
				p.classes[b.class].heap.fix(b.heapPos)
			}
			delete(set, bi)
		}
		if len(set) == 0 {
			delete(p.allocs, name)
		}
	}
	return withdrawn
}

// keepRoom is how many more entries agent name keeps beyond the selected ones it holds, and its
// index; 0 for an agent that is gone.
func (p *Planner) keepRoom(name string, selected int) (int32, int) {
	ai, ok := p.byAgent[name]
	if !ok || !p.agents[ai].live {
		return -1, 0
	}
	st := &p.agents[ai]
	return ai, max(0, p.keep*st.slots-st.running) - selected
}
