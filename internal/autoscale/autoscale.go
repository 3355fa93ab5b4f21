// Package autoscale decides how many agents an AgentPool should have, from what the planner
// knows of its queue (issue 9). It is pure: no Kubernetes types and no clock reads; the
// AgentPool reconciler passes the time, the pool's counts and its bounds, and writes the answer
// to spec.replicas. Which pods go on a scale-down (only idle ones; busy agents are drained, and a
// newly ready agent is not idle before its IdleGraceSeconds) is the reconciler's part.
//
// The size a pool needs now (its raw recommendation) is
//
//	raw = min(Max, max(Min, ceil((claimable + running) / SlotsPerAgent)))
//
// where claimable counts the builds the pool's agents could claim now (inputs ready, systems and
// features served, not yet running) and running the builds its agents run. The formula
// counts claimable builds only; running ones are added because the agents running them are
// needed too: without them, a burst that has all started would read as "nothing to do" and the
// pool would be told to shrink under its own builds (the reconciler would then drain busy agents
// and the next burst would wait for new pods). With them, the pool shrinks as builds finish.
//
// Scale-up is immediate. Scale-down is stabilized: the recommendation is the largest raw value
// of the last Window (as the HorizontalPodAutoscaler's scale-down stabilization does), so a gap
// between bursts shorter than the window changes nothing, and the pool returns to Min (which may
// be 0) only after a whole window with nothing claimable and nothing running.
package autoscale

import (
	"fmt"
	"time"
)

// DefaultMax is the Max the reconciler should pass when spec.maxReplicas is unset. A pool's
// queue can hold a distribution's worth of claimable builds (10^4 and more), so "unbounded" would
// ask the cluster for that many pods; 100 is KEDA's default maxReplicaCount, a size a cluster
// admin expects to have to raise deliberately.
const DefaultMax int32 = 100

// Policy is one pool's scaling bounds, from its spec.
type Policy struct {
	// Min is spec.minReplicas (0 when unset): the size of an idle pool.
	Min int32
	// Max is spec.maxReplicas, or DefaultMax when unset. An explicit 0 means no agents at all.
	// When Min > Max (which the API's validation forbids), Max wins.
	Max int32
	// SlotsPerAgent is spec.maxParallelBuilds: builds one agent runs at once. Values below 1
	// count as 1.
	SlotsPerAgent int32
	// Window is spec.autoscaling.stabilizationWindowSeconds: the pool shrinks only to the
	// largest raw value seen over it. 0 follows the queue at once (no stabilization).
	Window time.Duration
}

// Recommender remembers one pool's recent raw recommendations. Its memory is bounded: a sample
// older than the window is dropped, and so is one that can no longer be the window's largest (a
// newer sample at least as large outlives it), so it holds at most min(Max+1, calls within the
// window) samples, and NewRecommender's starting size while it lasts. The zero value has no history; NewRecommender starts from the pool's current
// size. Not safe for concurrent use: the reconciler keeps one per pool and reconciles a pool on
// one goroutine at a time.
type Recommender struct {
	// window holds samples in time order with strictly decreasing needs: the front is the
	// window's largest, and each later sample is the largest of what follows it.
	window []sample
}

// sample is one call's need (agents for claimable+running, capped at Max, not raised to Min so
// that a changed Min applies at once).
type sample struct {
	at   time.Time
	need int32
}

// NewRecommender returns a Recommender that remembers size as wanted at now. The reconciler
// starts one from spec.replicas when it first sees a pool (after a controller restart or when
// autoscaling is turned on), so that a restart does not shrink a pool before a whole window
// has passed, as if the recommendations it had made were lost.
func NewRecommender(now time.Time, size int32) *Recommender {
	return &Recommender{window: []sample{{at: now, need: max(size, 0)}}}
}

// Recommend returns the size to write to spec.replicas now and a short reason for the Scaling
// condition's message, given the builds the pool could claim now (claimable: ready to run, not
// counting running ones) and the builds its agents run now (running). Scale-up is immediate;
// scale-down goes only to the largest raw value of the last p.Window; with nothing claimable
// and nothing running for a whole window it goes to p.Min. now should not go backwards (a
// monotonic clock); if it does, older samples are kept longer, erring towards a larger pool.
func (r *Recommender) Recommend(now time.Time, claimable, running int, p Policy) (int32, string) {
	p = p.normalized()
	uncapped := agentsFor(claimable, running, p.SlotsPerAgent)
	need := int32(min(uncapped, int64(p.Max)))
	r.add(now, need, p.Window)
	held := r.window[0].need // the largest need of the window, this one included
	size := clamp(held, p)

	reason := fmt.Sprintf("%d claimable and %d running builds need %d agents of %d slots",
		claimable, running, uncapped, p.SlotsPerAgent)
	if uncapped > int64(p.Max) {
		reason += fmt.Sprintf("; capped at maxReplicas %d", p.Max)
	}
	switch {
	case size > clamp(need, p):
		reason += fmt.Sprintf("; keeping %d, the most wanted in the last %s", size, p.Window)
	case size > need:
		reason += fmt.Sprintf("; keeping minReplicas %d", p.Min)
	}
	return size, reason
}

// add records need at now and drops the samples that cannot be the window's largest any more.
func (r *Recommender) add(now time.Time, need int32, window time.Duration) {
	// A sample no larger than the new one expires first and never exceeds it.
	for n := len(r.window); n > 0 && r.window[n-1].need <= need; n-- {
		r.window = r.window[:n-1]
	}
	r.window = append(r.window, sample{at: now, need: need})
	// The new sample (the last) always counts, whatever the window.
	drop := 0
	for drop < len(r.window)-1 && now.Sub(r.window[drop].at) >= window {
		drop++
	}
	if drop > 0 {
		// Copy down rather than reslice, so the backing array does not creep forward and grow.
		r.window = append(r.window[:0], r.window[drop:]...)
	}
}

// normalized makes a policy the API's validation would have refused usable: at least one slot
// per agent, no negative bounds, Max winning over Min.
func (p Policy) normalized() Policy {
	p.SlotsPerAgent = max(p.SlotsPerAgent, 1)
	p.Max = max(p.Max, 0)
	p.Min = min(max(p.Min, 0), p.Max)
	p.Window = max(p.Window, 0)
	return p
}

// agentsFor is ceil((claimable+running)/slots), in 64 bits: the counts come from the planner as
// ints and may exceed what an int32 size holds before Max caps them. Negative counts count as 0.
func agentsFor(claimable, running int, slots int32) int64 {
	builds := int64(max(claimable, 0)) + int64(max(running, 0))
	s := int64(slots)
	return (builds + s - 1) / s
}

func clamp(n int32, p Policy) int32 { return min(max(n, p.Min), p.Max) }
