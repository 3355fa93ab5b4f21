package agentlease

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	coordinationv1 "k8s.io/api/coordination/v1"
)

func TestRoundTrip(t *testing.T) {
	now := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	in := Info{Name: "agent-1", Pool: "x86", Systems: []string{"i686-linux", "x86_64-linux"}, Features: []string{"kvm"}, Slots: 4, FreeSlots: 1}
	l := &coordinationv1.Lease{}
	l.Name = "agent-1"
	Apply(l, in, now, 40*time.Second)
	got, err := Parse(l)
	if err != nil {
		t.Fatal(err)
	}
	in.Expires = now.Add(40 * time.Second)
	if diff := cmp.Diff(in, got); diff != "" {
		t.Errorf("round trip (-want +got):\n%s", diff)
	}
	// A re-apply with fewer systems drops the stale system label.
	in.Systems = []string{"x86_64-linux"}
	Apply(l, in, now, 40*time.Second)
	if got, _ := Parse(l); !cmp.Equal(got.Systems, in.Systems) {
		t.Errorf("systems after re-apply: %v", got.Systems)
	}
}

func TestParseRejects(t *testing.T) {
	cases := map[string]func(l *coordinationv1.Lease){
		"not an agent":   func(l *coordinationv1.Lease) { l.Labels[LabelAgent] = "false" },
		"bad slots":      func(l *coordinationv1.Lease) { l.Annotations[AnnotationSlots] = "many" },
		"no renew time":  func(l *coordinationv1.Lease) { l.Spec.RenewTime = nil },
		"bad free slots": func(l *coordinationv1.Lease) { delete(l.Annotations, AnnotationFreeSlots) },
		// The planner sizes horizons from slots: 10^12 would allocate without bound.
		"10^12 slots":         func(l *coordinationv1.Lease) { l.Annotations[AnnotationSlots] = "1000000000000" },
		"negative free slots": func(l *coordinationv1.Lease) { l.Annotations[AnnotationFreeSlots] = "-1" },
	}
	for name, mutate := range cases {
		t.Run(name, func(t *testing.T) {
			l := &coordinationv1.Lease{}
			Apply(l, Info{Name: "a", Systems: []string{"x86_64-linux"}, Slots: 1, FreeSlots: 1}, time.Now(), time.Minute)
			mutate(l)
			if _, err := Parse(l); err == nil {
				t.Error("Parse accepted a malformed Lease")
			}
		})
	}
}
