package planloop

import (
	"context"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/apimachinery/pkg/types"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/guixfarm/guix-farm/internal/planner"
)

// The first plan waits for every Build the cache held at its sync, whether its reconcile came
// before or after the list; Builds created later are not waited for; the loop is kicked once.
func TestLoadingWaitsForTheListedBuilds(t *testing.T) {
	kicks := 0
	l := NewLoading(func(context.Context) ([]planner.BuildKey, error) {
		return []planner.BuildKey{"ns/a", "ns/b", "ns/c"}, nil
	}, clocktesting.NewFakeClock(time.Unix(0, 0)), logr.Discard(), func() { kicks++ })
	l.Seen("ns/a") // a reconcile before the list
	if l.Loaded() {
		t.Fatal("loaded before the list")
	}
	if err := l.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := l.Pending(); got != 2 {
		t.Fatalf("pending %d, want 2 (a was seen before the list)", got)
	}
	l.Seen("ns/new") // created after the sync: not waited for
	l.Seen("ns/b")
	if l.Loaded() || kicks != 0 {
		t.Fatalf("loaded %v, kicks %d with c still to load", l.Loaded(), kicks)
	}
	l.Seen("ns/c")
	l.Seen("ns/c")
	if !l.Loaded() || kicks != 1 {
		t.Fatalf("loaded %v, kicks %d; want loaded, kicked once", l.Loaded(), kicks)
	}
	var none *Loading
	if !none.Loaded() {
		t.Fatal("no gate must not hold the loop")
	}
}

// Builds wait until every agent Lease and pool the cache held has been reconciled once, whether
// before or after the list; past CapabilityTimeout they are judged anyway.
func TestLoadingWaitsForAgentsAndPools(t *testing.T) {
	noBuilds := func(context.Context) ([]planner.BuildKey, error) { return nil, nil }
	lease := CapabilityKey("lease", types.NamespacedName{Namespace: "ns", Name: "agent-0"})
	pool := CapabilityKey("pool", types.NamespacedName{Namespace: "ns", Name: "x86"})
	waiting := func(l *Loading) bool {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		defer cancel()
		return l.WaitCapabilities(ctx) != nil
	}

	clk := clocktesting.NewFakeClock(time.Unix(0, 0))
	l := NewLoading(noBuilds, clk, logr.Discard(), func() {})
	l.ListCapabilities = func(context.Context) ([]string, error) { return []string{lease, pool}, nil }
	l.CapabilitySeen(pool) // before the list
	if !waiting(l) {
		t.Fatal("Builds judged before the list")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := l.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if !waiting(l) {
		t.Fatal("Builds judged with the agent still to load")
	}
	l.CapabilitySeen(lease)
	if waiting(l) {
		t.Fatal("Builds still wait with every agent and pool loaded")
	}

	l = NewLoading(noBuilds, clk, logr.Discard(), func() {})
	l.ListCapabilities = func(context.Context) ([]string, error) { return []string{lease}, nil }
	if err := l.Start(ctx); err != nil {
		t.Fatal(err)
	}
	for !clk.HasWaiters() {
		time.Sleep(time.Millisecond)
	}
	clk.Step(CapabilityTimeout)
	if err := l.WaitCapabilities(context.Background()); err != nil {
		t.Fatalf("past the timeout: %v", err)
	}
	var none *Loading
	if none.WaitCapabilities(context.Background()) != nil {
		t.Fatal("no gate must not hold Builds")
	}
}
