package planner

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// BenchmarkAllocationChurn: a farm of 8 agents with 4 slots works through a queue of 2,000
// builds while urgent builds arrive in bursts of 1 to 12 every few steps, above the queue's
// priorities. Each op is one whole trace; it reports allocation writes (changes) and
// withdrawals per finished build with the keep band (default KeepFactor) and without it
// (KeepFactor = HorizonFactor, withdrawn at once: the baseline), and the claims an agent made
// while a build of higher effective priority waited unallocated (inversions, which the band
// must not add).
func BenchmarkAllocationChurn(b *testing.B) {
	var band, none churn
	for b.Loop() {
		band = simulateChurn(b, Options{})
		none = simulateChurn(b, Options{KeepFactor: 2})
	}
	b.ReportMetric(band.per(band.withdrawals), "withdrawals/finished")
	b.ReportMetric(band.per(band.changes), "changes/finished")
	b.ReportMetric(float64(band.inversions), "inversions")
	b.ReportMetric(none.per(none.withdrawals), "nokeep-withdrawals/finished")
	b.ReportMetric(none.per(none.changes), "nokeep-changes/finished")
	b.ReportMetric(float64(none.inversions), "nokeep-inversions")
}

type churn struct{ changes, withdrawals, finished, inversions int }

func (c churn) per(n int) float64 { return float64(n) / float64(max(c.finished, 1)) }

func simulateChurn(b *testing.B, o Options) churn {
	rng := rand.New(rand.NewPCG(11, 3))
	p := New(o)
	builds := map[BuildKey]Build{}
	add := func(key string, prio int32, created int) {
		bl := bld(key, prio, created)
		builds[bl.Key] = bl
		p.UpsertBuild(bl)
	}
	for i := range 2000 {
		add(fmt.Sprintf("q%04d", i), int32(rng.IntN(10)), i)
	}
	agents := make([]Agent, 8)
	for i := range agents {
		agents[i] = agent(fmt.Sprintf("a%d", i), 4)
		p.UpsertAgent(agents[i])
	}
	type run struct {
		key   BuildKey
		agent int
		left  int
	}
	var c churn
	var running []run
	urgent := 0
	for step := 0; step < 3000 && len(builds) > 0; step++ {
		// Finish what is due.
		kept := running[:0]
		for _, r := range running {
			if r.left--; r.left > 0 {
				kept = append(kept, r)
				continue
			}
			p.RemoveBuild(r.key)
			delete(builds, r.key)
			agents[r.agent].Running--
			p.UpsertAgent(agents[r.agent])
			c.finished++
		}
		running = kept
		if rng.IntN(4) == 0 {
			for range 1 + rng.IntN(12) {
				add(fmt.Sprintf("u%04d", urgent), int32(10+rng.IntN(5)), 5000+urgent)
				urgent++
			}
		}
		plan := p.Plan(t0)
		for _, a := range plan.Allocations {
			c.changes++
			if a.Agent == "" {
				c.withdrawals++
			}
		}
		best := p.bestUnallocated()
		for ai := range agents {
			a := &agents[ai]
			h := plan.Horizons[a.Name]
			for a.Running < a.Slots && len(h) > 0 {
				bl := builds[h[0]]
				if bl.Priority < best {
					c.inversions++
				}
				h = h[1:]
				bl.Running, bl.Agent = true, a.Name
				p.UpsertBuild(bl)
				a.Running++
				p.UpsertAgent(*a)
				running = append(running, run{bl.Key, ai, 2 + rng.IntN(8)})
			}
		}
	}
	if c.finished == 0 {
		b.Fatal("nothing finished")
	}
	return c
}

// bestUnallocated is the highest priority among ready builds no agent holds (noPrio if none):
// the builds own priorities (no inputs here, so no derived ones).
func (p *Planner) bestUnallocated() int32 {
	p.mu.Lock()
	defer p.mu.Unlock()
	best := int32(noPrio)
	for bi := range p.builds {
		if b := &p.builds[bi]; b.live && b.loc == locReady && b.agent == "" && b.eff > best {
			best = b.eff
		}
	}
	return best
}
