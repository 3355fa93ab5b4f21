package bucketgc

import (
	"context"
	"errors"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/utils/clock"
)

// Scheduler runs GC every Interval as a controller task. It has the shape
// of controller-runtime's manager.Runnable (Start blocks until ctx ends)
// and LeaderElectionRunnable (only the leader collects), so the controller
// can mgr.Add it.
type Scheduler struct {
	// Interval between the end of one run and the start of the next.
	Interval time.Duration
	// InitialDelay before the first run (default Interval, so a
	// crash-looping controller does not collect at every start).
	InitialDelay time.Duration
	// Options of each run (DryRun, Grace, Roots, OnDeleted, ...).
	Options Options
	// OnReport, when set, receives every run's report and error (metrics,
	// events). The report may be nil when the options are invalid.
	OnReport func(*Report, error)
	// Clock schedules the runs (default the real clock); Options.Clock
	// defaults to it.
	Clock clock.Clock
	Log   logr.Logger

	// run is Run, replaced in tests.
	run func(context.Context, Options) (*Report, error)
}

// NeedLeaderElection: GC runs only in the elected controller.
func (s *Scheduler) NeedLeaderElection() bool { return true }

// Start runs GC every Interval until ctx ends; it then returns nil. A
// failed run is logged and reported, and the next one runs as scheduled.
func (s *Scheduler) Start(ctx context.Context) error {
	if s.Interval <= 0 {
		return errors.New("bucketgc: Scheduler.Interval must be positive, e.g. 6h")
	}
	clk := s.Clock
	if clk == nil {
		clk = clock.RealClock{}
	}
	opts := s.Options
	if opts.Clock == nil {
		opts.Clock = clk
	}
	if opts.Log.GetSink() == nil {
		opts.Log = s.Log
	}
	run := s.run
	if run == nil {
		run = Run
	}
	delay := s.InitialDelay
	if delay <= 0 {
		delay = s.Interval
	}
	s.Log.Info("bucket gc scheduled", "bucket", opts.Bucket, "interval", s.Interval, "firstIn", delay, "dryRun", opts.DryRun)
	for {
		t := clk.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C():
		}
		rep, err := run(ctx, opts)
		if err != nil && ctx.Err() == nil {
			s.Log.Error(err, "bucket gc failed; retrying at the next interval", "bucket", opts.Bucket, "interval", s.Interval)
		}
		if s.OnReport != nil {
			s.OnReport(rep, err)
		}
		delay = s.Interval
	}
}
