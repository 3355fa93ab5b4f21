package bucketgc

import (
	"context"
	"errors"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"
)

func TestScheduler(t *testing.T) {
	cases := map[string]struct {
		initial, interval time.Duration
		// steps advance the clock; runs is how many runs must have started
		// after each.
		steps []time.Duration
		runs  []int
	}{
		"first run after one interval by default": {
			interval: time.Hour,
			steps:    []time.Duration{59 * time.Minute, time.Minute, time.Hour, 30 * time.Minute},
			runs:     []int{0, 1, 2, 2},
		},
		"initial delay": {
			initial: time.Minute, interval: 6 * time.Hour,
			steps: []time.Duration{time.Minute, 5 * time.Hour, time.Hour},
			runs:  []int{1, 1, 2},
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			clk := clocktesting.NewFakeClock(time.Date(2026, 11, 24, 0, 0, 0, 0, time.UTC))
			ran := make(chan Options, 10)
			var reports int
			s := &Scheduler{
				Interval: tc.interval, InitialDelay: tc.initial, Clock: clk,
				Options:  Options{Bucket: "b", DryRun: true},
				OnReport: func(r *Report, err error) { reports++ },
				run: func(ctx context.Context, o Options) (*Report, error) {
					ran <- o
					return &Report{}, errors.New("a failed run does not stop the schedule")
				},
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- s.Start(ctx) }()
			runs := 0
			for i, step := range tc.steps {
				waitForTimer(t, clk)
				clk.Step(step)
				if runs < tc.runs[i] {
					select {
					case o := <-ran:
						runs++
						if o.Clock != clk || !o.DryRun {
							t.Errorf("run got options %+v", o)
						}
					case <-time.After(10 * time.Second):
						t.Fatalf("step %d: no run", i)
					}
				}
				select {
				case <-ran:
					t.Fatalf("step %d: an extra run", i)
				case <-time.After(20 * time.Millisecond):
				}
			}
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Start returned %v after cancel, want nil", err)
			}
			if reports != runs {
				t.Errorf("OnReport called %d times for %d runs", reports, runs)
			}
		})
	}
}

func waitForTimer(t *testing.T, clk *clocktesting.FakeClock) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !clk.HasWaiters() {
		if time.Now().After(deadline) {
			t.Fatal("the scheduler set no timer")
		}
		time.Sleep(time.Millisecond)
	}
}

func TestSchedulerNeedsInterval(t *testing.T) {
	s := &Scheduler{}
	if err := s.Start(context.Background()); err == nil {
		t.Fatal("no error for a zero Interval")
	}
	if !s.NeedLeaderElection() {
		t.Error("GC must run in the leader only")
	}
}
