// Package metrics defines the controller's Prometheus metrics. Labels are bounded (phase, system,
// result): never a Build name or a derivation.
package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics of the controller.
type Metrics struct {
	// Builds counts the Builds in the cache by phase and system.
	Builds *prometheus.GaugeVec
	// QueueDepth is the number of pending builds by system.
	QueueDepth *prometheus.GaugeVec
	// Waiting is the number of pending builds not offered, by reason.
	Waiting *prometheus.GaugeVec
	// PlanDuration times planning passes.
	PlanDuration prometheus.Histogram
	// Allocations counts allocation changes written, by kind (allocate, withdraw).
	Allocations *prometheus.CounterVec
	// Conflicts counts status writes lost to a concurrent writer, by writer.
	Conflicts *prometheus.CounterVec
	// Agents is the number of agents with a live Lease.
	Agents prometheus.Gauge
	// AgentsLost counts agents whose Lease expired.
	AgentsLost prometheus.Counter
	// Transitions counts Build phase transitions, by the new phase.
	Transitions *prometheus.CounterVec
	// OutputsLost counts derivations whose outputs the farm counted available and found gone,
	// by how it found out (gc, report).
	OutputsLost *prometheus.CounterVec
	// InputBuilds counts Builds the controller created for inputs, by why (ensure, missing).
	InputBuilds *prometheus.CounterVec
	// BuildReconciles counts the Build reconciler's passes by outcome (wrote, unchanged, behind,
	// finished, gone): the share that writes nothing is the work budget's waste.
	BuildReconciles *prometheus.CounterVec
	// WaitChanges counts the wait reasons the planner reported changed, by new reason.
	WaitChanges *prometheus.CounterVec
}

// New creates the metrics and registers them with reg when it is not nil.
func New(reg prometheus.Registerer) *Metrics {
	const ns, sub = "guixfarm", "controller"
	m := &Metrics{
		Builds: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "builds",
			Help: "Builds by phase and system."}, []string{"phase", "system"}),
		QueueDepth: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "queue_depth",
			Help: "Pending builds by system."}, []string{"system"}),
		Waiting: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "builds_waiting",
			Help: "Pending builds not offered to agents, by reason."}, []string{"reason"}),
		PlanDuration: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "plan_duration_seconds",
			Help: "Duration of a planning pass.", Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10)}),
		Allocations: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "allocations_total",
			Help: "Allocation changes planned, by kind."}, []string{"kind"}),
		Conflicts: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "status_conflicts_total",
			Help: "Status writes lost to a concurrent writer (resourceVersion conflict), by writer."}, []string{"writer"}),
		Agents: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "agents",
			Help: "Agents holding a live Lease."}),
		AgentsLost: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "agents_lost_total",
			Help: "Agents whose Lease expired."}),
		Transitions: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "build_transitions_total",
			Help: "Build phase transitions, by new phase."}, []string{"phase"}),
		OutputsLost: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "outputs_lost_total",
			Help: "Derivations whose outputs were counted available and found gone, by how it was found (gc, report)."}, []string{"source"}),
		InputBuilds: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "input_builds_created_total",
			Help: "Builds created for input derivations, by why (ensure: spec.ensureInputBuilds; missing: an agent's missing-input report)."}, []string{"why"}),
		BuildReconciles: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "build_reconciles_total",
			Help: "Build reconciles by outcome: wrote (a status write), unchanged (nothing to write), behind (the cache lagged our own write), finished, gone."}, []string{"outcome"}),
		WaitChanges: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "wait_changes_total",
			Help: "Builds whose wait reason the planner reported changed (each asks for a reconcile), by new reason."}, []string{"reason"}),
	}
	if reg != nil {
		reg.MustRegister(m.Builds, m.QueueDepth, m.Waiting, m.PlanDuration, m.Allocations, m.Conflicts, m.Agents, m.AgentsLost, m.Transitions,
			m.OutputsLost, m.InputBuilds, m.BuildReconciles, m.WaitChanges)
	}
	return m
}
