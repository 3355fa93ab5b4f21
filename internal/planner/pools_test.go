package planner

import "testing"

// TestClaimableAndQuiesced: what autoscaling and drains ask of the model. A pool counts the
// offerable builds of the classes it serves; an agent with no slots gets nothing new, and is
// quiesced once the builds allocated to it are withdrawn.
func TestClaimableAndQuiesced(t *testing.T) {
	p := New(Options{})
	p.UpsertPool(Pool{Name: "ns/x86", Systems: []string{x86}})
	p.UpsertPool(Pool{Name: "ns/arm", Systems: []string{arm}})
	for i, k := range []string{"a", "b", "c"} {
		p.UpsertBuild(bld(k, 0, i))
	}
	if got := p.Claimable("ns/x86"); got != 3 {
		t.Errorf("x86 claimable %d, want 3", got)
	}
	if got := p.Claimable("ns/arm") + p.Claimable("ns/none"); got != 0 {
		t.Errorf("arm and unknown pools claimable %d, want 0", got)
	}
	p.UpsertAgent(agent("x-0", 1))
	p.Plan(t0)
	if p.Quiesced("x-0") {
		t.Fatal("an agent with allocations is quiesced")
	}
	p.UpsertAgent(agent("x-0", 0)) // drained: no slot
	p.Plan(t0)
	if !p.Quiesced("x-0") {
		t.Error("a drained agent is not quiesced after a plan withdrew its allocations")
	}
	if !p.Quiesced("nobody") {
		t.Error("an unknown agent holds nothing")
	}
}
