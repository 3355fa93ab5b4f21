// Package buildlog is `kubectl guixfarm logs`: it prints a Build's log from the farm's bucket,
// where agents upload each attempt's log (the whole log so far, every few seconds while the build
// runs), and follows it until the Build finishes.
package buildlog

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	farmv1 "github.com/guixfarm/guix-farm/api/v1alpha1"
	"github.com/guixfarm/guix-farm/internal/bucket"
)

// DefaultInterval is how often a followed log is read again.
const DefaultInterval = 2 * time.Second

// Source reads build logs: bucket.Reader.
type Source interface {
	// OpenLog returns the log of attempt (0: the latest) of drvPath's build; the error wraps
	// bucket.ErrNotFound when there is none.
	OpenLog(ctx context.Context, drvPath string, attempt int) (io.ReadCloser, error)
}

// GetBuild reads the Build afresh.
type GetBuild func(ctx context.Context) (*farmv1.Build, error)

// ErrNoLog is wrapped by the error of a Build without the log asked for.
var ErrNoLog = errors.New("no log")

// Options say which log and how.
type Options struct {
	// Attempt is the attempt whose log to print, from 1; 0 is the latest.
	Attempt int
	// Follow prints the log as it grows until the attempt (with Attempt 0: the Build) ends.
	Follow bool
	// Interval between reads while following (default DefaultInterval).
	Interval time.Duration
	// Sleep waits d or until ctx ends (default: a timer); tests inject a fake.
	Sleep func(ctx context.Context, d time.Duration) error
}

// Printer prints logs to Out and says what it is doing (waiting, a new attempt) on Notes.
type Printer struct {
	Logs  Source
	Out   io.Writer
	Notes io.Writer
}

// Derivation prints the log of drv's build straight from the bucket, without a Build (it may
// have been deleted since: the bucket is the durable record).
func (p *Printer) Derivation(ctx context.Context, drv string, attempt int) error {
	_, err := p.copyFrom(ctx, drv, attempt, 0)
	if errors.Is(err, bucket.ErrNotFound) {
		return fmt.Errorf("%w in the bucket for %s (%s): %w", ErrNoLog, drv, attemptName(attempt), err)
	}
	return err
}

// Build prints the log of the Build get reads, named name in messages.
func (p *Printer) Build(ctx context.Context, name string, get GetBuild, o Options) error {
	if o.Interval <= 0 {
		o.Interval = DefaultInterval
	}
	if o.Sleep == nil {
		o.Sleep = sleep
	}
	b, err := get(ctx)
	if err != nil {
		return err
	}
	if b.Status.AttemptCount == 0 && !o.Follow || b.Status.AttemptCount == 0 && b.Status.Phase.Finished() {
		return p.neverRan(ctx, name, b, o)
	}
	if o.Attempt > 0 && int32(o.Attempt) > b.Status.AttemptCount && (!o.Follow || b.Status.Phase.Finished()) {
		return fmt.Errorf("%w: build/%s has had %d attempt(s), not %d (--attempt counts from 1; 0 is the latest)", ErrNoLog, name, b.Status.AttemptCount, o.Attempt)
	}
	if !o.Follow {
		_, err := p.copyFrom(ctx, b.Spec.Derivation, o.Attempt, 0)
		if errors.Is(err, bucket.ErrNotFound) {
			return fmt.Errorf("%w in the bucket for %s of build/%s (phase %s): %w; the agent uploads it a few seconds after the attempt starts",
				ErrNoLog, attemptName(o.Attempt), name, phaseName(b.Status.Phase), err)
		}
		return err
	}
	return p.follow(ctx, name, get, b, o)
}

// neverRan explains a Build without attempts and prints the derivation's log if an earlier
// Build of it left one.
func (p *Printer) neverRan(ctx context.Context, name string, b *farmv1.Build, o Options) error {
	why := fmt.Sprintf("build/%s has not run (phase %s)", name, b.Status.Phase)
	switch b.Status.Phase {
	case farmv1.BuildSucceeded:
		why = fmt.Sprintf("build/%s never ran: it succeeded without an attempt, its outputs being available already", name)
	case farmv1.BuildCanceled, farmv1.BuildFailed:
		why = fmt.Sprintf("build/%s never ran: it ended %s before an attempt started", name, b.Status.Phase)
	case "", farmv1.BuildPending, farmv1.BuildAllocated:
		why = fmt.Sprintf("build/%s has not started yet (phase %s); -f waits for it and follows its log", name, phaseName(b.Status.Phase))
	}
	if o.Attempt > 0 {
		return fmt.Errorf("%w: %s, so it has no attempt %d", ErrNoLog, why, o.Attempt)
	}
	// An earlier Build of the same derivation (deleted, or in another namespace) may have left
	// its log, and that is usually what is wanted; say whose it is.
	rc, err := p.Logs.OpenLog(ctx, b.Spec.Derivation, 0)
	if errors.Is(err, bucket.ErrNotFound) {
		return fmt.Errorf("%w: %s", ErrNoLog, why)
	}
	if err != nil {
		return err
	}
	defer rc.Close()
	p.note("%s; the bucket has a log of %s from an earlier build, printed below", why, b.Spec.Derivation)
	_, err = io.Copy(p.Out, rc)
	return err
}

// follow prints the log of the attempt in flight (or o.Attempt) as it grows, moving on to each
// new attempt, until the Build finishes (or that attempt ends).
func (p *Printer) follow(ctx context.Context, name string, get GetBuild, b *farmv1.Build, o Options) error {
	waiting := false
	for b.Status.AttemptCount == 0 || o.Attempt > 0 && int32(o.Attempt) > b.Status.AttemptCount {
		switch {
		case b.Status.Phase.Finished() && b.Status.AttemptCount == 0:
			return p.neverRan(ctx, name, b, o)
		case b.Status.Phase.Finished():
			return fmt.Errorf("%w: build/%s ended %s after %d attempt(s), not %d", ErrNoLog, name, b.Status.Phase, b.Status.AttemptCount, o.Attempt)
		case !waiting && b.Status.AttemptCount == 0:
			p.note("build/%s has not started yet (phase %s): waiting for it", name, phaseName(b.Status.Phase))
		case !waiting:
			p.note("build/%s has had %d attempt(s) (phase %s): waiting for attempt %d", name, b.Status.AttemptCount, phaseName(b.Status.Phase), o.Attempt)
		}
		waiting = true
		if err := o.Sleep(ctx, o.Interval); err != nil {
			return err
		}
		var err error
		if b, err = get(ctx); err != nil {
			return err
		}
	}
	drv := b.Spec.Derivation
	cur := int(b.Status.AttemptCount)
	if o.Attempt > 0 {
		cur = o.Attempt
	}
	if waiting || cur > 1 {
		p.note("--- build/%s, attempt %d ---", name, cur)
	}
	var printed int64
	ended := false // the end of attempt cur was announced
	read := func() error {
		n, err := p.copyFrom(ctx, drv, cur, printed)
		if errors.Is(err, errShrank) {
			// The attempt was handed back (the agent shut down) and started again under the
			// same number: its log started over.
			p.note("--- build/%s, attempt %d started again ---", name, cur)
			printed = 0
			n, err = p.copyFrom(ctx, drv, cur, 0)
		}
		printed += n
		if errors.Is(err, bucket.ErrNotFound) {
			return nil // not uploaded yet
		}
		return err
	}
	for {
		if err := read(); err != nil {
			return err
		}
		// b was read before the log: the agent uploads an attempt's last bytes before it
		// reports the attempt's end, so when b shows the end, the read above had them all.
		inFlight := b.Status.Phase == farmv1.BuildRunning && int(b.Status.AttemptCount) == cur
		switch {
		case inFlight:
		case o.Attempt == 0 && int(b.Status.AttemptCount) > cur:
			// A new attempt started (and may have ended) since the last look.
			if !ended {
				p.note("--- build/%s: %s ---", name, ending(b, cur))
			}
			cur, printed, ended = int(b.Status.AttemptCount), 0, false
			p.note("--- build/%s, attempt %d ---", name, cur)
			continue
		case o.Attempt > 0 || b.Status.Phase.Finished():
			if !ended {
				p.note("--- build/%s: %s ---", name, ending(b, cur))
			}
			return nil
		case !ended:
			// Back to Pending for a retry: say so once, and wait for the next attempt.
			p.note("--- build/%s: %s ---", name, ending(b, cur))
			ended = true
		}
		// Running, or between attempts (a retry's backoff, or claimed and not started yet).
		if err := o.Sleep(ctx, o.Interval); err != nil {
			return err
		}
		var err error
		if b, err = get(ctx); err != nil {
			return err
		}
	}
}

// errShrank: the log is shorter than what was printed of it.
var errShrank = errors.New("the log is shorter than what was printed")

// copyFrom prints the log of attempt from byte skip on and returns the bytes it has past skip.
// A log is re-uploaded whole as it grows, and gzip-encoded, so it is read from its start.
func (p *Printer) copyFrom(ctx context.Context, drv string, attempt int, skip int64) (int64, error) {
	rc, err := p.Logs.OpenLog(ctx, drv, attempt)
	if err != nil {
		return 0, err
	}
	defer rc.Close()
	if skip > 0 {
		n, err := io.CopyN(io.Discard, rc, skip)
		if err == io.EOF {
			if n < skip {
				return 0, errShrank
			}
		} else if err != nil {
			return 0, fmt.Errorf("reading the log of %s (%s): %w", drv, attemptName(attempt), err)
		}
	}
	n, err := io.Copy(p.Out, rc)
	if err != nil {
		return n, fmt.Errorf("reading the log of %s (%s): %w", drv, attemptName(attempt), err)
	}
	return n, nil
}

// ending says how attempt n of b ended, from its history when its newest record is that attempt
// (status.attempts is bounded, newest last, and a handed-back attempt leaves a record without
// counting, so older records cannot be told apart by number).
func ending(b *farmv1.Build, n int) string {
	last := int(b.Status.AttemptCount) // the newest finished attempt
	if b.Status.Phase == farmv1.BuildRunning {
		last--
	}
	if last != n || len(b.Status.Attempts) == 0 {
		return fmt.Sprintf("attempt %d ended; the build is %s", n, phaseName(b.Status.Phase))
	}
	a := b.Status.Attempts[len(b.Status.Attempts)-1]
	s := fmt.Sprintf("attempt %d on %s: %s", n, a.Agent, a.Result)
	if a.Reason != "" && a.Reason != string(a.Result) {
		s += " (" + a.Reason + ")"
	}
	switch {
	case b.Status.Phase.Finished():
		s += "; the build is " + string(b.Status.Phase)
	case b.Status.Phase != farmv1.BuildRunning:
		s += "; the build is " + phaseName(b.Status.Phase) + ", another attempt follows"
	}
	return s
}

func attemptName(attempt int) string {
	if attempt == 0 {
		return "the latest attempt"
	}
	return fmt.Sprintf("attempt %d", attempt)
}

func phaseName(p farmv1.BuildPhase) string {
	if p == "" {
		return string(farmv1.BuildPending)
	}
	return string(p)
}

func (p *Printer) note(format string, args ...any) {
	if p.Notes != nil {
		fmt.Fprintf(p.Notes, format+"\n", args...)
	}
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
