package buildstep

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/guixfarm/guix-farm/api/v1alpha1"
	"github.com/guixfarm/guix-farm/internal/lifecycle"
)

func running(attempts int32, maxAttempts int32) *v1alpha1.Build {
	b := &v1alpha1.Build{}
	b.Spec.Retry = &v1alpha1.RetryPolicy{MaxAttempts: maxAttempts, BackoffSeconds: 10}
	b.Status.Phase = v1alpha1.BuildRunning
	b.Status.AttemptCount = attempts
	b.Status.Attempt = &v1alpha1.Attempt{Agent: "a1"}
	return b
}

func TestFinish(t *testing.T) {
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	tail := []string{"building...", "error: no such file"}
	for _, tc := range []struct {
		name        string
		err         error
		attempts    int32
		phase       v1alpha1.BuildPhase
		reason      string
		count       int32 // attempt count after the transition
		backoff     bool
		missing     bool
		wantMessage string
	}{
		{"plain error is a failed build, retried", errors.New("boom"), 1, v1alpha1.BuildPending, "BuildFailed", 1, true, false, "boom"},
		{"build failed with its log tail", BuildFailed(errors.New("builder exited 1"), tail), 1, v1alpha1.BuildPending, "BuildFailed", 1, true, false, "log ends: building... | error: no such file"},
		{"build failed on the last attempt ends Failed", BuildFailed(errors.New("exit 1"), nil), 3, v1alpha1.BuildFailed, "BuildFailed", 3, false, false, "exit 1"},
		{"setup failed spends an attempt", SetupFailed(errors.New("drv not substitutable")), 1, v1alpha1.BuildPending, "SetupFailed", 1, true, false, "drv not substitutable"},
		{"timed out fails at once", TimedOut(errors.New("after 10s"), tail), 1, v1alpha1.BuildFailed, "TimedOut", 1, false, false, "after 10s"},
		{"log limit fails at once", LogLimit(1024), 1, v1alpha1.BuildFailed, "LogLimitExceeded", 1, false, false, "1024 bytes"},
		{"not reproducible fails at once", NotReproducible(errors.New("narhash differs")), 1, v1alpha1.BuildFailed, "NotReproducible", 1, false, false, "narhash differs"},
		{"missing inputs: released, attempt not spent, named on the Build, held back", MissingInputs([]string{"/gnu/store/x-in"}, []string{"/gnu/store/y-in.drv"}), 2, v1alpha1.BuildPending, "MissingInputs", 1, true, true, "1 input paths"},
		{"agent unhealthy: released", AgentUnhealthy(errors.New("daemon socket refused")), 1, v1alpha1.BuildPending, "AgentUnhealthy", 0, false, false, "daemon socket refused"},
		{"wrapped typed error keeps its kind", fmt.Errorf("step: %w", TimedOut(nil, nil)), 1, v1alpha1.BuildFailed, "TimedOut", 1, false, false, "TimedOut"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := running(tc.attempts, 3)
			if err := Finish(b, "a1", now, tc.err); err != nil {
				t.Fatal(err)
			}
			st := b.Status
			if st.Phase != tc.phase || st.AttemptCount != tc.count {
				t.Errorf("phase %s, attempts %d; want %s, %d", st.Phase, st.AttemptCount, tc.phase, tc.count)
			}
			if (st.RetryAfter != nil) != tc.backoff {
				t.Errorf("retryAfter %v, want backoff %v", st.RetryAfter, tc.backoff)
			}
			if (st.MissingInputs != nil) != tc.missing {
				t.Errorf("missingInputs %+v, want %v", st.MissingInputs, tc.missing)
			}
			last := st.Attempts[len(st.Attempts)-1]
			if last.Reason != tc.reason || !strings.Contains(last.Message, tc.wantMessage) {
				t.Errorf("attempt record %s %q; want %s containing %q", last.Reason, last.Message, tc.reason, tc.wantMessage)
			}
			if len(last.Message) > maxMessage {
				t.Errorf("message of %d bytes", len(last.Message))
			}
		})
	}
}

// Releases in a row for the same missing inputs are counted and held back longer each time; other
// missing inputs start the count again, and an attempt that gets past its inputs clears it.
func TestFinishMissingInputsRepeated(t *testing.T) {
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	b := running(1, 3)
	release := func(paths ...string) {
		t.Helper()
		if err := Finish(b, "a1", now, MissingInputs(paths, nil)); err != nil {
			t.Fatal(err)
		}
		b.Status.Phase, b.Status.Allocation = v1alpha1.BuildAllocated, &v1alpha1.Allocation{Agent: "a1"}
		b.Status.RetryAfter = nil // the planner offers it again once the backoff has passed
		if err := lifecycle.Claim(b, "a1", "", now); err != nil {
			t.Fatal(err)
		}
	}
	for i, want := range []int32{1, 2, 3} {
		release("/gnu/store/x-in")
		if got := b.Status.MissingInputs.Releases; got != want {
			t.Fatalf("release %d: releases %d, want %d", i+1, got, want)
		}
	}
	if b.Status.AttemptCount != 1 {
		t.Errorf("attempt count %d after three releases, want 1 (the one running)", b.Status.AttemptCount)
	}
	if lifecycle.MissingInputsBackoff(3) <= lifecycle.MissingInputsBackoff(1) || lifecycle.MissingInputsBackoff(100) != 10*time.Minute {
		t.Errorf("backoff %s after 1 release, %s after 3, %s after 100; want growing up to 10m",
			lifecycle.MissingInputsBackoff(1), lifecycle.MissingInputsBackoff(3), lifecycle.MissingInputsBackoff(100))
	}
	release("/gnu/store/z-other")
	if got := b.Status.MissingInputs.Releases; got != 1 {
		t.Errorf("releases %d for other inputs, want 1", got)
	}
	if err := Finish(b, "a1", now, BuildFailed(errors.New("exit 1"), nil)); err != nil {
		t.Fatal(err)
	}
	if b.Status.MissingInputs != nil {
		t.Errorf("missingInputs %+v after an attempt that found its inputs, want none", b.Status.MissingInputs)
	}
}

func TestFinishNotHolder(t *testing.T) {
	b := running(1, 3)
	b.Status.Attempt.Agent = "other"
	if err := Finish(b, "a1", time.Now(), errors.New("x")); !errors.Is(err, lifecycle.ErrNotHolder) {
		t.Fatalf("got %v, want ErrNotHolder", err)
	}
}

func TestMessageKeepsTheLogsEnd(t *testing.T) {
	var tail []string
	for i := range 200 {
		tail = append(tail, fmt.Sprintf("line %d %s \xff", i, strings.Repeat("x", 50)))
	}
	m := message(BuildFailed(errors.New("builder exited 2"), tail))
	if len(m) > maxMessage || !strings.HasPrefix(m, "BuildFailed: builder exited 2") || !strings.Contains(m, "line 199") {
		t.Fatalf("message %q", m)
	}
	if strings.Contains(m, "\xff") {
		t.Fatal("invalid UTF-8 kept")
	}
}

func TestMissingInputsBounded(t *testing.T) {
	var paths []string
	for i := range 40 {
		paths = append(paths, fmt.Sprintf("/gnu/store/%032d-in", i))
	}
	m := boundMissing(paths, nil, "a1")
	if len(m.Paths) != v1alpha1.MaxMissingInputs || m.More != 8 {
		t.Fatalf("kept %d, more %d", len(m.Paths), m.More)
	}
}
