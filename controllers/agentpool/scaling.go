package agentpool

import (
	"time"
)

// Why an agent is drained (the Lease's drain annotation).
const (
	DrainScaleDown      = "scale-down"
	DrainTemplateChange = "template-change"
)

// member is one agent of a pool as a scaling step sees it: its pod and its Lease.
type member struct {
	Name    string
	Ordinal int
	// Failed pods count as absent.
	Failed bool
	// Current: made from the StatefulSet's current template.
	Current bool
	// ReadySince is when the pod became ready (zero: not ready).
	ReadySince time.Time
	// HasLease: the agent has registered; an agent without a Lease has claimed nothing.
	HasLease bool
	// Drain is the drain its Lease carries now ("" none).
	Drain string
	// Quiesced: the planner offers it nothing and holds nothing for it; Busy: it runs builds.
	Quiesced, Busy bool
}

// stepInput is what one scaling step decides from.
type stepInput struct {
	// Replicas is the StatefulSet's size now, Desired the pool's.
	Replicas, Desired int32
	// Members are the pods that exist, by ordinal (gaps allowed).
	Members   []member
	Now       time.Time
	IdleGrace time.Duration
}

// step is a scaling step: the StatefulSet's next size, the agents that must be draining (and
// why), and the pods to delete because they are drained, idle and of an older template.
type step struct {
	Replicas int32
	Drain    map[string]string
	Delete   []string
}

// removable says whether an agent can go without touching a build: it never registered, or its
// pod failed, or it is drained (the planner sees the drain and holds nothing for it), runs
// nothing, and has been ready long enough to count as idle.
func (m member) removable(now time.Time, grace time.Duration) bool {
	if m.Failed || !m.HasLease {
		return true
	}
	if m.Drain == "" || !m.Quiesced || m.Busy {
		return false
	}
	return !m.ReadySince.IsZero() && now.Sub(m.ReadySince) >= grace
}

// nextStep plans one step towards Desired agents, all of the current template. Scale-up is at
// once. Scale-down drains the agents above Desired (a StatefulSet removes its highest ordinals)
// and shrinks the set only past agents that are removable; a template change drains and
// replaces one agent at a time. No step removes an agent that runs or holds a build.
func nextStep(in stepInput) step {
	st := step{Replicas: in.Replicas, Drain: map[string]string{}}
	byOrdinal := make(map[int]member, len(in.Members))
	for _, m := range in.Members {
		byOrdinal[m.Ordinal] = m
	}
	if in.Desired >= in.Replicas {
		st.Replicas = in.Desired
	} else {
		for o := int(in.Desired); o < int(in.Replicas); o++ {
			if m, ok := byOrdinal[o]; ok {
				st.Drain[m.Name] = DrainScaleDown
			}
		}
		for st.Replicas > in.Desired {
			m, ok := byOrdinal[int(st.Replicas)-1]
			if ok && !m.removable(in.Now, in.IdleGrace) {
				break
			}
			st.Replicas--
		}
	}

	// Rolling: among the agents that stay, replace those of an older template one at a time.
	var rolling *member
	var oldest *member
	for o := int(st.Replicas) - 1; o >= 0; o-- {
		m, ok := byOrdinal[o]
		if !ok || m.Current {
			continue
		}
		if m.Failed || !m.HasLease {
			// Nothing to drain: replace it now.
			st.Delete = append(st.Delete, m.Name)
			continue
		}
		if m.Drain == DrainTemplateChange && rolling == nil {
			rolling = &m
		} else if oldest == nil {
			oldest = &m
		}
	}
	switch {
	case rolling != nil:
		st.Drain[rolling.Name] = DrainTemplateChange
		if rolling.removable(in.Now, 0) {
			st.Delete = append(st.Delete, rolling.Name)
		}
	case oldest != nil:
		st.Drain[oldest.Name] = DrainTemplateChange
	}
	return st
}
