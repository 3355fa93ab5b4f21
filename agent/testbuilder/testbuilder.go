// Package testbuilder is the agent's build step for tests and demos: it "builds" by sleeping, can
// fail chosen attempts, and records every attempt's start and end so a test can prove that no
// attempt ever ran on two agents at once and that builds started in dependency order.
package testbuilder

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"

	"k8s.io/utils/clock"

	"github.com/guixfarm/guix-farm/agent/buildstep"
)

// Annotations on a Build that steer the test builder.
const (
	// AnnotationDuration overrides how long the build takes (a Go duration).
	AnnotationDuration = "test.guixfarm.io/duration"
	// AnnotationFailAttempts fails the first N attempts.
	AnnotationFailAttempts = "test.guixfarm.io/fail-attempts"
)

// Record is one line of the record file.
type Record struct {
	Event   string    `json:"event"` // start, end
	Build   string    `json:"build"`
	Drv     string    `json:"drv"`
	Agent   string    `json:"agent"`
	Attempt int32     `json:"attempt"`
	Time    time.Time `json:"time"`
	Result  string    `json:"result,omitempty"` // succeeded, failed, aborted
}

// Builder sleeps for Duration (or the Build's annotation) and records attempts to RecordPath.
type Builder struct {
	Duration   time.Duration
	RecordPath string
	Clock      clock.Clock

	mu sync.Mutex
}

var _ buildstep.Step = (*Builder)(nil)

// Run implements buildstep.Step.
func (t *Builder) Run(ctx context.Context, req buildstep.Request) (buildstep.Result, error) {
	d := t.Duration
	if v, ok := req.Hints[AnnotationDuration]; ok {
		pd, err := time.ParseDuration(v)
		if err != nil {
			return buildstep.Result{}, fmt.Errorf("annotation %s: %w", AnnotationDuration, err)
		}
		d = pd
	}
	failN := 0
	if v, ok := req.Hints[AnnotationFailAttempts]; ok {
		n, err := strconv.Atoi(v)
		if err != nil {
			return buildstep.Result{}, fmt.Errorf("annotation %s: %w", AnnotationFailAttempts, err)
		}
		failN = n
	}
	rec := Record{Build: req.Build, Drv: req.Derivation, Agent: req.Agent, Attempt: req.Attempt}
	t.record(rec, "start", "")
	if d > 0 {
		select {
		case <-ctx.Done():
			t.record(rec, "end", "aborted")
			return buildstep.Result{}, ctx.Err()
		case <-t.Clock.After(d):
		}
	}
	if int(req.Attempt) <= failN {
		t.record(rec, "end", "failed")
		return buildstep.Result{}, fmt.Errorf("test builder: attempt %d of %d set to fail by %s", req.Attempt, failN, AnnotationFailAttempts)
	}
	t.record(rec, "end", "succeeded")
	fmt.Fprintf(req.Log, "test builder: %s attempt %d built in %s\n", req.Derivation, req.Attempt, d)
	return buildstep.Result{Outputs: req.Outputs}, nil
}

func (t *Builder) record(r Record, event, result string) {
	if t.RecordPath == "" {
		return
	}
	r.Event, r.Result, r.Time = event, result, t.Clock.Now()
	line, _ := json.Marshal(r)
	t.mu.Lock()
	defer t.mu.Unlock()
	// O_APPEND keeps lines from several agent processes whole.
	f, err := os.OpenFile(t.RecordPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return
	}
	defer f.Close()
	_, _ = f.Write(append(line, '\n'))
	_ = f.Sync()
}

// ReadRecords reads a record file.
func ReadRecords(path string) ([]Record, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []Record
	dec := json.NewDecoder(bytesReader(data))
	for dec.More() {
		var r Record
		if err := dec.Decode(&r); err != nil {
			return out, fmt.Errorf("record file %s: %w", path, err)
		}
		out = append(out, r)
	}
	return out, nil
}
