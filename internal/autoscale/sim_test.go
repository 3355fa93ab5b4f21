package autoscale

import (
	"testing"
	"time"
)

func TestSimulateByHand(t *testing.T) {
	// One burst of 4 builds of 30 s at 0 on a pool of 2-slot agents, ready 15 s after scale-up,
	// idle grace 60 s: 2 agents from 0, the builds run from 15 to 45.
	trace := []traceBuild{{0, 30}, {0, 30}, {0, 30}, {0, 30}}
	f := farm{policy: Policy{Max: 20, SlotsPerAgent: 2, Window: 60 * time.Second}, startup: 15, grace: 60}
	cases := map[string]struct {
		size sizer
		want simResult
	}{
		// Demand was last 2 at 44 and is held until 104; the idle agents' grace ended at 75.
		"window 60 s": {size: recommender(f.policy), want: simResult{scaleChanges: 2, agentSeconds: 2 * 104, waitSeconds: 4 * 15, builds: 4}},
		// 0 is written at 45, but the agents, ready at 15, are not idle before 75.
		"naive": {size: naive(f.policy), want: simResult{scaleChanges: 2, agentSeconds: 2 * 75, waitSeconds: 4 * 15, builds: 4}},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			got, err := simulate(trace, 200, f, tc.size)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("simulate = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestSimulateDrainsBusyAgents(t *testing.T) {
	// 2 builds of 100 s and 2 of 10 s on 1-slot agents: when the short ones finish the naive
	// size drops to 2 while the idle agents are within their grace, so nothing goes until
	// the grace ends; a size of 0 drains the busy agents, which go when their builds finish.
	trace := []traceBuild{{0, 100}, {0, 100}, {0, 10}, {0, 10}}
	f := farm{policy: Policy{Max: 20, SlotsPerAgent: 1}, startup: 5, grace: 30}
	zeroAt := func(sec int) sizer {
		return func(now, claimable, running int) int32 {
			if now >= sec {
				return 0
			}
			return naiveSize(claimable, running, f.policy)
		}
	}
	got, err := simulate(trace, 200, f, zeroAt(50))
	if err != nil {
		t.Fatal(err)
	}
	// 4 agents 0–35 (the short builds end at 15; grace ends at 35), 2 agents draining until 105.
	want := simResult{scaleChanges: 3, agentSeconds: 4*35 + 2*(105-35), waitSeconds: 4 * 5, builds: 4}
	if got != want {
		t.Errorf("simulate = %+v, want %+v", got, want)
	}
}

func TestBurstyTraces(t *testing.T) {
	for name, shape := range map[string]traceShape{"issue": issueTrace, "light": lightTrace} {
		t.Run(name, func(t *testing.T) {
			var total comparison
			for _, seed := range benchSeeds {
				shape.seed = seed
				trace := shape.builds()
				c, err := compare(trace, shape.horizon, benchFarm)
				if err != nil {
					t.Fatalf("seed %d: %v", seed, err)
				}
				for scaler, r := range map[string]simResult{"ours": c.ours, "ours (60 s)": c.ours60, "naive": c.naive} {
					if r.builds != len(trace) {
						t.Errorf("seed %d, %s: %d builds arrived, want %d", seed, scaler, r.builds, len(trace))
					}
				}
				if c.ours.scaleChanges > c.naive.scaleChanges || c.ours60.scaleChanges > c.naive.scaleChanges {
					t.Errorf("seed %d: %d and %d (60 s) scale changes, more than the naive scaler's %d",
						seed, c.ours.scaleChanges, c.ours60.scaleChanges, c.naive.scaleChanges)
				}
				if c.ours.meanWait() > c.naive.meanWait() {
					t.Errorf("seed %d: builds waited %.1f s, longer than with the naive scaler (%.1f s)",
						seed, c.ours.meanWait(), c.naive.meanWait())
				}
				t.Logf("seed %d: %d builds; scale changes %d / %d / %d, agent-seconds %d / %d / %d, mean wait %.1f / %.1f / %.1f s (300 s / 60 s / naive)",
					seed, len(trace), c.ours.scaleChanges, c.ours60.scaleChanges, c.naive.scaleChanges,
					c.ours.agentSeconds, c.ours60.agentSeconds, c.naive.agentSeconds,
					c.ours.meanWait(), c.ours60.meanWait(), c.naive.meanWait())
				total = total.add(c)
			}
			if total.ours.scaleChanges*2 > total.naive.scaleChanges {
				t.Errorf("%d scale changes over %d traces, not half the naive scaler's %d",
					total.ours.scaleChanges, len(benchSeeds), total.naive.scaleChanges)
			}
		})
	}
}
