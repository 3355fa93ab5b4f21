package planloop

import (
	"context"
	"testing"
	"time"

	"github.com/go-logr/logr"
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
