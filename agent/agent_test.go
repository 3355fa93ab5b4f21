package agent

import (
	"context"
	"errors"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/guixfarm/guix-farm/agent/buildstep"
	farmv1 "github.com/guixfarm/guix-farm/api/v1alpha1"
	"github.com/guixfarm/guix-farm/internal/lifecycle"
)

var buildsResource = schema.GroupResource{Group: farmv1.GroupVersion.Group, Resource: "builds"}

// ---- claim ----

func TestClaim(t *testing.T) {
	b := ours("b1")
	b.Annotations = map[string]string{"test.guixfarm.io/duration": "3s", "example.com/other": "x"}
	secs := int32(600)
	b.Spec.TimeoutSeconds = &secs
	h := newHarness(t, []*farmv1.Build{b})
	h.start()

	r := h.step.next(t)
	got := h.get("b1")
	if got.Status.Phase != farmv1.BuildRunning || got.Status.Attempt == nil || got.Status.Attempt.Agent != testAgent ||
		got.Status.AttemptCount != 1 {
		t.Fatalf("after the claim: phase %s, attempt %+v, attemptCount %d; want Running on %s, 1",
			got.Status.Phase, got.Status.Attempt, got.Status.AttemptCount, testAgent)
	}
	req := r.req
	if req.Build != buildRef("b1") || req.Derivation != b.Spec.Derivation || req.System != "x86_64-linux" ||
		req.Attempt != 1 || req.Agent != testAgent || req.Log == nil || req.StillOwned == nil {
		t.Errorf("request %+v", req)
	}
	if len(req.Outputs) != 1 || req.Outputs[0].Name != "out" || req.Outputs[0].Path != b.Status.Outputs[0].Path {
		t.Errorf("request outputs %+v", req.Outputs)
	}
	if len(req.Hints) != 1 || req.Hints["test.guixfarm.io/duration"] != "3s" {
		t.Errorf("hints %v: want only the guixfarm.io annotations", req.Hints)
	}
	if req.Limits.Timeout != 600*time.Second || req.Limits.MaxLogBytes != h.agent.cfg.MaxLogBytes {
		t.Errorf("limits %+v", req.Limits)
	}
	r.finish(buildstep.Result{}, nil)
	h.waitPhase("b1", farmv1.BuildSucceeded)
}

func TestClaimSkipsWhatIsNotClaimable(t *testing.T) {
	other := allocated("other", "agent-2", 100)
	canceled := ours("canceled")
	canceled.Spec.Canceled = true
	backoff := ours("backoff")
	backoff.Status.Phase = farmv1.BuildPending
	backoff.Status.AttemptCount = 1
	retryAt := metav1.NewTime(t0.Add(30 * time.Second))
	backoff.Status.RetryAfter = &retryAt
	unallocated := ours("unallocated")
	unallocated.Status.Allocation = nil
	unallocated.Status.Phase = farmv1.BuildPending
	h := newHarness(t, []*farmv1.Build{ours("mine"), other, canceled, backoff, unallocated}, withSlots(4))
	h.cache.unfiltered = true // the agent's own checks, not only its cache's selector, keep it off others' Builds
	h.start()

	h.step.next(t)
	h.settle()
	if got := h.step.builds(); !slices.Equal(got, []string{buildRef("mine")}) {
		t.Fatalf("step ran for %v, want only the claimable build", got)
	}
	for name, phase := range map[string]farmv1.BuildPhase{"other": farmv1.BuildAllocated, "canceled": farmv1.BuildAllocated,
		"backoff": farmv1.BuildPending, "unallocated": farmv1.BuildPending} {
		if b := h.get(name); b.Status.Phase != phase || b.Status.Attempt != nil {
			t.Errorf("%s: phase %s, attempt %+v; want untouched", name, b.Status.Phase, b.Status.Attempt)
		}
	}

	// The backoff ends with no event: the agent's periodic pass claims it then.
	h.clk.Step(29 * time.Second)
	h.settle()
	if n := len(h.step.builds()); n != 1 {
		t.Fatalf("claimed during the backoff: %v", h.step.builds())
	}
	h.clk.Step(2 * time.Second)
	if r := h.step.next(t); r.req.Build != buildRef("backoff") || r.req.Attempt != 2 {
		t.Fatalf("after the backoff ran %s attempt %d, want backoff attempt 2", r.req.Build, r.req.Attempt)
	}
}

func TestClaimHighestPriorityFirst(t *testing.T) {
	// Creation order is the reverse of priority order, so only the priority explains the order.
	var builds []*farmv1.Build
	for i, p := range []int32{1, 3, 5} {
		b := allocated("p"+string(rune('0'+p)), testAgent, p)
		b.CreationTimestamp = metav1.NewTime(t0.Add(time.Duration(i) * time.Minute))
		builds = append(builds, b)
	}
	h := newHarness(t, builds, withSlots(1))
	h.start()

	for _, want := range []string{"p5", "p3", "p1"} {
		r := h.step.next(t)
		if r.req.Build != buildRef(want) {
			t.Fatalf("ran %s, want %s (order %v)", r.req.Build, want, h.step.builds())
		}
		h.settle()
		// Beyond the free slot: the others wait, unclaimed.
		for _, b := range builds {
			if n := b.Name; buildRef(n) != r.req.Build {
				if got := h.get(n); got.Status.Phase == farmv1.BuildRunning {
					t.Fatalf("%s claimed while the only slot runs %s", n, want)
				}
			}
		}
		r.finish(buildstep.Result{}, nil)
		h.waitPhase(want, farmv1.BuildSucceeded)
	}
}

func TestClaimConflictFreesTheSlot(t *testing.T) {
	urgent := allocated("urgent", testAgent, 10)
	h := newHarness(t, []*farmv1.Build{urgent, ours("later")}, withSlots(1))
	var once atomic.Bool
	h.onStatusUpdate(func(ctx context.Context, b *farmv1.Build) error {
		if b.Name != "urgent" || !once.CompareAndSwap(false, true) {
			return nil
		}
		// The planner moves the Build to another agent just before our claim lands.
		if err := h.write("urgent", true, func(b *farmv1.Build) { b.Status.Allocation.Agent = "agent-2" }); err != nil {
			t.Error(err)
		}
		return apierrors.NewConflict(buildsResource, b.Name, errors.New("the object has been modified"))
	})
	h.start()

	// The one slot went to urgent first; its lost claim gives it to later.
	r := h.step.next(t)
	if r.req.Build != buildRef("later") {
		t.Fatalf("ran %s, want later", r.req.Build)
	}
	if !once.Load() {
		t.Fatal("urgent was never claimed")
	}
	if got := h.step.builds(); len(got) != 1 {
		t.Fatalf("step ran for %v: a lost claim must not run", got)
	}
	if b := h.get("urgent"); b.Status.Phase != farmv1.BuildAllocated || b.Status.AttemptCount != 0 || b.Status.Allocation.Agent != "agent-2" {
		t.Fatalf("urgent after the lost claim: %+v", b.Status)
	}
	if n := testutilCount(h.agent.metrics.ClaimConflicts); n != 1 {
		t.Errorf("claim conflicts %v, want 1", n)
	}
	r.finish(buildstep.Result{}, nil)
	h.waitPhase("later", farmv1.BuildSucceeded)
}

// ---- report ----

func TestReportSuccess(t *testing.T) {
	h := newHarness(t, []*farmv1.Build{ours("b1")})
	h.start()
	r := h.step.next(t)
	h.clk.Step(90 * time.Second)
	out := buildstep.Output{Name: "out", Path: r.req.Outputs[0].Path, NarHash: "sha256:0fy5wj7p2dvx5sx0ncwvvdasvafrrm6c8ss2qaw5nxh5zgirl6jr"}
	r.finish(buildstep.Result{Outputs: []buildstep.Output{out}}, nil)

	b := h.waitPhase("b1", farmv1.BuildSucceeded)
	st := b.Status
	if len(st.Outputs) != 1 || st.Outputs[0].NarHash != out.NarHash || st.Outputs[0].Path != out.Path {
		t.Errorf("outputs %+v", st.Outputs)
	}
	if st.Attempt != nil || st.Allocation != nil || st.AttemptCount != 1 || st.CompletionTime == nil ||
		!st.CompletionTime.Time.Equal(t0.Add(90*time.Second)) {
		t.Errorf("status %+v", st)
	}
	if len(st.Attempts) != 1 || st.Attempts[0].Result != farmv1.AttemptSucceeded || st.Attempts[0].Agent != testAgent {
		t.Errorf("attempts %+v", st.Attempts)
	}
	h.idle()
	if n := h.statusUpdates.Load(); n != 2 {
		t.Errorf("%d status writes, want 2 (claim, report)", n)
	}
}

func TestReportBuildFailed(t *testing.T) {
	h := newHarness(t, []*farmv1.Build{ours("b1")})
	h.start()
	r := h.step.next(t)
	r.write(t, "building /gnu/store/...-hello\nchecking for gcc... no\nerror: no acceptable C compiler found\n")
	r.finish(buildstep.Result{}, buildstep.BuildFailed(errors.New("builder exited 1"), nil))

	b := h.waitPhase("b1", farmv1.BuildPending)
	st := b.Status
	if st.AttemptCount != 1 || st.Attempt != nil || st.Allocation != nil {
		t.Errorf("status %+v: want attempt 1 spent, back to the planner", st)
	}
	if want := t0.Add(lifecycle.DefaultBackoffSeconds * time.Second); st.RetryAfter == nil || !st.RetryAfter.Time.Equal(want) {
		t.Errorf("retryAfter %v, want %v", st.RetryAfter, want)
	}
	if len(st.Attempts) != 1 {
		t.Fatalf("attempts %+v", st.Attempts)
	}
	rec := st.Attempts[0]
	if rec.Result != farmv1.AttemptFailed || rec.Reason != "BuildFailed" || !strings.Contains(rec.Message, "builder exited 1") ||
		!strings.Contains(rec.Message, "error: no acceptable C compiler found") {
		t.Errorf("attempt record %+v: want BuildFailed with the log's last line", rec)
	}
}

func TestReportMissingInputs(t *testing.T) {
	h := newHarness(t, []*farmv1.Build{ours("b1")})
	h.start()
	r := h.step.next(t)
	r.finish(buildstep.Result{}, buildstep.MissingInputs([]string{"/gnu/store/00000000000000000000000000000000-in"},
		[]string{"/gnu/store/00000000000000000000000000000000-in.drv"}))

	b := h.waitPhase("b1", farmv1.BuildPending)
	st := b.Status
	if st.AttemptCount != 0 || st.Allocation != nil {
		t.Errorf("status %+v: want released without spending an attempt", st)
	}
	if want := t0.Add(lifecycle.MissingInputsBackoff(1)); st.RetryAfter == nil || !st.RetryAfter.Time.Equal(want) {
		t.Errorf("retryAfter %v, want %v (held back, so an input that never appears is no hot loop)", st.RetryAfter, want)
	}
	if m := st.MissingInputs; m == nil || m.Agent != testAgent || len(m.Paths) != 1 || len(m.Derivations) != 1 || m.Releases != 1 {
		t.Errorf("missingInputs %+v", st.MissingInputs)
	}
	if len(st.Attempts) != 1 || st.Attempts[0].Reason != "MissingInputs" {
		t.Errorf("attempts %+v", st.Attempts)
	}
}

func TestReportRetriesOnConflict(t *testing.T) {
	h := newHarness(t, []*farmv1.Build{ours("b1")})
	var raced atomic.Int32
	h.onStatusUpdate(func(ctx context.Context, b *farmv1.Build) error {
		if b.Status.Phase == farmv1.BuildSucceeded && raced.Add(1) == 1 {
			// Someone writes the Build between the claim and the report: the report's copy is stale.
			if err := h.write("b1", false, func(b *farmv1.Build) { b.Annotations = map[string]string{"example.com/touched": "yes"} }); err != nil {
				t.Error(err)
			}
		}
		return nil
	})
	h.start()
	h.step.next(t).finish(buildstep.Result{}, nil)

	b := h.waitPhase("b1", farmv1.BuildSucceeded)
	h.idle()
	if b.Annotations["example.com/touched"] != "yes" {
		t.Error("the concurrent write was lost")
	}
	if n := raced.Load(); n != 2 {
		t.Errorf("%d report writes, want 2 (a conflict, then a retry on a fresh read)", n)
	}
	if n := h.statusUpdates.Load(); n != 2 {
		t.Errorf("%d status writes applied, want 2 (claim, report)", n)
	}
}

// takeOver makes agent-2 the holder of name, as the controller failing our attempt (AgentLost) and
// agent-2 claiming it next would.
func takeOver(h *harness, name string) {
	h.t.Helper()
	h.updateStatus(name, func(b *farmv1.Build) {
		b.Status.Allocation = &farmv1.Allocation{Agent: "agent-2", PlannedAt: metav1.NewTime(t0)}
		b.Status.Attempt = &farmv1.Attempt{Agent: "agent-2", Started: metav1.NewTime(t0)}
		b.Status.AttemptCount++
	})
}

func TestReportAfterTakeoverWritesNothing(t *testing.T) {
	h := newHarness(t, []*farmv1.Build{ours("b1")})
	h.start()
	r := h.step.next(t)
	takeOver(h, "b1")
	before := h.get("b1")

	r.finish(buildstep.Result{Outputs: []buildstep.Output{{Name: "out", Path: "/x", NarHash: "sha256:x"}}}, nil)
	h.idle() // the report has returned
	after := h.get("b1")
	if after.ResourceVersion != before.ResourceVersion || after.Status.Attempt == nil || after.Status.Attempt.Agent != "agent-2" {
		t.Fatalf("the Build changed after a takeover: %+v", after.Status)
	}
	if n := h.statusUpdates.Load(); n != 1 {
		t.Errorf("%d status writes, want 1 (the claim)", n)
	}
}

// ---- cancel ----

func TestCancelAbortsTheStep(t *testing.T) {
	h := newHarness(t, []*farmv1.Build{ours("b1")})
	h.start()
	r := h.step.next(t)
	h.update("b1", func(b *farmv1.Build) { b.Spec.Canceled = true })

	b := h.waitPhase("b1", farmv1.BuildCanceled)
	if r.ctx.Err() == nil {
		t.Error("the step's ctx was not canceled")
	}
	if st := b.Status; len(st.Attempts) != 1 || st.Attempts[0].Result != farmv1.AttemptCanceled || st.Attempt != nil {
		t.Errorf("status %+v", st)
	}
	h.idle()
}

// ---- shutdown ----

func TestShutdownReleasesAndDropsTheLease(t *testing.T) {
	h := newHarness(t, []*farmv1.Build{ours("b1")})
	h.start()
	r := h.step.next(t)
	if _, err := h.lease(); err != nil {
		t.Fatalf("no Lease while running: %v", err)
	}
	release := h.holdLeaseRenewal()
	if err := h.stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	release()
	if r.ctx.Err() == nil {
		t.Error("the step's ctx was not canceled")
	}
	st := h.get("b1").Status
	if st.Phase != farmv1.BuildPending || st.AttemptCount != 0 || st.Attempt != nil || st.Allocation != nil {
		t.Errorf("status %+v: want released, attempt not spent", st)
	}
	if len(st.Attempts) != 1 || st.Attempts[0].Reason != farmv1.ReasonAgentReleased {
		t.Errorf("attempts %+v", st.Attempts)
	}
	if _, err := h.lease(); !apierrors.IsNotFound(err) {
		t.Errorf("Lease after shutdown: %v, want deleted", err)
	}
}

// Regression (557a79e): at shutdown the cache may still show the copy from before the claim; the
// release must be judged on a fresh read, not given up.
func TestShutdownReleasesWithACacheBehindTheClaim(t *testing.T) {
	h := newHarness(t, []*farmv1.Build{ours("b1")})
	h.cache.freeze(t) // the claim never reaches the cache
	h.start()
	h.step.next(t)
	release := h.holdLeaseRenewal()
	if err := h.stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	release()
	if st := h.get("b1").Status; st.Phase != farmv1.BuildPending || st.AttemptCount != 0 {
		t.Errorf("status %+v: want released", st)
	}
}

// Regression (14287df): a cache lagging behind the agent's own report still shows the attempt
// running on it; the agent must not take that for an attempt of an earlier life (AgentLost).
func TestNoLostReportOnACacheBehindTheReport(t *testing.T) {
	h := newHarness(t, []*farmv1.Build{ours("b1")})
	h.start()
	r := h.step.next(t)
	h.cache.freeze(t) // shows b1 running on us from now on
	r.finish(buildstep.Result{}, nil)
	h.waitPhase("b1", farmv1.BuildSucceeded)
	h.idle()
	h.settle() // passes over the stale copy
	if st := h.get("b1").Status; st.Phase != farmv1.BuildSucceeded || len(st.Attempts) != 1 {
		t.Fatalf("status %+v: the stale copy was acted on", st)
	}
	if n := h.statusAttempts.Load(); n != 2 {
		t.Errorf("%d status writes tried, want 2 (claim, report): the stale copy cost a write", n)
	}
	h.cache.thaw()
	h.settle()
	h.agent.mu.Lock()
	n := len(h.agent.finished)
	h.agent.mu.Unlock()
	if n != 0 {
		t.Errorf("finished keeps %d entries once the cache caught up", n)
	}
}

func TestRestartFailsTheOrphanAttempt(t *testing.T) {
	b := ours("b1")
	b.Status.Phase = farmv1.BuildRunning
	b.Status.AttemptCount = 1
	b.Status.Attempt = &farmv1.Attempt{Agent: testAgent, Started: metav1.NewTime(t0.Add(-time.Minute))}
	h := newHarness(t, []*farmv1.Build{b})
	h.start()
	got := h.waitPhase("b1", farmv1.BuildPending)
	if st := got.Status; st.AttemptCount != 1 || st.RetryAfter == nil || len(st.Attempts) != 1 || st.Attempts[0].Reason != farmv1.ReasonAgentLost {
		t.Errorf("status %+v: want the attempt failed as AgentLost", st)
	}
	h.settle()
	if got := h.step.builds(); len(got) != 0 {
		t.Errorf("step ran for %v", got)
	}
}

// ---- health ----

func TestUnhealthyAgentOffersAndClaimsNothing(t *testing.T) {
	var healthy atomic.Bool
	h := newHarness(t, []*farmv1.Build{ours("b1")}, withSlots(2), withHealth(func(context.Context) error {
		if healthy.Load() {
			return nil
		}
		return errors.New("daemon socket refused")
	}))
	h.start()
	eventually(t, "the Lease", func() bool { _, err := h.lease(); return err == nil })
	info := h.leaseInfo()
	if info.FreeSlots != 0 || !strings.Contains(info.Unhealthy, "daemon socket refused") {
		t.Fatalf("Lease of an unhealthy agent: free %d, unhealthy %q", info.FreeSlots, info.Unhealthy)
	}
	h.settle()
	if got := h.step.builds(); len(got) != 0 {
		t.Fatalf("an unhealthy agent ran %v", got)
	}

	healthy.Store(true)
	eventually(t, "claims to resume", func() bool {
		h.clk.Step(h.agent.cfg.HealthInterval)
		return len(h.step.builds()) == 1
	})
	eventually(t, "the Lease to show the agent healthy", func() bool {
		h.clk.Step(time.Second)
		info := h.leaseInfo()
		return info.Unhealthy == "" && info.FreeSlots == 1
	})
}

func TestAgentUnhealthyStepReleasesAndStopsClaims(t *testing.T) {
	h := newHarness(t, []*farmv1.Build{allocated("first", testAgent, 1), ours("second")},
		withHealth(func(context.Context) error { return nil }),
		func(c *Config, _ *Deps) { c.HealthInterval = time.Hour }) // no health pass heals it during the test
	h.start()
	r := h.step.next(t)
	r.finish(buildstep.Result{}, buildstep.AgentUnhealthy(errors.New("daemon socket refused")))

	st := h.waitPhase("first", farmv1.BuildPending).Status
	if st.AttemptCount != 0 || st.RetryAfter != nil || len(st.Attempts) != 1 || st.Attempts[0].Reason != "AgentUnhealthy" {
		t.Errorf("status %+v: want released without spending an attempt", st)
	}
	h.idle()
	if why := h.agent.unhealthyReason(); !strings.Contains(why, "daemon socket refused") {
		t.Errorf("unhealthy %q", why)
	}
	h.settle()
	if got := h.step.builds(); len(got) != 1 {
		t.Fatalf("an unhealthy agent ran %v", got)
	}
	eventually(t, "the Lease to show the agent unhealthy", func() bool {
		h.clk.Step(time.Second)
		info := h.leaseInfo()
		return info.FreeSlots == 0 && strings.Contains(info.Unhealthy, "daemon socket refused")
	})
}

// ---- attempt log ----

func TestAttemptLogReachesTheStore(t *testing.T) {
	h := newHarness(t, []*farmv1.Build{ours("b1")})
	h.start()
	r := h.step.next(t)
	r.write(t, "hello\n")
	eventually(t, "an upload while the build runs", func() bool {
		h.clk.Step(h.agent.cfg.LogFlushInterval)
		return len(h.logs.all()) > 0
	})
	first := h.logs.all()[0]
	drv := h.get("b1").Spec.Derivation
	if first != (upload{drv: drv, attempt: 1, data: "hello\n", final: false}) {
		t.Errorf("first upload %+v", first)
	}
	r.write(t, "world\n")
	r.finish(buildstep.Result{}, nil)
	h.waitPhase("b1", farmv1.BuildSucceeded)
	ups := h.logs.all()
	last := ups[len(ups)-1]
	if last != (upload{drv: drv, attempt: 1, data: "hello\nworld\n", final: true}) {
		t.Errorf("final upload %+v", last)
	}
	for _, u := range ups[:len(ups)-1] {
		if u.final {
			t.Errorf("more than one final upload: %+v", ups)
		}
	}
}

func TestLogLimitEndsTheBuild(t *testing.T) {
	h := newHarness(t, []*farmv1.Build{ours("b1")}, func(c *Config, _ *Deps) { c.MaxLogBytes = 16 })
	h.start()
	r := h.step.next(t)
	if r.req.Limits.MaxLogBytes != 16 {
		t.Errorf("limits %+v", r.req.Limits)
	}
	r.write(t, "0123456789\n")
	n, err := r.req.Log.Write([]byte("abcdefghij\n"))
	if n != 5 || buildstep.KindOf(err) != buildstep.KindLogLimit {
		t.Fatalf("write past the limit: %d, %v; want 5 and a LogLimit error", n, err)
	}
	r.finish(buildstep.Result{}, err)
	st := h.waitPhase("b1", farmv1.BuildFailed).Status
	if len(st.Attempts) != 1 || st.Attempts[0].Reason != "LogLimitExceeded" {
		t.Errorf("attempts %+v", st.Attempts)
	}
	ups := h.logs.all()
	if last := ups[len(ups)-1]; !last.final || last.data != "0123456789\nabcde" {
		t.Errorf("final upload %+v, want the first 16 bytes", last)
	}
}

// ---- ownership ----

func TestStillOwned(t *testing.T) {
	t.Run("takeover", func(t *testing.T) {
		h := newHarness(t, []*farmv1.Build{ours("b1")})
		h.start()
		r := h.step.next(t)
		if err := r.req.StillOwned(context.Background()); err != nil {
			t.Fatalf("while held: %v", err)
		}
		takeOver(h, "b1")
		if err := r.req.StillOwned(context.Background()); !errors.Is(err, lifecycle.ErrNotHolder) {
			t.Fatalf("after a takeover: %v, want ErrNotHolder", err)
		}
		r.finish(buildstep.Result{}, nil)
		h.idle()
	})
	t.Run("cancel", func(t *testing.T) {
		h := newHarness(t, []*farmv1.Build{ours("b1")})
		h.start()
		r := h.step.next(t)
		if err := r.req.StillOwned(context.Background()); err != nil {
			t.Fatalf("while held: %v", err)
		}
		h.update("b1", func(b *farmv1.Build) { b.Spec.Canceled = true })
		if err := r.req.StillOwned(context.Background()); err == nil || !strings.Contains(err.Error(), "canceled") {
			t.Fatalf("after a cancel: %v", err)
		}
		h.waitPhase("b1", farmv1.BuildCanceled)
		h.idle()
	})
	t.Run("re-created", func(t *testing.T) {
		h := newHarness(t, []*farmv1.Build{ours("b1")})
		h.start()
		r := h.step.next(t)
		b := h.get("b1")
		if err := h.c.Delete(context.Background(), b); err != nil {
			t.Fatal(err)
		}
		b = allocated("b1", "agent-2", 0)
		b.UID = "uid-b1-again"
		if err := h.c.Create(context.Background(), b); err != nil {
			t.Fatal(err)
		}
		if err := r.req.StillOwned(context.Background()); err == nil || !strings.Contains(err.Error(), "re-created") {
			t.Fatalf("after a re-creation: %v", err)
		}
		r.finish(buildstep.Result{}, errors.New("whatever"))
		h.idle()
	})
}

// A Build that leaves the agent's cache while it runs it (the controller failed the attempt as
// AgentLost and the planner moved it, or the Build was deleted) stops the step: otherwise the
// attempt runs twice, and the slot is wasted until the build ends on its own.
func TestBuildLeavingTheCacheAbortsTheStep(t *testing.T) {
	for name, leave := range map[string]func(h *harness){
		"takeover": func(h *harness) { takeOver(h, "b1") },
		"deleted": func(h *harness) {
			if err := h.c.Delete(context.Background(), h.get("b1")); err != nil {
				h.t.Fatal(err)
			}
		},
	} {
		t.Run(name, func(t *testing.T) {
			h := newHarness(t, []*farmv1.Build{ours("b1")})
			h.start()
			r := h.step.next(t)
			leave(h)
			h.settle()
			if r.ctx.Err() == nil {
				t.Fatal("the step still runs a Build taken from the agent")
			}
		})
	}
}

// Through an apiserver outage longer than the Lease's term the agent keeps building what it owns
// (the controller does not count the time it could not see), claims nothing new, and reports the
// result once the apiserver answers again.
func TestLeaseOutageKeepsBuilding(t *testing.T) {
	h := newHarness(t, []*farmv1.Build{ours("b1"), ours("b2")})
	h.start()
	r := h.step.next(t)
	outage := apierrors.NewServiceUnavailable("apiserver unavailable")
	h.failLeaseUpdates(outage)
	h.failBuildReads(outage)
	for range 3 {
		h.clk.Step(h.agent.cfg.LeaseDuration)
		h.settle()
	}
	if r.ctx.Err() != nil {
		t.Fatal("the step was stopped by an outage")
	}
	if f := h.agent.free(); f != 0 {
		t.Fatalf("free slots %d past the Lease's term: want none offered", f)
	}
	// The publication's ownership check waits for an answer instead of failing the attempt.
	owned := make(chan error, 1)
	go func() { owned <- r.req.StillOwned(r.ctx) }()
	for range 3 {
		h.clk.Step(5 * time.Second)
		h.settle()
	}
	select {
	case err := <-owned:
		t.Fatalf("ownership check answered %v during an outage: want it to wait", err)
	default:
	}
	h.failLeaseUpdates(nil)
	h.failBuildReads(nil)
	eventually(t, "the ownership check to answer", func() bool {
		h.clk.Step(time.Second)
		select {
		case err := <-owned:
			if err != nil {
				t.Fatalf("ownership check after the outage: %v", err)
			}
			return true
		default:
			return false
		}
	})
	r.finish(buildstep.Result{}, nil)
	h.clk.Step(h.agent.cfg.RenewInterval)
	if b := h.waitPhase("b1", farmv1.BuildSucceeded); b.Status.LostAttempts != 0 {
		t.Fatalf("lost attempts %d after an outage: want none", b.Status.LostAttempts)
	}
	h.step.next(t) // the agent claims again once its Lease is renewed
}

// Fencing: the controller declared the agent lost (ended its attempt, deleted its Lease) while it
// was paused. When it resumes, its next renewal finds the Lease gone: the attempts of that term
// stop and nothing of them is reported, even a success; the new term's claims carry its Lease UID.
func TestDeletedLeaseFencesTheTerm(t *testing.T) {
	h := newHarness(t, []*farmv1.Build{ours("b1")})
	h.start()
	r := h.step.next(t)
	l, err := h.lease()
	if err != nil {
		t.Fatal(err)
	}
	if got := h.get("b1").Status.Attempt.LeaseUID; got != string(l.UID) {
		t.Fatalf("attempt's LeaseUID %q, want the Lease's %q", got, l.UID)
	}
	h.updateStatus("b1", func(b *farmv1.Build) {
		if err := lifecycle.Lose(b, testAgent, t0, "agent's Lease expired"); err != nil {
			t.Fatal(err)
		}
	})
	if err := h.c.Delete(context.Background(), l); err != nil {
		t.Fatal(err)
	}
	before := h.get("b1")
	// Each poll steps the clock: the Lease loop may make its ticker only after a first step.
	eventually(t, "the step to be stopped", func() bool {
		h.clk.Step(h.agent.cfg.RenewInterval)
		return r.ctx.Err() != nil
	})
	r.finish(buildstep.Result{}, nil) // a build that completed anyway
	h.idle()
	if after := h.get("b1"); after.ResourceVersion != before.ResourceVersion {
		t.Fatalf("the fenced attempt wrote the Build: %+v", after.Status)
	}
	var nl *coordinationv1.Lease
	eventually(t, "the agent to make its new Lease", func() bool {
		h.clk.Step(h.agent.cfg.RenewInterval)
		nl, err = h.lease()
		return err == nil
	})
	if nl.UID == l.UID {
		t.Fatal("the agent kept the deleted Lease's UID as its term")
	}
}

// A Build released without spending an attempt (MissingInputs, AgentUnhealthy) has attemptCount
// one lower than the attempt the agent reported. If the planner gives it back to the same agent
// before the agent's loop has seen it leave its cache (events coalesce in the wake channel), the
// agent must still claim it.
func TestReleasedBuildAllocatedAgainIsClaimed(t *testing.T) {
	h := newHarness(t, []*farmv1.Build{ours("b1")})
	h.start()
	r := h.step.next(t)
	h.cache.freeze(t) // the release and the re-allocation reach the loop together
	r.finish(buildstep.Result{}, buildstep.MissingInputs([]string{"/gnu/store/00000000000000000000000000000000-in"}, nil))
	h.waitPhase("b1", farmv1.BuildPending)
	h.idle()
	h.clk.Step(time.Minute) // past the release's backoff: the planner offers it no sooner
	h.updateStatus("b1", func(b *farmv1.Build) {
		b.Status.Phase = farmv1.BuildAllocated
		b.Status.Allocation = &farmv1.Allocation{Agent: testAgent, PlannedAt: metav1.NewTime(t0)}
	})
	h.cache.thaw()
	h.settle()
	h.clk.Step(time.Minute) // periodic passes do not heal it either
	h.settle()
	if got := h.step.builds(); len(got) != 2 {
		t.Fatalf("step ran for %v: the Build allocated again was not claimed", got)
	}
}

// The same re-allocation, once the loop has seen the release, is claimed: the path that works.
func TestReleasedBuildAllocatedLaterIsClaimed(t *testing.T) {
	h := newHarness(t, []*farmv1.Build{ours("b1")})
	h.start()
	r := h.step.next(t)
	r.finish(buildstep.Result{}, buildstep.MissingInputs([]string{"/gnu/store/00000000000000000000000000000000-in"}, nil))
	h.waitPhase("b1", farmv1.BuildPending)
	h.idle()
	h.settle()
	h.clk.Step(time.Minute) // past the release's backoff: the planner offers it no sooner
	h.updateStatus("b1", func(b *farmv1.Build) {
		b.Status.Phase = farmv1.BuildAllocated
		b.Status.Allocation = &farmv1.Allocation{Agent: testAgent, PlannedAt: metav1.NewTime(t0)}
	})
	r = h.step.next(t)
	if r.req.Attempt != 1 {
		t.Errorf("attempt %d, want 1 (the release spent none)", r.req.Attempt)
	}
	r.finish(buildstep.Result{}, nil)
	h.waitPhase("b1", farmv1.BuildSucceeded)
}

// When Run's ctx ends, the Lease loop ends too and hands Run a nil error; if that reaches Run's
// select together with ctx.Done, Go picks either: half the time Run takes the lease loop's branch,
// aborts its builds without releasing them and keeps the Lease. The Builds then wait for the
// Lease to expire and are failed as AgentLost, spending an attempt.
func TestShutdownRacingTheLeaseLoop(t *testing.T) {
	for i := range 30 { // each round is a coin toss while the bug is there
		h := newHarness(t, []*farmv1.Build{ours("b1")})
		h.start()
		h.step.next(t)
		blocked, release := h.cache.hold()
		h.cache.inf.fire()
		<-blocked // the loop is in a pass, not in its select
		h.runCancel()
		eventually(t, "the Lease loop to end", func() bool { return !goroutineRunning("agent.(*Agent).Run.func1") })
		release()
		if err := h.stop(); err != nil {
			t.Fatalf("Run: %v", err)
		}
		if st := h.get("b1").Status; st.Phase != farmv1.BuildPending {
			t.Fatalf("round %d: phase %s after a clean stop, want released (Pending)", i, st.Phase)
		}
		if _, err := h.lease(); !apierrors.IsNotFound(err) {
			t.Fatalf("round %d: Lease after a clean stop: %v, want deleted", i, err)
		}
	}
}

// goroutineRunning says whether a goroutine is in fn.
func goroutineRunning(fn string) bool {
	buf := make([]byte, 1<<20)
	return strings.Contains(string(buf[:runtime.Stack(buf, true)]), fn)
}

// While the apiserver cannot answer, a Build that left the cache is not taken for lost: the
// attempt goes on (fenced by the Lease term), and stops once a read shows it taken.
func TestUnlistedBuildDuringAnOutageRunsOn(t *testing.T) {
	h := newHarness(t, []*farmv1.Build{ours("b1")})
	h.start()
	r := h.step.next(t)
	h.failBuildReads(apierrors.NewServiceUnavailable("apiserver unavailable"))
	takeOver(h, "b1")
	h.settle()
	h.clk.Step(time.Minute) // periodic passes ask again, and fail again
	h.settle()
	if r.ctx.Err() != nil {
		t.Fatal("the step was stopped on a failed read, not on an answer")
	}
	h.failBuildReads(nil)
	h.clk.Step(time.Minute)
	h.settle()
	if r.ctx.Err() == nil {
		t.Fatal("the step still runs once a read shows the Build taken")
	}
}

// A step that ignores cancellation (stuck in a daemon that does not answer) does not hold the
// agent's shutdown past its release timeout: the Build is still handed back.
func TestShutdownBoundedByTheReleaseTimeout(t *testing.T) {
	h := newHarness(t, []*farmv1.Build{ours("b1")}, func(c *Config, _ *Deps) { c.ReleaseTimeout = 2 * time.Second })
	h.step.stubborn.Store(true)
	h.start()
	r := h.step.next(t)
	defer r.finish(buildstep.Result{}, errors.New("let the stuck step go"))
	start := time.Now()
	if err := h.stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("shutdown took %s with a 2s release timeout", d)
	}
	if b := h.get("b1"); b.Status.Phase != farmv1.BuildPending || len(b.Status.Attempts) != 1 ||
		b.Status.Attempts[0].Reason != farmv1.ReasonAgentReleased {
		t.Errorf("status %+v: want the Build handed back (AgentReleased)", b.Status)
	}
}
