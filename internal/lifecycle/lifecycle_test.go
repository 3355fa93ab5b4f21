package lifecycle

import (
	"errors"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	farmv1 "github.com/guixfarm/guix-farm/api/v1alpha1"
)

var now = time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)

func allocated(agent string) *farmv1.Build {
	return &farmv1.Build{Status: farmv1.BuildStatus{Phase: farmv1.BuildAllocated,
		Allocation: &farmv1.Allocation{Agent: agent, PlannedAt: metav1.NewTime(now)}}}
}

func running(agent string, attempts int32, retry *farmv1.RetryPolicy) *farmv1.Build {
	b := allocated(agent)
	b.Spec.Retry = retry
	b.Status.AttemptCount = attempts - 1
	if err := Claim(b, agent, "", now); err != nil {
		panic(err)
	}
	return b
}

func TestClaim(t *testing.T) {
	future := metav1.NewTime(now.Add(time.Minute))
	cases := map[string]struct {
		b       *farmv1.Build
		agent   string
		wantErr error
	}{
		"allocated to me":    {b: allocated("a"), agent: "a"},
		"allocated to other": {b: allocated("b"), agent: "a", wantErr: ErrNotClaimable},
		"not allocated":      {b: &farmv1.Build{Status: farmv1.BuildStatus{Phase: farmv1.BuildPending}}, agent: "a", wantErr: ErrNotClaimable},
		"already running":    {b: running("a", 1, nil), agent: "a", wantErr: ErrNotClaimable},
		"canceled": {b: func() *farmv1.Build { b := allocated("a"); b.Spec.Canceled = true; return b }(),
			agent: "a", wantErr: ErrNotClaimable},
		"in backoff": {b: func() *farmv1.Build { b := allocated("a"); b.Status.RetryAfter = &future; return b }(),
			agent: "a", wantErr: ErrNotClaimable},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			err := Claim(tc.b, tc.agent, "", now)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("Claim: %v, want %v", err, tc.wantErr)
			}
			if err == nil && (tc.b.Status.Phase != farmv1.BuildRunning || tc.b.Status.Attempt.Agent != tc.agent || tc.b.Status.AttemptCount != 1) {
				t.Errorf("after Claim: %+v", tc.b.Status)
			}
		})
	}
}

func TestEndings(t *testing.T) {
	policy := &farmv1.RetryPolicy{MaxAttempts: 3, BackoffSeconds: 10, MaxBackoffSeconds: 15}
	type want struct {
		Phase      farmv1.BuildPhase
		Attempts   int32
		RetryAfter time.Duration // 0: none
		History    int
		Result     farmv1.AttemptResult
	}
	cases := map[string]struct {
		b    *farmv1.Build
		end  func(b *farmv1.Build) error
		want want
	}{
		"success": {b: running("a", 1, policy), end: func(b *farmv1.Build) error { return Succeed(b, "a", now, nil) },
			want: want{Phase: farmv1.BuildSucceeded, Attempts: 1, History: 1, Result: farmv1.AttemptSucceeded}},
		"first failure retries after the base backoff": {b: running("a", 1, policy),
			end:  func(b *farmv1.Build) error { return Fail(b, "a", now, farmv1.ReasonBuildFailed, "exit 1") },
			want: want{Phase: farmv1.BuildPending, Attempts: 1, RetryAfter: 10 * time.Second, History: 1, Result: farmv1.AttemptFailed}},
		"second failure doubles, capped": {b: running("a", 2, policy),
			end:  func(b *farmv1.Build) error { return Fail(b, "a", now, farmv1.ReasonBuildFailed, "exit 1") },
			want: want{Phase: farmv1.BuildPending, Attempts: 2, RetryAfter: 15 * time.Second, History: 1, Result: farmv1.AttemptFailed}},
		"last attempt fails the build": {b: running("a", 3, policy),
			end:  func(b *farmv1.Build) error { return Fail(b, "a", now, farmv1.ReasonAgentLost, "lease expired") },
			want: want{Phase: farmv1.BuildFailed, Attempts: 3, History: 1, Result: farmv1.AttemptFailed}},
		"release does not spend an attempt": {b: running("a", 3, policy),
			end:  func(b *farmv1.Build) error { return Release(b, "a", now, farmv1.ReasonAgentReleased, "shutdown") },
			want: want{Phase: farmv1.BuildPending, Attempts: 2, History: 1, Result: farmv1.AttemptFailed}},
		"failure of a canceled build cancels it": {b: func() *farmv1.Build { b := running("a", 1, policy); b.Spec.Canceled = true; return b }(),
			end:  func(b *farmv1.Build) error { return Fail(b, "a", now, farmv1.ReasonAgentLost, "") },
			want: want{Phase: farmv1.BuildCanceled, Attempts: 1, History: 1, Result: farmv1.AttemptFailed}},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			if err := tc.end(tc.b); err != nil {
				t.Fatal(err)
			}
			st := tc.b.Status
			got := want{Phase: st.Phase, Attempts: st.AttemptCount, History: len(st.Attempts)}
			if len(st.Attempts) > 0 {
				got.Result = st.Attempts[len(st.Attempts)-1].Result
			}
			if st.RetryAfter != nil {
				got.RetryAfter = st.RetryAfter.Sub(now)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("status (-want +got):\n%s", diff)
			}
			if st.Attempt != nil || (st.Phase != farmv1.BuildPending && st.Allocation != nil) {
				t.Errorf("attempt or allocation left behind: %+v", st)
			}
		})
	}
}

func TestNotHolder(t *testing.T) {
	b := running("a", 1, nil)
	if err := Succeed(b, "b", now, nil); !errors.Is(err, ErrNotHolder) {
		t.Errorf("Succeed by another agent: %v, want ErrNotHolder", err)
	}
	if err := Fail(b, "b", now, "x", ""); !errors.Is(err, ErrNotHolder) {
		t.Errorf("Fail by another agent: %v, want ErrNotHolder", err)
	}
}

func TestHistoryBounded(t *testing.T) {
	b := allocated("a")
	b.Spec.Retry = &farmv1.RetryPolicy{MaxAttempts: 100}
	for range 20 {
		b.Status.Allocation = &farmv1.Allocation{Agent: "a"}
		b.Status.RetryAfter = nil
		if err := Claim(b, "a", "", now); err != nil {
			t.Fatal(err)
		}
		if err := Fail(b, "a", now, "x", ""); err != nil {
			t.Fatal(err)
		}
	}
	if len(b.Status.Attempts) != farmv1.MaxAttemptHistory || b.Status.AttemptCount != 20 {
		t.Errorf("history %d entries, %d attempts; want %d, 20", len(b.Status.Attempts), b.Status.AttemptCount, farmv1.MaxAttemptHistory)
	}
}

func TestFailUnstarted(t *testing.T) {
	b := allocated("a1")
	if err := FailUnstarted(b, now, farmv1.ReasonInvalidDerivation, "bad .drv"); err != nil {
		t.Fatal(err)
	}
	if b.Status.Phase != farmv1.BuildFailed || b.Status.Allocation != nil || b.Status.CompletionTime == nil || b.Status.AttemptCount != 0 {
		t.Errorf("after FailUnstarted: %+v; want Failed, no allocation, a completion time, no attempt", b.Status)
	}
	if c := b.Status.Conditions; len(c) != 1 || c[0].Type != farmv1.BuildConditionSucceeded || c[0].Reason != farmv1.ReasonInvalidDerivation {
		t.Errorf("conditions %+v; want Succeeded=False InvalidDerivation", c)
	}

	r := running("a1", 1, nil)
	if err := FailUnstarted(r, now, farmv1.ReasonInvalidDerivation, "bad .drv"); err == nil {
		t.Error("FailUnstarted ended a Build with an attempt in flight")
	}
	if r.Status.Phase != farmv1.BuildRunning {
		t.Errorf("a refused FailUnstarted changed the phase to %s", r.Status.Phase)
	}
}

// Attempts lost to the farm's faults do not spend the user's retry budget; the farm's own budget
// still ends a Build that keeps losing its agents.
func TestLoseSparesTheRetryBudget(t *testing.T) {
	b := running("a1", 1, &farmv1.RetryPolicy{MaxAttempts: 2})
	for i := range 5 {
		if err := Lose(b, "a1", now, "agent's Lease expired"); err != nil {
			t.Fatal(err)
		}
		if b.Status.Phase != farmv1.BuildPending {
			t.Fatalf("after %d losses: %s, want Pending (a lost attempt is not the build's failure)", i+1, b.Status.Phase)
		}
		b.Status.Allocation = &farmv1.Allocation{Agent: "a1"}
		b.Status.RetryAfter = nil
		if err := Claim(b, "a1", "", now); err != nil {
			t.Fatal(err)
		}
	}
	if b.Status.LostAttempts != 5 || b.Status.AttemptCount != 6 {
		t.Errorf("lost %d of %d attempts, want 5 of 6", b.Status.LostAttempts, b.Status.AttemptCount)
	}
	// One real failure of two allowed: retried.
	if err := Fail(b, "a1", now, farmv1.ReasonBuildFailed, "exit 1"); err != nil || b.Status.Phase != farmv1.BuildPending {
		t.Fatalf("after one failure: %s (%v), want Pending", b.Status.Phase, err)
	}
	// The farm's budget: MaxLostAttempts losses end it.
	for b.Status.Phase == farmv1.BuildPending {
		b.Status.Allocation = &farmv1.Allocation{Agent: "a1"}
		b.Status.RetryAfter = nil
		if err := Claim(b, "a1", "", now); err != nil {
			t.Fatal(err)
		}
		if err := Lose(b, "a1", now, "agent restarted during the attempt"); err != nil {
			t.Fatal(err)
		}
	}
	if b.Status.Phase != farmv1.BuildFailed || b.Status.LostAttempts != farmv1.MaxLostAttempts {
		t.Errorf("%s after %d losses, want Failed after %d", b.Status.Phase, b.Status.LostAttempts, farmv1.MaxLostAttempts)
	}
}
