package bucketgc

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/guixfarm/guix-farm/internal/gc"
)

// Metrics are the bucket GC's Prometheus metrics; Observe fits
// Scheduler.OnReport. Labels are bounded (kind, reason, result).
type Metrics struct {
	// Runs by result: ok, error, dry-run.
	Runs *prometheus.CounterVec
	// Deleted objects and bytes, by kind and reason (real runs only).
	Deleted      *prometheus.CounterVec
	DeletedBytes prometheus.Counter
	// Gauges of the last completed run.
	KeptNarInfos, KeptNars, KeptNarBytes prometheus.Gauge
	MissingNars, Unreadable, Dangling    prometheus.Gauge
	// WouldDelete is what the last dry run would delete, by kind.
	WouldDelete *prometheus.GaugeVec
	// Duration of runs; LastSuccess is the Unix time of the last good run.
	Duration    prometheus.Histogram
	LastSuccess prometheus.Gauge
}

// NewMetrics creates the metrics and registers them with reg when it is
// not nil.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	const ns, sub = "guixfarm", "gc"
	g := func(name, help string) prometheus.Gauge {
		return prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: name, Help: help})
	}
	m := &Metrics{
		Runs: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "runs_total",
			Help: "Bucket GC runs, by result (ok, error, dry-run)."}, []string{"result"}),
		Deleted: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "deleted_objects_total",
			Help: "Objects deleted from the substitute bucket, by kind (narinfo, nar) and reason."}, []string{"kind", "reason"}),
		DeletedBytes: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "deleted_bytes_total",
			Help: "Bytes of the objects deleted from the substitute bucket."}),
		KeptNarInfos: g("kept_narinfos", "Narinfos kept by the last run (reachable from roots, young or selected)."),
		KeptNars:     g("kept_nars", "Nars kept by the last run."),
		KeptNarBytes: g("kept_nar_bytes", "Bytes of the nars kept by the last run."),
		MissingNars:  g("missing_nars", "Narinfos whose nar is missing, at the last run."),
		Unreadable:   g("unreadable_narinfos", "Narinfos that cannot be parsed, at the last run."),
		Dangling:     g("dangling_references", "References of kept narinfos to paths without a narinfo, at the last run."),
		WouldDelete: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "would_delete_objects",
			Help: "Objects the last dry run would delete, by kind."}, []string{"kind"}),
		Duration: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "run_duration_seconds",
			Help: "Duration of a bucket GC run.", Buckets: prometheus.ExponentialBuckets(0.1, 3, 10)}),
		LastSuccess: g("last_success_timestamp_seconds", "Unix time of the last run that completed without error."),
	}
	if reg != nil {
		reg.MustRegister(m.Runs, m.Deleted, m.DeletedBytes, m.KeptNarInfos, m.KeptNars, m.KeptNarBytes,
			m.MissingNars, m.Unreadable, m.Dangling, m.WouldDelete, m.Duration, m.LastSuccess)
	}
	return m
}

// Observe records a run's report and error.
func (m *Metrics) Observe(r *Report, err error) {
	switch {
	case err != nil:
		m.Runs.WithLabelValues("error").Inc()
	case r != nil && r.DryRun:
		m.Runs.WithLabelValues("dry-run").Inc()
	default:
		m.Runs.WithLabelValues("ok").Inc()
	}
	if r == nil {
		return
	}
	if !r.Finished.IsZero() {
		m.Duration.Observe(r.Finished.Sub(r.Started).Seconds())
	}
	if r.DryRun {
		m.WouldDelete.WithLabelValues(string(gc.KindNarInfo)).Set(float64(r.DeletedNarInfos))
		m.WouldDelete.WithLabelValues(string(gc.KindNar)).Set(float64(r.DeletedNars))
	} else {
		for _, l := range r.Lines {
			if l.Outcome == OutcomeDeleted {
				m.Deleted.WithLabelValues(string(l.Kind), string(l.Reason)).Inc()
				m.DeletedBytes.Add(float64(l.Size))
			}
		}
	}
	if err != nil { // the plan's figures may be partial
		return
	}
	m.KeptNarInfos.Set(float64(r.Stats.KeptNarInfos))
	m.KeptNars.Set(float64(r.Stats.KeptNars))
	m.KeptNarBytes.Set(float64(r.Stats.KeptNarBytes))
	m.MissingNars.Set(float64(r.Stats.MissingNars))
	m.Unreadable.Set(float64(r.Stats.Unreadable))
	m.Dangling.Set(float64(r.Stats.DanglingReferences))
	m.LastSuccess.Set(float64(r.Finished.Unix()))
}
