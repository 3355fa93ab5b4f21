package agent

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics of one agent. Labels are bounded: never a build name.
type Metrics struct {
	Claims         prometheus.Counter
	ClaimConflicts prometheus.Counter
	Results        *prometheus.CounterVec
}

// NewMetrics creates the agent's metrics and registers them with reg when it is not nil.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Claims: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "guixfarm", Subsystem: "agent",
			Name: "claims_total", Help: "Builds claimed by this agent."}),
		ClaimConflicts: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "guixfarm", Subsystem: "agent",
			Name: "claim_conflicts_total", Help: "Claims lost to a concurrent writer (resourceVersion conflict)."}),
		Results: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "guixfarm", Subsystem: "agent",
			Name: "attempts_total", Help: "Attempts ended by this agent, by result."}, []string{"result"}),
	}
	if reg != nil {
		reg.MustRegister(m.Claims, m.ClaimConflicts, m.Results)
	}
	return m
}
