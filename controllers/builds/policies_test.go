package builds

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	farmv1 "github.com/guixfarm/guix-farm/api/v1alpha1"
	"github.com/guixfarm/guix-farm/internal/derivation"
	"github.com/guixfarm/guix-farm/internal/drvsource"
	"github.com/guixfarm/guix-farm/internal/planner"
)

var now = time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)

func TestNotBefore(t *testing.T) {
	early, late := metav1.NewTime(now.Add(time.Minute)), metav1.NewTime(now.Add(time.Hour))
	cases := map[string]struct {
		defer_, retry *metav1.Time
		want          time.Time
	}{
		"neither":            {},
		"defer only":         {defer_: &late, want: late.Time},
		"retry only":         {retry: &early, want: early.Time},
		"later of the two 1": {defer_: &late, retry: &early, want: late.Time},
		"later of the two 2": {defer_: &early, retry: &late, want: late.Time},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			b := &farmv1.Build{Spec: farmv1.BuildSpec{DeferUntil: tc.defer_}, Status: farmv1.BuildStatus{RetryAfter: tc.retry}}
			if got := notBefore(b); !got.Equal(tc.want) {
				t.Errorf("notBefore = %s, want %s", got, tc.want)
			}
		})
	}
}

func TestFactsBackoff(t *testing.T) {
	cases := map[string]struct {
		since time.Duration // how long the condition has been False; <0: no condition
		want  time.Duration
	}{
		"first failure":   {since: -1, want: factsRetryMin},
		"fresh condition": {since: 0, want: factsRetryMin},
		"grows with time": {since: 30 * time.Second, want: 30 * time.Second},
		"capped":          {since: 24 * time.Hour, want: factsRetryMax},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			b := &farmv1.Build{}
			if tc.since >= 0 {
				b.Status.Conditions = []metav1.Condition{{Type: farmv1.BuildConditionDerivationReadable, Status: metav1.ConditionFalse,
					LastTransitionTime: metav1.NewTime(now.Add(-tc.since))}}
			}
			if got := factsBackoff(b, now); got != tc.want {
				t.Errorf("factsBackoff = %s, want %s", got, tc.want)
			}
		})
	}
}

func TestSetWait(t *testing.T) {
	type conds map[string]metav1.ConditionStatus
	cases := map[string]struct {
		wait planner.Wait
		want conds
	}{
		"no agent":       {wait: planner.Wait{Reason: planner.NoAgentForSystem, Message: "no pool offers riscv64-linux"}, want: conds{farmv1.BuildConditionSchedulable: metav1.ConditionFalse}},
		"inputs pending": {wait: planner.Wait{Reason: planner.InputsPending, Message: "1 of 2"}, want: conds{farmv1.BuildConditionInputsPending: metav1.ConditionTrue}},
		"input failed":   {wait: planner.Wait{Reason: planner.InputFailed, Message: "input x cannot be built yet"}, want: conds{farmv1.BuildConditionInputsPending: metav1.ConditionTrue}},
		"not waiting":    {wait: planner.Wait{}, want: conds{}},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			b := &farmv1.Build{}
			// A stale condition of the other kind must go.
			b.Status.Conditions = []metav1.Condition{{Type: farmv1.BuildConditionSchedulable, Status: metav1.ConditionFalse, Reason: "Old"},
				{Type: farmv1.BuildConditionInputsPending, Status: metav1.ConditionTrue, Reason: "Old"}}
			setWait(b, now, tc.wait)
			got := conds{}
			for _, c := range b.Status.Conditions {
				got[c.Type] = c.Status
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("conditions (-want +got):\n%s", diff)
			}
			if c := meta.FindStatusCondition(b.Status.Conditions, farmv1.BuildConditionSchedulable); c != nil && c.Reason != string(planner.NoAgentForSystem) {
				t.Errorf("Schedulable reason %q", c.Reason)
			}
		})
	}
}

// A Build an agent released for missing inputs says so, with the paths and the repeats, until
// the planner has a reason of its own.
func TestSetWaitMissingInputs(t *testing.T) {
	b := &farmv1.Build{}
	b.Status.Phase = farmv1.BuildPending
	retry := metav1.NewTime(now.Add(20 * time.Second))
	b.Status.RetryAfter = &retry
	b.Status.MissingInputs = &farmv1.MissingInputs{Agent: "a1", Paths: []string{"/gnu/store/x-in"}, More: 2, Releases: 3}
	setWait(b, now, planner.Wait{})
	c := meta.FindStatusCondition(b.Status.Conditions, farmv1.BuildConditionInputsPending)
	if c == nil || c.Status != metav1.ConditionTrue || c.Reason != farmv1.ReasonMissingInputs {
		t.Fatalf("InputsPending %+v; want True, MissingInputs", c)
	}
	for _, want := range []string{"a1", "/gnu/store/x-in and 2 more", "3 attempts in a row", retry.UTC().Format(time.RFC3339)} {
		if !strings.Contains(c.Message, want) {
			t.Errorf("message %q lacks %q", c.Message, want)
		}
	}
	setWait(b, now, planner.Wait{Reason: planner.InputsPending, Message: "1 of 2"})
	if c := meta.FindStatusCondition(b.Status.Conditions, farmv1.BuildConditionInputsPending); c.Reason != string(planner.InputsPending) {
		t.Errorf("reason %s; the planner's own wait comes first", c.Reason)
	}
}

func TestBehindOwnWrite(t *testing.T) {
	n := types.NamespacedName{Namespace: "ns", Name: "b"}
	cases := map[string]struct {
		wrote     string // version our last write was based on; "" for no write
		cached    []string
		wantStale []bool
	}{
		"no write":                         {cached: []string{"5"}, wantStale: []bool{false}},
		"cache still at the pre-write one": {wrote: "5", cached: []string{"5", "5"}, wantStale: []bool{true, true}},
		"cache caught up, then forgotten":  {wrote: "5", cached: []string{"7", "5"}, wantStale: []bool{false, false}},
		"deleted":                          {wrote: "5", cached: []string{"", "5"}, wantStale: []bool{false, false}},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			r := &Reconciler{}
			if tc.wrote != "" {
				r.wrote(n, tc.wrote, tc.wrote+"0")
			}
			for i, rv := range tc.cached {
				if got := r.behindOwnWrite(n, rv); got != tc.wantStale[i] {
					t.Errorf("read %d (version %q): behind = %v, want %v", i, rv, got, tc.wantStale[i])
				}
			}
		})
	}
}

func TestCheckFacts(t *testing.T) {
	path := func(n int) string { return "/gnu/store/" + strings.Repeat("a", 32) + "-" + strings.Repeat("x", n) }
	ok := derivation.Facts{System: "x86_64-linux", Outputs: []derivation.OutputFact{{Name: "out", Path: path(5)}}}
	many := ok
	many.Outputs = nil
	for i := range 40 {
		many.Outputs = append(many.Outputs, derivation.OutputFact{Name: fmt.Sprintf("o%d", i), Path: path(5)})
	}
	long := ok
	long.Outputs = []derivation.OutputFact{{Name: "out", Path: path(211)}} // the longest name Nix allows: 255 characters
	cases := map[string]struct {
		f    derivation.Facts
		want string // "" valid, else part of the error
	}{
		"plain":                    {f: ok},
		"40 outputs":               {f: many},
		"a 255-character path":     {f: long},
		"no system":                {f: derivation.Facts{Outputs: ok.Outputs}, want: "system"},
		"system with a space":      {f: derivation.Facts{System: "x86 linux", Outputs: ok.Outputs}, want: "system"},
		"no outputs":               {f: derivation.Facts{System: "x86_64-linux"}, want: "0 outputs"},
		"a 2000-character path":    {f: derivation.Facts{System: "x86_64-linux", Outputs: []derivation.OutputFact{{Name: "out", Path: path(2000)}}}, want: "more than the 1024"},
		"a 100-character out name": {f: derivation.Facts{System: "x86_64-linux", Outputs: []derivation.OutputFact{{Name: strings.Repeat("n", 100), Path: path(5)}}}, want: "output name"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			err := checkFacts(tc.f)
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("checkFacts: %v, want valid", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want) || !errors.Is(err, drvsource.ErrInvalid)):
				t.Errorf("checkFacts: %v, want ErrInvalid naming %q", err, tc.want)
			}
		})
	}
	big := ok
	for i := range 65 {
		big.Outputs = append(big.Outputs, derivation.OutputFact{Name: fmt.Sprintf("x%d", i), Path: path(5)})
	}
	if err := checkFacts(big); err == nil {
		t.Error("66 outputs accepted, more than the API holds")
	}
}

// Our own status write, seen again through the watch, is not reconciled a second time; any other
// version is, and the record of the write goes once its event came.
func TestOwnWriteSkipsOneEvent(t *testing.T) {
	n := types.NamespacedName{Namespace: "ns", Name: "b"}
	r := &Reconciler{}
	st := &farmv1.BuildStatus{}
	if r.ownWrite(n, "5", "6", st) {
		t.Fatal("no write recorded, yet an event was taken for ours")
	}
	r.wrote(n, "5", "6")
	if !r.ownWrite(n, "5", "6", st) {
		t.Fatal("the event of our own write was not recognised")
	}
	if r.ownWrite(n, "5", "6", st) {
		t.Fatal("the record outlived its event")
	}
	r.wrote(n, "6", "8")
	if r.ownWrite(n, "6", "7", st) {
		t.Fatal("another writer's version was taken for ours")
	}
}

// The watch event of our write can come before the write's response: it is recognised by the
// version it starts from and the status it shows, and the response then records nothing to skip.
func TestOwnWriteEventBeforeResponse(t *testing.T) {
	n := types.NamespacedName{Namespace: "ns", Name: "b"}
	r := &Reconciler{}
	now := metav1.NewTime(time.Date(2026, 12, 7, 1, 2, 3, 456789, time.UTC))
	mine := &farmv1.BuildStatus{System: "x86_64-linux", Conditions: []metav1.Condition{{Type: "InputsPending", Status: "True",
		LastTransitionTime: now, Reason: "InputsPending", Message: "m"}}}
	r.expectWrite(n, "5", mine)
	stored := mine.DeepCopy()
	stored.Conditions[0].LastTransitionTime = metav1.NewTime(now.Truncate(time.Second).Local())
	other := stored.DeepCopy()
	other.System = "i686-linux"
	if r.ownWrite(n, "5", "6", other) {
		t.Fatal("another status from the same version was taken for ours")
	}
	if !r.ownWrite(n, "5", "6", stored) {
		t.Fatal("our write's event, come before its response, was not recognised")
	}
	r.wrote(n, "5", "6")
	if r.ownWrite(n, "6", "7", stored) {
		t.Fatal("the response recorded a write whose event had already come")
	}
}

// A reconcile asked for while the cache still shows the version before our own write (the planner
// allocated the Build meanwhile) keeps that write's watch event: it must bring the Build back.
func TestOwnWriteEventKeptWhenAskedMeanwhile(t *testing.T) {
	n := types.NamespacedName{Namespace: "ns", Name: "b"}
	r := &Reconciler{}
	r.wrote(n, "5", "6")
	if !r.behindOwnWrite(n, "5") {
		t.Fatal("the cache at the pre-write version was not seen as behind")
	}
	r.keepOwnWriteEvent(n)
	if r.ownWrite(n, "5", "6", &farmv1.BuildStatus{}) {
		t.Fatal("the watch event of our write was skipped though a reconcile was asked for meanwhile")
	}
}

// TestQuietQueue: unless WriteQueueStatus, only a Build that never had a status and whose status would
// say nothing but "waiting for inputs" (or nothing) stays without a write; everything a user must
// see (no agent for its system, a failed input, an allocation) is still written.
func TestQuietQueue(t *testing.T) {
	cases := map[string]struct {
		wait      planner.Wait
		allocated bool
		want      bool
	}{
		"waits for inputs":  {wait: planner.Wait{Reason: planner.InputsPending, Message: "1 of 2"}, want: true},
		"waits for a slot":  {want: true},
		"no agent":          {wait: planner.Wait{Reason: planner.NoAgentForSystem, Message: "no pool offers riscv64-linux"}},
		"input failed":      {wait: planner.Wait{Reason: planner.InputFailed, Message: "input x failed"}},
		"allocated":         {allocated: true},
		"allocated, inputs": {wait: planner.Wait{Reason: planner.InputsPending, Message: "1 of 2"}, allocated: true},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			b := &farmv1.Build{}
			if !blankStatus(b) {
				t.Fatal("a new Build's status is not blank")
			}
			if tc.allocated {
				b.Status.Allocation = &farmv1.Allocation{Agent: "a"}
			}
			setWait(b, now, tc.wait)
			if got := onlyWaiting(b); got != tc.want {
				t.Errorf("onlyWaiting = %v, want %v (conditions %+v)", got, tc.want, b.Status.Conditions)
			}
		})
	}
	if !blankStatus(&farmv1.Build{Status: farmv1.BuildStatus{Phase: farmv1.BuildPending}}) {
		t.Error("a Build with the phase the CRD defaults is not blank: every queued Build would be written")
	}
	if blankStatus(&farmv1.Build{Status: farmv1.BuildStatus{Phase: farmv1.BuildPending, System: "x86_64-linux"}}) {
		t.Error("a Build with its facts written is blank: a status written before would be left stale")
	}
}
