package agents

import (
	"testing"
	"time"
)

// An agent's term counts from its last observed renewal, or from when the controller could see
// again if that is later; while blind, nobody is judged.
func TestViewTermStart(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var nilView *View
	if got, ok := nilView.termStart(t0); !ok || !got.Equal(t0) {
		t.Fatalf("no view: %v %v, want the renewal", got, ok)
	}
	v := &View{}
	if got, ok := v.termStart(t0); !ok || !got.Equal(t0) {
		t.Fatalf("never blind: %v %v, want the renewal", got, ok)
	}
	v.observe(false, t0.Add(10*time.Second))
	if _, ok := v.termStart(t0); ok {
		t.Fatal("blind: an agent was judged")
	}
	back := t0.Add(70 * time.Second)
	v.observe(true, back)
	if got, ok := v.termStart(t0); !ok || !got.Equal(back) {
		t.Fatalf("after an outage: %v %v, want the term to restart at %v", got, ok, back)
	}
	later := back.Add(time.Minute)
	if got, _ := v.termStart(later); !got.Equal(later) {
		t.Fatalf("renewal after the outage: %v, want it", got)
	}
	v.observe(true, back.Add(time.Hour)) // seeing on: the restore time stays
	if got, _ := v.termStart(t0); !got.Equal(back) {
		t.Fatalf("%v, want %v", got, back)
	}
}
