package planner

import (
	"fmt"
	"testing"
)

// TestKeepBand: an entry pushed out of its agent's horizon stays allocated within the band and
// is withdrawn once the band is full, the agent drains (0 slots) or the build is no longer
// ready; KeepFactor = HorizonFactor withdraws at once.
func TestKeepBand(t *testing.T) {
	setup := func(o Options) *Planner {
		p := New(o)
		p.UpsertAgent(agent("a", 2))
		for i := range 4 {
			p.UpsertBuild(bld(fmt.Sprintf("b%d", i), 0, i))
		}
		if got := len(p.Plan(t0).Allocations); got != 4 {
			t.Fatalf("first plan: %d allocations, want 4", got)
		}
		return p
	}
	withdrawals := func(pl Plan) (n int) {
		for _, a := range pl.Allocations {
			if a.Agent == "" {
				n++
			}
		}
		return n
	}
	t.Run("kept in the band", func(t *testing.T) {
		p := setup(Options{})
		p.UpsertBuild(bld("u0", 9, 10))
		p.UpsertBuild(bld("u1", 9, 11))
		pl := p.Plan(t0)
		if len(pl.Allocations) != 2 || withdrawals(pl) != 0 || len(pl.Horizons["a"]) != 6 {
			t.Fatalf("two urgent builds: %+v, horizon %v; want them allocated and nothing withdrawn", pl.Allocations, pl.Horizons["a"])
		}
		p.UpsertBuild(bld("u2", 9, 12))
		if pl := p.Plan(t0); withdrawals(pl) != 1 || pl.Allocations[len(pl.Allocations)-1].Key != "b3" {
			t.Fatalf("past the band: %+v, want the lowest-ranked (b3) withdrawn", pl.Allocations)
		}
	})
	t.Run("no band", func(t *testing.T) {
		p := setup(Options{KeepFactor: 2})
		p.UpsertBuild(bld("u0", 9, 10))
		if pl := p.Plan(t0); withdrawals(pl) != 1 {
			t.Fatalf("KeepFactor 2: %+v, want the lowest-ranked withdrawn at once", pl.Allocations)
		}
	})
	t.Run("draining agent", func(t *testing.T) {
		p := setup(Options{})
		p.UpsertAgent(agent("a", 0))
		if pl := p.Plan(t0); withdrawals(pl) != 4 {
			t.Fatalf("agent with 0 slots: %+v, want all 4 withdrawn", pl.Allocations)
		}
	})
	t.Run("not ready", func(t *testing.T) {
		p := setup(Options{})
		p.UpsertBuild(bld("u0", 9, 10))
		p.UpsertBuild(bld("u1", 9, 11))
		p.Plan(t0) // b2 and b3 kept in the band
		b := bld("b3", 0, 3)
		b.NotBefore, b.Agent = t0.Add(3600e9), "a" // the controller upserts its allocation too
		p.UpsertBuild(b)
		if pl := p.Plan(t0); withdrawals(pl) != 1 || pl.Allocations[0].Key != "b3" {
			t.Fatalf("deferred kept entry: %+v, want it withdrawn", pl.Allocations)
		}
	})
}
