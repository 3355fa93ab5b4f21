// Package agentlease is the contract between an agent and the controller about the agent's
// coordination.k8s.io Lease: one Lease per agent, renewed periodically, labelled with its pool and
// systems and annotated with its features and slots. An expired Lease is a lost agent.
package agentlease

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

const (
	// LabelAgent marks the Leases of farm agents.
	LabelAgent = "build.guixfarm.io/agent"
	// LabelPool names the AgentPool the agent belongs to.
	LabelPool = "build.guixfarm.io/pool"
	// SystemLabelPrefix prefixes one label per system the agent builds for (value "true"),
	// so `kubectl get leases -l system.build.guixfarm.io/aarch64-linux` lists its agents.
	SystemLabelPrefix = "system.build.guixfarm.io/"
	// AnnotationFeatures lists the agent's features, comma-separated.
	AnnotationFeatures = "build.guixfarm.io/features"
	// AnnotationSlots is the number of builds the agent runs at once.
	AnnotationSlots = "build.guixfarm.io/slots"
	// AnnotationFreeSlots is the number of slots not running a build.
	AnnotationFreeSlots = "build.guixfarm.io/free-slots"
	// AnnotationUnhealthy says why the agent offers no slots (its daemon is unreachable, the
	// bucket refuses writes, the store is full); absent while it is healthy.
	AnnotationUnhealthy = "build.guixfarm.io/unhealthy"
	// AnnotationDrain, written by the controller (never by the agent), says why the agent is being
	// drained: it is offered no new builds, keeps those it runs, and goes once idle (scale-down, or
	// its pod's template changed). The agent's renewals keep it.
	AnnotationDrain = "build.guixfarm.io/drain"
	// maxUnhealthy bounds the reason kept on the Lease.
	maxUnhealthy = 256
)

// Info is what the Lease says about an agent.
type Info struct {
	Name      string
	Pool      string
	Systems   []string
	Features  []string
	Slots     int
	FreeSlots int
	// Unhealthy, when not empty, says why the agent claims nothing now.
	Unhealthy string
	// Drain, when not empty, says why the controller drains the agent (AnnotationDrain).
	Drain string
	// Expires is when the Lease lapses unless renewed.
	Expires time.Time
}

// Apply writes info into l, renewed at now for duration d.
func Apply(l *coordinationv1.Lease, info Info, now time.Time, d time.Duration) {
	if l.Labels == nil {
		l.Labels = map[string]string{}
	}
	for k := range l.Labels {
		if strings.HasPrefix(k, SystemLabelPrefix) {
			delete(l.Labels, k)
		}
	}
	l.Labels[LabelAgent] = "true"
	if info.Pool != "" {
		l.Labels[LabelPool] = info.Pool
	}
	for _, s := range info.Systems {
		l.Labels[SystemLabelPrefix+s] = "true"
	}
	if l.Annotations == nil {
		l.Annotations = map[string]string{}
	}
	l.Annotations[AnnotationFeatures] = strings.Join(info.Features, ",")
	l.Annotations[AnnotationSlots] = strconv.Itoa(info.Slots)
	l.Annotations[AnnotationFreeSlots] = strconv.Itoa(info.FreeSlots)
	if info.Unhealthy != "" {
		u := info.Unhealthy
		if len(u) > maxUnhealthy {
			u = u[:maxUnhealthy-3] + "..."
		}
		l.Annotations[AnnotationUnhealthy] = u
	} else {
		delete(l.Annotations, AnnotationUnhealthy)
	}
	holder := info.Name
	secs := int32(d / time.Second)
	renew := metav1.NewMicroTime(now)
	l.Spec.HolderIdentity = &holder
	l.Spec.LeaseDurationSeconds = &secs
	l.Spec.RenewTime = &renew
	if l.Spec.AcquireTime == nil {
		l.Spec.AcquireTime = &renew
	}
}

// Parse reads an agent's Lease. It fails, naming the field, on a Lease that is not an agent's.
func Parse(l *coordinationv1.Lease) (Info, error) {
	info := Info{Name: l.Name, Pool: l.Labels[LabelPool]}
	if l.Labels[LabelAgent] != "true" {
		return info, fmt.Errorf("lease %s/%s: label %s is not \"true\": not a farm agent", l.Namespace, l.Name, LabelAgent)
	}
	for k := range l.Labels {
		if s, ok := strings.CutPrefix(k, SystemLabelPrefix); ok {
			info.Systems = append(info.Systems, s)
		}
	}
	sort.Strings(info.Systems)
	if f := l.Annotations[AnnotationFeatures]; f != "" {
		info.Features = strings.Split(f, ",")
	}
	info.Unhealthy = l.Annotations[AnnotationUnhealthy]
	info.Drain = l.Annotations[AnnotationDrain]
	var err error
	if info.Slots, err = slots(l, AnnotationSlots); err != nil {
		return info, err
	}
	if info.FreeSlots, err = slots(l, AnnotationFreeSlots); err != nil {
		return info, err
	}
	if l.Spec.RenewTime == nil || l.Spec.LeaseDurationSeconds == nil {
		return info, fmt.Errorf("lease %s/%s: spec.renewTime and spec.leaseDurationSeconds must be set", l.Namespace, l.Name)
	}
	info.Expires = l.Spec.RenewTime.Add(time.Duration(*l.Spec.LeaseDurationSeconds) * time.Second)
	return info, nil
}

// MaxSlots bounds the slots an agent may announce: the planner sizes its horizons from them, so
// a Lease written by a buggy or hostile hand must not make it allocate without bound.
const MaxSlots = 1024

// slots reads a slot-count annotation of l, within 0..MaxSlots.
func slots(l *coordinationv1.Lease, key string) (int, error) {
	v := l.Annotations[key]
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 || n > MaxSlots {
		return 0, fmt.Errorf("lease %s/%s: annotation %s=%q: want a number of slots from 0 to %d", l.Namespace, l.Name, key, v, MaxSlots)
	}
	return n, nil
}
