package autoscale

import (
	"strings"
	"testing"
	"time"
)

// t0 is an arbitrary start: every test time is t0 plus seconds.
var t0 = time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)

func at(seconds int) time.Time { return t0.Add(time.Duration(seconds) * time.Second) }

// step is one Recommend call and the size it must return.
type step struct {
	sec                int
	claimable, running int
	want               int32
}

func TestRecommend(t *testing.T) {
	fiveMinutes := Policy{Min: 0, Max: 20, SlotsPerAgent: 2, Window: 300 * time.Second}
	cases := map[string]struct {
		policy Policy
		steps  []step
	}{
		"scale-up is immediate": {
			policy: fiveMinutes,
			steps:  []step{{0, 0, 0, 0}, {1, 4, 0, 2}, {2, 10, 4, 7}, {3, 40, 0, 20}},
		},
		"clamped to max": {
			policy: fiveMinutes,
			steps:  []step{{0, 1000, 0, 20}},
		},
		"clamped to min": {
			policy: Policy{Min: 3, Max: 20, SlotsPerAgent: 2},
			steps:  []step{{0, 0, 0, 3}, {1, 2, 1, 3}, {2, 8, 0, 4}, {3, 0, 0, 3}},
		},
		"max wins over a larger min": {
			policy: Policy{Min: 5, Max: 2, SlotsPerAgent: 1},
			steps:  []step{{0, 0, 0, 2}, {1, 9, 0, 2}},
		},
		"max 0 means no agents": {
			policy: Policy{Min: 0, Max: 0, SlotsPerAgent: 1, Window: time.Minute},
			steps:  []step{{0, 10, 0, 0}},
		},
		"slots round up": {
			policy: Policy{Max: 100, SlotsPerAgent: 4},
			steps:  []step{{0, 1, 0, 1}, {1, 4, 0, 1}, {2, 4, 1, 2}, {3, 3, 6, 3}},
		},
		"slots below 1 count as 1": {
			policy: Policy{Max: 100, SlotsPerAgent: 0},
			steps:  []step{{0, 3, 2, 5}},
		},
		"running builds keep their agents": {
			// All of a burst started: nothing is claimable, but the 6 running builds need 3 agents.
			policy: Policy{Max: 20, SlotsPerAgent: 2},
			steps:  []step{{0, 6, 0, 3}, {1, 0, 6, 3}, {2, 0, 3, 2}},
		},
		"scale-down held for the window, then to the max within it": {
			policy: fiveMinutes,
			steps: []step{
				{0, 20, 0, 10},
				{100, 6, 0, 10},  // 3 wanted; 10 was wanted 100 s ago
				{200, 10, 0, 10}, // 5 wanted
				{299, 0, 0, 10},  // still within 300 s of the 10
				{300, 0, 0, 5},   // the 10 expired: the largest left is the 5 at 200 s
				{499, 0, 0, 5},
				{500, 0, 0, 0}, // the 5 expired too: nothing for a whole window
			},
		},
		"a burst gap shorter than the window changes nothing": {
			policy: fiveMinutes,
			steps:  []step{{0, 16, 0, 8}, {60, 0, 0, 8}, {200, 0, 0, 8}, {250, 16, 0, 8}, {400, 0, 0, 8}, {549, 0, 0, 8}, {550, 0, 0, 0}},
		},
		"to zero after a whole idle window with min 0": {
			policy: Policy{Min: 0, Max: 20, SlotsPerAgent: 1, Window: 60 * time.Second},
			steps:  []step{{0, 3, 0, 3}, {10, 0, 2, 3}, {20, 0, 0, 3}, {69, 0, 0, 2}, {79, 0, 0, 0}},
		},
		"to min, not zero, after an idle window": {
			policy: Policy{Min: 2, Max: 20, SlotsPerAgent: 1, Window: 60 * time.Second},
			steps:  []step{{0, 9, 0, 9}, {59, 0, 0, 9}, {60, 0, 0, 2}},
		},
		"window 0 follows the queue": {
			policy: Policy{Max: 20, SlotsPerAgent: 1},
			steps:  []step{{0, 9, 0, 9}, {1, 2, 0, 2}, {2, 0, 0, 0}},
		},
		"a lowered max applies at once to what the window holds": {
			policy: Policy{Max: 4, SlotsPerAgent: 1, Window: time.Hour},
			steps:  []step{{0, 3, 0, 3}, {1, 0, 0, 3}},
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			var r Recommender
			for _, s := range tc.steps {
				got, reason := r.Recommend(at(s.sec), s.claimable, s.running, tc.policy)
				if got != s.want {
					t.Fatalf("at %ds, Recommend(%d claimable, %d running) = %d (%s), want %d",
						s.sec, s.claimable, s.running, got, reason, s.want)
				}
				if naive := naiveSize(s.claimable, s.running, tc.policy); got < naive {
					t.Fatalf("at %ds, Recommend = %d, below the raw size %d", s.sec, got, naive)
				}
			}
		})
	}
}

func TestPolicyChangeMidWindow(t *testing.T) {
	r := Recommender{}
	p := Policy{Max: 20, SlotsPerAgent: 1, Window: time.Hour}
	if got, _ := r.Recommend(at(0), 10, 0, p); got != 10 {
		t.Fatalf("Recommend = %d, want 10", got)
	}
	p.Max = 4 // the user lowers maxReplicas while 10 is held
	if got, _ := r.Recommend(at(1), 0, 0, p); got != 4 {
		t.Errorf("after lowering max to 4: Recommend = %d, want 4", got)
	}
	p.Max, p.Min = 20, 12 // then raises it, and minReplicas above what was wanted
	if got, _ := r.Recommend(at(2), 0, 0, p); got != 12 {
		t.Errorf("after raising min to 12: Recommend = %d, want 12", got)
	}
}

func TestNewRecommenderHoldsTheCurrentSize(t *testing.T) {
	// A restarted controller must not shrink a pool of 7 before a window has passed.
	p := Policy{Max: 20, SlotsPerAgent: 1, Window: 300 * time.Second}
	r := NewRecommender(at(0), 7)
	for _, s := range []step{{0, 0, 0, 7}, {120, 2, 0, 7}, {299, 0, 0, 7}, {300, 0, 0, 2}, {420, 0, 0, 0}} {
		if got, reason := r.Recommend(at(s.sec), s.claimable, s.running, p); got != s.want {
			t.Fatalf("at %ds: Recommend = %d (%s), want %d", s.sec, got, reason, s.want)
		}
	}
}

func TestMemoryBounded(t *testing.T) {
	p := Policy{Max: 10, SlotsPerAgent: 1, Window: 60 * time.Second}
	t.Run("samples older than the window are dropped", func(t *testing.T) {
		var r Recommender
		// Falling demand keeps every sample a candidate, until it leaves the window.
		for s := range 1000 {
			r.Recommend(at(s*10), 10-(s%11), 0, p)
			if n := len(r.window); n > 7 { // 60 s of samples every 10 s, the current one included
				t.Fatalf("after %d calls, %d samples kept", s+1, n)
			}
		}
	})
	t.Run("dominated samples are dropped: at most max+1 at any call rate", func(t *testing.T) {
		var r Recommender
		for s := range 100_000 { // 100 calls per second, a window of 6,000 calls
			r.Recommend(t0.Add(time.Duration(s)*10*time.Millisecond), (s*7919)%13, 0, p)
			if n := len(r.window); n > int(p.Max)+1 {
				t.Fatalf("after %d calls, %d samples kept", s+1, n)
			}
		}
		if c := cap(r.window); c > 4*(int(p.Max)+1) {
			t.Errorf("backing array grew to %d", c)
		}
	})
	t.Run("a huge queue is capped before it is stored", func(t *testing.T) {
		var r Recommender
		if got, _ := r.Recommend(at(0), 1<<40, 1<<40, Policy{Max: DefaultMax, SlotsPerAgent: 1}); got != DefaultMax {
			t.Errorf("Recommend = %d, want %d", got, DefaultMax)
		}
	})
}

func TestReason(t *testing.T) {
	p := Policy{Min: 1, Max: 5, SlotsPerAgent: 2, Window: 300 * time.Second}
	var r Recommender
	cases := []struct {
		sec                int
		claimable, running int
		want               string
	}{
		{0, 3, 2, "3 claimable and 2 running builds need 3 agents of 2 slots"},
		{1, 30, 0, "30 claimable and 0 running builds need 15 agents of 2 slots; capped at maxReplicas 5"},
		{2, 0, 2, "0 claimable and 2 running builds need 1 agents of 2 slots; keeping 5, the most wanted in the last 5m0s"},
		{400, 0, 0, "0 claimable and 0 running builds need 0 agents of 2 slots; keeping minReplicas 1"},
	}
	for _, c := range cases {
		_, got := r.Recommend(at(c.sec), c.claimable, c.running, p)
		if got != c.want {
			t.Errorf("at %ds: reason %q, want %q", c.sec, got, c.want)
		}
		if strings.Contains(got, "\n") {
			t.Errorf("reason %q spans lines", got)
		}
	}
}
