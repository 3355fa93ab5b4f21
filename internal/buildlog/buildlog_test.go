package buildlog

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	farmv1 "github.com/guixfarm/guix-farm/api/v1alpha1"
	"github.com/guixfarm/guix-farm/internal/bucket"
)

const drv = "/gnu/store/0ga1ynkzg5mb6rzx6nb7r8yv9d5vsgvh-hello-2.12.1.drv"

// world is the bucket's logs and the Build, changed step by step at each Sleep.
type world struct {
	logs   map[int]string // attempt -> log; 0 is the latest
	build  farmv1.Build
	steps  []func(w *world)
	sleeps int
}

func (w *world) OpenLog(ctx context.Context, d string, attempt int) (io.ReadCloser, error) {
	if d != drv {
		return nil, fmt.Errorf("unexpected derivation %s", d)
	}
	l, ok := w.logs[attempt]
	if !ok {
		return nil, fmt.Errorf("log: %w", bucket.ErrNotFound)
	}
	return io.NopCloser(strings.NewReader(l)), nil
}

func (w *world) get(ctx context.Context) (*farmv1.Build, error) { return w.build.DeepCopy(), nil }

func (w *world) sleep(ctx context.Context, d time.Duration) error {
	if d != DefaultInterval {
		return fmt.Errorf("slept %s", d)
	}
	if w.sleeps >= len(w.steps) {
		return errors.New("slept past the last step: the follower did not end")
	}
	w.steps[w.sleeps](w)
	w.sleeps++
	return nil
}

// upload is what the agent does: the attempt's log and the latest.
func (w *world) upload(attempt int, log string) {
	w.logs[attempt], w.logs[0] = log, log
}

func (w *world) start(attempt int) {
	w.build.Status.Phase, w.build.Status.AttemptCount = farmv1.BuildRunning, int32(attempt)
	w.build.Status.Attempt = &farmv1.Attempt{Agent: "agent-0"}
}

func (w *world) end(result farmv1.AttemptResult, reason string, phase farmv1.BuildPhase) {
	w.build.Status.Phase, w.build.Status.Attempt = phase, nil
	w.build.Status.Attempts = append(w.build.Status.Attempts, farmv1.AttemptRecord{Agent: "agent-0", Result: result, Reason: reason, End: metav1.Now()})
}

func newWorld() *world {
	w := &world{logs: map[int]string{}}
	w.build.Name, w.build.Spec.Derivation = "hello", drv
	return w
}

func run(w *world, o Options) (out, notes string, err error) {
	var ob, nb bytes.Buffer
	o.Sleep = w.sleep
	p := &Printer{Logs: w, Out: &ob, Notes: &nb}
	err = p.Build(context.Background(), "hello", w.get, o)
	return ob.String(), nb.String(), err
}

func TestFollow(t *testing.T) {
	w := newWorld()
	w.steps = []func(*world){
		func(w *world) {}, // still pending
		func(w *world) { w.start(1) },
		func(w *world) { w.upload(1, "a1\n") },
		func(w *world) { w.upload(1, "a1\nb1\n") },
		// The attempt fails; the Build waits out its backoff.
		func(w *world) {
			w.upload(1, "a1\nb1\nfailed\n")
			w.end(farmv1.AttemptFailed, "BuildFailed", farmv1.BuildPending)
		},
		func(w *world) {},
		// Attempt 2 starts and ends between two looks: its whole log is printed.
		func(w *world) {
			w.start(2)
			w.upload(2, "a2\n")
			w.upload(2, "a2\ndone\n")
			w.end(farmv1.AttemptSucceeded, "Succeeded", farmv1.BuildSucceeded)
		},
	}
	out, notes, err := run(w, Options{Follow: true})
	if err != nil {
		t.Fatal(err)
	}
	if want := "a1\nb1\nfailed\na2\ndone\n"; out != want {
		t.Errorf("printed %q, want %q", out, want)
	}
	for _, n := range []string{"has not started yet (phase Pending): waiting", "attempt 1 on agent-0: Failed (BuildFailed)", "attempt 2 ---", "Succeeded"} {
		if !strings.Contains(notes, n) {
			t.Errorf("notes lack %q:\n%s", n, notes)
		}
	}
	if w.sleeps != len(w.steps) {
		t.Errorf("%d of %d steps", w.sleeps, len(w.steps))
	}
}

func TestFollowOneAttempt(t *testing.T) {
	w := newWorld()
	w.start(1)
	w.upload(1, "one\n")
	w.steps = []func(*world){
		func(w *world) {
			w.upload(1, "one\ntwo\n")
			w.end(farmv1.AttemptFailed, "TimedOut", farmv1.BuildPending)
		},
	}
	out, _, err := run(w, Options{Follow: true, Attempt: 1})
	if err != nil || out != "one\ntwo\n" {
		t.Errorf("printed %q, %v", out, err)
	}
}

// An attempt handed back (its agent shut down) starts again under the same number, and its log
// with it.
func TestFollowRestartedAttempt(t *testing.T) {
	w := newWorld()
	w.start(1)
	w.upload(1, "first try, long line\n")
	w.steps = []func(*world){
		func(w *world) { w.upload(1, "again\n") },
		func(w *world) {
			w.upload(1, "again\nok\n")
			w.end(farmv1.AttemptSucceeded, "Succeeded", farmv1.BuildSucceeded)
		},
	}
	out, notes, err := run(w, Options{Follow: true})
	if err != nil || out != "first try, long line\nagain\nok\n" || !strings.Contains(notes, "started again") {
		t.Errorf("printed %q, notes %q, %v", out, notes, err)
	}
}

func TestPrint(t *testing.T) {
	for _, tc := range []struct {
		name      string
		setup     func(w *world)
		o         Options
		want      string
		wantErr   string
		wantNotes string
	}{
		{name: "latest", setup: func(w *world) { w.start(2); w.upload(1, "one\n"); w.upload(2, "two\n") }, want: "two\n"},
		{name: "an attempt", setup: func(w *world) { w.start(2); w.upload(1, "one\n"); w.upload(2, "two\n") }, o: Options{Attempt: 1}, want: "one\n"},
		{name: "no such attempt", setup: func(w *world) { w.start(1); w.upload(1, "one\n") }, o: Options{Attempt: 3}, wantErr: "has had 1 attempt(s), not 3"},
		{name: "not uploaded yet", setup: func(w *world) { w.start(1) }, wantErr: "no log in the bucket for the latest attempt of build/hello (phase Running)"},
		{name: "pending", setup: func(w *world) {}, wantErr: "build/hello has not started yet (phase Pending); -f waits"},
		{name: "succeeded without building", setup: func(w *world) { w.build.Status.Phase = farmv1.BuildSucceeded }, wantErr: "never ran: it succeeded without an attempt"},
		{name: "canceled, following", setup: func(w *world) { w.build.Status.Phase = farmv1.BuildCanceled }, o: Options{Follow: true}, wantErr: "never ran: it ended Canceled"},
		{name: "an earlier build's log", setup: func(w *world) { w.logs[0] = "from before\n" }, want: "from before\n", wantNotes: "from an earlier build"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld()
			tc.setup(w)
			out, notes, err := run(w, tc.o)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !errors.Is(err, ErrNoLog) {
					t.Fatalf("error %v, want one saying %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || out != tc.want || !strings.Contains(notes, tc.wantNotes) {
				t.Errorf("printed %q, notes %q, %v; want %q", out, notes, err, tc.want)
			}
		})
	}
}

func TestFollowAttemptThatNeverCame(t *testing.T) {
	w := newWorld()
	w.start(1)
	w.steps = []func(*world){
		func(w *world) { w.end(farmv1.AttemptSucceeded, "Succeeded", farmv1.BuildSucceeded) },
	}
	_, notes, err := run(w, Options{Follow: true, Attempt: 2})
	if err == nil || !errors.Is(err, ErrNoLog) || !strings.Contains(err.Error(), "ended Succeeded after 1 attempt(s), not 2") {
		t.Errorf("error %v", err)
	}
	if !strings.Contains(notes, "waiting for attempt 2") {
		t.Errorf("notes %q", notes)
	}
}
